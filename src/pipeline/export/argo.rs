//! A pipeline as Argo Workflows manifests: a WorkflowTemplate whose DAG runs
//! each step as a pod (`recpipe step run`, one attempt each) and, for a
//! scheduled pipeline, a CronWorkflow that submits it.
//!
//! Run directories live in the store every pod is given (`store` parameter);
//! Argo passes nothing between pods but the run id (the workflow's name) and
//! the logical date. What the daemon does itself maps onto Argo's fields:
//! retries onto `retryStrategy` (exit 75, or a pod lost to the node, with the
//! settings' backoff), timeouts onto `activeDeadlineSeconds`, the schedule,
//! time zone, concurrency and catch-up onto the CronWorkflow.
//!
//! [`lint`] checks what no schema sees: task dependencies exist and have no
//! cycle, every `{{…}}` names a parameter that exists, names fit Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Settings;
use crate::pipeline::load::{CatchUp, Concurrency, Pipeline};

/// What the manifests run and where their runs live.
#[derive(Debug, Clone)]
pub struct Target {
    /// The container image holding `recpipe` and the project (config, pipelines, SQL).
    pub image: String,
    /// Where run directories live (the pods' `--store`).
    pub store: String,
}

/// The exported manifests.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub template: Value,
    /// `None` for a pipeline without a schedule (run by submitting the template).
    pub cron: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "schedule `{0}`: Argo's cron has no seconds field; only a schedule whose seconds \
         field is `0` can be exported (e.g. `0 30 4 * * *`)"
    )]
    Seconds(String),
    #[error("schedule `{0}`: Argo's cron has no year field; use `*` there or drop it")]
    Year(String),
    #[error(
        "schedule `{0}`: `{1}` is not standard cron (5 fields of numbers, names, `*`, `,`, `-`, `/`), which Argo reads"
    )]
    Syntax(String, String),
    #[error(
        "`{0}` is {1} characters as a Kubernetes name; Argo allows at most {2}: shorten the pipeline name"
    )]
    Name(String, usize, usize),
    #[error("the exported workflow does not hold together: {0}")]
    Lint(String),
}

/// Argo's limit on a CronWorkflow's name (it appends a timestamp to it).
const MAX_CRON_NAME: usize = 52;
const MAX_NAME: usize = 63;
/// The exit code a step gives for a failure worth retrying.
const RETRYABLE_EXIT: u8 = 75;
/// How late a missed scheduled run may still start with `catch_up = "latest"`.
/// The daemon starts the latest missed run however late; Argo needs a bound.
pub const CATCH_UP_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// `recpipe-<pipeline>` as a Kubernetes name (`_` becomes `-`).
pub fn resource_name(pipeline: &str) -> String {
    format!("recpipe-{}", k8s(pipeline))
}

/// A step id or pipeline name as a Kubernetes / Argo name.
fn k8s(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

pub fn export(
    p: &Pipeline,
    settings: &Settings,
    target: &Target,
) -> Result<Manifests, ExportError> {
    let name = resource_name(&p.name);
    if name.len() > MAX_NAME {
        return Err(ExportError::Name(name.clone(), name.len(), MAX_NAME));
    }
    let tasks: Vec<Value> = p
        .steps
        .iter()
        .map(|s| {
            let mut task = json!({
                "name": k8s(&s.id),
                "template": k8s(&s.id),
                "dependencies": s.needs.iter().map(|n| k8s(n)).collect::<Vec<_>>(),
            });
            // A split list step fans out, a pod per part; the tasks that need it
            // wait for every part.
            let shards = s.spec.shards();
            if shards > 1 {
                task["withItems"] = (0..shards).map(|k| format!("{k}/{shards}")).collect();
            }
            task
        })
        .collect();
    let mut templates = vec![json!({"name": "main", "dag": {"tasks": tasks}})];
    let runtime = &settings.runtime;
    for s in &p.steps {
        let timeout = s.timeout.unwrap_or(runtime.step_timeout);
        let mut args: Vec<String> = [
            "step",
            "run",
            "--pipeline",
            &p.name,
            "--step",
            &s.id,
            "--run-id",
            "{{workflow.name}}",
            "--logical-date",
            "{{workflow.parameters.logical-date}}",
            "--store",
            "{{workflow.parameters.store}}",
        ]
        .map(String::from)
        .to_vec();
        if s.spec.shards() > 1 {
            args.extend(["--shard".to_string(), "{{item}}".to_string()]);
        }
        templates.push(json!({
            "name": k8s(&s.id),
            "retryStrategy": {
                "limit": s.retries,
                // A step says a retry may help by exiting 75. "Error" is a pod
                // Kubernetes lost, 137 and 143 one killed by its node (SIGKILL,
                // SIGTERM): never the step's verdict.
                "expression": format!(
                    "lastRetry.status == \"Error\" || asInt(lastRetry.exitCode) in [{RETRYABLE_EXIT}, 137, 143]"
                ),
                "backoff": {
                    "duration": go_duration(runtime.retry_base_delay),
                    "factor": 2,
                    "cap": go_duration(runtime.retry_max_delay),
                },
            },
            "activeDeadlineSeconds": timeout.as_secs().max(1),
            "container": {
                "image": "{{workflow.parameters.image}}",
                "command": ["recpipe"],
                "args": args,
            },
        }));
    }
    let mut labels = BTreeMap::new();
    labels.insert("app.kubernetes.io/name", "recpipe".to_string());
    labels.insert("recpipe/pipeline", k8s(&p.name));
    let template = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [
                {"name": "image", "value": target.image},
                {"name": "store", "value": target.store},
                // The date the run is for ($logical_date); the CronWorkflow passes
                // its scheduled time, a manual submission must pass one.
                {"name": "logical-date"},
            ]},
            "templates": templates,
        },
    });
    lint(&template)?;
    let cron = match &p.schedule {
        None => None,
        Some(schedule) => {
            if name.len() > MAX_CRON_NAME {
                return Err(ExportError::Name(name.clone(), name.len(), MAX_CRON_NAME));
            }
            let mut spec = json!({
                "schedules": [five_fields(schedule)?],
                "timezone": p.timezone.name(),
                "concurrencyPolicy": match p.concurrency {
                    Concurrency::Forbid => "Forbid",
                    Concurrency::Replace => "Replace",
                    Concurrency::Allow => "Allow",
                },
                "workflowSpec": {
                    "workflowTemplateRef": {"name": name},
                    "arguments": {"parameters": [
                        {"name": "logical-date", "value": "{{workflow.scheduledTime}}"},
                    ]},
                },
            });
            spec["startingDeadlineSeconds"] = json!(match p.catch_up {
                CatchUp::None => 0,
                CatchUp::Latest => CATCH_UP_DEADLINE.as_secs(),
            });
            Some(json!({
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "CronWorkflow",
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
            }))
        }
    };
    Ok(Manifests { template, cron })
}

/// recpipe's `sec min hour day month weekday [year]` as Argo's five fields.
fn five_fields(schedule: &str) -> Result<String, ExportError> {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    let (sec, rest) = fields
        .split_first()
        .filter(|(_, rest)| rest.len() == 5 || rest.len() == 6)
        .ok_or_else(|| ExportError::Syntax(schedule.into(), schedule.into()))?;
    if *sec != "0" {
        return Err(ExportError::Seconds(schedule.into()));
    }
    if rest.len() == 6 && rest[5] != "*" {
        return Err(ExportError::Year(schedule.into()));
    }
    // robfig/cron's standard parser: numbers, month and weekday names, `*`, `?`,
    // lists, ranges and steps; not `L`, `W` or `#`.
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
        "MON", "TUE", "WED", "THU", "FRI", "SAT",
    ];
    for f in &rest[..5] {
        let standard = f.split([',', '-', '/']).all(|t| {
            t == "*"
                || t == "?"
                || (!t.is_empty() && t.chars().all(|c| c.is_ascii_digit()))
                || NAMES.contains(&t.to_ascii_uppercase().as_str())
        });
        if !standard {
            return Err(ExportError::Syntax(schedule.into(), f.to_string()));
        }
    }
    Ok(rest[..5].join(" "))
}

/// `90s` → `1m30s`, as Argo's backoff durations are written.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

/// What `argo lint` checks and a schema cannot: every dependency names a task,
/// there is no cycle, every task's template exists, every `{{…}}` is a
/// variable the workflow defines, and names fit Kubernetes.
pub fn lint(template: &Value) -> Result<(), ExportError> {
    let bad = |m: String| Err(ExportError::Lint(m));
    let spec = &template["spec"];
    let params: BTreeSet<&str> = spec["arguments"]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let templates: BTreeMap<&str, &Value> = spec["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["name"].as_str()?, t)))
        .collect();
    for name in templates.keys() {
        if !valid_name(name) {
            return bad(format!("template name `{name}` is not a valid Argo name"));
        }
    }
    let Some(main) = templates.get(spec["entrypoint"].as_str().unwrap_or("")) else {
        return bad("the entrypoint names no template".into());
    };
    let tasks = main["dag"]["tasks"].as_array().cloned().unwrap_or_default();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in &tasks {
        let name = t["name"].as_str().unwrap_or("").to_string();
        if !valid_name(&name) {
            return bad(format!("task name `{name}` is not a valid Argo name"));
        }
        let template = t["template"].as_str().unwrap_or("");
        if !templates.contains_key(template) {
            return bad(format!(
                "task `{name}` runs template `{template}`, which does not exist"
            ));
        }
        let needs: Vec<String> = t["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(String::from))
            .collect();
        if deps.insert(name.clone(), needs).is_some() {
            return bad(format!("two tasks are named `{name}`"));
        }
    }
    for (task, needs) in &deps {
        if let Some(n) = needs.iter().find(|n| !deps.contains_key(*n)) {
            return bad(format!(
                "task `{task}` depends on `{n}`, which is not a task"
            ));
        }
    }
    // Kahn's order: whatever never becomes ready sits on a cycle.
    let mut left = deps.clone();
    while let Some(ready) = left
        .iter()
        .find(|(_, needs)| needs.iter().all(|n| !left.contains_key(n)))
        .map(|(t, _)| t.clone())
    {
        left.remove(&ready);
    }
    if !left.is_empty() {
        let on_cycle: Vec<&str> = left.keys().map(String::as_str).collect();
        return bad(format!(
            "tasks {} depend on each other in a cycle",
            on_cycle.join(", ")
        ));
    }
    let known = |v: &str| -> bool {
        matches!(
            v,
            "workflow.name" | "workflow.uid" | "workflow.namespace" | "item"
        ) || v
            .strip_prefix("workflow.parameters.")
            .is_some_and(|p| params.contains(p))
            || v.strip_prefix("inputs.parameters.").is_some()
    };
    for v in variables(template) {
        if !known(&v) {
            return bad(format!("`{{{{{v}}}}}` names nothing the workflow defines"));
        }
    }
    Ok(())
}

/// Argo's names: a letter or digit, then letters, digits and `-`; at most 63.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Every `{{…}}` in the strings of `v`, trimmed.
fn variables(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut visit = vec![v];
    while let Some(v) = visit.pop() {
        match v {
            Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(start) = rest.find("{{") {
                    let Some(end) = rest[start..].find("}}") else {
                        out.push(rest[start..].to_string());
                        break;
                    };
                    out.push(rest[start + 2..start + end].trim().to_string());
                    rest = &rest[start + end + 2..];
                }
            }
            Value::Array(a) => visit.extend(a),
            Value::Object(m) => visit.extend(m.values()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_become_five_fields_or_are_refused() {
        assert_eq!(five_fields("0 30 4 * * *").unwrap(), "30 4 * * *");
        assert_eq!(
            five_fields("0 0 9 * * MON-FRI *").unwrap(),
            "0 9 * * MON-FRI"
        );
        assert_eq!(five_fields("0 */15 * * * *").unwrap(), "*/15 * * * *");
        assert!(matches!(
            five_fields("30 0 4 * * *"),
            Err(ExportError::Seconds(_))
        ));
        assert!(matches!(
            five_fields("0 0 4 * * * 2027"),
            Err(ExportError::Year(_))
        ));
        assert!(matches!(
            five_fields("0 0 4 L * *"),
            Err(ExportError::Syntax(..))
        ));
        assert!(matches!(
            five_fields("0 0 4 * *"),
            Err(ExportError::Syntax(..))
        ));
    }

    #[test]
    fn durations_as_argo_writes_them() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    fn workflow(tasks: Value, args: Value) -> Value {
        json!({"spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "store"}]},
            "templates": [
                {"name": "main", "dag": {"tasks": tasks}},
                {"name": "step", "container": {"args": args}},
            ],
        }})
    }

    #[test]
    fn lint_catches_what_no_schema_sees() {
        let ok_args = json!(["{{workflow.parameters.store}}", "{{workflow.name}}"]);
        let task =
            |n: &str, deps: &[&str]| json!({"name": n, "template": "step", "dependencies": deps});
        lint(&workflow(
            json!([task("a", &[]), task("b", &["a"])]),
            ok_args.clone(),
        ))
        .unwrap();
        let err = |wf: Value| lint(&wf).unwrap_err().to_string();
        assert!(
            err(workflow(json!([task("a", &["nope"])]), ok_args.clone()))
                .contains("`nope`, which is not a task")
        );
        assert!(
            err(workflow(
                json!([task("a", &["b"]), task("b", &["a"])]),
                ok_args.clone()
            ))
            .contains("cycle")
        );
        assert!(
            err(workflow(
                json!([{"name": "a", "template": "gone"}]),
                ok_args.clone()
            ))
            .contains("`gone`")
        );
        assert!(err(workflow(json!([task("a_b", &[])]), ok_args.clone())).contains("`a_b`"));
        assert!(
            err(workflow(
                json!([task("a", &[])]),
                json!(["{{workflow.parameters.image}}"])
            ))
            .contains("image")
        );
        assert!(
            err(workflow(
                json!([task("a", &[])]),
                json!(["{{workflow.name"])
            ))
            .contains("names nothing")
        );
    }
}

//! Pipelines on Argo Workflows: `recpipe export argo` (snapshots, the strict
//! schema, the exporter's refusals), `recpipe step run`, and an emulator that
//! executes an exported WorkflowTemplate the way Argo's controller would.
//!
//! No cluster can run here. The emulator reads the exported JSON and runs the
//! DAG's tasks in dependency order; each pod's `command + args` runs as a
//! process of the real binary in its own empty working directory, with the
//! workflow's parameters substituted (an unknown `{{…}}` fails the test),
//! `retryStrategy` (limit, backoff, the expression on the exit code) and
//! `activeDeadlineSeconds` (SIGTERM, then SIGKILL) applied, and fail-fast.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use arrow::datatypes::DataType;
use recpipe::artifact::read_parquet;
use recpipe::pipeline::RunDir;
use recpipe::pipeline::rundir::StepManifest;
use recpipe::store::Remote;
use serde_json::Value;

use crate::common::{block_on, edit, i64s, project, recpipe, s3_url, text};

fn export(project: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["export", "argo", "--store", "s3://recpipe-state/runs"];
    all.extend_from_slice(args);
    recpipe(project, &all, &[])
}

/// Runs `.ci/argo-validate.py` (started by `.ci/test` with its venv) on `files`.
fn validate(files: &[&Path], json_dir: Option<&Path>) -> std::process::Output {
    let python = std::env::var("RECPIPE_TEST_ARGO_PYTHON")
        .expect("RECPIPE_TEST_ARGO_PYTHON: run the tests with .ci/test");
    let schemas = std::env::var("RECPIPE_TEST_ARGO_SCHEMAS")
        .expect("RECPIPE_TEST_ARGO_SCHEMAS: run the tests with .ci/test");
    let mut cmd = Command::new(python);
    cmd.arg(crate::common::repo().join(".ci/argo-validate.py"))
        .arg(schemas)
        .args(files);
    if let Some(dir) = json_dir {
        cmd.arg("--json-dir").arg(dir);
    }
    cmd.output().unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn every_pipeline_exports_manifests_that_pass_the_strict_schema() {
    let dir = project();
    let p = dir.path();
    let (yaml, json) = (p.join("argo-yaml"), p.join("argo-json"));
    for (out, format) in [(&yaml, "yaml"), (&json, "json")] {
        let o = export(p, &["--out", out.to_str().unwrap(), "--format", format]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let written = files(&yaml);
    let names: Vec<String> = written
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // A template per pipeline, a CronWorkflow per scheduled one.
    assert!(names.contains(&"recpipe-example.workflowtemplate.yaml".to_string()));
    assert!(names.contains(&"recpipe-example.cronworkflow.yaml".to_string()));
    assert!(names.contains(&"recpipe-example-postgres.workflowtemplate.yaml".to_string()));
    for f in &written {
        let name = f.file_stem().unwrap().to_string_lossy().replace('.', "_");
        insta::assert_snapshot!(name, std::fs::read_to_string(f).unwrap());
    }
    let refs: Vec<&Path> = written.iter().map(PathBuf::as_path).collect();
    let o = validate(&refs, Some(&json));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The schema is strict: a misspelt field and a wrong type are caught.
    let good = std::fs::read_to_string(yaml.join("recpipe-example.workflowtemplate.yaml")).unwrap();
    let bad = good
        .replacen("      container:", "      contianer:", 1)
        .replacen("  entrypoint: main", "  entrypoint:\n    - main", 1);
    assert_ne!(bad, good);
    let bad_file = p.join("bad.yaml");
    std::fs::write(&bad_file, bad).unwrap();
    let o = validate(&[bad_file.as_path()], None);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("'contianer' was unexpected"), "{out}");
    assert!(
        out.contains("$.spec.entrypoint: ['main'] is not of type 'string'"),
        "{out}"
    );
}

#[test]
fn what_argo_cannot_express_is_refused_with_the_file() {
    let dir = project();
    let p = dir.path();
    edit(
        p,
        "example.toml",
        "schedule = \"0 0 4 * * *\"",
        "schedule = \"30 0 4 * * *\"",
    );
    let o = export(p, &["example"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("example.toml") && out.contains("no seconds field"),
        "{out}"
    );
}

/// One task's attempts as the emulator ran them.
#[derive(Debug, Default)]
struct TaskRun {
    /// (exit code, Argo's status) per attempt.
    attempts: Vec<(i32, &'static str)>,
    succeeded: bool,
}

/// Extra environment for a task's attempt (1-based), e.g. a failure point.
type AttemptEnv<'a> = &'a dyn Fn(&str, u32) -> Vec<(String, String)>;

/// An exported WorkflowTemplate and the workflow's name (recpipe's run id).
struct Emulator<'a> {
    spec: Value,
    name: String,
    params: BTreeMap<String, String>,
    project: &'a Path,
    env: AttemptEnv<'a>,
    /// Called before each attempt starts.
    before: &'a dyn Fn(&str, u32),
}

impl<'a> Emulator<'a> {
    /// `pipeline`'s exported WorkflowTemplate, submitted as workflow `name`
    /// with its runs in `store`.
    fn new(project: &'a Path, pipeline: &str, store: &str, name: &str) -> Self {
        let spec = template(project, pipeline);
        Emulator {
            params: params(&spec, store),
            spec,
            name: name.into(),
            project,
            env: &no_env,
            before: &no_hook,
        }
    }

    /// Runs the DAG to the end; fail-fast: after a task fails, nothing new starts.
    fn run(&self) -> BTreeMap<String, TaskRun> {
        let templates: BTreeMap<String, &Value> = self.spec["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), t))
            .collect();
        let main = templates[self.spec["entrypoint"].as_str().unwrap()];
        let tasks = main["dag"]["tasks"].as_array().unwrap();
        let mut runs: BTreeMap<String, TaskRun> = BTreeMap::new();
        let mut done: HashSet<String> = HashSet::new();
        loop {
            let ready = tasks.iter().find(|t| {
                let name = t["name"].as_str().unwrap();
                !runs.contains_key(name)
                    && t["dependencies"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|d| done.contains(d.as_str().unwrap()))
            });
            let Some(task) = ready else { break };
            let name = task["name"].as_str().unwrap().to_string();
            let template = templates[task["template"].as_str().unwrap()];
            // A fanned-out task runs once per item; it succeeds when all do.
            let run = match task["withItems"].as_array() {
                None => self.task(&name, template, None),
                Some(items) => {
                    let mut all = TaskRun {
                        succeeded: true,
                        ..TaskRun::default()
                    };
                    for item in items {
                        let one = self.task(&name, template, item.as_str());
                        all.attempts.extend(one.attempts);
                        all.succeeded &= one.succeeded;
                    }
                    all
                }
            };
            let ok = run.succeeded;
            runs.insert(name.clone(), run);
            if !ok {
                break;
            }
            done.insert(name);
        }
        runs
    }

    // Pods are processes this thread waits for, as the controller does.
    #[allow(clippy::disallowed_methods)]
    fn task(&self, name: &str, template: &Value, item: Option<&str>) -> TaskRun {
        let retry = &template["retryStrategy"];
        let limit = retry["limit"].as_u64().unwrap() as u32;
        let deadline = Duration::from_secs(template["activeDeadlineSeconds"].as_u64().unwrap());
        let container = &template["container"];
        assert_eq!(container["command"], serde_json::json!(["recpipe"]));
        assert_eq!(
            self.sub(container["image"].as_str().unwrap(), None),
            "recpipe"
        );
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| self.sub(a.as_str().unwrap(), item))
            .collect();
        let mut run = TaskRun::default();
        for attempt in 1..=limit + 1 {
            (self.before)(name, attempt);
            let pod = tempfile::tempdir().unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_recpipe"))
                .args(&args)
                .current_dir(pod.path())
                // The image's project dir (its WORKDIR and RECPIPE_PROJECT_DIR).
                .env("RECPIPE_PROJECT_DIR", self.project)
                .env_remove("RECPIPE_FAILPOINTS")
                .env_remove("RECPIPE_ENV")
                .envs((self.env)(name, attempt))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if started.elapsed() > deadline {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    std::thread::sleep(Duration::from_secs(2));
                    let _ = child.kill();
                    break child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            use std::os::unix::process::ExitStatusExt;
            // A container's exit code: its own, or 128 + the signal that killed it.
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            if code == 0 {
                run.attempts.push((0, "Succeeded"));
                run.succeeded = true;
                return run;
            }
            run.attempts.push((code, "Failed"));
            if attempt > limit || !retries(retry["expression"].as_str().unwrap(), code, "Failed") {
                return run;
            }
            std::thread::sleep(backoff(&retry["backoff"], attempt));
        }
        run
    }

    /// Substitutes `{{…}}`; a variable the workflow does not define fails the test.
    fn sub(&self, s: &str, item: Option<&str>) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("unclosed {{") + start;
            out.push_str(&rest[..start]);
            let var = rest[start + 2..end].trim();
            let value = match var.strip_prefix("workflow.parameters.") {
                Some(p) => self
                    .params
                    .get(p)
                    .unwrap_or_else(|| panic!("no parameter {p}")),
                None if var == "workflow.name" => &self.name,
                None if var == "item" => item.expect("{{item}} outside a fan-out"),
                None => panic!("the emulator cannot resolve {{{{{var}}}}}"),
            };
            out.push_str(value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Evaluates the exported retry expression: `lastRetry.status == "X"` and
/// `asInt(lastRetry.exitCode) in [a, b]` atoms joined by `||`.
fn retries(expression: &str, exit: i32, status: &str) -> bool {
    expression.split("||").any(|atom| {
        let atom = atom.trim();
        if let Some(want) = atom.strip_prefix("lastRetry.status == ") {
            want.trim_matches('"') == status
        } else if let Some(list) = atom.strip_prefix("asInt(lastRetry.exitCode) in ") {
            list.trim_matches(['[', ']'])
                .split(',')
                .any(|n| n.trim().parse::<i32>().unwrap() == exit)
        } else {
            panic!("the emulator cannot evaluate `{atom}`")
        }
    })
}

/// Argo's backoff before retry `attempt`: duration × factor^(attempt − 1), capped.
fn backoff(b: &Value, attempt: u32) -> Duration {
    let secs = |s: &str| -> f64 { humantime::parse_duration(s).unwrap().as_secs_f64() };
    let base = secs(b["duration"].as_str().unwrap());
    let factor = b["factor"].as_f64().unwrap();
    let cap = secs(b["cap"].as_str().unwrap());
    Duration::from_secs_f64((base * factor.powi(attempt as i32 - 1)).min(cap))
}

/// The exported WorkflowTemplate's spec, with the store a folder of the test.
fn template(project: &Path, pipeline: &str) -> Value {
    let o = recpipe(
        project,
        &["export", "argo", pipeline, "--format", "json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&o.stdout)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let t = docs
        .iter()
        .find(|d| d["kind"] == "WorkflowTemplate")
        .unwrap();
    t["spec"].clone()
}

fn params(spec: &Value, store: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = spec["arguments"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    params.insert("store".into(), store.to_string());
    // What the CronWorkflow passes ({{workflow.scheduledTime}}).
    params.insert("logical-date".into(), "2026-12-04T04:00:00+09:00".into());
    params
}

/// The published example list as (user, item, rank) rows, in file order.
fn published(project: &Path) -> Vec<(i64, i64, i64)> {
    rows(&project.join("state/published/example_user_recs/current/data.parquet"))
}

/// The same, of the example list published to object storage under `lists`.
fn published_s3(lists: &str) -> Vec<(i64, i64, i64)> {
    let table = Remote::open(&format!("{lists}/example_user_recs")).unwrap();
    let (current, _) = block_on(table.get("CURRENT")).unwrap().unwrap();
    let current = String::from_utf8(current.to_vec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.parquet");
    block_on(table.download(&format!("versions/{}/data.parquet", current.trim()), &file)).unwrap();
    rows(&file)
}

/// A list file as (user, item, rank) rows, in file order.
fn rows(list: &Path) -> Vec<(i64, i64, i64)> {
    let (_, batches) = read_parquet(list).unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let rank =
            arrow::compute::cast(b.column_by_name("rank").unwrap(), &DataType::Int64).unwrap();
        let r = rank
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        let (u, i) = (i64s(b, "user_id"), i64s(b, "item_id"));
        rows.extend((0..u.len()).map(|n| (u[n], i[n], r[n])));
    }
    rows
}

/// `recpipe step run` of the example pipeline's `step` in run `run_id`, with
/// run directories in `store`.
fn step_run(
    project: &Path,
    store: &Path,
    run_id: &str,
    step: &str,
    more: &[&str],
) -> std::process::Output {
    let store = store.to_str().unwrap();
    let mut args = vec![
        "step",
        "run",
        "--pipeline",
        "example",
        "--step",
        step,
        "--run-id",
        run_id,
        "--store",
        store,
    ];
    args.extend_from_slice(more);
    recpipe(project, &args, &[])
}

fn no_env(_: &str, _: u32) -> Vec<(String, String)> {
    Vec::new()
}

fn no_hook(_: &str, _: u32) {}

#[test]
fn the_exported_workflow_publishes_what_recpipe_run_publishes() {
    // The same list from `recpipe run` in one project…
    let reference = project();
    let o = recpipe(
        reference.path(),
        &[
            "run",
            "example",
            "--run-id",
            "ref",
            "--logical-date",
            "2026-12-04T04:00:00+09:00",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // …and from pods in another, whose run directories and published lists
    // live in S3 (moto), with two pods killed once: `popular` after uploading
    // its files and before its manifest, the publish after staging its version
    // and before swapping it in.
    let dir = project();
    let p = dir.path();
    // (A step without `retries` is not retried: `popular` gets two.)
    edit(
        p,
        "example.toml",
        "[steps.popular]\n",
        "[steps.popular]\nretries = 2\n",
    );
    let store = s3_url("argo");
    let lists = format!("{store}/published");
    let env = |task: &str, attempt: u32| {
        let mut env = vec![(
            "RECPIPE__SINKS__LOCAL_LISTS__PATH".to_string(),
            lists.clone(),
        )];
        let crash = match (task, attempt) {
            ("publish", 1) => "parquet.before_swap:crash",
            ("popular", 1) => "store.before_manifest:crash",
            _ => return env,
        };
        env.push(("RECPIPE_FAILPOINTS".to_string(), crash.to_string()));
        env
    };
    let emu = Emulator {
        env: &env,
        ..Emulator::new(p, "example", &store, "recpipe-example-x7k2p")
    };
    let runs = emu.run();
    assert!(runs.values().all(|r| r.succeeded), "{runs:?}");
    for task in ["publish", "popular"] {
        assert_eq!(
            runs[task].attempts,
            vec![(137, "Failed"), (0, "Succeeded")],
            "{task}"
        );
    }
    assert_eq!(published_s3(&lists), published(reference.path()));
    // Every step is done in the store, under the workflow's name, and its folder
    // holds its manifest and exactly the files it lists: the killed upload left
    // nothing beside them.
    let run = Remote::open(&format!("{store}/runs/example/recpipe-example-x7k2p")).unwrap();
    let keys: Vec<String> = block_on(run.list(""))
        .unwrap()
        .into_iter()
        .map(|k| k.0)
        .collect();
    for step in [
        "interactions",
        "closed_items",
        "popular",
        "user_recs",
        "publish",
    ] {
        let (bytes, _) = block_on(run.get(&format!("{step}/manifest.json")))
            .unwrap()
            .unwrap_or_else(|| panic!("{step} has no manifest"));
        let manifest: StepManifest = serde_json::from_slice(&bytes).unwrap();
        let mut expected: Vec<String> = manifest
            .files
            .iter()
            .map(|f| format!("{step}/{}", f.name))
            .collect();
        expected.push(format!("{step}/manifest.json"));
        expected.sort();
        let mut found: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(&format!("{step}/")))
            .cloned()
            .collect();
        found.sort();
        assert_eq!(found, expected);
    }
    // One version was published, complete.
    let versions = || -> HashSet<String> {
        let sink = Remote::open(&format!("{lists}/example_user_recs/versions")).unwrap();
        block_on(sink.list(""))
            .unwrap()
            .into_iter()
            .filter_map(|k| Some(k.0.split_once('/')?.0.to_string()))
            .collect()
    };
    assert_eq!(versions().len(), 1, "{:?}", versions());

    // The whole workflow again (Argo's `retry` of a finished workflow): every
    // step finds its manifest and does nothing.
    let runs = emu.run();
    assert!(
        runs.values().all(|r| r.attempts == vec![(0, "Succeeded")]),
        "{runs:?}"
    );
    assert_eq!(versions().len(), 1, "a second publish");
}

#[test]
fn exit_75_is_retried_and_exit_2_is_not() {
    let dir = project();
    let p = dir.path();
    let store = tempfile::tempdir().unwrap();
    // `publish` (3 retries) finds its step locked by another process on its
    // first attempt: exit 75, retried after the backoff.
    let run_id = "recpipe-example-r75";
    let rundir = RunDir::new(store.path(), "example", run_id);
    let held = std::sync::Mutex::new(None);
    let before = |task: &str, attempt: u32| {
        if task == "publish" {
            *held.lock().unwrap() = match attempt {
                1 => Some(rundir.try_lock_step("publish").unwrap().unwrap()),
                _ => None,
            };
        }
    };
    let emu = Emulator {
        before: &before,
        ..Emulator::new(p, "example", store.path().to_str().unwrap(), run_id)
    };
    let runs = emu.run();
    assert_eq!(
        runs["publish"].attempts,
        vec![(75, "Failed"), (0, "Succeeded")],
        "{runs:?}"
    );

    // A step with retries whose SQL is broken exits 2 once: bad input is not
    // retried, and nothing after it starts.
    edit(
        p,
        "example.toml",
        "[steps.interactions]\n",
        "[steps.interactions]\nretries = 3\n",
    );
    std::fs::write(p.join("sql/example_interactions.sql"), "SELEC broken").unwrap();
    let emu = Emulator::new(
        p,
        "example",
        store.path().to_str().unwrap(),
        "recpipe-example-r2",
    );
    let runs = emu.run();
    assert_eq!(
        runs["interactions"].attempts,
        vec![(2, "Failed")],
        "{runs:?}"
    );
    assert!(
        !runs.contains_key("publish") && !runs.contains_key("popular"),
        "{runs:?}"
    );
}

#[test]
fn step_run_needs_its_inputs_and_reruns_after_an_input_changes() {
    let dir = project();
    let p = dir.path();
    let store = p.join("store");
    let step = |s: &str| step_run(p, &store, "r1", s, &[]);
    // Out of order: its input has not run in this run.
    let o = step("popular");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("needs `interactions`, which has not finished in run `r1`"),
        "{out}"
    );
    let o = step("nope");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no step `nope`"), "{}", text(&o));

    let status = |o: &std::process::Output| -> String {
        assert_eq!(o.status.code(), Some(0), "{}", text(o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["status"].as_str().unwrap().to_string()
    };
    assert_eq!(status(&step("interactions")), "succeeded");
    assert_eq!(status(&step("popular")), "succeeded");
    assert_eq!(status(&step("popular")), "reused");
    // `interactions` runs again (its manifest gone, as after a lost pod): the
    // model made from the old one is stale and `popular` runs again.
    std::fs::remove_file(store.join("runs/example/r1/interactions/manifest.json")).unwrap();
    assert_eq!(status(&step("interactions")), "succeeded");
    assert_eq!(status(&step("popular")), "succeeded");
}

#[test]
fn cloudbuild_passes_cloud_build_s_schema_and_a_broken_one_does_not() {
    let python = PathBuf::from(
        std::env::var("RECPIPE_TEST_ARGO_PYTHON")
            .expect("RECPIPE_TEST_ARGO_PYTHON: run the tests with .ci/test"),
    );
    let check = |file: &Path| {
        Command::new(python.with_file_name("check-jsonschema"))
            .args(["--builtin-schema", "vendor.cloudbuild"])
            .arg(file)
            .output()
            .unwrap()
    };
    let file = crate::common::repo().join("cloudbuild.yaml");
    let o = check(&file);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // `image:` where Cloud Build wants `name:`, and `args` as one string.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(&file).unwrap();
    for (from, to) in [
        ("  - id: push\n    name:", "  - id: push\n    image:"),
        (
            "    args:\n      - -c\n      - docker build",
            "    args: docker build",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let broken = dir.path().join("cloudbuild.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).unwrap();
        let o = check(&broken);
        assert_eq!(o.status.code(), Some(1), "{from} → {to}: {}", text(&o));
    }
}

#[test]
fn a_list_split_into_shards_publishes_the_unsplit_list_row_for_row() {
    let reference = project();
    let o = recpipe(
        reference.path(),
        &["run", "example", "--run-id", "ref"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dir = project();
    let p = dir.path();
    edit(
        p,
        "example.toml",
        "top_n = 10\n",
        "top_n = 10\nshards = 4\n",
    );
    let store = tempfile::tempdir().unwrap();
    let emu = Emulator::new(
        p,
        "example",
        store.path().to_str().unwrap(),
        "recpipe-example-s4",
    );
    let tasks = emu.spec["templates"][0]["dag"]["tasks"].as_array().unwrap();
    let fan = tasks.iter().find(|t| t["name"] == "user-recs").unwrap();
    assert_eq!(
        fan["withItems"],
        serde_json::json!(["0/4", "1/4", "2/4", "3/4"])
    );
    let runs = emu.run();
    assert!(runs.values().all(|r| r.succeeded), "{runs:?}");
    assert_eq!(runs["user-recs"].attempts.len(), 4, "{runs:?}");
    // Four parts, no whole list: each pod scored its quarter of the users.
    let dir = store
        .path()
        .join("runs/example/recpipe-example-s4/user_recs");
    let parts = recpipe::artifact::lists::files(&dir).unwrap();
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(published(p), published(reference.path()));

    // A part of a step not split that way, or out of range, is bad input; a
    // finished part is not made again.
    let step = |shard: &str| {
        step_run(
            p,
            store.path(),
            "recpipe-example-s4",
            "user_recs",
            &["--shard", shard],
        )
    };
    for shard in ["1/3", "4/4"] {
        let o = step(shard);
        assert_eq!(o.status.code(), Some(2), "{shard}: {}", text(&o));
    }
    assert!(text(&step("2/4")).contains("\"reused\""));

    // `shards` out of bounds is refused at validation, with its line.
    edit(p, "example.toml", "shards = 4\n", "shards = 0\n");
    let o = recpipe(p, &["validate"], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("example.toml:") && l.contains("steps.user_recs.shards")),
        "{out}"
    );
}

//! Pipeline files (`pipelines/*.toml`): the raw TOML is checked in two phases, first
//! every key against what serde accepts, then the values against the settings and
//! each other, and turned into a [`Pipeline`] that cannot hold an invalid value.
//!
//! Every problem is reported at once with its file, line, column and key path. A
//! pipeline whose file has any problem is not returned at all.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::dag;
use crate::artifact::ArtifactKind;
use crate::config::diagnostic::{Diagnostic, Diagnostics, is_identifier, one_of, polish, suggest};
use crate::config::introspect::fields;
use crate::config::settings::{Settings, duration};
use crate::steps::StepSpec;
use crate::steps::kind::{CheckContext, ReadTable, SpecReader};
use crate::steps::model::ModelSpec;

/// A validated pipeline: its steps are in an order where every step comes after
/// the steps it needs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    /// Cron with seconds first (`sec min hour day month weekday [year]`); `None` runs
    /// only when triggered.
    pub schedule: Option<String>,
    pub timezone: chrono_tz::Tz,
    pub concurrency: Concurrency,
    pub catch_up: CatchUp,
    pub steps: Vec<Step>,
    /// Where the write steps publish, for the plan and cross-pipeline checks.
    pub writes: Vec<WriteTarget>,
    /// The experiments its `allocate` steps run: one name, one experiment,
    /// across pipelines.
    pub experiments: Vec<ExperimentName>,
}

impl Pipeline {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// What happens when a run is due while the previous one still runs (as in a
/// Kubernetes CronJob).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    #[default]
    Forbid,
    Replace,
    Allow,
}

/// What the daemon runs after downtime for the schedules it missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Nothing: wait for the next scheduled time.
    #[default]
    None,
    /// The latest missed time, once.
    Latest,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub needs: Vec<String>,
    /// Extra attempts after a retryable failure.
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub description: Option<String>,
    pub spec: StepSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    pub step: String,
    pub sink: String,
    pub table: String,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// An experiment's name and where it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentName {
    pub name: String,
    pub step: String,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// The keys every step accepts, whatever its kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonSpec {
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    description: Option<String>,
}

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "timezone",
    "concurrency",
    "catch_up",
    "steps",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    concurrency: Concurrency,
    #[serde(default)]
    catch_up: CatchUp,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Validates every pipeline file in `paths` (files, or folders whose `*.toml` are
/// taken), including the checks that span files: unique names and unique tables.
pub fn load_all(settings: &Settings, paths: &[PathBuf]) -> (Vec<Pipeline>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let mut files = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match toml_files_in(path) {
                Ok(found) => files.extend(found),
                Err(e) => diags.push(Diagnostic::file(path, "", format!("cannot list: {e}"))),
            },
            Ok(_) => files.push(path.clone()),
            Err(e) => diags.push(Diagnostic::file(path, "", format!("cannot read: {e}"))),
        }
    }
    let mut pipelines = Vec::new();
    for file in files {
        match load_file(settings, &file) {
            Ok(p) => pipelines.push(p),
            Err(d) => diags.extend(d),
        }
    }
    diags.extend(check_across(&pipelines));
    (pipelines, diags.sorted())
}

/// The `*.toml` files directly inside `dir`, sorted.
pub fn toml_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and validates one pipeline file.
pub fn load_file(settings: &Settings, file: &Path) -> Result<Pipeline, Diagnostics> {
    match std::fs::read_to_string(file) {
        Ok(src) => parse(settings, file, &src),
        Err(e) => Err(Diagnostics(vec![Diagnostic::file(
            file,
            "",
            format!("cannot read: {e}"),
        )])),
    }
}

/// Two pipelines with one name, or two write steps publishing the same table, would
/// overwrite each other's lists; two `allocate` steps with one experiment would
/// serve each other's units.
fn check_across(pipelines: &[Pipeline]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let mut names: BTreeMap<&str, &Path> = BTreeMap::new();
    for p in pipelines {
        if let Some(first) = names.insert(&p.name, &p.file) {
            diags.push(Diagnostic::file(
                &p.file,
                "name",
                format!(
                    "pipeline `{}` is also defined in {}; names must be unique",
                    p.name,
                    first.display()
                ),
            ));
        }
    }
    let mut tables: BTreeMap<(&str, &str), &WriteTarget> = BTreeMap::new();
    for w in pipelines.iter().flat_map(|p| &p.writes) {
        if let Some(first) = tables.insert((&w.sink, &w.table), w) {
            diags.push(Diagnostic {
                file: w.file.clone(),
                line: w.line,
                col: w.col,
                key: format!("steps.{}.table", w.step),
                message: format!(
                    "table `{}` of sink `{}` is also written by {}:{}:{} (steps.{}); \
                     give each pipeline its own table",
                    w.table,
                    w.sink,
                    first.file.display(),
                    first.line,
                    first.col,
                    first.step
                ),
            });
        }
    }
    let mut experiments: BTreeMap<&str, &ExperimentName> = BTreeMap::new();
    for e in pipelines.iter().flat_map(|p| &p.experiments) {
        if let Some(first) = experiments.insert(&e.name, e) {
            diags.push(Diagnostic {
                file: e.file.clone(),
                line: e.line,
                col: e.col,
                key: format!("steps.{}.experiment", e.step),
                message: format!(
                    "experiment `{}` is also run by {}:{}:{} (steps.{}); the assignment API \
                     serves one allocation per name",
                    e.name,
                    first.file.display(),
                    first.line,
                    first.col,
                    first.step
                ),
            });
        }
    }
    diags
}

/// Parses and validates the text of one pipeline file.
pub fn parse(settings: &Settings, file: &Path, src: &str) -> Result<Pipeline, Diagnostics> {
    let mut cx = Checker {
        file,
        src,
        settings,
        diags: Diagnostics::default(),
        header_spans: BTreeMap::new(),
    };
    let pipeline = cx.pipeline();
    match pipeline {
        Some(p) if cx.diags.is_empty() => Ok(p),
        _ => Err(cx.diags.sorted()),
    }
}

struct Checker<'a> {
    file: &'a Path,
    src: &'a str,
    settings: &'a Settings,
    diags: Diagnostics,
    /// Value spans of the top-level keys, for checks after deserialization.
    header_spans: Spans,
}

/// Value spans of a table's keys, for checks made after deserialization.
type Spans = BTreeMap<String, Range<usize>>;

/// A step whose keys parsed, waiting for the checks that need all steps.
struct RawStep {
    id: String,
    id_span: Range<usize>,
    spans: Spans,
    common: CommonSpec,
    spec: StepSpec,
}

impl<'a> Checker<'a> {
    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.src, span, key, message));
    }

    fn pipeline(&mut self) -> Option<Pipeline> {
        let (root, errors) = DeTable::parse_recoverable(self.src);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                let message = format!("invalid TOML: {}", e.message().trim());
                self.error(span, "", message);
            }
            return None;
        }
        let root_span = root.span();
        let mut root = root.into_inner();
        self.header_spans = root
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        let steps_value = root.remove("steps");
        let header: Option<Header> = self.deserialize_table(
            "",
            Spanned::new(root_span.clone(), root),
            TOP_KEYS,
            "a pipeline file",
        );
        let (raw_steps, all_ids) = match steps_value {
            Some(v) => self.steps(v),
            None => {
                self.error(
                    root_span.start..root_span.start,
                    "steps",
                    "missing `[steps.<id>]` tables; a pipeline needs at least one step",
                );
                (Vec::new(), BTreeSet::new())
            }
        };
        let timezone = header.as_ref().and_then(|h| self.timezone(h));
        if let Some(h) = &header {
            self.check_name(&h.name);
            if let Some(schedule) = &h.schedule {
                self.check_schedule(schedule);
            }
        }
        let steps = self.link_steps(raw_steps, &all_ids);
        let (header, steps) = (header?, steps?);
        let writes = steps
            .iter()
            .flat_map(|(step, spans)| {
                step.spec.publishes().into_iter().map(|target| {
                    let span = spans.get(target.key).cloned().unwrap_or(0..0);
                    let (line, col) = crate::config::diagnostic::line_col(self.src, span.start);
                    WriteTarget {
                        step: step.id.clone(),
                        sink: target.sink.to_string(),
                        table: target.table.to_string(),
                        file: self.file.to_path_buf(),
                        line,
                        col,
                    }
                })
            })
            .collect();
        let experiments = steps
            .iter()
            .filter_map(|(step, spans)| match &step.spec {
                StepSpec::Allocate(a) => {
                    let span = spans.get("experiment").cloned().unwrap_or(0..0);
                    let (line, col) = crate::config::diagnostic::line_col(self.src, span.start);
                    Some(ExperimentName {
                        name: a.experiment.clone(),
                        step: step.id.clone(),
                        file: self.file.to_path_buf(),
                        line,
                        col,
                    })
                }
                _ => None,
            })
            .collect();
        Some(Pipeline {
            name: header.name,
            file: self.file.to_path_buf(),
            description: header.description,
            schedule: header.schedule,
            timezone: timezone?,
            concurrency: header.concurrency,
            catch_up: header.catch_up,
            steps: steps.into_iter().map(|(s, _)| s).collect(),
            writes,
            experiments,
        })
    }

    /// Reports every key of `table` not in `allowed`, then deserializes the rest.
    ///
    /// serde stops at the first bad value, so after each error the offending key is
    /// dropped and the rest tried again: every bad value is reported, and the struct
    /// is still returned (with defaults for the dropped keys) when it can be built,
    /// so later checks run on it too.
    fn deserialize_table<T: DeserializeOwned>(
        &mut self,
        path: &str,
        table: Spanned<DeTable<'a>>,
        allowed: &[&str],
        what: &str,
    ) -> Option<T> {
        let span = table.span();
        let mut known = DeTable::new();
        for (key, value) in table.into_inner() {
            let name = key.get_ref().to_string();
            if allowed.contains(&name.as_str()) {
                known.insert(key, value);
            } else {
                let message = format!(
                    "unknown key{}; {what} accepts {}",
                    suggest(&name, allowed.iter().copied()),
                    one_of(allowed)
                );
                self.error(key.span(), join(path, &name), message);
            }
        }
        let mut dropped: Vec<String> = Vec::new();
        loop {
            let value = Spanned::new(span.clone(), DeValue::Table(known.clone()));
            let e = match T::deserialize(ValueDeserializer::from(value)) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let message = polish(e.message().trim());
            if dropped
                .iter()
                .any(|k| message == format!("missing field `{k}`"))
            {
                return None;
            }
            let at = e.span().unwrap_or(span.clone());
            let bad_key = known
                .iter()
                .find(|(_, v)| v.span().start <= at.start && at.end <= v.span().end)
                .map(|(k, _)| k.get_ref().to_string());
            self.error(
                at,
                bad_key
                    .as_deref()
                    .map_or_else(|| path.to_string(), |k| join(path, k)),
                message,
            );
            match bad_key {
                Some(k) => {
                    known.remove(k.as_str());
                    dropped.push(k);
                }
                None => return None,
            }
        }
    }

    /// The steps that parsed, and the ids of all steps (parsed or not), so that a
    /// step with a bad value does not also make every `needs` naming it an error.
    fn steps(&mut self, value: Spanned<DeValue<'a>>) -> (Vec<RawStep>, BTreeSet<String>) {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.error(span, "steps", "must be a table of steps: `[steps.<id>]`");
            return (Vec::new(), BTreeSet::new());
        };
        let all_ids: BTreeSet<String> =
            table.iter().map(|(k, _)| k.get_ref().to_string()).collect();
        if table.is_empty() {
            self.error(span, "steps", "a pipeline needs at least one step");
        }
        let mut steps = Vec::new();
        for (key, value) in table {
            let id = key.get_ref().to_string();
            let path = format!("steps.{id}");
            if !is_identifier(&id, false) {
                self.error(
                    key.span(),
                    &path,
                    "step ids use lowercase letters, digits and `_`, starting with a letter",
                );
            }
            let value_span = value.span();
            let DeValue::Table(table) = value.into_inner() else {
                self.error(value_span, &path, "must be a table: `[steps.<id>]`");
                continue;
            };
            if let Some(step) = self.step(&path, id, key.span(), Spanned::new(value_span, table)) {
                steps.push(step);
            }
        }
        (steps, all_ids)
    }

    fn step(
        &mut self,
        path: &str,
        id: String,
        id_span: Range<usize>,
        table: Spanned<DeTable<'a>>,
    ) -> Option<RawStep> {
        let span = table.span();
        let table = table.into_inner();
        let spans: Spans = table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), v.span()))
            .collect();
        let kind = match table.get("kind").map(|v| (v.get_ref().as_str(), v.span())) {
            None => {
                self.error(
                    span.start..span.start,
                    join(path, "kind"),
                    format!("missing key; accepted kinds: {}", one_of(StepSpec::KINDS)),
                );
                return None;
            }
            Some((None, s)) => {
                self.error(s, join(path, "kind"), "must be a string");
                return None;
            }
            Some((Some(kind), s)) => (kind.to_string(), s),
        };
        let Some(kind_fields) = StepSpec::keys_of(&kind.0) else {
            let message = format!(
                "unknown step kind `{}`{}; accepted kinds: {}",
                kind.0,
                suggest(&kind.0, StepSpec::KINDS.iter().copied()),
                one_of(StepSpec::KINDS)
            );
            self.error(kind.1, join(path, "kind"), message);
            return None;
        };
        let mut allowed: Vec<&str> = vec!["kind"];
        allowed.extend_from_slice(fields::<CommonSpec>());
        allowed.extend_from_slice(kind_fields);
        let takes_model = kind_fields.contains(&"model");
        if takes_model {
            allowed.extend(self.model_fields(path, &table, span.clone())?);
        }
        let article = if kind.0.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        let what = format!("{article} `{}` step", kind.0);
        // Split the table: the common keys and the kind's keys are two structs, so
        // that neither needs `#[serde(flatten)]` (which lets unknown keys through).
        let common_keys = fields::<CommonSpec>();
        let mut common = DeTable::new();
        let mut specific = DeTable::new();
        for (k, v) in table {
            let name = k.get_ref().to_string();
            if !allowed.contains(&name.as_str()) {
                let message = format!(
                    "unknown key{}; {what} accepts {}",
                    suggest(&name, allowed.iter().copied()),
                    one_of(&allowed)
                );
                self.error(k.span(), join(path, &name), message);
            } else if common_keys.contains(&name.as_str()) {
                common.insert(k, v);
            } else {
                specific.insert(k, v);
            }
        }
        let common: Option<CommonSpec> =
            self.deserialize_table(path, Spanned::new(span.clone(), common), common_keys, &what);
        // Each kind's struct is deserialized directly: serde's internally tagged
        // enums buffer their input and lose the spans that errors point at.
        specific.remove("kind");
        let (mut own, mut model) = (DeTable::new(), DeTable::new());
        for (k, v) in specific {
            match takes_model
                && (k.get_ref() == "model" || !kind_fields.contains(&k.get_ref().as_ref()))
            {
                true => model.insert(k, v),
                false => own.insert(k, v),
            };
        }
        let mut reader = TableReader {
            own: Some(Spanned::new(span.clone(), own)),
            model: Some(Spanned::new(span, model)),
            checker: self,
            path,
            allowed: &allowed,
            what: &what,
        };
        let spec = StepSpec::read(&kind.0, &mut reader);
        Some(RawStep {
            id,
            id_span,
            spans,
            common: common?,
            spec: spec?,
        })
    }

    /// The keys of the model a train step names; reports a missing or unknown model.
    fn model_fields(
        &mut self,
        path: &str,
        table: &DeTable<'a>,
        span: Range<usize>,
    ) -> Option<Vec<&'static str>> {
        let key = join(path, "model");
        match table.get("model") {
            None => {
                let message = format!(
                    "missing key; accepted models: {}",
                    one_of(ModelSpec::MODELS)
                );
                self.error(span.start..span.start, key, message);
                None
            }
            Some(v) => match v.get_ref().as_str() {
                None => {
                    self.error(v.span(), key, "must be a string");
                    None
                }
                Some(model) => match ModelSpec::keys_of(model) {
                    Some(f) => Some(f.to_vec()),
                    None => {
                        let message = format!(
                            "unknown model `{model}`{}; accepted models: {}",
                            suggest(model, ModelSpec::MODELS.iter().copied()),
                            one_of(ModelSpec::MODELS)
                        );
                        self.error(v.span(), key, message);
                        None
                    }
                },
            },
        }
    }

    fn key_span(&self, key: &str) -> Range<usize> {
        self.header_spans.get(key).cloned().unwrap_or(0..0)
    }

    fn check_name(&mut self, name: &str) {
        if !is_identifier(name, true) {
            let span = self.key_span("name");
            self.error(
                span,
                "name",
                format!(
                    "`{name}` is not a valid pipeline name; use lowercase letters, digits, `_` and `-`, starting with a letter"
                ),
            );
        }
    }

    fn timezone(&mut self, header: &Header) -> Option<chrono_tz::Tz> {
        let Some(name) = &header.timezone else {
            return Some(chrono_tz::UTC);
        };
        match chrono_tz::Tz::from_str(name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                let span = self.key_span("timezone");
                let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
                let message = format!(
                    "unknown time zone `{name}`{}; use an IANA name such as `Asia/Tokyo` or `UTC`",
                    suggest(name, names)
                );
                self.error(span, "timezone", message);
                None
            }
        }
    }

    fn check_schedule(&mut self, schedule: &str) {
        let fields = schedule.split_whitespace().count();
        let problem = if !(6..=7).contains(&fields) {
            Some(format!(
                "`{schedule}` has {fields} fields; write 6 or 7 with seconds first, e.g. `0 0 4 * * *` for 04:00 daily"
            ))
        } else {
            croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Required)
                .build()
                .parse(schedule)
                .err()
                .map(|e| {
                    let e = e.to_string();
                    format!(
                        "`{schedule}` is not a valid cron expression: {}",
                        e.trim_end_matches('.')
                    )
                })
        };
        if let Some(message) = problem {
            let span = self.key_span("schedule");
            self.error(span, "schedule", message);
        }
    }

    /// Checks what needs every step, names, sources and sinks; orders the steps.
    fn link_steps(
        &mut self,
        raw: Vec<RawStep>,
        all_ids: &BTreeSet<String>,
    ) -> Option<Vec<(Step, Spans)>> {
        let ids: BTreeSet<&str> = all_ids.iter().map(String::as_str).collect();
        let outputs: BTreeMap<&str, ArtifactKind> = raw
            .iter()
            .map(|s| (s.id.as_str(), s.spec.output()))
            .collect();
        let mut errors = Vec::new();
        for step in &raw {
            let path = format!("steps.{}", step.id);
            let needs_span = step
                .spans
                .get("needs")
                .cloned()
                .unwrap_or(step.id_span.clone());
            let mut seen = BTreeSet::new();
            for need in &step.common.needs {
                let message = if need == &step.id {
                    Some(format!("needs `{need}`, which is the step itself"))
                } else if !ids.contains(need.as_str()) {
                    Some(format!(
                        "needs `{need}`, which is not a step{}",
                        suggest(need, ids.iter().copied())
                    ))
                } else if !seen.insert(need) {
                    Some(format!("needs `{need}` twice"))
                } else {
                    None
                };
                if let Some(m) = message {
                    errors.push((needs_span.clone(), join(&path, "needs"), m));
                }
            }
            // A need that failed to parse has no known output: its own error suffices.
            let needs_parsed = step
                .common
                .needs
                .iter()
                .all(|n| outputs.contains_key(n.as_str()));
            if let Some(inputs) = step.spec.inputs().filter(|_| needs_parsed) {
                for m in input_problems(step, inputs, &outputs) {
                    errors.push((needs_span.clone(), join(&path, "needs"), m));
                }
            }
            let need_kinds = step
                .common
                .needs
                .iter()
                .filter_map(|n| raw.iter().find(|s| &s.id == n))
                .map(|s| (s.id.as_str(), s.spec.kind()))
                .collect();
            self.check_spec(&path, step, &need_kinds, &mut errors);
        }
        for (span, key, message) in errors {
            self.error(span, key, message);
        }
        self.check_cycles(&raw);
        if !self.diags.is_empty() {
            return None;
        }
        Some(
            dag::order(&edges(&raw))
                .into_iter()
                .map(|i| {
                    let s = &raw[i];
                    (
                        Step {
                            id: s.id.clone(),
                            needs: s.common.needs.clone(),
                            retries: s.common.retries,
                            timeout: s.common.timeout,
                            description: s.common.description.clone(),
                            spec: s.spec.clone(),
                        },
                        s.spans.clone(),
                    )
                })
                .collect(),
        )
    }

    fn check_spec(
        &self,
        path: &str,
        step: &RawStep,
        need_kinds: &BTreeMap<&str, &'static str>,
        errors: &mut Vec<(Range<usize>, String, String)>,
    ) {
        let span_of = |key: &str| step.spans.get(key).cloned().unwrap_or(step.id_span.clone());
        for (key, message) in common_problems(&step.common) {
            errors.push((span_of(key), join(path, key), message));
        }
        // Values that parse but cannot run (zero factors, infinite alpha, a zero
        // timeout …) are refused here, with the line, instead of failing or
        // hanging at run time.
        let cx = CheckContext {
            settings: self.settings,
            needs: &step.common.needs,
            need_kinds,
        };
        for p in step.spec.check(&cx) {
            let first = p.key.split('.').next().unwrap_or_default();
            errors.push((span_of(first), join(path, &p.key), p.message));
        }
    }

    /// Reports each cycle of `needs` once, as `a` → `b` → `a`.
    fn check_cycles(&mut self, raw: &[RawStep]) {
        let edges = edges(raw);
        for cycle in dag::cycles(&edges) {
            let first = &raw[cycle[0]];
            let names: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&cycle[0]))
                .map(|&i| format!("`{}`", raw[i].id))
                .collect();
            let span = first
                .spans
                .get("needs")
                .cloned()
                .unwrap_or(first.id_span.clone());
            self.error(
                span,
                format!("steps.{}.needs", first.id),
                format!("needs form a cycle: {}", names.join(" → ")),
            );
        }
    }
}
/// A step's table split for [`StepSpec::read`]: the kind's own keys and, for a
/// kind that takes a model, the model's keys.
struct TableReader<'c, 'a> {
    checker: &'c mut Checker<'a>,
    path: &'c str,
    allowed: &'c [&'c str],
    what: &'c str,
    own: Option<Spanned<DeTable<'a>>>,
    model: Option<Spanned<DeTable<'a>>>,
}

impl ReadTable for TableReader<'_, '_> {
    fn own<T: DeserializeOwned>(&mut self) -> Option<T> {
        let table = self.own.take()?;
        self.checker
            .deserialize_table(self.path, table, self.allowed, self.what)
    }
}

impl SpecReader for TableReader<'_, '_> {
    /// The model the table names, read from the rest of its keys.
    fn model(&mut self) -> Option<ModelSpec> {
        let table = self.model.take()?;
        let span = table.span();
        let mut table = table.into_inner();
        let model = table
            .get("model")
            .and_then(|m| m.get_ref().as_str())
            .unwrap_or_default()
            .to_string();
        table.remove("model");
        // A reader of its own, so the kind's own keys stay readable in any order.
        let mut reader = TableReader {
            checker: &mut *self.checker,
            path: self.path,
            allowed: self.allowed,
            what: self.what,
            own: Some(Spanned::new(span, table)),
            model: None,
        };
        ModelSpec::read(&model, &mut reader)
    }
}

/// The most retries and the longest timeout a step may set.
pub const MAX_RETRIES: u32 = 100;
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `(key, message)` for every common key of a step outside its bounds.
fn common_problems(common: &CommonSpec) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if common.retries > MAX_RETRIES {
        problems.push((
            "retries",
            format!("must be at most {MAX_RETRIES}, not {}", common.retries),
        ));
    }
    if let Some(t) = common.timeout
        && (t.is_zero() || t > MAX_STEP_TIMEOUT)
    {
        problems.push((
            "timeout",
            format!(
                "must be more than 0s and at most 7 days, not {}",
                humantime::format_duration(t)
            ),
        ));
    }
    problems
}

/// What is wrong with the artifacts a step would read from its needs.
fn input_problems(
    step: &RawStep,
    inputs: &[(ArtifactKind, usize, usize)],
    outputs: &BTreeMap<&str, ArtifactKind>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let kinds: Vec<(&str, ArtifactKind)> = step
        .common
        .needs
        .iter()
        .filter_map(|n| outputs.get(n.as_str()).map(|k| (n.as_str(), *k)))
        .collect();
    for (name, kind) in &kinds {
        if !inputs.iter().any(|(k, _, _)| k == kind) {
            let accepted: Vec<&str> = inputs.iter().map(|(k, _, _)| k.as_str()).collect();
            problems.push(format!(
                "`{name}` gives `{}`, which a `{}` step does not read; it reads {}",
                kind.as_str(),
                step.spec.kind(),
                one_of(&accepted)
            ));
        }
    }
    if let Some(more) = step.spec.input_problems(&kinds) {
        problems.extend(more);
        return problems;
    }
    for (kind, min, max) in inputs {
        let count = kinds.iter().filter(|(_, k)| k == kind).count();
        if count < *min {
            problems.push(format!(
                "a `{}` step needs a step that gives `{}`",
                step.spec.kind(),
                kind.as_str()
            ));
        } else if count > *max {
            problems.push(format!(
                "a `{}` step reads at most {max} `{}` input, not {count}",
                step.spec.kind(),
                kind.as_str()
            ));
        }
    }
    problems
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `needs` by step index: the edges of the DAG (a step needing itself or an
/// unknown step is reported elsewhere and left out here).
fn edges(raw: &[RawStep]) -> Vec<Vec<usize>> {
    let index: BTreeMap<&str, usize> = raw
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    raw.iter()
        .map(|s| {
            s.common
                .needs
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .filter(|&j| raw[j].id != s.id)
                .collect()
        })
        .collect()
}

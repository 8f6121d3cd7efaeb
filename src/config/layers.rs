//! The settings layers (`config/default.toml`, `config/$RECPIPE_ENV.toml`,
//! `RECPIPE__SECTION__KEY` variables) merged into one TOML table that remembers
//! where each key was set, so every settings error names its file and line (or
//! its environment variable).
//!
//! Invariant: no message built here quotes a source line. A TOML syntax error is
//! reported as `file:line:col: invalid TOML: <what>`, never with the snippet the
//! parser would show, because the line may hold a DSN with its password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::diagnostic::{Diagnostic, Diagnostics, line_col, one_of, suggest};
use super::redact::redact;

/// Where a key was set: a file position, or an environment variable (line 0).
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    line: usize,
    col: usize,
}

/// Keys that are text whatever their value looks like: `RECPIPE__API__TOKEN=1234`
/// is a token, not a number.
const TEXT_KEYS: &[&str] = &[
    "token",
    "dsn",
    "listen",
    "project",
    "dataset",
    "location",
    "endpoint",
    "schema",
    "path",
    "state_dir",
    "pipelines_dir",
    "key_file",
    "ca_file",
];

/// The merged layers and the problems found so far.
pub struct Layers {
    merged: Table,
    origins: BTreeMap<String, Origin>,
    /// Where keys set nowhere default from, for messages about defaults.
    default_file: PathBuf,
    pub diags: Diagnostics,
}

impl Layers {
    pub fn new(default_file: &Path) -> Self {
        Self {
            merged: Table::new(),
            origins: BTreeMap::new(),
            default_file: default_file.to_path_buf(),
            diags: Diagnostics::default(),
        }
    }

    /// Merges the TOML file at `path` over what is there; a missing file is an
    /// error only when `required`.
    pub fn file(&mut self, path: &Path, required: bool) {
        let src = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return,
            Err(e) => {
                self.diags.push(Diagnostic::file(
                    path,
                    "",
                    format!("cannot read the file: {e}"),
                ));
                return;
            }
        };
        let (root, errors) = DeTable::parse_recoverable(&src);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                // The message only: the parser's rendering quotes the line.
                let message = format!("invalid TOML: {}", redact(e.message().trim()));
                self.diags
                    .push(Diagnostic::at(path, &src, span, "", message));
            }
            return;
        }
        let mut origins = BTreeMap::new();
        record_origins(path, &src, "", root.get_ref(), &mut origins);
        let table: Table = match src.parse() {
            Ok(t) => t,
            Err(e) => {
                let message = format!("invalid TOML: {}", redact(e.message().trim()));
                let span = e.span().unwrap_or(0..0);
                self.diags
                    .push(Diagnostic::at(path, &src, span, "", message));
                return;
            }
        };
        for key in origins.keys() {
            self.forget_below(key);
        }
        self.origins.extend(origins);
        merge(&mut self.merged, table);
    }

    /// Merges `RECPIPE__SECTION__KEY=value` variables over the files.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("RECPIPE__"))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name["RECPIPE__".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                self.diags.push(Diagnostic::file(
                    Path::new(&format!("${name}")),
                    "",
                    "not a settings key: write `RECPIPE__SECTION__KEY`",
                ));
                continue;
            }
            let key = path.join(".");
            let value = self.typed(&key, &raw);
            if let Err(message) = set(&mut self.merged, &path, value) {
                let origin = Path::new(&format!("${name}")).to_path_buf();
                self.diags.push(Diagnostic::file(&origin, key, message));
                continue;
            }
            self.forget_below(&key);
            self.origins.insert(
                key,
                Origin {
                    file: format!("${name}").into(),
                    line: 0,
                    col: 0,
                },
            );
        }
    }

    /// An environment value typed as the value it replaces, else as it reads.
    fn typed(&self, key: &str, raw: &str) -> Value {
        let last = key.rsplit('.').next().unwrap_or(key);
        let existing = get(&self.merged, key);
        match existing {
            Some(Value::Integer(_)) => raw.parse().map(Value::Integer).ok(),
            Some(Value::Boolean(_)) => raw.parse().map(Value::Boolean).ok(),
            Some(Value::Float(_)) => raw.parse().map(Value::Float).ok(),
            Some(_) => None,
            None if TEXT_KEYS.contains(&last) => None,
            None => raw
                .parse()
                .map(Value::Integer)
                .or_else(|_| raw.parse().map(Value::Boolean))
                .ok(),
        }
        .unwrap_or_else(|| Value::String(raw.to_string()))
    }

    /// Drops the origins of keys below `key`: a later layer replaced them.
    fn forget_below(&mut self, key: &str) {
        let prefix = format!("{key}.");
        self.origins.retain(|k, _| !k.starts_with(&prefix));
    }

    /// Takes the merged table (the caller deserializes it section by section).
    pub fn take(&mut self) -> Table {
        std::mem::take(&mut self.merged)
    }

    /// A diagnostic about `key`, placed where it (or the nearest table above it)
    /// was set; keys set nowhere point at the default file.
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let message: String = message.into();
        let mut probe = key;
        let origin = loop {
            if let Some(o) = self.origins.get(probe) {
                break Some(o.clone());
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => break None,
            }
        };
        let origin = origin.unwrap_or(Origin {
            file: self.default_file.clone(),
            line: 0,
            col: 0,
        });
        self.diags.push(Diagnostic {
            file: origin.file,
            line: origin.line,
            col: origin.col,
            key: key.to_string(),
            message: redact(&message).into_owned(),
        });
    }

    /// Reports every key of `table` not in `allowed` (with a suggestion), then
    /// deserializes the rest. serde stops at its first error, so the key it
    /// concerns is found (the one whose removal makes that error go away),
    /// reported where it was set and dropped, and the rest tried again: every bad
    /// value is reported in one pass.
    pub fn deserialize<T: DeserializeOwned>(
        &mut self,
        path: &str,
        mut table: Table,
        allowed: &[&str],
        what: &str,
    ) -> Option<T> {
        let unknown: Vec<String> = table
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            table.remove(&k);
            let message = format!(
                "unknown key{}; {what} accepts {}",
                suggest(&k, allowed.iter().copied()),
                one_of(allowed)
            );
            self.error(&join(path, &k), message);
        }
        let mut dropped: Vec<String> = Vec::new();
        loop {
            let e = match T::deserialize(Value::Table(table.clone())) {
                Ok(v) => return Some(v),
                Err(e) => polish(e.message().trim()),
            };
            if let Some(field) = missing_field(&e) {
                if !dropped.contains(&field) {
                    self.error(&join(path, &field), format!("missing; {what} needs it"));
                }
                return None;
            }
            let culprit = table.keys().find(|k| {
                let mut without = table.clone();
                without.remove(k.as_str());
                match T::deserialize(Value::Table(without)) {
                    Ok(_) => true,
                    // Without the culprit the error goes away or moves on;
                    // without an innocent required key it becomes "missing".
                    Err(e2) => {
                        let m = polish(e2.message().trim());
                        match missing_field(&m) {
                            Some(field) => field == **k,
                            None => m != e,
                        }
                    }
                }
            });
            match culprit.cloned() {
                Some(k) => {
                    self.error(&join(path, &k), e);
                    table.remove(&k);
                    dropped.push(k);
                }
                None => {
                    self.error(path, e);
                    return None;
                }
            }
        }
    }
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

fn join(path: &str, key: &str) -> String {
    match path {
        "" => key.to_string(),
        p => format!("{p}.{key}"),
    }
}

/// serde's wording made readable: accepted values listed, Rust types named.
fn polish(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once('`')
    {
        let accepted: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return format!(
            "unknown value `{value}`{}; accepted: {}",
            suggest(value, accepted.iter().copied()),
            one_of(&accepted)
        );
    }
    let mut out = message.to_string();
    for (rust, plain) in [
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected a string", "expected text in quotes"),
    ] {
        if let Some(stripped) = out.strip_suffix(rust) {
            out = format!("{stripped}{plain}");
        }
    }
    out
}

/// The position of every key (and table header) in a parsed file.
fn record_origins(
    file: &Path,
    src: &str,
    path: &str,
    table: &DeTable<'_>,
    out: &mut BTreeMap<String, Origin>,
) {
    for (key, value) in table.iter() {
        let full = join(path, key.get_ref());
        let (line, col) = line_col(src, key.span().start);
        out.insert(
            full.clone(),
            Origin {
                file: file.to_path_buf(),
                line,
                col,
            },
        );
        if let DeValue::Table(inner) = value.get_ref() {
            record_origins(file, src, &full, inner, out);
        }
    }
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn get<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut at = table;
    for p in parents {
        let next = at
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        at = next
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is a value in the files, not a table"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_take_the_type_they_replace() {
        let mut layers = Layers::new(Path::new("default.toml"));
        let mut t = Table::new();
        t.insert("n".into(), Value::Integer(1));
        layers.merged.insert("s".into(), Value::Table(t));
        assert_eq!(layers.typed("s.n", "7"), Value::Integer(7));
        assert_eq!(
            layers.typed("api.token", "1234"),
            Value::String("1234".into())
        );
        assert_eq!(layers.typed("daemon.flag", "true"), Value::Boolean(true));
    }

    #[test]
    fn deep_merge_keeps_sibling_keys() {
        let mut a: Table = "[s]\nx = 1\ny = 2\n".parse().unwrap();
        merge(&mut a, "[s]\ny = 3\n".parse().unwrap());
        assert_eq!(a.to_string(), "[s]\nx = 1\ny = 3\n");
    }
}

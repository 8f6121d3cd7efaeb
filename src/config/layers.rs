//! The settings layers (`config/default.toml`, `config/$RECPIPE_ENV.toml`,
//! `RECPIPE__SECTION__KEY` variables), merged by the `config` crate into one
//! TOML table. Each layer is parsed here first, to remember where each key was
//! set, so every settings error names its file and line (or its environment
//! variable).
//!
//! Invariant: no message built here quotes a source line. A TOML syntax error is
//! reported as `file:line:col: invalid TOML: <what>`, never with the snippet the
//! parser would show, because the line may hold a DSN with its password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::ConfigBuilder;
use config::builder::DefaultState;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::diagnostic::{Diagnostic, Diagnostics, line_col, one_of, polish, suggest};
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

/// The layers and the problems found so far. The `config` crate merges the
/// layers; this type checks each one first and remembers where keys were set.
pub struct Layers {
    builder: ConfigBuilder<DefaultState>,
    /// Environment values that stay text (see [`TEXT_KEYS`]) by settings key.
    env_text: BTreeMap<String, String>,
    origins: BTreeMap<String, Origin>,
    /// Where keys set nowhere default from, for messages about defaults.
    default_file: PathBuf,
    pub diags: Diagnostics,
}

impl Layers {
    pub fn new(default_file: &Path) -> Self {
        Self {
            builder: config::Config::builder(),
            env_text: BTreeMap::new(),
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
        self.layer(path, &src);
    }

    /// Merges the TOML text `src` of the file at `path` over what is there.
    fn layer(&mut self, path: &Path, src: &str) {
        let (root, mut errors) = DeTable::parse_recoverable(src);
        if errors.is_empty() {
            // Values are checked here (a number too large, say), where the error
            // has a position; the `config` crate's own parse would lose it.
            errors.extend(src.parse::<Table>().err());
        }
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                // The message only: the parser's rendering quotes the line.
                let message = format!("invalid TOML: {}", redact(e.message().trim()));
                self.diags
                    .push(Diagnostic::at(path, src, span, "", message));
            }
            return;
        }
        let mut origins = BTreeMap::new();
        record_origins(path, src, "", root.get_ref(), &mut origins);
        for key in origins.keys() {
            self.forget_below(key);
        }
        self.origins.extend(origins);
        let layer = config::File::from_str(src, config::FileFormat::Toml);
        self.builder = std::mem::take(&mut self.builder).add_source(layer);
    }

    /// Merges `RECPIPE__SECTION__KEY=value` variables over the files.
    pub fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        // Files only; a merge error is reported once, by `take`.
        let files = self.merged().unwrap_or_default();
        let mut vars: Vec<_> = vars.into_iter().collect();
        vars.sort();
        let mut accepted = config::Map::new();
        let mut keys: Vec<String> = Vec::new();
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix("RECPIPE__") else {
                continue;
            };
            let origin = PathBuf::from(format!("${name}"));
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                self.diags.push(Diagnostic::file(
                    &origin,
                    "",
                    "not a settings key: write `RECPIPE__SECTION__KEY`",
                ));
                continue;
            }
            let key = path.join(".");
            if let Some(parent) = (1..path.len())
                .map(|n| path[..n].join("."))
                .find(|p| get(&files, p).is_some_and(|v| !v.is_table()))
            {
                let message = format!("`{parent}` is a value in the files, not a table");
                self.diags.push(Diagnostic::file(&origin, key, message));
                continue;
            }
            // `RECPIPE__A=1` beside `RECPIPE__A__B=2`: `a` cannot be both.
            if let Some(other) = keys
                .iter()
                .find(|k| key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}.")))
            {
                let message = format!(
                    "`{other}` is set by another variable: a key cannot be both a value and a table"
                );
                self.diags.push(Diagnostic::file(&origin, key, message));
                continue;
            }
            keys.push(key.clone());
            // `config` parses numbers and booleans; a value that is text
            // whatever it looks like (`RECPIPE__API__TOKEN=1234`) is put back.
            let last = path.last().map(String::as_str).unwrap_or_default();
            if TEXT_KEYS.contains(&last) || get(&files, &key).is_some_and(Value::is_str) {
                self.env_text.insert(key.clone(), raw.clone());
            }
            self.forget_below(&key);
            self.origins.insert(
                key,
                Origin {
                    file: origin,
                    line: 0,
                    col: 0,
                },
            );
            accepted.insert(name, raw);
        }
        let env = config::Environment::with_prefix("RECPIPE")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(accepted));
        self.builder = std::mem::take(&mut self.builder).add_source(env);
    }

    /// The layers merged so far, as one table.
    fn merged(&self) -> Result<Table, config::ConfigError> {
        self.builder
            .build_cloned()
            .and_then(|c| c.try_deserialize::<Table>())
    }

    /// Drops the origins of keys below `key`: a later layer replaced them.
    fn forget_below(&mut self, key: &str) {
        let prefix = format!("{key}.");
        self.origins.retain(|k, _| !k.starts_with(&prefix));
    }

    /// The merged table (the caller deserializes it section by section).
    pub fn take(&mut self) -> Table {
        let mut merged = self.merged().unwrap_or_else(|e| {
            let message = format!("cannot merge the settings: {}", redact(&e.to_string()));
            let default_file = self.default_file.clone();
            self.diags
                .push(Diagnostic::file(&default_file, "", message));
            Table::new()
        });
        for (key, raw) in std::mem::take(&mut self.env_text) {
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            // The path was checked against the files in `env`.
            let _ = set(&mut merged, &path, Value::String(raw));
        }
        merged
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
        // A table set nowhere itself (`RECPIPE__NOSUCH__X` makes `nosuch`) is
        // placed where its first key was set.
        let below = || {
            let prefix = format!("{key}.");
            let (k, o) = self.origins.range(prefix.clone()..).next()?;
            k.starts_with(&prefix).then(|| o.clone())
        };
        let origin = origin.or_else(below).unwrap_or(Origin {
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
            // An unknown value deep in a table (`tables.items.format = "xlsx"`)
            // is reported at its own key, not at the key whose removal hides it.
            if let Some(deep) = unknown_value(&e).and_then(|v| find_string(&table, v)) {
                self.error(&join(path, &deep), e);
                let top = deep.split('.').next().unwrap_or(&deep).to_string();
                table.remove(&top);
                dropped.push(top);
                continue;
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

/// The value of a polished "unknown value `x`" message.
fn unknown_value(message: &str) -> Option<&str> {
    message.strip_prefix("unknown value `")?.split('`').next()
}

/// The dotted path of the first text value equal to `value` in `table`.
fn find_string(table: &Table, value: &str) -> Option<String> {
    table.iter().find_map(|(k, v)| match v {
        Value::String(s) if s == value => Some(k.clone()),
        Value::Table(inner) => find_string(inner, value).map(|p| format!("{k}.{p}")),
        _ => None,
    })
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

    fn merged(files: &[&str], env: &[(&str, &str)]) -> Table {
        let mut layers = Layers::new(Path::new("default.toml"));
        for (n, src) in files.iter().enumerate() {
            layers.layer(Path::new(&format!("{n}.toml")), src);
        }
        layers.env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let table = layers.take();
        assert!(layers.diags.is_empty(), "{:?}", layers.diags);
        table
    }

    #[test]
    fn environment_values_take_the_type_they_replace() {
        let t = merged(
            &["[s]\nn = 1\nname = \"x\"\n"],
            &[
                ("RECPIPE__S__N", "7"),
                ("RECPIPE__S__NAME", "2024"),
                ("RECPIPE__API__TOKEN", "1234"),
                ("RECPIPE__DAEMON__FLAG", "true"),
            ],
        );
        assert_eq!(t["s"]["n"], Value::Integer(7));
        assert_eq!(t["s"]["name"], Value::String("2024".into()));
        assert_eq!(t["api"]["token"], Value::String("1234".into()));
        assert_eq!(t["daemon"]["flag"], Value::Boolean(true));
    }

    #[test]
    fn deep_merge_keeps_sibling_keys() {
        let t = merged(&["[s]\nx = 1\ny = 2\n", "[s]\ny = 3\n"], &[]);
        assert_eq!(t.to_string(), "[s]\nx = 1\ny = 3\n");
    }

    #[test]
    fn a_key_cannot_be_a_value_and_a_table() {
        let mut layers = Layers::new(Path::new("default.toml"));
        layers.env([
            ("RECPIPE__A__B".to_string(), "2".to_string()),
            ("RECPIPE__A".to_string(), "1".to_string()),
        ]);
        let _ = layers.take();
        assert_eq!(layers.diags.len(), 1, "{:?}", layers.diags);
    }
}

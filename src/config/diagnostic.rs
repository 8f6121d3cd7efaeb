//! Diagnostics for bad input: one error with the file, line, column and key path it
//! concerns, rendered as `file:line:col: key.path: message`.
//!
//! Validation collects every diagnostic it finds instead of stopping at the first,
//! so an operator fixes a broken pipeline in one pass.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column; 0 when the problem concerns the whole file.
    pub line: usize,
    pub col: usize,
    /// Dotted key path such as `steps.als.needs`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at byte offset `span.start` of `src`.
    pub fn at(
        file: &Path,
        src: &str,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = line_col(src, span.start);
        Self {
            file: file.to_path_buf(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A diagnostic about the whole file (unreadable, duplicate name …).
    pub fn file(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every diagnostic of a validation pass, sorted by file, line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Sorts by position and drops exact repeats.
    pub fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.key, &a.message)
                .cmp(&(&b.file, b.line, b.col, &b.key, &b.message))
        });
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// 1-based (line, column) of byte `offset`; the column counts characters.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

/// `` (did you mean `x`?)`` for the closest candidate, or an empty string.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// `` `a`, `b` or `c` `` for messages that say what is accepted.
pub fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// serde's wording made readable: accepted values listed, Rust types named.
pub fn polish(message: &str) -> String {
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
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a string", "expected text in quotes"),
    ] {
        if let Some(stripped) = out.strip_suffix(rust) {
            out = format!("{stripped}{plain}");
        }
    }
    out
}

/// An unknown source or sink name, with the configured ones.
pub fn unknown_name<'k>(what: &str, name: &str, known: impl Iterator<Item = &'k String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    if known.is_empty() {
        format!("unknown {what} `{name}`; no {what}s are configured in config/")
    } else {
        format!(
            "unknown {what} `{name}`{}; configured {what}s: {}",
            suggest(name, known.iter().copied()),
            one_of(&known)
        )
    }
}

/// `[a-z][a-z0-9_]*`, plus `-` when `dash` (pipeline names).
pub fn is_identifier(s: &str, dash: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (dash && c == '-'))
        && s.len() <= 64
}

/// A table name every store accepts unquoted, with room for a `__staging_<run>` suffix.
pub fn is_table_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

/// Run ids become folder names and table suffixes: `[A-Za-z0-9_-]`, 1–64 chars.
pub fn is_valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
        assert_eq!(line_col(src, 1000), (3, 1));
    }

    #[test]
    fn suggestion_picks_closest() {
        assert_eq!(
            suggest("alss", ["als", "ratings"]),
            " (did you mean `als`?)"
        );
        assert_eq!(suggest("zzz", ["als", "ratings"]), "");
    }

    #[test]
    fn one_of_joins() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }

    #[test]
    fn display_without_position() {
        let d = Diagnostic::file(Path::new("p.toml"), "", "cannot read file");
        assert_eq!(d.to_string(), "p.toml: cannot read file");
    }

    #[test]
    fn serde_messages_are_polished() {
        assert_eq!(
            polish("unknown variant `forbidd`, expected one of `forbid`, `replace`, `allow`"),
            "unknown value `forbidd` (did you mean `forbid`?); accepted: `forbid`, `replace` or `allow`"
        );
        assert_eq!(
            polish("invalid type: string \"ten\", expected usize"),
            "invalid type: string \"ten\", expected a whole number ≥ 0"
        );
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("als_2", false));
        assert!(!is_identifier("Als", false));
        assert!(!is_identifier("mail-jobs", false));
        assert!(is_identifier("mail-jobs", true));
        assert!(!is_identifier("", true));
        assert!(is_table_name("User_recs"));
        assert!(!is_table_name("user recs"));
        assert!(!is_table_name("x; drop table y"));
    }
}

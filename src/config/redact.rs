//! Removing secrets from text before it leaves the process: errors, log lines,
//! API answers, pages and the run history.
//!
//! Two nets, because either alone misses something: patterns catch a password
//! written where one is expected (`password=…` in a libpq DSN, `user:pass@` in a
//! URL), whatever its value; the registered values catch a known secret (the API
//! token, a DSN's password) wherever a driver or a parser echoes it.
//!
//! Invariant: [`redact`] is idempotent and never lengthens a secret's exposure:
//! every byte of a match is replaced by the one marker [`MASK`].

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not registered: replacing `ab` everywhere would
/// garble every message, and so short a value is no secret worth the name.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `value` so that [`redact`] removes it from any text, and the
/// password inside it when it is a DSN.
pub fn register(value: &str) {
    let mut found = vec![value.to_string()];
    found.extend(dsn_password(value));
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for s in found {
        if s.len() >= MIN_SECRET_LEN && s != MASK && !secrets.contains(&s) {
            secrets.push(s);
        }
    }
    // Longest first, so a DSN is replaced whole before its password is.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret and every password-looking part masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
    }
    if let Some(masked) = mask_key_values(&out) {
        out = Cow::Owned(masked);
    }
    if let Some(masked) = mask_url_passwords(&out) {
        out = Cow::Owned(masked);
    }
    out
}

/// The password of a libpq `key=value` DSN or a `scheme://user:pass@host` URL.
fn dsn_password(dsn: &str) -> Option<String> {
    if let Some(at) = find_key_value(dsn, 0) {
        let (start, end) = at;
        return Some(unquote(&dsn[start..end]));
    }
    let rest = &dsn[dsn.find("://")? + 3..];
    let userinfo = &rest[..rest.find('@')?];
    if userinfo.contains('/') {
        return None;
    }
    userinfo.split_once(':').map(|(_, p)| p.to_string())
}

fn unquote(v: &str) -> String {
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v)
        .replace("\\'", "'")
}

/// Keys whose value is a secret in the formats we meet (libpq, URLs' queries).
const SECRET_KEYS: &[&str] = &["password", "passwd", "pwd", "token", "secret"];

/// The byte range of the first secret value at or after `from`: after
/// `password=` (any case, spaces around `=` allowed), up to the next space,
/// quote, `&`, `;` or `,`, or a whole `'quoted value'`.
fn find_key_value(text: &str, from: usize) -> Option<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<(usize, usize)> = None;
    for key in SECRET_KEYS {
        let mut search = from;
        while let Some(i) = lower[search..].find(key) {
            let key_start = search + i;
            search = key_start + key.len();
            // A whole word: `mypassword=` is someone else's key.
            let word_start = key_start == 0
                || !lower.as_bytes()[key_start - 1].is_ascii_alphanumeric()
                    && lower.as_bytes()[key_start - 1] != b'_';
            let after = &text[search..];
            // `"password": "…"` (JSON) takes a colon; prose such as
            // "api.token: must be set" does not, so a bare colon is no separator.
            let json_key = after.starts_with('"');
            let trimmed = after.trim_start_matches([' ', '"', '\'']);
            let Some(value) = trimmed
                .strip_prefix('=')
                .or_else(|| json_key.then(|| trimmed.strip_prefix(':')).flatten())
            else {
                continue;
            };
            if !word_start {
                continue;
            }
            let value = value.trim_start_matches(' ');
            let value = value.strip_prefix('"').unwrap_or(value);
            let start = text.len() - value.len();
            let len = if let Some(q) = value.strip_prefix('\'') {
                // libpq quoting: 'it''s' is not used, \' is.
                let mut end = None;
                let mut escaped = false;
                for (j, c) in q.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '\'' if !escaped => {
                            end = Some(j + 2);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                end.unwrap_or(value.len())
            } else {
                value
                    .find([' ', '\t', '\n', '"', '\'', '&', ';', ',', '`', ')'])
                    .unwrap_or(value.len())
            };
            if len == 0 || &text[start..start + len] == MASK {
                continue;
            }
            if best.is_none_or(|(s, _)| start < s) {
                best = Some((start, start + len));
            }
            break;
        }
    }
    best
}

fn mask_key_values(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    while let Some((start, end)) = find_key_value(text, last) {
        out.push_str(&text[last..start]);
        out.push_str(MASK);
        last = end;
    }
    (last > 0).then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// `scheme://user:pass@host` → `scheme://user:***@host`.
fn mask_url_passwords(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    let mut search = 0;
    while let Some(i) = text[search..].find("://") {
        let auth_start = search + i + 3;
        search = auth_start;
        let authority_end = text[auth_start..]
            .find(['/', ' ', '\t', '\n', '"', '\'', '`', '?', '#'])
            .map_or(text.len(), |j| auth_start + j);
        let authority = &text[auth_start..authority_end];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let Some(colon) = authority[..at].find(':') else {
            continue;
        };
        let (start, end) = (auth_start + colon + 1, auth_start + at);
        if start == end || &text[start..end] == MASK {
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str(MASK);
        last = end;
        search = authority_end;
    }
    (last > 0).then(|| {
        out.push_str(&text[last..]);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_libpq_passwords_in_any_form() {
        assert_eq!(
            redact("host=db user=app password=hunter22 dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact("dsn = \"host=db password = 'a b\\'c' port=5\""),
            "dsn = \"host=db password = *** port=5\""
        );
        assert_eq!(redact("PASSWORD=x1&y"), "PASSWORD=***&y");
        assert_eq!(redact("mypassword=keep"), "mypassword=keep");
        assert_eq!(redact(r#"{"password": "p4ss"}"#), r#"{"password": "***"}"#);
        assert_eq!(redact("api.token: must be set"), "api.token: must be set");
    }

    #[test]
    fn masks_url_userinfo() {
        assert_eq!(
            redact("cannot reach postgresql://app:s3cr3t@db:5432/x (refused)"),
            "cannot reach postgresql://app:***@db:5432/x (refused)"
        );
        assert_eq!(
            redact("https://example.com/a:b@c"),
            "https://example.com/a:b@c"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn masks_registered_values_and_is_idempotent() {
        register("host=h user=u password=Zq9-registered");
        register("tok-REGISTERED-123");
        register("ab");
        let text = "failed: Zq9-registered; bearer tok-REGISTERED-123; ab";
        let once = redact(text).into_owned();
        assert_eq!(once, "failed: ***; bearer ***; ab");
        assert_eq!(redact(&once), once);
    }

    #[test]
    fn finds_the_password_of_a_dsn() {
        assert_eq!(
            dsn_password("host=h password='x y'").as_deref(),
            Some("x y")
        );
        assert_eq!(
            dsn_password("postgresql://u:p%40ss@h/db").as_deref(),
            Some("p%40ss")
        );
        assert_eq!(dsn_password("host=h user=u"), None);
    }
}

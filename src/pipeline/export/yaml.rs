//! A JSON value written as block-style YAML, as Kubernetes manifests are
//! written by hand. Strings that YAML could read as anything but the same
//! string (numbers, booleans, `{{…}}` templates, anything with `: ` or `#`)
//! are double-quoted with JSON's escapes, which YAML reads the same way.

use serde_json::Value;

pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(_) | Value::Array(_) => block(v, 0, &mut out),
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
    out
}

/// A map or list whose lines start at `indent`.
fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&string(k));
                out.push(':');
                value_after(v, indent + 2, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                match item {
                    // The map's first key goes on the dash's line, the rest under it.
                    Value::Object(map) if !map.is_empty() => {
                        let mut inner = String::new();
                        block(item, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(&inner[indent + 2..]);
                    }
                    _ => value_after(item, indent + 2, out),
                }
            }
        }
        _ => unreachable!("block() takes maps and lists"),
    }
}

/// What follows `key:` or `-`: a scalar on the same line, or a block below.
fn value_after(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            block(v, indent, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block(v, indent, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// Plain when YAML reads it back as this string, else double-quoted.
fn string(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_lists_and_quoting() {
        let v = json!({
            "kind": "Workflow",
            "spec": {
                "args": ["step", "{{inputs.parameters.step}}", "--limit", "3", "yes"],
                "tasks": [{"name": "a", "dependencies": []}, {"name": "b", "dependencies": ["a"]}],
                "limit": 3,
                "empty": {},
                "text": "a: b # c\n",
            },
        });
        insta::assert_snapshot!(to_yaml(&v), @r#"
        kind: Workflow
        spec:
          args:
            - step
            - "{{inputs.parameters.step}}"
            - "--limit"
            - "3"
            - "yes"
          empty: {}
          limit: 3
          tasks:
            - dependencies: []
              name: a
            - dependencies:
                - a
              name: b
          text: "a: b # c\n"
        "#);
    }
}

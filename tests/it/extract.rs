//! The extract step alone (`recpipe step extract`): bound parameters, and the
//! data checks an extracted table must pass.

use crate::common::{project, recpipe, text};

fn extract(
    project: &std::path::Path,
    sql: &str,
    role: &str,
    extra: &[&str],
) -> std::process::Output {
    std::fs::write(project.join("q.sql"), sql).unwrap();
    let items = project.join("data/example/items.parquet");
    let table = format!("items={}", items.display());
    let q = project.join("q.sql");
    let out = project.join("out.parquet");
    let mut args = vec![
        "step",
        "extract",
        "--table",
        &table,
        "--sql",
        q.to_str().unwrap(),
        "--role",
        role,
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    recpipe(project, &args, &[])
}

fn rows(out: &std::process::Output) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rows"].as_u64().unwrap()
}

#[test]
fn params_are_bound_not_pasted() {
    let dir = project();
    let sql = "SELECT item_id FROM items WHERE status = $status";
    let ok = extract(dir.path(), sql, "filter", &["--param", "status=closed"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(rows(&ok) > 0);
    // Pasted into the text, this would match every row (or drop a table).
    for attack in ["closed' OR '1'='1", "x'; DROP TABLE items; --"] {
        let param = format!("status={attack}");
        let out = extract(dir.path(), sql, "filter", &["--param", &param]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(rows(&out), 0, "{attack} was treated as SQL");
    }
}

#[test]
fn empty_interactions_are_an_error() {
    let dir = project();
    let out = extract(
        dir.path(),
        "SELECT item_id AS user_id, item_id FROM items WHERE status = 'none'",
        "interactions",
        &[],
    );
    // Bad SQL or data is invalid input: exit 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the query returned no rows"),
        "{}",
        text(&out)
    );
}

#[test]
fn nan_values_are_rejected_with_their_row() {
    let dir = project();
    let out = extract(
        dir.path(),
        "SELECT item_id AS user_id, item_id, CASE WHEN item_id = 3 THEN CAST('NaN' AS DOUBLE) ELSE 1.0 END AS value FROM items ORDER BY item_id",
        "interactions",
        &[],
    );
    // Bad SQL or data is invalid input: exit 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("column `value` is NaN at row 3"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_sql_names_the_file() {
    let dir = project();
    let out = extract(dir.path(), "SELEC item_id FROM items", "filter", &[]);
    // Bad SQL or data is invalid input: exit 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("q.sql"),
        "{}",
        text(&out)
    );
}

/// An extract of `SELECT * FROM t` where table `t` is the file `bytes`.
fn extract_file(project: &std::path::Path, bytes: &[u8]) -> std::process::Output {
    let file = project.join("t.parquet");
    std::fs::write(&file, bytes).unwrap();
    std::fs::write(project.join("q.sql"), "SELECT * FROM t").unwrap();
    let (table, q, out) = (
        format!("t={}", file.display()),
        project.join("q.sql"),
        project.join("out.parquet"),
    );
    let args = [
        "step",
        "extract",
        "--table",
        &table,
        "--sql",
        q.to_str().unwrap(),
        "--role",
        "filter",
        "--output",
        out.to_str().unwrap(),
    ];
    recpipe(project, &args, &[])
}

#[test]
fn a_zero_byte_file_is_called_empty_not_columnless() {
    let dir = project();
    let out = extract_file(dir.path(), b"");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("t.parquet is empty (0 bytes), so it has no columns: it was not written completely; write it again"),
        "{err}"
    );
    assert!(!err.contains("returned no columns"), "{err}");
}

#[test]
fn a_corrupt_file_says_parquet_error_once() {
    let dir = project();
    let out = extract_file(dir.path(), b"this is not a parquet file at all");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = text(&out);
    assert!(!err.contains("Parquet error: Parquet error:"), "{err}");
    assert!(err.contains("not a readable Parquet file"), "{err}");
}

#[test]
fn a_text_parameter_compared_with_a_number_is_named() {
    let dir = project();
    let out = extract(
        dir.path(),
        "SELECT item_id FROM items WHERE item_id > $min_id",
        "filter",
        &["--param", "min_id=ten"],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let err = text(&out);
    assert!(!err.contains("Optimizer rule"), "{err}");
    assert!(
        err.contains("parameter `$min_id` is the text \"ten\" but is used as another type"),
        "{err}"
    );
}

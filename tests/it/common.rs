//! Shared helpers: a copy of the repository's project (config, pipelines, SQL,
//! example data) in a temporary folder, and running the real binary on it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use recpipe::artifact::read_parquet;
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes the named columns (nullable) as one Parquet file at `path`.
pub fn write_columns(path: &Path, columns: Vec<(&str, arrow::array::ArrayRef)>) -> PathBuf {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    recpipe::artifact::write_parquet(path, batch.schema(), &[batch]).unwrap();
    path.to_path_buf()
}

/// The arms and weights of `example-ab`'s published allocation, in order.
pub fn published_weights(project: &Path) -> Vec<(String, f64)> {
    let path = project.join("state/published/example_ab_weights/current/data.parquet");
    let (_, batches) = read_parquet(&path).unwrap();
    let b = &batches[0];
    let ids = b.column_by_name("arm_id").unwrap();
    let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
    let weights = b.column_by_name("weight").unwrap();
    let weights = weights
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    (0..b.num_rows())
        .map(|i| (ids.value(i).to_string(), weights.value(i)))
        .collect()
}

/// A temporary project with the repository's config, pipelines, SQL and data.
pub fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["config", "pipelines", "sql", "data"] {
        copy_dir(&repo().join(sub), &dir.path().join(sub));
    }
    dir
}

/// Runs `recpipe --project-dir <project> args…` with `env` added.
pub fn recpipe(project: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recpipe"));
    cmd.arg("--project-dir").arg(project).args(args);
    cmd.env_remove("RECPIPE_FAILPOINTS")
        .env_remove("RECPIPE_ENV");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn i64s(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let col = batch.column_by_name(name).unwrap();
    col.as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec()
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
}

/// The example items' categories and the ids of the closed ones.
pub struct ExampleItems {
    pub category: HashMap<i64, String>,
    pub closed: HashSet<i64>,
}

pub fn example_items(project: &Path) -> ExampleItems {
    let (_, batches) = read_parquet(&project.join("data/example/items.parquet")).unwrap();
    let mut items = ExampleItems {
        category: HashMap::new(),
        closed: HashSet::new(),
    };
    for b in &batches {
        let (category, status) = (strings(b, "category"), strings(b, "status"));
        for (row, id) in i64s(b, "item_id").into_iter().enumerate() {
            items.category.insert(id, category.value(row).to_string());
            if status.value(row) == "closed" {
                items.closed.insert(id);
            }
        }
    }
    items
}

/// Every (user, item) pair of the example interactions.
pub fn example_seen(project: &Path) -> HashSet<(i64, i64)> {
    let (_, batches) = read_parquet(&project.join("data/example/interactions.parquet")).unwrap();
    batches
        .iter()
        .flat_map(|b| i64s(b, "user_id").into_iter().zip(i64s(b, "item_id")))
        .collect()
}

/// Replaces `from` with `to` in a pipeline file of the project.
pub fn edit(project: &Path, file: &str, from: &str, to: &str) {
    let path = project.join("pipelines").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in {file}");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

/// A fresh prefix in the test bucket on moto's S3 server (`.ci/test` starts it
/// and exports the `AWS_*` variables every client here and every child reads).
pub fn s3_url(name: &str) -> String {
    let bucket = std::env::var("RECPIPE_TEST_S3_BUCKET")
        .expect("RECPIPE_TEST_S3_BUCKET: run the tests with .ci/test");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{bucket}/{name}-{}-{nanos}", std::process::id())
}

/// Runs an async call (the storage client's) to completion in a test.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

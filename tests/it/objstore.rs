//! Object storage on moto's S3 server (started by `.ci/test`, which exports the
//! `AWS_*` variables the clients read and `RECPIPE_TEST_S3_BUCKET`): conditional
//! writes, large uploads, and the Parquet sink's versions and compare-and-swap
//! pointer (on local disk too). The Argo emulator's run on S3 is in `argo.rs`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use object_store::PutMode;
use recpipe::artifact::write_parquet;
use recpipe::config::settings::ParquetSinkConfig;
use recpipe::sinks::object::ObjectParquetSink;
use recpipe::sinks::parquet::ParquetSink;
use recpipe::sinks::{Sink, SinkError};
use recpipe::store::{Remote, StorageError};

use crate::common::{block_on, s3_url};

#[test]
fn conditional_writes_and_large_uploads_on_s3() {
    let remote = Remote::open(&s3_url("cas")).unwrap();
    block_on(async {
        // Create: the second loses.
        remote
            .put("k", Bytes::from_static(b"a"), PutMode::Create)
            .await
            .unwrap();
        let second = remote
            .put("k", Bytes::from_static(b"b"), PutMode::Create)
            .await;
        assert!(
            matches!(second, Err(StorageError::Conflict { .. })),
            "{second:?}"
        );
        // Update: with the version read, once; with that version again, never.
        let (bytes, version) = remote.get("k").await.unwrap().unwrap();
        assert_eq!(&bytes[..], b"a");
        remote
            .put(
                "k",
                Bytes::from_static(b"c"),
                PutMode::Update(version.clone()),
            )
            .await
            .unwrap();
        let stale = remote
            .put("k", Bytes::from_static(b"d"), PutMode::Update(version))
            .await;
        assert!(
            matches!(stale, Err(StorageError::Conflict { .. })),
            "{stale:?}"
        );
        assert_eq!(&remote.get("k").await.unwrap().unwrap().0[..], b"c");
        assert!(remote.get("missing").await.unwrap().is_none());

        // 12 MiB goes up in parts and comes back byte for byte.
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..12u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &big).unwrap();
        remote
            .upload(&dir.path().join("big"), "d/big")
            .await
            .unwrap();
        remote
            .download("d/big", &dir.path().join("back"))
            .await
            .unwrap();
        assert!(std::fs::read(dir.path().join("back")).unwrap() == big);
        let keys: Vec<String> = remote
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.0)
            .collect();
        assert_eq!(keys, ["d/big", "k"]);
        remote.delete_all("d").await.unwrap();
        assert!(!remote.exists("d/big").await.unwrap());
    });
}

/// A list of `n` rows in `dir/name.parquet`, its item ids offset by `seed`.
fn list(dir: &Path, name: &str, n: i64, seed: i64) -> std::path::PathBuf {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i + seed))),
        ],
    )
    .unwrap();
    let path = dir.join(format!("{name}.parquet"));
    write_parquet(&path, schema, &[batch]).unwrap();
    path
}

fn sink(url: &str, keep_versions: usize) -> ObjectParquetSink {
    let config = ParquetSinkConfig {
        path: url.into(),
        keep_versions,
    };
    ObjectParquetSink::new("lists", &config)
}

/// The version `CURRENT` names.
fn current(url: &str) -> String {
    let remote = Remote::open(url).unwrap();
    let got = block_on(remote.get("recs/CURRENT")).unwrap().unwrap();
    String::from_utf8(got.0.to_vec())
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn the_parquet_sink_on_s3_publishes_versions_and_rolls_back() {
    let url = s3_url("sink");
    let sink = sink(&url, 2);
    let dir = tempfile::tempdir().unwrap();
    sink.healthcheck().unwrap();

    let a = sink
        .publish("recs", "r1", &list(dir.path(), "a", 50, 0))
        .unwrap();
    assert_eq!((a.version.as_str(), a.rows, a.unchanged), ("r1", 50, false));
    assert_eq!(a.location, format!("{url}/recs/versions/r1/data.parquet"));
    assert_eq!(current(&url), "r1");
    // The same publish again (a retry whose result was lost) does nothing…
    let again = sink
        .publish("recs", "r1", &list(dir.path(), "a", 50, 0))
        .unwrap();
    assert!(again.unchanged);
    // …a changed list of the same run is a new version beside it.
    let b = sink
        .publish("recs", "r1", &list(dir.path(), "b", 40, 1))
        .unwrap();
    assert_eq!((b.version.as_str(), b.rows), ("r1-2", 40));
    let c = sink
        .publish("recs", "r2", &list(dir.path(), "c", 30, 2))
        .unwrap();
    // Two kept: the oldest went.
    assert_eq!(c.pruned, ["r1"]);
    assert_eq!(current(&url), "r2");

    let back = sink.rollback("recs").unwrap();
    assert_eq!((back.version.as_str(), back.rows), ("r1-2", 40));
    assert_eq!(current(&url), "r1-2");
    let forth = sink.rollback("recs").unwrap();
    assert_eq!(forth.version, "r2");

    let never = sink.rollback("other").unwrap_err();
    assert!(
        never.to_string().contains("never been published"),
        "{never}"
    );
}

/// Two publishers stage against one current version; the first to switch wins,
/// the second is refused, naming the winner.
fn race(one: &dyn Sink, two: &dyn Sink, current: &dyn Fn() -> String) {
    let dir = tempfile::tempdir().unwrap();
    one.publish("recs", "r0", &list(dir.path(), "z", 10, 0))
        .unwrap();
    let a = one
        .write_staging("recs", "r1", &list(dir.path(), "a", 10, 1))
        .unwrap();
    let b = two
        .write_staging("recs", "r2", &list(dir.path(), "b", 10, 2))
        .unwrap();
    assert_eq!(one.swap(&a).unwrap().version, "r1");
    let lost = two.swap(&b).unwrap_err();
    assert!(matches!(lost, SinkError::Rejected { .. }), "{lost:?}");
    let message = lost.to_string();
    assert!(
        message.contains("`r1` current") && message.contains("read `r0`"),
        "{message}"
    );
    assert_eq!(current(), "r1");
}

#[test]
fn two_publishers_racing_on_the_pointer_cannot_both_win() {
    // On local disk, under the table's lock…
    let local = tempfile::tempdir().unwrap();
    let config = ParquetSinkConfig {
        path: local.path().to_path_buf(),
        keep_versions: 5,
    };
    let (one, two) = (
        ParquetSink::new("lists", config.clone()),
        ParquetSink::new("lists", config),
    );
    let read = || {
        std::fs::read_to_string(local.path().join("recs/CURRENT"))
            .unwrap()
            .trim()
            .to_string()
    };
    race(&one, &two, &read);

    // …and on S3, by a conditional write.
    let url = s3_url("race");
    race(&sink(&url, 5), &sink(&url, 5), &|| current(&url));
    let dir = tempfile::tempdir().unwrap();

    // Many at once, on threads: each either switched or was told who won, and
    // `CURRENT` names one that switched.
    let winners: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (url, dir) = (&url, dir.path());
                s.spawn(move || {
                    let input = list(dir, &format!("t{i}"), 10, 10 + i);
                    sink(url, 20).publish("recs", &format!("t{i}"), &input)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join().unwrap() {
                Ok(p) => Some(p.version),
                Err(SinkError::Rejected { message, .. }) => {
                    assert!(message.contains("another publisher"), "{message}");
                    None
                }
                Err(e) => panic!("{e}"),
            })
            .collect()
    });
    assert!(!winners.is_empty());
    assert!(winners.contains(&current(&url)), "{winners:?}");
}

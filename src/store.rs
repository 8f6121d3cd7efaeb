//! Object storage (S3 and GCS, through the `object_store` crate DataFusion and
//! parquet use): where run directories (`recpipe step run --store s3://…`) and the
//! Parquet sink (`path = "gs://…"`) live when one machine's disk is not shared.
//!
//! A location is a URL, `s3://bucket/prefix` or `gs://bucket/prefix`. Credentials,
//! region and endpoint come from the environment the way the clouds' own tools read
//! them (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`;
//! `GOOGLE_APPLICATION_CREDENTIALS`, or the pod's workload identity), never from
//! recpipe's settings, so no secret passes through a file recpipe logs.
//!
//! Stores differ in one guarantee: a conditional write. S3 (`If-Match`, on AWS and
//! on moto) and GCS (generations) both have it, so [`Remote::put`] with
//! [`PutMode::Update`] is a compare-and-swap there.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::io::AsyncWriteExt;

/// What went wrong with a store, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`{0}` is not an object storage URL: use s3://bucket/prefix or gs://bucket/prefix")]
    Url(String),
    /// A conditional write lost: someone else wrote the object first.
    #[error("{url}: changed by another writer")]
    Conflict { url: String },
    #[error("{url}: {message}")]
    Failed {
        url: String,
        message: String,
        /// Whether another attempt could succeed (network, throttling, 5xx).
        retryable: bool,
    },
}

impl StorageError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// Whether `s` names object storage rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.starts_with("s3://") || s.starts_with("gs://")
}

/// A prefix in a bucket, and the client that reaches it.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for messages.
    bucket_url: String,
    prefix: Key,
}

impl std::fmt::Debug for Remote {
    // The client holds credentials: show where, never how.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url(""))
    }
}

impl Remote {
    /// The store at `url` (`s3://bucket/prefix`, `gs://bucket/prefix`).
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let bad = || StorageError::Url(url.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad());
        }
        let failed = |e: object_store::Error| StorageError::Failed {
            url: url.to_string(),
            message: e.to_string(),
            retryable: false,
        };
        let bucket_url = format!("{scheme}://{bucket}");
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&bucket_url)
                    .build()
                    .map_err(failed)?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(&bucket_url)
                    .build()
                    .map_err(failed)?,
            ),
            _ => return Err(bad()),
        };
        let prefix = Key::parse(prefix.trim_end_matches('/')).map_err(|_| bad())?;
        Ok(Self {
            store,
            bucket_url,
            prefix,
        })
    }

    /// The same store, under `rel` (a `/`-separated relative key).
    pub fn child(&self, rel: &str) -> Self {
        Self {
            prefix: self.key(rel),
            ..self.clone()
        }
    }

    fn key(&self, rel: &str) -> Key {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, p| k.join(p))
    }

    /// The URL of `rel`, for messages and for readers.
    pub fn url(&self, rel: &str) -> String {
        match self.key(rel).as_ref() {
            "" => self.bucket_url.clone(),
            k => format!("{}/{k}", self.bucket_url),
        }
    }

    fn error(&self, rel: &str) -> impl Fn(object_store::Error) -> StorageError + '_ {
        let url = self.url(rel);
        move |e| match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => {
                StorageError::Conflict { url: url.clone() }
            }
            e => StorageError::Failed {
                url: url.clone(),
                retryable: !matches!(
                    e,
                    object_store::Error::NotSupported { .. }
                        | object_store::Error::NotImplemented { .. }
                        | object_store::Error::InvalidPath { .. }
                        | object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                ),
                message: e.to_string(),
            },
        }
    }

    /// The object at `rel` and the version a conditional write of it must name,
    /// or `None` if there is none.
    pub async fn get(&self, rel: &str) -> Result<Option<(Bytes, UpdateVersion)>, StorageError> {
        let got = match self.store.get(&self.key(rel)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(rel)(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(self.error(rel))?;
        Ok(Some((bytes, version)))
    }

    /// Writes `bytes` to `rel` in one atomic put: `Overwrite`, `Create` (fails with
    /// [`StorageError::Conflict`] if it exists) or `Update` (compare-and-swap).
    pub async fn put(&self, rel: &str, bytes: Bytes, mode: PutMode) -> Result<(), StorageError> {
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        self.store
            .put_opts(&self.key(rel), PutPayload::from_bytes(bytes), options)
            .await
            .map(|_| ())
            .map_err(self.error(rel))
    }

    /// Whether `rel` exists.
    pub async fn exists(&self, rel: &str) -> Result<bool, StorageError> {
        match self.store.head(&self.key(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(rel)(e)),
        }
    }

    /// Copies the object `rel` to the local file `to`, which appears complete or not
    /// at all (written beside it, then renamed).
    pub async fn download(&self, rel: &str, to: &Path) -> Result<(), StorageError> {
        let local = |e: std::io::Error| StorageError::Failed {
            url: self.url(rel),
            message: format!("cannot write {}: {e}", to.display()),
            retryable: true,
        };
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(local)?;
        }
        let tmp = to.with_extension("download");
        let mut file = tokio::fs::File::create(&tmp).await.map_err(local)?;
        let got = self
            .store
            .get(&self.key(rel))
            .await
            .map_err(self.error(rel))?;
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.try_next().await.map_err(self.error(rel))? {
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.flush().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&tmp, to).await.map_err(local)
    }

    /// Copies the local file `from` to `rel`. Large files go up in parts (a
    /// multipart upload): the object appears only when the last part is in, so an
    /// upload cut short leaves nothing a reader can see.
    pub async fn upload(&self, from: &Path, rel: &str) -> Result<(), StorageError> {
        let local = |e: std::io::Error| StorageError::Failed {
            url: self.url(rel),
            message: format!("cannot read {}: {e}", from.display()),
            retryable: false,
        };
        let mut file = tokio::fs::File::open(from).await.map_err(local)?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), self.key(rel));
        let failed = |e: std::io::Error| StorageError::Failed {
            url: self.url(rel),
            message: format!("upload of {} failed: {e}", from.display()),
            retryable: true,
        };
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(failed(e));
        }
        writer.shutdown().await.map_err(failed)
    }

    /// Every object under `rel`, as keys relative to this store's prefix, with
    /// their last-modified times.
    pub async fn list(
        &self,
        rel: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, StorageError> {
        let under = self.key(rel);
        let metas: Vec<_> = self
            .store
            .list(Some(&under))
            .try_collect()
            .await
            .map_err(self.error(rel))?;
        let strip = |k: &Key| {
            let k = k.as_ref();
            match self.prefix.as_ref() {
                "" => k.to_string(),
                p => k
                    .strip_prefix(p)
                    .unwrap_or(k)
                    .trim_start_matches('/')
                    .to_string(),
            }
        };
        Ok(metas
            .iter()
            .map(|m| (strip(&m.location), m.last_modified))
            .collect())
    }

    /// Deletes `rel` (nothing if it is not there).
    pub async fn delete(&self, rel: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(rel)(e)),
        }
    }

    /// Deletes every object under `rel`.
    pub async fn delete_all(&self, rel: &str) -> Result<(), StorageError> {
        for (key, _) in self.list(rel).await? {
            self.delete(&key).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(is_url("s3://b/p") && is_url("gs://b") && !is_url("/tmp/x"));
        assert!(matches!(Remote::open("s3:///x"), Err(StorageError::Url(_))));
        assert!(matches!(
            Remote::open("ftp://b/x"),
            Err(StorageError::Url(_))
        ));
        let r = Remote::open("s3://bucket/runs/").unwrap();
        assert_eq!(r.url(""), "s3://bucket/runs");
        assert_eq!(
            r.child("p/r1").url("s/manifest.json"),
            "s3://bucket/runs/p/r1/s/manifest.json"
        );
        assert_eq!(format!("{r:?}"), "Remote(s3://bucket/runs)");
    }
}

//! A run directory in object storage, for `recpipe step run --store s3://…`: each
//! Argo pod has only its own empty disk, so a step runs in a local copy of the run
//! directory holding what it needs (pulled before), and its output goes up after.
//!
//! The store keeps the local layout (`runs/<pipeline>/<run_id>/<step>/…`) and its
//! invariant: a step is done exactly when its manifest is there. A push deletes
//! the old manifest first, uploads every file, and puts the manifest last, so a
//! pod killed mid-push leaves a step that is not done, whose retry replaces the
//! files. Uploads are whole-object puts (multipart for large files), so no reader
//! ever sees part of a file.
//!
//! There is no lock across pods: two attempts of one step are not run at once by
//! Argo (a retry starts after its pod ended). Two that did would each leave
//! complete files; the manifest last written names the files of one of them.
//!
//! A step's state folder, which outlives runs (`steps/<pipeline>/<step>/`: a
//! tuned train's choice, a gated write's last publishes), lives beside `runs/`
//! in the store for the same reason: a pod's disk starts empty.

use std::path::{Path, PathBuf};

use super::rundir::{MANIFEST, RunDir, StepManifest, manifest_name};
use super::{Pipeline, Step};
use crate::artifact::ArtifactKind;
use crate::artifact::lists::Shard;
use crate::failpoint;
use crate::store::{Remote, StorageError};

/// One run's directory in the store, and its local copy.
pub struct RemoteRun {
    remote: Remote,
    local: RunDir,
}

impl RemoteRun {
    /// Run `run_id` of `pipeline` under `store`, copied into `local_state`.
    pub fn new(store: &Remote, local_state: &Path, pipeline: &str, run_id: &str) -> Self {
        Self {
            remote: store.child(&format!("runs/{pipeline}/{run_id}")),
            local: RunDir::new(local_state, pipeline, run_id),
        }
    }

    /// Copies what running `step` (part `shard`) needs into the local copy: each
    /// need's manifest (every part's, for a split need) with its files, and the
    /// step's own manifest without files, which decides whether it is already done.
    /// A model brings the interactions it was trained on (its "seen" items, which
    /// scoring reads).
    pub async fn pull(
        &self,
        pipeline: &Pipeline,
        step: &Step,
        shard: Option<Shard>,
    ) -> Result<(), StorageError> {
        let mut pulled = Vec::new();
        for need in &step.needs {
            if let Some(manifest) = self.pull_manifest(need, MANIFEST, true).await? {
                if manifest.output == ArtifactKind::Model {
                    for input in &manifest.inputs {
                        let wanted = input.kind == ArtifactKind::Interactions;
                        if wanted
                            && !step.needs.contains(&input.step)
                            && !pulled.contains(&input.step)
                        {
                            self.pull_manifest(&input.step, MANIFEST, true).await?;
                            pulled.push(input.step.clone());
                        }
                    }
                }
                continue;
            }
            let shards = pipeline.step(need).map_or(1, |n| n.spec.shards());
            if shards >= 2 {
                for index in 0..shards {
                    let part = manifest_name(Some(Shard {
                        index,
                        count: shards,
                    }));
                    self.pull_manifest(need, &part, true).await?;
                }
            }
        }
        self.pull_manifest(&step.id, &manifest_name(shard), false)
            .await
            .map(|_| ())
    }

    /// Copies `step/name` (a manifest) and, `with_files`, the files it lists;
    /// `None` if the store has no readable manifest there (the step is not done).
    async fn pull_manifest(
        &self,
        step: &str,
        name: &str,
        with_files: bool,
    ) -> Result<Option<StepManifest>, StorageError> {
        let rel = format!("{step}/{name}");
        let Some((bytes, _)) = self.remote.get(&rel).await? else {
            return Ok(None);
        };
        let Ok(manifest) = serde_json::from_slice::<StepManifest>(&bytes) else {
            return Ok(None);
        };
        let dir = self.local.step_dir(step);
        if with_files {
            for file in &manifest.files {
                self.remote
                    .download(&format!("{step}/{}", file.name), &dir.join(&file.name))
                    .await?;
            }
        }
        // Last, as on local disk: the manifest says its files are complete.
        let local_error = |e: std::io::Error| StorageError::Failed {
            url: self.remote.url(&rel),
            message: format!("cannot copy to {}: {e}", dir.display()),
            retryable: true,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(local_error)?;
        tokio::fs::write(dir.join(name), &bytes)
            .await
            .map_err(local_error)?;
        Ok(Some(manifest))
    }

    /// Puts a finished step's (or part's) files and manifest into the store. A
    /// part also removes a whole list an earlier unsplit run left, as the local
    /// reset does: the parts replace it.
    pub async fn push(
        &self,
        manifest: &StepManifest,
        shard: Option<Shard>,
    ) -> Result<(), StorageError> {
        let step = &manifest.step;
        let name = manifest_name(shard);
        self.remote.delete(&format!("{step}/{name}")).await?;
        if shard.is_some() {
            self.remote.delete(&format!("{step}/{MANIFEST}")).await?;
        }
        let dir = self.local.step_dir(step);
        for file in &manifest.files {
            self.remote
                .upload(&dir.join(&file.name), &format!("{step}/{}", file.name))
                .await?;
        }
        if failpoint::armed("store.before_manifest") {
            return Err(StorageError::Failed {
                url: self.remote.url(step),
                message: "failure point `store.before_manifest` armed".into(),
                retryable: true,
            });
        }
        self.remote
            .upload(&dir.join(&name), &format!("{step}/{name}"))
            .await
    }
}

/// A step's state folder in the store, and its local copy.
pub struct RemoteState {
    remote: Remote,
    local: PathBuf,
}

impl RemoteState {
    /// Step `step` of `pipeline` under `store`, copied into `local_state`.
    pub fn new(store: &Remote, local_state: &Path, pipeline: &str, step: &str) -> Self {
        Self {
            remote: store.child(&format!("steps/{pipeline}/{step}")),
            local: crate::steps::state_folder(local_state, pipeline, step),
        }
    }

    /// Copies every file the store keeps for the step into the local folder.
    pub async fn pull(&self) -> Result<(), StorageError> {
        for (name, _) in self.remote.list("").await? {
            self.remote.download(&name, &self.local.join(&name)).await?;
        }
        Ok(())
    }

    /// Copies every file of the local folder into the store: the step writes
    /// each whole (beside it, then renamed), so each goes up whole.
    pub async fn push(&self) -> Result<(), StorageError> {
        let local_error = |e: std::io::Error| StorageError::Failed {
            url: self.remote.url(""),
            message: format!("cannot read {}: {e}", self.local.display()),
            retryable: true,
        };
        let mut entries = match tokio::fs::read_dir(&self.local).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(local_error(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(local_error)? {
            if entry.file_type().await.map_err(local_error)?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                self.remote.upload(&entry.path(), &name).await?;
            }
        }
        Ok(())
    }
}

//! The registry's domain operations, independent of HTTP: the handlers in `api` and the
//! CLI's maintenance commands call these.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthConfig, Authenticator, Caller, Role};
use crate::config::RegistryConfig;
use crate::db::{Access, ModelVersion, NewVersion, Store, Tags};
use crate::error::{RegistryError, Result};
use crate::onnx;

/// The registry: metadata store, artifact store and the settings they run under.
#[derive(Clone)]
pub struct Registry {
    pub store: Store,
    pub artifacts: ArtifactStore,
    pub config: Arc<RegistryConfig>,
    pub auth: Authenticator,
    spool_dir: PathBuf,
}

/// What an operation on one model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read the model, its versions and artifacts: global reader, or a read/write grant, or owner.
    Read,
    /// Upload versions, move aliases, edit: global writer, or a write grant, or owner.
    Write,
    /// Delete the model, manage its grants: admin, or owner.
    Manage,
}

/// Optional metadata sent with an upload (`metadata` part of a multipart upload).
#[derive(Debug, Default, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionMetadata {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Tags,
}

/// An upload received into a local spool file, hashed on the way in.
pub struct Spooled {
    file: tempfile::NamedTempFile,
    pub sha256: String,
    pub size: u64,
}

impl Registry {
    pub async fn open(config: RegistryConfig, auth: AuthConfig) -> Result<Self> {
        let auth = Authenticator::new(auth)?;
        let store = Store::connect(
            &config.effective_database_url(),
            config.db_max_connections,
            Duration::from_secs(config.db_statement_timeout_secs.max(1)),
        )
        .await?;
        let artifacts = ArtifactStore::open(
            config.storage_url.as_deref(),
            &config.storage_options,
            config.storage_retry(),
            &config.data_dir.join("artifacts"),
        )?;
        let spool_dir = config.data_dir.join("spool");
        std::fs::create_dir_all(&spool_dir)?;
        Ok(Self { store, artifacts, config: Arc::new(config), auth, spool_dir })
    }

    /// Checks that `caller` may do `need` with `model` (404 when the model does not exist,
    /// 403 when it exists but the caller may not).
    pub async fn authorize(&self, caller: &Caller, model: &str, need: Need) -> Result<()> {
        let global = match need {
            Need::Read => Role::Reader,
            Need::Write => Role::Writer,
            Need::Manage => Role::Admin,
        };
        if caller.at_least(global) {
            // The global role suffices; a missing model is the operation's own 404.
            return Ok(());
        }
        let access = self.store.model_access(model, &caller.subject, &caller.principals()).await?;
        let allowed = match need {
            Need::Read => access >= Access::Read,
            Need::Write => access >= Access::Write,
            Need::Manage => access == Access::Owner,
        };
        if allowed {
            Ok(())
        } else {
            let verb = match need {
                Need::Read => "read",
                Need::Write => "change",
                Need::Manage => "manage",
            };
            Err(RegistryError::Forbidden(format!("{} may not {verb} model '{model}'", caller.subject)))
        }
    }

    /// Records a write in the audit log. The write has happened: a failure to record it is
    /// logged loudly rather than turned into an error for the caller.
    pub async fn audit(&self, caller: &Caller, action: &str, model: Option<&str>, detail: serde_json::Value) {
        if let Err(e) = self.store.record_audit(&caller.subject, action, model, &detail).await {
            tracing::error!(error = %e, action, model, principal = %caller.subject, "could not write the audit log");
        }
    }

    /// Receives an upload body into a spool file while computing its sha256. Stops reading
    /// with 413 as soon as the body passes the size cap, so nothing large is buffered.
    pub async fn spool<S, E>(&self, mut body: S) -> Result<Spooled>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Into<RegistryError>,
    {
        let limit = self.config.max_upload_bytes;
        let file = tempfile::NamedTempFile::new_in(&self.spool_dir)?;
        let mut out = tokio::fs::File::from_std(file.reopen()?);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(RegistryError::PayloadTooLarge(format!(
                    "the artifact is larger than the limit of {limit} bytes"
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(Spooled { file, sha256: hex::encode(hasher.finalize()), size })
    }

    /// Registers a spooled upload as the model's next version: inspect, store the artifact,
    /// then commit the row. Artifact first, row second: a crash in between leaves at most
    /// an unreferenced artifact (found by `gc`), never a row without its file.
    pub async fn create_version(
        &self,
        model: &str,
        upload: Spooled,
        meta: &VersionMetadata,
        caller: &Caller,
    ) -> Result<ModelVersion> {
        if upload.size == 0 {
            return Err(RegistryError::InvalidModel("the artifact is empty".into()));
        }
        let path = upload.file.path().to_path_buf();
        let allowed = self.config.allowed_op_domains.clone();
        let (signature, backends) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            let signature = onnx::inspect(&bytes, &allowed)?;
            let backends = std::collections::BTreeMap::from([(
                "tract".to_string(),
                onnx::tract_compatibility(&bytes, &signature),
            )]);
            Ok::<_, RegistryError>((signature, backends))
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("inspection task failed: {e}")))??;

        let wrote = self.artifacts.put_file(&upload.sha256, upload.file.path(), upload.size).await?;
        crate::failpoint::hit("upload.after_artifact").await;
        let new = NewVersion {
            sha256: &upload.sha256,
            size: upload.size as i64,
            created_by: &caller.subject,
            description: &meta.description,
            tags: &meta.tags,
            signature: &signature,
            backends: &backends,
        };
        match self.store.insert_version(model, new).await {
            Ok(v) => {
                tracing::info!(model, version = v.version, sha256 = %v.sha256, size = v.size, "version registered");
                Ok(v)
            }
            Err(e) => {
                if wrote {
                    self.remove_if_unreferenced(&upload.sha256).await;
                }
                Err(e)
            }
        }
    }

    /// Deletes an artifact no version row references any more. Best effort: what is left
    /// behind (storage or database down) is found later by `gc`.
    pub async fn remove_if_unreferenced(&self, sha256: &str) {
        match self.store.is_artifact_referenced(sha256).await {
            Ok(false) => {
                if let Err(e) = self.artifacts.delete(sha256).await {
                    tracing::warn!(sha256, error = %e, "could not delete unreferenced artifact; gc will");
                }
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(sha256, error = %e, "could not check artifact references; gc will"),
        }
    }

    pub async fn delete_model(&self, name: &str, force: bool) -> Result<()> {
        let shas = self.store.delete_model(name, force).await?;
        for sha in shas {
            self.remove_if_unreferenced(&sha).await;
        }
        tracing::info!(model = name, "model deleted");
        Ok(())
    }

    /// Artifacts that no version references and that are older than `min_age` (younger
    /// ones may belong to an upload whose row is being committed right now). Deletes them
    /// unless `dry_run`.
    pub async fn gc(&self, min_age: Duration, dry_run: bool) -> Result<Vec<String>> {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let candidates: Vec<(String, chrono::DateTime<chrono::Utc>)> = self.artifacts.list().try_collect().await?;
        let mut orphans = Vec::new();
        for (sha, modified) in candidates {
            if modified <= cutoff && !self.store.is_artifact_referenced(&sha).await? {
                if !dry_run {
                    self.artifacts.delete(&sha).await?;
                }
                orphans.push(sha);
            }
        }
        Ok(orphans)
    }

    /// Readiness: database and storage both answer.
    pub async fn check_ready(&self) -> Result<()> {
        self.store.ping().await?;
        self.artifacts.check().await
    }
}

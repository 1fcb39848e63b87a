//! The registry's operations, independent of any transport. Every operation a caller can
//! ask for is a method of [`Registry`] that authorizes the caller and records writes in
//! the audit log itself, so the REST handlers (`api`) and the gRPC service for workers
//! (`grpc`) only decode a request, call one method and encode its answer: both apply the
//! same rules because there is one place that applies them.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use lakescore_core::reference::{validate_alias, validate_name, ModelRef, VersionSelector};
use lakescore_core::wire::{
    AliasChange, AliasRecord, AuditEntry, CreateModel, Grant, Model, ModelVersion, Page, PutGrant, UpdateFields,
    VersionMetadata, VersionStatus,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthConfig, Authenticator, Caller, DefaultPermission, Role};
use crate::config::RegistryConfig;
use crate::db::{Access, NewVersion, Reservation, Store};
use crate::error::{RegistryError, Result};
use crate::resolve_cache::ResolveCache;
use crate::{filter, onnx};

/// Page size when the caller names none, and the most one page may hold.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The registry: metadata store, artifact store and the settings they run under.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    artifacts: ArtifactStore,
    config: Arc<RegistryConfig>,
    auth: Authenticator,
    spool_dir: PathBuf,
    /// Resolved references, until the next write (see [`ResolveCache`]).
    resolved: Arc<ResolveCache>,
}

/// What an operation on one model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Read the model, its versions and artifacts: global reader, or a read/write grant, or owner.
    Read,
    /// Upload versions, move aliases, edit: global writer, or a write grant, or owner.
    Write,
    /// Delete the model, manage its grants: admin, or owner.
    Manage,
}

/// An upload received into a local spool file, hashed on the way in.
/// What a creating request produced: the resource, the HTTP status to answer with (201 for
/// something new, 200 for an existing version reused), and whether this answer is a replay
/// of the one given earlier to the same `Idempotency-Key`.
#[derive(Debug)]
pub struct Created<T> {
    pub value: T,
    pub status: u16,
    pub replayed: bool,
}

/// How an upload is registered.
#[derive(Debug, Default, Clone)]
pub struct UploadOptions {
    /// A ready version of the model with the same sha256 is answered (200) instead of
    /// registering another one.
    pub reuse_existing: bool,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
}

pub struct Spooled {
    file: tempfile::NamedTempFile,
    pub sha256: String,
    pub size: u64,
}

/// A version's artifact the caller may read: its record (sha256, size) and a way to
/// stream its bytes.
pub struct Artifact {
    pub version: ModelVersion,
    store: ArtifactStore,
}

impl Artifact {
    /// The bytes, or the bytes of `range`.
    pub async fn stream(&self, range: Option<Range<u64>>) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.store.get(&self.version.sha256, range).await
    }
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
            &config.store_options(),
            &config.data_dir.join("artifacts"),
        )?;
        let spool_dir = config.data_dir.join("spool");
        std::fs::create_dir_all(&spool_dir)?;
        let resolved = Arc::new(ResolveCache::new(Duration::from_millis(config.resolve_cache_ms)));
        Ok(Self { store, artifacts, config: Arc::new(config), auth, spool_dir, resolved })
    }

    /// The token validator every transport authenticates callers with.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Where artifacts are stored, for logs.
    pub fn storage_description(&self) -> &str {
        self.artifacts.describe()
    }

    /// Closes the database pool (at shutdown).
    pub async fn close(&self) {
        self.store.close().await;
    }

    // ---- models --------------------------------------------------------------------------

    pub async fn create_model(
        &self,
        caller: &Caller,
        body: &CreateModel,
        idempotency_key: Option<&str>,
    ) -> Result<Created<Model>> {
        caller.require(Role::Writer, "creating a model")?;
        validate_name(&body.name)?;
        let request = serde_json::to_vec(body).map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.idempotent(caller, idempotency_key, "model.create", &request, || async {
            Ok((self.create_model_now(caller, body).await?, 201))
        })
        .await
    }

    async fn create_model_now(&self, caller: &Caller, body: &CreateModel) -> Result<Model> {
        let model = self.store.create_model(&body.name, &body.description, &body.tags, &caller.subject).await?;
        self.audit(
            caller,
            "model.create",
            Some(&model.name),
            serde_json::json!({"description": body.description, "tags": body.tags}),
        )
        .await;
        tracing::info!(model = %model.name, by = %caller.subject, "model created");
        Ok(model)
    }

    /// Models matching `filter`, by name. A caller without a global reader role sees the
    /// models it owns or was granted.
    pub async fn list_models(
        &self,
        caller: &Caller,
        filter: &str,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<Model>> {
        let clauses = filter::parse(filter)?;
        let after = page_token.map(decode_page_token).transpose()?;
        let principals = self.readable_through_grants(caller);
        let visible_to = principals.as_ref().map(|p| (caller.subject.as_str(), p.as_slice()));
        let page =
            self.store.list_models(&clauses, visible_to, checked_page_size(page_size)?, after.as_deref()).await?;
        Ok(encode_next_page(page))
    }

    /// Whether `caller` sees in a listing only the models it owns or was granted (not
    /// every model, through a global role).
    pub fn lists_through_grants(&self, caller: &Caller) -> bool {
        self.readable_through_grants(caller).is_some()
    }

    pub async fn get_model(&self, caller: &Caller, name: &str) -> Result<Model> {
        self.authorize(caller, name, Need::Read).await?;
        self.store.get_model(name).await
    }

    pub async fn update_model(&self, caller: &Caller, name: &str, fields: &UpdateFields) -> Result<Model> {
        self.authorize(caller, name, Need::Write).await?;
        let model = self.store.update_model(name, fields.description.as_deref(), fields.tags.as_ref()).await?;
        self.audit(
            caller,
            "model.update",
            Some(name),
            serde_json::json!({"description": fields.description, "tags": fields.tags}),
        )
        .await;
        Ok(model)
    }

    /// Sets (`Some`) or removes (`None`) one tag of a model, or of one of its versions.
    pub async fn set_tag(
        &self,
        caller: &Caller,
        model: &str,
        version: Option<i64>,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        validate_tag_key(key)?;
        self.authorize(caller, model, Need::Write).await?;
        let action = match version {
            Some(v) => {
                self.store.set_version_tag(model, v, key, value).await?;
                "version.update"
            }
            None => {
                self.store.set_model_tag(model, key, value).await?;
                "model.update"
            }
        };
        self.audit(caller, action, Some(model), serde_json::json!({"version": version, "tag": {key: value}})).await;
        Ok(())
    }

    /// Deletes a model; refused while it has versions unless `force`, which removes them
    /// and the artifacts no other version shares.
    pub async fn delete_model(&self, caller: &Caller, name: &str, force: bool) -> Result<()> {
        self.authorize(caller, name, Need::Manage).await?;
        let shas = self.store.delete_model(name, force).await?;
        for sha in shas {
            self.remove_if_unreferenced(&sha).await;
        }
        self.audit(caller, "model.delete", Some(name), serde_json::json!({"force": force})).await;
        tracing::info!(model = name, "model deleted");
        Ok(())
    }

    // ---- versions ------------------------------------------------------------------------

    /// Checks that `caller` may upload a version of `model` and that `declared_size`
    /// fits the cap: called before reading a possibly large body.
    pub async fn check_upload(&self, caller: &Caller, model: &str, declared_size: Option<u64>) -> Result<()> {
        self.authorize(caller, model, Need::Write).await?;
        let limit = self.config.max_upload_bytes;
        if declared_size.is_some_and(|n| n > limit) {
            return Err(RegistryError::PayloadTooLarge(format!("the body is larger than the limit of {limit} bytes")));
        }
        Ok(())
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
        caller: &Caller,
        model: &str,
        upload: Spooled,
        meta: &VersionMetadata,
        options: &UploadOptions,
    ) -> Result<Created<ModelVersion>> {
        self.authorize(caller, model, Need::Write).await?;
        if upload.size == 0 {
            return Err(RegistryError::InvalidModel("the artifact is empty".into()));
        }
        // The request, as far as a retry must repeat it: the artifact by its digest.
        let request = serde_json::to_vec(&serde_json::json!({
            "model": model, "sha256": upload.sha256, "size": upload.size, "metadata": meta,
            "reuse_existing": options.reuse_existing,
        }))
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
        self.idempotent(caller, options.idempotency_key.as_deref(), "version.create", &request, || async {
            if options.reuse_existing {
                if let Some(version) = self.store.ready_version_with_sha(model, &upload.sha256).await? {
                    tracing::info!(model, version, sha256 = %upload.sha256, "upload matches an existing version");
                    return Ok((self.store.get_version(model, version).await?, 200));
                }
            }
            Ok((self.create_version_now(caller, model, upload, meta).await?, 201))
        })
        .await
    }

    /// Runs a creating request once per `Idempotency-Key` (per caller, for a day): a retry
    /// with the same key and the same request gets the first answer again; the same key with
    /// another request is refused (422); a retry while the first is still running gets 409.
    /// Without a key the request simply runs. A failed request frees its key.
    async fn idempotent<T, F, Fut>(
        &self,
        caller: &Caller,
        key: Option<&str>,
        operation: &str,
        request: &[u8],
        run: F,
    ) -> Result<Created<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(T, u16)>>,
    {
        let Some(key) = key else {
            let (value, status) = run().await?;
            return Ok(Created { value, status, replayed: false });
        };
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RegistryError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID, say)".into(),
            ));
        }
        let hash =
            hex::encode(Sha256::new().chain_update(operation).chain_update([0]).chain_update(request).finalize());
        match self.store.reserve_idempotency(&caller.subject, key, operation, &hash).await? {
            Reservation::Fresh => match run().await {
                Ok((value, status)) => {
                    let body = serde_json::to_string(&value).map_err(|e| RegistryError::Internal(e.to_string()))?;
                    if let Err(e) = self.store.complete_idempotency(&caller.subject, key, status, &body).await {
                        // The work is done; only a retry's replay is lost.
                        tracing::warn!(error = %e, "could not record the answer of an idempotent request");
                    }
                    Ok(Created { value, status, replayed: false })
                }
                Err(e) => {
                    if let Err(release) = self.store.release_idempotency(&caller.subject, key).await {
                        tracing::warn!(error = %release, "could not free the Idempotency-Key of a failed request");
                    }
                    Err(e)
                }
            },
            Reservation::Replay { status, response } => {
                let value = serde_json::from_str(&response)
                    .map_err(|e| RegistryError::Internal(format!("a stored idempotent answer does not parse: {e}")))?;
                Ok(Created { value, status, replayed: true })
            }
            Reservation::Mismatch { operation: first } => Err(RegistryError::IdempotencyKeyReused(format!(
                "Idempotency-Key '{key}' was used for a different request ({first}) in the last 24 hours; \
                 send a new key for a new request"
            ))),
            Reservation::InProgress => Err(RegistryError::Locked(format!(
                "a request with Idempotency-Key '{key}' is still being processed; retry when it has finished"
            ))),
        }
    }

    async fn create_version_now(
        &self,
        caller: &Caller,
        model: &str,
        upload: Spooled,
        meta: &VersionMetadata,
    ) -> Result<ModelVersion> {
        let path = upload.file.path().to_path_buf();
        let allowed = self.config.allowed_op_domains.clone();
        let max_tensor_bytes = match self.config.max_inference_bytes {
            0 => u64::MAX, // unbounded
            n => n,
        };
        let (signature, backends) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            let signature = onnx::inspect(&bytes, &allowed, max_tensor_bytes)?;
            let backends = lakescore_engine::compatibility::backends(&bytes, &signature);
            Ok::<_, RegistryError>((signature, backends))
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("inspection task failed: {e}")))??;

        let wrote = self.artifacts.put_file(&upload.sha256, upload.file.path(), upload.size).await?;
        lakescore_core::failpoint::hit("upload.after_artifact").await;
        let new = NewVersion {
            sha256: &upload.sha256,
            size: upload.size as i64,
            created_by: &caller.subject,
            description: &meta.description,
            tags: &meta.tags,
            signature: &signature,
            backends: &backends,
        };
        let version = match self.store.insert_version(model, new).await {
            Ok(v) => v,
            Err(e) => {
                if wrote {
                    self.remove_if_unreferenced(&upload.sha256).await;
                }
                return Err(e);
            }
        };
        tracing::info!(model, version = version.version, sha256 = %version.sha256, size = version.size, "version registered");
        self.audit(
            caller,
            "version.create",
            Some(model),
            serde_json::json!({"version": version.version, "sha256": version.sha256, "size": version.size}),
        )
        .await;
        Ok(version)
    }

    /// A model's versions, oldest first.
    pub async fn list_versions(
        &self,
        caller: &Caller,
        model: &str,
        status: Option<VersionStatus>,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<ModelVersion>> {
        self.authorize(caller, model, Need::Read).await?;
        let after = page_token.map(|t| decode_page_token(t).and_then(|s| parse_version(&s))).transpose()?;
        let page = self.store.list_versions(model, status, checked_page_size(page_size)?, after).await?;
        Ok(encode_next_page(page))
    }

    /// Versions of all the models the caller may read that match `filter` (`name`,
    /// `description`: the model's; `tags.<key>`: the version's), by model name, newest
    /// version first.
    pub async fn search_versions(
        &self,
        caller: &Caller,
        filter: &str,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<ModelVersion>> {
        let clauses = filter::parse(filter)?;
        let after = page_token
            .map(|t| {
                let raw = decode_page_token(t)?;
                let (name, version) =
                    raw.rsplit_once(':').ok_or_else(|| RegistryError::BadRequest("invalid page_token".into()))?;
                Ok::<_, RegistryError>((name.to_string(), parse_version(version)?))
            })
            .transpose()?;
        let principals = self.readable_through_grants(caller);
        let visible_to = principals.as_ref().map(|p| (caller.subject.as_str(), p.as_slice()));
        let after = after.as_ref().map(|(n, v)| (n.as_str(), *v));
        let page = self.store.search_versions(&clauses, visible_to, checked_page_size(page_size)?, after).await?;
        Ok(encode_next_page(page))
    }

    pub async fn get_version(&self, caller: &Caller, model: &str, version: i64) -> Result<ModelVersion> {
        self.authorize(caller, model, Need::Read).await?;
        self.store.get_version(model, version).await
    }

    /// Changes a version's description or tags (the artifact itself never changes).
    pub async fn update_version(
        &self,
        caller: &Caller,
        model: &str,
        version: i64,
        fields: &UpdateFields,
    ) -> Result<ModelVersion> {
        self.authorize(caller, model, Need::Write).await?;
        let updated =
            self.store.update_version(model, version, fields.description.as_deref(), fields.tags.as_ref()).await?;
        self.audit(
            caller,
            "version.update",
            Some(model),
            serde_json::json!({"version": version, "description": fields.description, "tags": fields.tags}),
        )
        .await;
        Ok(updated)
    }

    /// Archives a version (soft delete): still resolvable as `name:N`, never as `name` or
    /// by alias.
    pub async fn archive_version(&self, caller: &Caller, model: &str, version: i64) -> Result<ModelVersion> {
        self.authorize(caller, model, Need::Write).await?;
        let archived = self.store.archive_version(model, version, &caller.subject).await?;
        self.audit(caller, "version.archive", Some(model), serde_json::json!({"version": version})).await;
        Ok(archived)
    }

    /// A version's artifact, for a caller who may read the model.
    pub async fn artifact(&self, caller: &Caller, model: &str, version: i64) -> Result<Artifact> {
        let version = self.get_version(caller, model, version).await?;
        Ok(Artifact { version, store: self.artifacts.clone() })
    }

    // ---- aliases and resolution ------------------------------------------------------------

    /// Points an alias at a version (creates or moves it atomically).
    pub async fn set_alias(&self, caller: &Caller, model: &str, alias: &str, version: i64) -> Result<AliasRecord> {
        validate_alias(alias)?;
        self.authorize(caller, model, Need::Write).await?;
        let v = self.store.set_alias(model, alias, version, &caller.subject).await?;
        self.audit(caller, "alias.set", Some(model), serde_json::json!({"alias": alias, "version": v.version})).await;
        tracing::info!(model, alias, version = v.version, "alias set");
        Ok(AliasRecord { model: model.to_string(), alias: alias.to_string(), version: v.version })
    }

    pub async fn get_alias(&self, caller: &Caller, model: &str, alias: &str) -> Result<AliasRecord> {
        self.authorize(caller, model, Need::Read).await?;
        let version = self.store.get_alias(model, alias).await?;
        Ok(AliasRecord { model: model.to_string(), alias: alias.to_string(), version })
    }

    pub async fn delete_alias(&self, caller: &Caller, model: &str, alias: &str) -> Result<()> {
        self.authorize(caller, model, Need::Write).await?;
        self.store.delete_alias(model, alias, &caller.subject).await?;
        self.audit(caller, "alias.delete", Some(model), serde_json::json!({"alias": alias})).await;
        Ok(())
    }

    /// Every change to an alias, newest first (who, when, from which version to which).
    pub async fn alias_history(
        &self,
        caller: &Caller,
        model: &str,
        alias: &str,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<AliasChange>> {
        self.authorize(caller, model, Need::Read).await?;
        let before = page_token
            .map(|t| {
                decode_page_token(t)
                    .and_then(|s| s.parse::<i64>().map_err(|_| RegistryError::BadRequest("invalid page_token".into())))
            })
            .transpose()?;
        let page = self.store.alias_history(model, alias, checked_page_size(page_size)?, before).await?;
        Ok(encode_next_page(page))
    }

    /// Resolves a reference as of `at` (RFC 3339): `name@alias` to the version the alias
    /// pointed at then, `name` to the newest version registered by then (and ready now),
    /// `name:7` to version 7. A backfill scores with the model that was live that day.
    pub async fn resolve_at(&self, caller: &Caller, reference: &str, at: &str) -> Result<ModelVersion> {
        let parsed = ModelRef::parse(reference)?;
        let when = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| RegistryError::BadRequest(format!("at '{at}' is not an RFC 3339 time: {e}")))?
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let name = parsed.model_name();
        self.authorize(caller, name, Need::Read).await?;
        let version = match &parsed.selector {
            VersionSelector::Version(v) => *v,
            VersionSelector::Alias(alias) => self.store.alias_at(name, alias, &when).await?,
            VersionSelector::Latest => self.store.latest_at(name, &when).await?,
        };
        self.store.get_version(name, version).await
    }

    /// Resolves `name` (latest ready version), `name:7` or `name@alias`.
    pub async fn resolve(&self, caller: &Caller, reference: &str) -> Result<ModelVersion> {
        let parsed = ModelRef::parse(reference)?;
        self.authorize(caller, parsed.model_name(), Need::Read).await?;
        if let Some(version) = self.resolved.get(reference) {
            return Ok(version);
        }
        let generation = self.resolved.generation();
        let version = self.store.resolve(&parsed).await?;
        self.resolved.put(reference, generation, &version);
        Ok(version)
    }

    // ---- grants and audit --------------------------------------------------------------------

    /// Who may use a model beyond the global roles (owner or admin only).
    pub async fn list_grants(&self, caller: &Caller, model: &str) -> Result<Vec<Grant>> {
        self.authorize(caller, model, Need::Manage).await?;
        self.store.list_grants(model).await
    }

    /// Grants a principal `read` or `write` on the model; answers the model's grants.
    pub async fn put_grant(&self, caller: &Caller, model: &str, grant: &PutGrant) -> Result<Vec<Grant>> {
        validate_principal(&grant.principal)?;
        if self.auth.principals_need_a_tenant() && !grant.principal.contains('@') {
            // Stored, it would match no caller, and the grantee would be denied with
            // nothing to say why.
            let example = caller.tenant.as_deref().filter(|_| caller.foreign).unwrap_or("<tenant id>");
            return Err(RegistryError::BadRequest(format!(
                "a grant to '{p}' would match nobody: this registry accepts tokens of several tenants and has no \
                 home_tenant, so every caller is known with its tenant; grant '{p}@{example}' (the tenant's id, \
                 the token's tid), or set [auth.oidc] home_tenant for the tenant whose principals go bare",
                p = grant.principal
            )));
        }
        self.authorize(caller, model, Need::Manage).await?;
        self.store.put_grant(model, &grant.principal, grant.permission, &caller.subject).await?;
        self.audit(
            caller,
            "grant.put",
            Some(model),
            serde_json::json!({"principal": grant.principal, "permission": grant.permission}),
        )
        .await;
        self.store.list_grants(model).await
    }

    pub async fn delete_grant(&self, caller: &Caller, model: &str, principal: &str) -> Result<()> {
        self.authorize(caller, model, Need::Manage).await?;
        self.store.delete_grant(model, principal).await?;
        self.audit(caller, "grant.delete", Some(model), serde_json::json!({"principal": principal})).await;
        Ok(())
    }

    /// The audit log of writes, newest first (admins only).
    pub async fn list_audit(
        &self,
        caller: &Caller,
        model: Option<&str>,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<Page<AuditEntry>> {
        caller.require(Role::Admin, "reading the audit log")?;
        let before = page_token
            .map(|t| {
                decode_page_token(t)
                    .and_then(|s| s.parse::<i64>().map_err(|_| RegistryError::BadRequest("invalid page_token".into())))
            })
            .transpose()?;
        let page = self.store.list_audit(model, checked_page_size(page_size)?, before).await?;
        Ok(encode_next_page(page))
    }

    // ---- maintenance ---------------------------------------------------------------------------

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

    /// Every stored artifact's sha256 (what `gc` looks at).
    pub async fn stored_artifacts(&self) -> Result<Vec<String>> {
        self.artifacts.list().map_ok(|(sha, _)| sha).try_collect().await
    }

    /// Readiness: database and storage both answer, and tokens can be validated.
    pub async fn check_ready(&self) -> Result<()> {
        self.store.ping().await?;
        self.artifacts.check().await?;
        self.auth.check_ready().await
    }

    // ---- the rules every operation goes through ------------------------------------------------

    /// Checks that `caller` may do `need` with `model` (404 when the model does not exist,
    /// 403 when it exists but the caller may not).
    async fn authorize(&self, caller: &Caller, model: &str, need: Need) -> Result<()> {
        if self.global_role_suffices(caller, need) {
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
            Err(caller.forbidden(format!("{} may not {verb} model '{model}'", caller.subject)))
        }
    }

    /// For a listing: `None` when the caller's global role reads every model, else the
    /// principals whose grants (besides the models it owns) make a model visible to it.
    fn readable_through_grants(&self, caller: &Caller) -> Option<Vec<String>> {
        (!self.global_role_suffices(caller, Need::Read)).then(|| caller.principals())
    }

    /// Whether the caller's global role alone allows `need` on any model. With
    /// `default_permission = "granted"` only admins reach models they neither own nor
    /// were granted.
    fn global_role_suffices(&self, caller: &Caller, need: Need) -> bool {
        let global = match (need, self.auth.default_permission()) {
            (Need::Read, DefaultPermission::Global) => Role::Reader,
            (Need::Write, DefaultPermission::Global) => Role::Writer,
            (Need::Manage, _) | (_, DefaultPermission::Granted) => Role::Admin,
        };
        caller.at_least(global)
    }

    /// Records a write in the audit log. The write has happened: a failure to record it is
    /// logged loudly rather than turned into an error for the caller.
    /// Every write goes through here once it has committed, so this is also where cached
    /// resolutions are dropped.
    async fn audit(&self, caller: &Caller, action: &str, model: Option<&str>, detail: serde_json::Value) {
        self.resolved.invalidate();
        if let Err(e) = self.store.record_audit(&caller.subject, action, model, &detail).await {
            tracing::error!(error = %e, action, model, principal = %caller.subject, "could not write the audit log");
        }
    }

    /// Deletes an artifact no version row references any more. Best effort: what is left
    /// behind (storage or database down) is found later by `gc`.
    async fn remove_if_unreferenced(&self, sha256: &str) {
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
}

/// A version number in a URL path or a page token.
pub fn parse_version(text: &str) -> Result<i64> {
    Ok(lakescore_core::reference::parse_version(text)?)
}

fn checked_page_size(requested: Option<i64>) -> Result<i64> {
    match requested {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(n) => Err(RegistryError::BadRequest(format!("page_size must be 1..={MAX_PAGE_SIZE}, got {n}"))),
    }
}

/// Page tokens are opaque to callers: the store's cursor, base64url-encoded.
fn encode_next_page<T>(page: Page<T>) -> Page<T> {
    let next_page_token = page.next_page_token.map(|raw| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    Page { items: page.items, next_page_token }
}

fn decode_page_token(token: &str) -> Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| RegistryError::BadRequest("invalid page_token".into()))
}

/// Tag keys as MLflow bounds them: 1 to 250 characters.
fn validate_tag_key(key: &str) -> Result<()> {
    if key.is_empty() || key.chars().count() > 250 {
        return Err(RegistryError::BadRequest(format!("invalid tag key '{key}': 1 to 250 characters")));
    }
    Ok(())
}

fn validate_principal(p: &str) -> Result<()> {
    let ok = ["user:", "group:", "role:", "app:"].iter().any(|k| p.strip_prefix(k).is_some_and(|v| !v.is_empty()));
    if ok && p.len() <= 256 {
        Ok(())
    } else {
        Err(RegistryError::BadRequest(format!(
            "invalid principal '{p}': use user:<oid>, group:<object id>, role:<app role> or app:<client id>"
        )))
    }
}

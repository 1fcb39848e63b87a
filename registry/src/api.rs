//! The REST API (axum): thin handlers over [`Registry`], the OpenAPI document, health,
//! readiness and metrics.

use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::TryStreamExt;
use lakescore_core::wire::{
    AliasChange, AliasHistory, AliasRecord, AuditEntry, AuditList, CreateModel, Grant, Model, ModelList, ModelVersion,
    Permission, PutGrant, SetAlias, UpdateFields, VersionList, VersionMetadata, VersionStatus,
};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use crate::auth::Caller;
use crate::error::{Problem, RegistryError, Result};
use crate::metrics;
use crate::service::{parse_version, Created, Registry, UploadOptions};

/// JSON body extractor whose rejections are problem+json.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(RegistryError))]
pub struct ApiJson<T>(pub T);

/// Query-string extractor whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(RegistryError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(RegistryError))]
pub struct ApiPath<T>(pub T);

impl From<JsonRejection> for RegistryError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => {
                RegistryError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            other => RegistryError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for RegistryError {
    fn from(r: QueryRejection) -> Self {
        RegistryError::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for RegistryError {
    fn from(r: PathRejection) -> Self {
        RegistryError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::multipart::MultipartError> for RegistryError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        RegistryError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

impl From<axum::Error> for RegistryError {
    fn from(e: axum::Error) -> Self {
        RegistryError::BadRequest(format!("the request body could not be read: {e}"))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lakescore registry", description = "Versioned ONNX model registry"),
    paths(
        create_model,
        list_models,
        get_model,
        update_model,
        delete_model,
        create_version,
        list_versions,
        get_version,
        update_version,
        archive_version,
        get_artifact,
        put_alias,
        get_alias,
        delete_alias,
        alias_history,
        resolve,
        list_grants,
        put_grant,
        delete_grant,
        list_audit,
        healthz,
        readyz,
        metrics_endpoint
    ),
    components(schemas(
        Model,
        ModelVersion,
        VersionStatus,
        CreateModel,
        UpdateFields,
        SetAlias,
        AliasRecord,
        AliasChange,
        AliasHistory,
        ModelList,
        VersionList,
        Problem,
        VersionMetadata,
        crate::onnx::Signature,
        crate::onnx::ValueInfo,
        crate::onnx::OpsetImport,
        Grant,
        Permission,
        PutGrant,
        AuditEntry,
        AuditList
    ))
)]
pub struct ApiDoc;

pub fn router(registry: Registry) -> Router {
    let api = Router::new()
        .route("/models", post(create_model).get(list_models))
        .route("/models/{name}", get(get_model).patch(update_model).delete(delete_model))
        .route(
            "/models/{name}/versions",
            // Uploads enforce their own, configurable cap while streaming.
            post(create_version).get(list_versions).layer(DefaultBodyLimit::disable()),
        )
        .route("/models/{name}/versions/{version}", get(get_version).patch(update_version).delete(archive_version))
        .route("/models/{name}/versions/{version}/artifact", get(get_artifact))
        .route("/models/{name}/aliases/{alias}", put(put_alias).get(get_alias).delete(delete_alias))
        .route("/models/{name}/aliases/{alias}/history", get(alias_history))
        .route("/models/{name}/grants", get(list_grants).put(put_grant).delete(delete_grant))
        .route("/resolve/{reference}", get(resolve))
        .route("/audit", get(list_audit))
        .layer(middleware::from_fn_with_state(registry.authenticator().clone(), crate::auth::middleware))
        // The API description is public, like the health endpoints (also under the base,
        // where the design's table lists them).
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint));
    // The gRPC service for workers shares the port: its paths are its own, and requests
    // are told apart by path (HTTP/2 without TLS, h2c, is accepted beside HTTP/1.1).
    let grpc = crate::grpc::GrpcRegistry::server(registry.clone());
    let grpc_path = format!("/{}/{{*method}}", <crate::grpc::Server as tonic::server::NamedService>::NAME);
    Router::new()
        .route_service(&grpc_path, tower::ServiceExt::map_request(grpc, |req: Request| req.map(tonic::body::Body::new)))
        .nest("/api/v1", api)
        .nest("/api/2.0", crate::mlflow::router(registry.clone()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .fallback(|| async { RegistryError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn(limit_headers))
        .layer(middleware::from_fn(track_metrics))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(registry)
}

/// Requests whose headers are over [`crate::MAX_HEADER_LIST_BYTES`] are answered alone
/// (431 problem+json, or `RESOURCE_EXHAUSTED` for gRPC); the transport takes a few times that
/// before it would close the connection and every other request on it.
async fn limit_headers(req: Request, next: Next) -> Response {
    let size = lakescore_core::error::header_list_bytes(req.headers());
    let limit = crate::MAX_HEADER_LIST_BYTES as usize;
    if size <= limit {
        return next.run(req).await;
    }
    let error = RegistryError::HeadersTooLarge(format!(
        "the request's headers take {size} bytes, over the registry's limit of {limit}; a bearer token this large \
         usually lists too many groups: emit app roles, or only the groups assigned to the application"
    ));
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return error.code().status(error.to_string()).into_http();
    }
    error.into_response()
}

async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let response = next.run(req).await;
    metrics::record_http(&method, &route, response.status().as_u16(), start.elapsed());
    response
}

// ---- request and response bodies ----------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListModelsQuery {
    /// e.g. `name LIKE 'fraud%' AND tags.team = 'risk'` (fields: name, description, tags.<key>;
    /// operators: =, !=, LIKE; conditions joined with AND).
    pub filter: Option<String>,
    /// 1..=1000, default 100.
    pub page_size: Option<i64>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListVersionsQuery {
    /// `ready` or `archived`; default: both.
    pub status: Option<VersionStatus>,
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteModelQuery {
    /// Also delete the model's versions and their artifacts.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct UploadQuery {
    /// Answer a ready version of this model whose artifact has the same sha256 (200)
    /// instead of registering another one.
    #[serde(default)]
    pub reuse_existing: bool,
}

/// The client's `Idempotency-Key` header: a retry with the same key and request gets the
/// first answer again (for a day).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| RegistryError::BadRequest("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()
}

/// A created resource as the response: its status, and `Idempotent-Replayed: true` on a
/// replay of an earlier answer.
fn created<T: serde::Serialize>(created: Created<T>) -> Response {
    let status = StatusCode::from_u16(created.status).unwrap_or(StatusCode::CREATED);
    let mut response = (status, Json(created.value)).into_response();
    if created.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

// ---- models ---------------------------------------------------------------------------

/// Create a registered model.
#[utoipa::path(post, path = "/api/v1/models", request_body = CreateModel, tag = "models",
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body get the first answer")),
    responses((status = 201, body = Model), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
async fn create_model(
    State(reg): State<Registry>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateModel>,
) -> Result<Response> {
    let key = idempotency_key(&headers)?;
    Ok(created(reg.create_model(&caller, &body, key.as_deref()).await?))
}

/// List and search registered models, ordered by name.
#[utoipa::path(get, path = "/api/v1/models", params(ListModelsQuery), tag = "models",
    responses((status = 200, body = ModelList), (status = 400, body = Problem)))]
async fn list_models(
    State(reg): State<Registry>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListModelsQuery>,
) -> Result<Json<ModelList>> {
    let filter = q.filter.as_deref().unwrap_or("");
    let mut list: ModelList = reg.list_models(&caller, filter, q.page_size, q.page_token.as_deref()).await?.into();
    if reg.lists_through_grants(&caller) {
        list.warnings = caller.listing_warnings();
    }
    Ok(Json(list))
}

/// One registered model.
#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    responses((status = 200, body = Model), (status = 404, body = Problem)))]
async fn get_model(State(reg): State<Registry>, caller: Caller, ApiPath(name): ApiPath<String>) -> Result<Json<Model>> {
    Ok(Json(reg.get_model(&caller, &name).await?))
}

/// Change a model's description or tags.
#[utoipa::path(patch, path = "/api/v1/models/{name}", request_body = UpdateFields, tag = "models",
    responses((status = 200, body = Model), (status = 404, body = Problem)))]
async fn update_model(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateFields>,
) -> Result<Json<Model>> {
    Ok(Json(reg.update_model(&caller, &name, &body).await?))
}

/// Delete a model. Refused (409) while it has versions, unless `force=true`.
#[utoipa::path(delete, path = "/api/v1/models/{name}", params(DeleteModelQuery), tag = "models",
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn delete_model(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteModelQuery>,
) -> Result<StatusCode> {
    reg.delete_model(&caller, &name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- versions -------------------------------------------------------------------------

/// Upload a new version. Body: the ONNX bytes (`application/octet-stream`), or
/// `multipart/form-data` with parts `metadata` (JSON: description, tags) and `artifact`.
#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "versions",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(UploadQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and artifact get the first answer")),
    responses((status = 201, body = ModelVersion), (status = 200, description = "reuse_existing: an existing version with the same sha256", body = ModelVersion),
        (status = 404, body = Problem), (status = 413, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
async fn create_version(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Response> {
    let options =
        UploadOptions { reuse_existing: query.reuse_existing, idempotency_key: idempotency_key(request.headers())? };
    // Fail fast, before reading a possibly large body.
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    reg.check_upload(&caller, &name, declared).await?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let mime = content_type.split(';').next().unwrap_or("").trim().to_string();
    let (upload, meta) = match mime.as_str() {
        "application/octet-stream" | "application/onnx" | "application/x-onnx" => {
            (reg.spool(request.into_body().into_data_stream()).await?, VersionMetadata::default())
        }
        "multipart/form-data" => {
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|e| RegistryError::BadRequest(format!("malformed multipart body: {}", e.body_text())))?;
            let mut upload = None;
            let mut meta = VersionMetadata::default();
            while let Some(field) = multipart.next_field().await? {
                match field.name().unwrap_or("") {
                    "artifact" if upload.is_none() => {
                        upload = Some(reg.spool(field.map_err(RegistryError::from)).await?)
                    }
                    "metadata" => {
                        let text = field.text().await?;
                        meta = serde_json::from_str(&text)
                            .map_err(|e| RegistryError::BadRequest(format!("invalid metadata part: {e}")))?;
                    }
                    other => {
                        return Err(RegistryError::BadRequest(format!(
                            "unexpected multipart part '{other}' (expected 'metadata' and one 'artifact')"
                        )))
                    }
                }
            }
            let upload =
                upload.ok_or_else(|| RegistryError::BadRequest("the multipart body has no 'artifact' part".into()))?;
            (upload, meta)
        }
        "" => {
            return Err(RegistryError::UnsupportedMediaType(
                "missing Content-Type: send application/octet-stream or multipart/form-data".into(),
            ))
        }
        other => {
            return Err(RegistryError::UnsupportedMediaType(format!(
                "Content-Type '{other}' is not accepted: send application/octet-stream or multipart/form-data"
            )))
        }
    };
    Ok(created(reg.create_version(&caller, &name, upload, &meta, &options).await?))
}

/// A model's versions, oldest first.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions", params(ListVersionsQuery), tag = "versions",
    responses((status = 200, body = VersionList), (status = 404, body = Problem)))]
async fn list_versions(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListVersionsQuery>,
) -> Result<Json<VersionList>> {
    let page = reg.list_versions(&caller, &name, q.status, q.page_size, q.page_token.as_deref()).await?;
    Ok(Json(page.into()))
}

/// One version.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    responses((status = 200, body = ModelVersion), (status = 404, body = Problem)))]
async fn get_version(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Json<ModelVersion>> {
    Ok(Json(reg.get_version(&caller, &name, parse_version(&version)?).await?))
}

/// Change a version's description or tags (the artifact itself never changes).
#[utoipa::path(patch, path = "/api/v1/models/{name}/versions/{version}", request_body = UpdateFields, tag = "versions",
    responses((status = 200, body = ModelVersion), (status = 404, body = Problem)))]
async fn update_version(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<UpdateFields>,
) -> Result<Json<ModelVersion>> {
    Ok(Json(reg.update_version(&caller, &name, parse_version(&version)?, &body).await?))
}

/// Archive a version (soft delete): still resolvable as `name:N`, never as `name` or by alias.
#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "versions",
    responses((status = 200, body = ModelVersion), (status = 404, body = Problem)))]
async fn archive_version(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Json<ModelVersion>> {
    Ok(Json(reg.archive_version(&caller, &name, parse_version(&version)?).await?))
}

/// The version's ONNX bytes. `ETag` is the sha256; single `Range` requests are honoured.
#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}/artifact", tag = "versions",
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"), (status = 304, description = "If-None-Match matched"),
        (status = 404, body = Problem), (status = 416, body = Problem)))]
async fn get_artifact(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, version)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let artifact = reg.artifact(&caller, &name, parse_version(&version)?).await?;
    artifact_response(&artifact, &headers).await
}

/// An artifact as an HTTP response: `ETag` (its sha256), `If-None-Match`, and `Range`
/// (with `If-Range`).
pub(crate) async fn artifact_response(artifact: &crate::service::Artifact, headers: &HeaderMap) -> Result<Response> {
    let v = &artifact.version;
    let etag = format!("\"{}\"", v.sha256);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let size = v.size as u64;
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, max-age=31536000, immutable");
    if not_modified {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(|e| RegistryError::Internal(e.to_string()));
    }
    // A Range with a stale If-Range validator gets the whole file.
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|h| h.to_str().ok()).is_none_or(|h| h.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|h| h.to_str().ok()) {
        Some(r) if if_range_ok => Some(parse_range(r, size)?),
        _ => None,
    };
    let (status, start, end) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.start, r.end),
        None => (StatusCode::OK, 0, size),
    };
    let stream = artifact.stream(range.clone()).await?;
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
    }
    let filename = format!("{}-v{}.onnx", v.model, v.version);
    response
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\""))
        .body(Body::from_stream(stream))
        .map_err(|e| RegistryError::Internal(e.to_string()))
}

/// Parses one `bytes=` range (`a-b`, `a-`, `-n`) into a half-open range within `size`.
fn parse_range(header: &str, size: u64) -> Result<std::ops::Range<u64>> {
    let unsatisfiable =
        || RegistryError::RangeNotSatisfiable(format!("range '{header}' is not satisfiable for {size} bytes"));
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| RegistryError::RangeNotSatisfiable(format!("only byte ranges are supported, got '{header}'")))?;
    if spec.contains(',') {
        return Err(RegistryError::RangeNotSatisfiable("multiple ranges are not supported".into()));
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            size.saturating_sub(n)..size
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
            let end = if b.is_empty() {
                size
            } else {
                b.parse::<u64>().map_err(|_| unsatisfiable())?.saturating_add(1).min(size)
            };
            start..end
        }
        (true, true) => return Err(unsatisfiable()),
    };
    if range.start >= range.end || range.start >= size {
        return Err(unsatisfiable());
    }
    Ok(range)
}

// ---- aliases and resolution -----------------------------------------------------------

/// Point an alias at a version (creates or moves it atomically).
#[utoipa::path(put, path = "/api/v1/models/{name}/aliases/{alias}", request_body = SetAlias, tag = "aliases",
    responses((status = 200, body = AliasRecord), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn put_alias(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, alias)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<SetAlias>,
) -> Result<Json<AliasRecord>> {
    Ok(Json(reg.set_alias(&caller, &name, &alias, body.version).await?))
}

/// Which version an alias points at.
#[utoipa::path(get, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    responses((status = 200, body = AliasRecord), (status = 404, body = Problem)))]
async fn get_alias(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, alias)): ApiPath<(String, String)>,
) -> Result<Json<AliasRecord>> {
    Ok(Json(reg.get_alias(&caller, &name, &alias).await?))
}

/// Remove an alias.
#[utoipa::path(delete, path = "/api/v1/models/{name}/aliases/{alias}", tag = "aliases",
    responses((status = 204), (status = 404, body = Problem)))]
async fn delete_alias(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, alias)): ApiPath<(String, String)>,
) -> Result<StatusCode> {
    reg.delete_alias(&caller, &name, &alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResolveQuery {
    /// Resolve as of this time (RFC 3339, e.g. `2026-11-01T00:00:00Z`): an alias to the
    /// version it pointed at then, a bare name to the newest version registered by then.
    pub at: Option<String>,
}

/// Resolve `name` (latest ready version), `name:7` or `name@alias` to a version record,
/// now or as of `at`.
#[utoipa::path(get, path = "/api/v1/resolve/{reference}", params(ResolveQuery), tag = "versions",
    responses((status = 200, body = ModelVersion), (status = 400, body = Problem), (status = 404, body = Problem)))]
async fn resolve(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(reference): ApiPath<String>,
    ApiQuery(q): ApiQuery<ResolveQuery>,
) -> Result<Json<ModelVersion>> {
    Ok(Json(match q.at.as_deref() {
        Some(at) => reg.resolve_at(&caller, &reference, at).await?,
        None => reg.resolve(&caller, &reference).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
}

/// Every change to an alias, newest first: who moved it, when, from which version to
/// which (null: created, or removed).
#[utoipa::path(get, path = "/api/v1/models/{name}/aliases/{alias}/history", params(PageQuery), tag = "aliases",
    responses((status = 200, body = AliasHistory), (status = 404, body = Problem)))]
async fn alias_history(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath((name, alias)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<AliasHistory>> {
    Ok(Json(reg.alias_history(&caller, &name, &alias, q.page_size, q.page_token.as_deref()).await?.into()))
}

// ---- grants and audit -----------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteGrantQuery {
    pub principal: String,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only entries about this model.
    pub model: Option<String>,
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
}

/// Who may use a model beyond the global roles (owner or admin only).
#[utoipa::path(get, path = "/api/v1/models/{name}/grants", tag = "grants",
    responses((status = 200, body = Vec<Grant>), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn list_grants(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<Grant>>> {
    Ok(Json(reg.list_grants(&caller, &name).await?))
}

/// Grant a principal `read` or `write` on the model (owner or admin only).
#[utoipa::path(put, path = "/api/v1/models/{name}/grants", request_body = PutGrant, tag = "grants",
    responses((status = 200, body = Vec<Grant>), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn put_grant(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutGrant>,
) -> Result<Json<Vec<Grant>>> {
    Ok(Json(reg.put_grant(&caller, &name, &body).await?))
}

/// Remove a principal's grant (owner or admin only).
#[utoipa::path(delete, path = "/api/v1/models/{name}/grants", params(DeleteGrantQuery), tag = "grants",
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_grant(
    State(reg): State<Registry>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteGrantQuery>,
) -> Result<StatusCode> {
    reg.delete_grant(&caller, &name, &q.principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log of writes, newest first (admins only).
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), tag = "audit",
    responses((status = 200, body = AuditList), (status = 403, body = Problem)))]
async fn list_audit(
    State(reg): State<Registry>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>> {
    let page = reg.list_audit(&caller, q.model.as_deref(), q.page_size, q.page_token.as_deref()).await?;
    Ok(Json(page.into()))
}

// ---- operations -----------------------------------------------------------------------

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the database and object storage answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = Problem)))]
async fn readyz(State(reg): State<Registry>) -> Result<&'static str> {
    reg.check_ready().await?;
    Ok("ready")
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
async fn metrics_endpoint() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], metrics::render())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).ok(), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100).ok(), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100).ok(), Some(90..100));
        assert_eq!(parse_range("bytes=95-200", 100).ok(), Some(95..100));
        for bad in ["bytes=100-", "bytes=5-2", "bytes=-0", "items=0-1", "bytes=0-1,3-4", "bytes=x-"] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}

//! MLflow's model-registry REST API (`/api/2.0/mlflow/…`) and the part of its artifact
//! proxy (`/api/2.0/mlflow-artifacts/…`) that loading a registered model reads, so that
//! MLflow's own clients work against lakescore with only `MLFLOW_TRACKING_URI` changed.
//!
//! Each handler decodes MLflow's request, calls the same [`Registry`] operation as
//! lakescore's API (so the same grants and the same audit), and encodes MLflow's answer;
//! errors are MLflow's `{error_code, message}`. What MLflow models and lakescore does not
//! (runs, stages, renames) is refused with a message that says what to do instead.
//!
//! Every version is presented as an MLflow model directory: `MLmodel` (flavors `onnx` and
//! `python_function`, the signature lakescore read from the ONNX file) and `model.onnx`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use axum::{Json, Router};
use lakescore_core::wire::{Dim, Model, ModelVersion, Page, UpdateFields, ValueInfo, VersionStatus};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::auth::{Authenticator, Caller};
use crate::error::RegistryError;
use crate::service::{parse_version, Registry, MAX_PAGE_SIZE};
use lakescore_core::ErrorCode;

/// Where MLflow's clients find a version's model directory: `mlflow-artifacts:/<this>/<name>/<version>`.
const MODELS_ARTIFACT_ROOT: &str = "lakescore-models";
/// The files of a version's model directory.
const MLMODEL_FILE: &str = "MLmodel";
const ONNX_FILE: &str = "model.onnx";
/// Results per search page when the request names no `max_results`, as MLflow's server.
const DEFAULT_MAX_RESULTS: i64 = 100;

/// The routes, relative to `/api/2.0` (the registry nests them there).
pub fn router(registry: Registry) -> Router<Registry> {
    Router::new()
        .route("/mlflow/registered-models/create", post(create_registered_model))
        .route("/mlflow/registered-models/get", get(get_registered_model))
        .route("/mlflow/registered-models/search", get(search_registered_models))
        .route("/mlflow/registered-models/update", patch(update_registered_model))
        .route("/mlflow/registered-models/rename", post(rename_registered_model))
        .route("/mlflow/registered-models/delete", delete(delete_registered_model))
        .route("/mlflow/registered-models/set-tag", post(set_registered_model_tag))
        .route("/mlflow/registered-models/delete-tag", delete(delete_registered_model_tag))
        .route("/mlflow/registered-models/alias", get(get_model_version_by_alias).post(set_alias).delete(delete_alias))
        .route("/mlflow/registered-models/get-latest-versions", get(get_latest_versions).post(get_latest_versions))
        .route("/mlflow/model-versions/create", post(create_model_version))
        .route("/mlflow/model-versions/get", get(get_model_version))
        .route("/mlflow/model-versions/search", get(search_model_versions))
        .route("/mlflow/model-versions/update", patch(update_model_version))
        .route("/mlflow/model-versions/delete", delete(delete_model_version))
        .route("/mlflow/model-versions/set-tag", post(set_model_version_tag))
        .route("/mlflow/model-versions/delete-tag", delete(delete_model_version_tag))
        .route("/mlflow/model-versions/get-download-uri", get(get_download_uri))
        .route("/mlflow/model-versions/transition-stage", post(transition_stage))
        .route("/mlflow-artifacts/artifacts", get(list_artifacts))
        .route("/mlflow-artifacts/artifacts/{*path}", get(download_artifact))
        // The rest of MLflow's API (experiments, runs, logged models, uploads): refused in
        // MLflow's shape, so its client shows why.
        .route("/mlflow/{*rest}", any(unsupported_endpoint))
        .route("/mlflow-artifacts/{*rest}", any(unsupported_endpoint))
        .method_not_allowed_fallback(unsupported_endpoint)
        .layer(middleware::from_fn_with_state(registry.authenticator().clone(), authenticate))
}

// ---- errors -----------------------------------------------------------------------------

/// An error in MLflow's shape: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": …}`,
/// with the HTTP status MLflow's server gives that code.
#[derive(Debug)]
pub struct MlflowError {
    code: &'static str,
    status: StatusCode,
    message: String,
}

type Result<T, E = MlflowError> = std::result::Result<T, E>;

impl MlflowError {
    fn invalid(message: impl Into<String>) -> Self {
        Self { code: "INVALID_PARAMETER_VALUE", status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl From<RegistryError> for MlflowError {
    fn from(e: RegistryError) -> Self {
        // MLflow's codes and the statuses its server answers them with
        // (mlflow/server/handlers.py, mlflow/protos/databricks.proto).
        let (code, status) = match e.code() {
            ErrorCode::NotFound => ("RESOURCE_DOES_NOT_EXIST", StatusCode::NOT_FOUND),
            ErrorCode::Unauthenticated => ("UNAUTHENTICATED", StatusCode::UNAUTHORIZED),
            ErrorCode::PermissionDenied => ("PERMISSION_DENIED", StatusCode::FORBIDDEN),
            ErrorCode::Conflict => ("RESOURCE_ALREADY_EXISTS", StatusCode::BAD_REQUEST),
            ErrorCode::FailedPrecondition | ErrorCode::Locked => ("INVALID_STATE", StatusCode::BAD_REQUEST),
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded => {
                ("TEMPORARILY_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE)
            }
            ErrorCode::ResourceExhausted | ErrorCode::HeadersTooLarge => {
                ("REQUEST_LIMIT_EXCEEDED", StatusCode::TOO_MANY_REQUESTS)
            }
            ErrorCode::Internal => ("INTERNAL_ERROR", StatusCode::INTERNAL_SERVER_ERROR),
            _ => ("INVALID_PARAMETER_VALUE", StatusCode::BAD_REQUEST),
        };
        Self { code, status, message: e.to_string() }
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(error = %self.message, code = self.code, "MLflow API request failed");
        } else {
            tracing::debug!(error = %self.message, code = self.code, "MLflow API request rejected");
        }
        let mut response =
            (self.status, Json(json!({"error_code": self.code, "message": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The registry's authentication, with refusals in MLflow's shape.
async fn authenticate(State(auth): State<Authenticator>, mut req: Request, next: Next) -> Response {
    match crate::auth::authenticate_request(&auth, "mlflow", &mut req).await {
        Ok(()) => next.run(req).await,
        Err(e) => MlflowError::from(e).into_response(),
    }
}

async fn unsupported_endpoint(
    method: Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> MlflowError {
    MlflowError {
        code: "ENDPOINT_NOT_FOUND",
        status: StatusCode::NOT_FOUND,
        message: format!(
            "{method} {} is not served: lakescore serves MLflow's model registry (registered models, model \
             versions, aliases, tags) and downloads of registered models; experiments, runs and artifact uploads \
             are not. Register versions with lakescore's API (`lakescore models upload`, the Python client's \
             Registry.upload), then load them here as models:/<name>/<version> or models:/<name>@<alias>",
            uri.path()
        ),
    }
}

// ---- requests -----------------------------------------------------------------------------

/// An MLflow request's parameters: the query string (GET, as MLflow's client sends them)
/// and the JSON body (POST, PATCH, DELETE), in one map.
pub struct Params(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut map = Map::new();
        if let Some(query) = req.uri().query() {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                match map.get_mut(k.as_ref()) {
                    // A repeated key (`order_by=a&order_by=b`) is a list.
                    Some(Value::Array(items)) => items.push(Value::String(v.into_owned())),
                    Some(first) => *first = Value::Array(vec![first.take(), Value::String(v.into_owned())]),
                    None => {
                        map.insert(k.into_owned(), Value::String(v.into_owned()));
                    }
                }
            }
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| MlflowError::invalid(format!("the request body could not be read: {e}")))?;
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(fields)) => map.extend(fields),
                Ok(_) => return Err(MlflowError::invalid("the request body must be a JSON object")),
                Err(e) => return Err(MlflowError::invalid(format!("the request body is not valid JSON: {e}"))),
            }
        }
        Ok(Self(map))
    }
}

impl Params {
    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Array(items)) if items.len() == 1 => match &items[0] {
                Value::String(s) => Ok(Some(s.clone())),
                other => Ok(Some(other.to_string())),
            },
            Some(other) => Err(MlflowError::invalid(format!("'{key}' must be a string, got {other}"))),
        }
    }

    fn str(&self, key: &str) -> Result<String> {
        self.opt_str(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| MlflowError::invalid(format!("Missing value for required parameter '{key}'.")))
    }

    fn version(&self) -> Result<i64> {
        Ok(parse_version(&self.str("version")?)?)
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.opt_str(key)?
            .map(|s| {
                s.parse::<i64>().map_err(|_| MlflowError::invalid(format!("'{key}' must be an integer, got '{s}'")))
            })
            .transpose()
    }

    /// A repeated field: absent, one value, or a list.
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(MlflowError::invalid(format!("'{key}' must hold strings, got {other}"))),
                })
                .collect(),
            Some(other) => Err(MlflowError::invalid(format!("'{key}' must be a list of strings, got {other}"))),
        }
    }

    /// MLflow's `tags`: `[{"key": …, "value": …}]`.
    fn tags(&self) -> Result<BTreeMap<String, String>> {
        let mut tags = BTreeMap::new();
        match self.0.get("tags") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let key = item.get("key").and_then(Value::as_str);
                    let value = item.get("value").and_then(Value::as_str).unwrap_or("");
                    let key = key.ok_or_else(|| MlflowError::invalid("every tag needs a string 'key'"))?;
                    tags.insert(key.to_string(), value.to_string());
                }
            }
            Some(other) => {
                return Err(MlflowError::invalid(format!("'tags' must be a list of {{key, value}}, got {other}")))
            }
        }
        Ok(tags)
    }

    /// `max_results` (default 100; more than lakescore's page limit gets a full page and
    /// a `next_page_token`, which MLflow's fluent search follows) and `page_token`.
    fn page(&self) -> Result<(i64, Option<String>)> {
        let max = self.opt_i64("max_results")?.unwrap_or(DEFAULT_MAX_RESULTS);
        if max < 1 {
            return Err(MlflowError::invalid(format!("max_results must be positive, got {max}")));
        }
        Ok((max.min(MAX_PAGE_SIZE), self.opt_str("page_token")?.filter(|t| !t.is_empty())))
    }
}

// ---- MLflow's entities -----------------------------------------------------------------------

#[derive(Serialize)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Serialize)]
struct RegisteredModelAlias {
    alias: String,
    version: String,
}

#[derive(Serialize)]
struct RegisteredModel {
    name: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    user_id: String,
    description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    latest_versions: Vec<MlflowVersion>,
    tags: Vec<KeyValue>,
    aliases: Vec<RegisteredModelAlias>,
}

#[derive(Serialize)]
struct MlflowVersion {
    name: String,
    version: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    user_id: String,
    current_stage: &'static str,
    description: String,
    source: String,
    run_id: String,
    status: &'static str,
    status_message: String,
    tags: Vec<KeyValue>,
    run_link: String,
    aliases: Vec<String>,
}

/// Milliseconds since the epoch of a stored RFC 3339 time (0 if it does not parse, which
/// the registry never writes).
fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map(|t| t.timestamp_millis()).unwrap_or(0)
}

fn key_values(tags: &BTreeMap<String, String>) -> Vec<KeyValue> {
    tags.iter().map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() }).collect()
}

/// `mlflow-artifacts:/lakescore-models/<name>/<version>`: the version's model directory,
/// which MLflow's client downloads through this server's artifact proxy.
fn model_directory_uri(model: &str, version: i64) -> String {
    format!("mlflow-artifacts:/{MODELS_ARTIFACT_ROOT}/{model}/{version}")
}

impl From<&Model> for RegisteredModel {
    fn from(m: &Model) -> Self {
        Self {
            name: m.name.clone(),
            creation_timestamp: millis(&m.created_at),
            last_updated_timestamp: millis(&m.updated_at),
            user_id: m.created_by.clone(),
            description: m.description.clone(),
            latest_versions: Vec::new(),
            tags: key_values(&m.tags),
            aliases: m
                .aliases
                .iter()
                .map(|(alias, v)| RegisteredModelAlias { alias: alias.clone(), version: v.to_string() })
                .collect(),
        }
    }
}

impl From<&ModelVersion> for MlflowVersion {
    fn from(v: &ModelVersion) -> Self {
        let created = millis(&v.created_at);
        Self {
            name: v.model.clone(),
            version: v.version.to_string(),
            creation_timestamp: created,
            last_updated_timestamp: created,
            user_id: v.created_by.clone(),
            // MLflow's (deprecated) stages: an archived lakescore version is MLflow's
            // "Archived"; every other one has no stage.
            current_stage: match v.status {
                VersionStatus::Ready => "None",
                VersionStatus::Archived => "Archived",
            },
            description: v.description.clone(),
            source: model_directory_uri(&v.model, v.version),
            run_id: String::new(),
            status: "READY",
            status_message: String::new(),
            tags: key_values(&v.tags),
            run_link: String::new(),
            aliases: v.aliases.clone(),
        }
    }
}

fn version_json(v: &ModelVersion) -> Json<Value> {
    Json(json!({"model_version": MlflowVersion::from(v)}))
}

// ---- registered models -----------------------------------------------------------------------

async fn create_registered_model(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let body = lakescore_core::wire::CreateModel {
        name: p.str("name")?,
        description: p.opt_str("description")?.unwrap_or_default(),
        tags: p.tags()?,
    };
    let created = reg.create_model(&caller, &body, None).await?;
    Ok(Json(json!({"registered_model": RegisteredModel::from(&created.value)})))
}

async fn get_registered_model(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let model = reg.get_model(&caller, &p.str("name")?).await?;
    let mut registered = RegisteredModel::from(&model);
    if let Some(latest) = model.latest_version {
        let version = reg.get_version(&caller, &model.name, latest).await?;
        registered.latest_versions.push(MlflowVersion::from(&version));
    }
    Ok(Json(json!({"registered_model": registered})))
}

async fn search_registered_models(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let filter = p.opt_str("filter")?.unwrap_or_default();
    check_order_by(&p.strings("order_by")?, &["name"], "name")?;
    let (max_results, token) = p.page()?;
    let page = reg.list_models(&caller, &filter, Some(max_results), token.as_deref()).await?;
    let models: Vec<RegisteredModel> = page.items.iter().map(RegisteredModel::from).collect();
    Ok(Json(page_json("registered_models", models, page.next_page_token)))
}

async fn update_registered_model(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let fields = UpdateFields { description: p.opt_str("description")?, tags: None };
    let model = reg.update_model(&caller, &p.str("name")?, &fields).await?;
    Ok(Json(json!({"registered_model": RegisteredModel::from(&model)})))
}

async fn rename_registered_model(p: Params) -> Result<Json<Value>> {
    let name = p.str("name")?;
    Err(MlflowError::invalid(format!(
        "renaming '{name}' is not supported: a lakescore model's name is part of every reference to it (jobs, SQL \
         queries, Spark pipelines, aliases in use), which a rename would silently break. Register the versions \
         under the new name instead"
    )))
}

async fn delete_registered_model(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    // MLflow deletes a model together with its versions.
    reg.delete_model(&caller, &p.str("name")?, true).await?;
    Ok(Json(json!({})))
}

async fn set_registered_model_tag(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let value = p.opt_str("value")?.unwrap_or_default();
    reg.set_tag(&caller, &p.str("name")?, None, &p.str("key")?, Some(&value)).await?;
    Ok(Json(json!({})))
}

async fn delete_registered_model_tag(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    reg.set_tag(&caller, &p.str("name")?, None, &p.str("key")?, None).await?;
    Ok(Json(json!({})))
}

async fn set_alias(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    reg.set_alias(&caller, &p.str("name")?, &p.str("alias")?, p.version()?).await?;
    Ok(Json(json!({})))
}

async fn delete_alias(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    reg.delete_alias(&caller, &p.str("name")?, &p.str("alias")?).await?;
    Ok(Json(json!({})))
}

async fn get_model_version_by_alias(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let name = p.str("name")?;
    let alias = reg.get_alias(&caller, &name, &p.str("alias")?).await?;
    Ok(version_json(&reg.get_version(&caller, &name, alias.version).await?))
}

/// The latest version per stage: lakescore's versions are all in MLflow's stage "None"
/// (or "Archived"), so this is the newest ready version, if asked for.
async fn get_latest_versions(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let model = reg.get_model(&caller, &p.str("name")?).await?;
    let stages = p.strings("stages")?;
    let wanted = stages.is_empty() || stages.iter().any(|s| s.eq_ignore_ascii_case("none"));
    let mut versions = Vec::new();
    if let (true, Some(latest)) = (wanted, model.latest_version) {
        versions.push(MlflowVersion::from(&reg.get_version(&caller, &model.name, latest).await?));
    }
    Ok(Json(json!({"model_versions": versions})))
}

// ---- model versions --------------------------------------------------------------------------

async fn create_model_version(p: Params) -> Result<Json<Value>> {
    let name = p.str("name")?;
    Err(MlflowError::invalid(format!(
        "creating a version of '{name}' from an MLflow run's artifacts is not supported: lakescore registers the \
         ONNX file itself, checks it and reads its signature. Upload it with `lakescore models upload {name} \
         model.onnx`, the Python client's Registry.upload, or POST /api/v1/models/{name}/versions"
    )))
}

async fn get_model_version(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    Ok(version_json(&reg.get_version(&caller, &p.str("name")?, p.version()?).await?))
}

async fn search_model_versions(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let filter = p.opt_str("filter")?.unwrap_or_default();
    check_order_by(&p.strings("order_by")?, &["name", "version_number"], "name ASC, version_number DESC")?;
    let (max_results, token) = p.page()?;
    let page: Page<ModelVersion> = reg.search_versions(&caller, &filter, Some(max_results), token.as_deref()).await?;
    let versions: Vec<MlflowVersion> = page.items.iter().map(MlflowVersion::from).collect();
    Ok(Json(page_json("model_versions", versions, page.next_page_token)))
}

async fn update_model_version(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let fields = UpdateFields { description: p.opt_str("description")?, tags: None };
    Ok(version_json(&reg.update_version(&caller, &p.str("name")?, p.version()?, &fields).await?))
}

/// MLflow deletes a version; lakescore never deletes one (it stays for lineage, and
/// scored tables name it), so this archives it: it is no longer served by name or alias.
async fn delete_model_version(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    reg.archive_version(&caller, &p.str("name")?, p.version()?).await?;
    Ok(Json(json!({})))
}

async fn set_model_version_tag(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let value = p.opt_str("value")?.unwrap_or_default();
    reg.set_tag(&caller, &p.str("name")?, Some(p.version()?), &p.str("key")?, Some(&value)).await?;
    Ok(Json(json!({})))
}

async fn delete_model_version_tag(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    reg.set_tag(&caller, &p.str("name")?, Some(p.version()?), &p.str("key")?, None).await?;
    Ok(Json(json!({})))
}

async fn get_download_uri(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let version = reg.get_version(&caller, &p.str("name")?, p.version()?).await?;
    Ok(Json(json!({"artifact_uri": model_directory_uri(&version.model, version.version)})))
}

/// Stages are deprecated in MLflow in favour of aliases; "Archived" is the one lakescore
/// has (an archived version).
async fn transition_stage(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let (name, version, stage) = (p.str("name")?, p.version()?, p.str("stage")?);
    if !stage.eq_ignore_ascii_case("archived") {
        return Err(MlflowError::invalid(format!(
            "stage '{stage}' is not supported: lakescore uses aliases, as MLflow now recommends (e.g. \
             client.set_registered_model_alias('{name}', 'champion', {version})); the one stage it has is \
             'Archived'"
        )));
    }
    Ok(version_json(&reg.archive_version(&caller, &name, version).await?))
}

/// Checks MLflow's `order_by` against the one order lakescore lists in.
fn check_order_by(order_by: &[String], accepted: &[&str], order: &str) -> Result<()> {
    for clause in order_by {
        let mut words = clause.split_whitespace();
        let field = words.next().unwrap_or("");
        let direction = words.next().unwrap_or("ASC");
        let ascending_name = field == accepted[0] && direction.eq_ignore_ascii_case("asc");
        let descending_version = accepted.get(1).is_some_and(|f| *f == field) && direction.eq_ignore_ascii_case("desc");
        if !(ascending_name || descending_version) || words.next().is_some() {
            return Err(MlflowError::invalid(format!(
                "order_by '{clause}' is not supported: results come ordered by {order}"
            )));
        }
    }
    Ok(())
}

fn page_json<T: Serialize>(key: &str, items: Vec<T>, next_page_token: Option<String>) -> Value {
    let mut body = Map::new();
    body.insert(key.to_string(), serde_json::to_value(items).unwrap_or(Value::Null));
    if let Some(token) = next_page_token {
        body.insert("next_page_token".into(), Value::String(token));
    }
    Value::Object(body)
}

// ---- the model directory -----------------------------------------------------------------------

/// `lakescore-models/<name>/<version>[/<file>]` → (name, version, file).
fn parse_artifact_path(path: &str) -> Result<(String, i64, Option<String>)> {
    let not_found = || {
        MlflowError {
        code: "RESOURCE_DOES_NOT_EXIST",
        status: StatusCode::NOT_FOUND,
        message: format!(
            "no artifact '{path}': this server holds registered models only, as {MODELS_ARTIFACT_ROOT}/<name>/<version>/{{{MLMODEL_FILE},{ONNX_FILE}}}"
        ),
    }
    };
    let mut parts = path.trim_matches('/').split('/');
    if parts.next() != Some(MODELS_ARTIFACT_ROOT) {
        return Err(not_found());
    }
    let name = parts.next().ok_or_else(not_found)?.to_string();
    let version = parts.next().ok_or_else(not_found)?.parse::<i64>().map_err(|_| not_found())?;
    let file = parts.next().map(str::to_string);
    if parts.next().is_some() || file.as_deref().is_some_and(|f| f != MLMODEL_FILE && f != ONNX_FILE) {
        return Err(not_found());
    }
    Ok((name, version, file))
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=…`: the files of a version's model directory.
async fn list_artifacts(State(reg): State<Registry>, caller: Caller, p: Params) -> Result<Json<Value>> {
    let path = p.opt_str("path")?.unwrap_or_default();
    let (name, version, file) = parse_artifact_path(&path)?;
    let v = reg.get_version(&caller, &name, version).await?;
    if file.is_some() {
        // A file lists as nothing, as in MLflow's artifact stores.
        return Ok(Json(json!({})));
    }
    let mlmodel = mlmodel(&v).len();
    Ok(Json(json!({"files": [
        {"path": MLMODEL_FILE, "is_dir": false, "file_size": mlmodel},
        {"path": ONNX_FILE, "is_dir": false, "file_size": v.size},
    ]})))
}

/// `GET /api/2.0/mlflow-artifacts/artifacts/<path>`: `MLmodel` or `model.onnx`.
async fn download_artifact(
    State(reg): State<Registry>,
    caller: Caller,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let (name, version, file) = parse_artifact_path(&path)?;
    match file.as_deref() {
        Some(MLMODEL_FILE) => {
            let v = reg.get_version(&caller, &name, version).await?;
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], mlmodel(&v)).into_response())
        }
        Some(ONNX_FILE) => {
            let artifact = reg.artifact(&caller, &name, version).await?;
            Ok(crate::api::artifact_response(&artifact, &headers).await?)
        }
        _ => Err(MlflowError::invalid(format!("'{path}' is a directory; download its files"))),
    }
}

/// The version's `MLmodel`: flavors `onnx` and `python_function`, and the signature read
/// from the ONNX file. YAML, written as JSON (which YAML reads).
fn mlmodel(v: &ModelVersion) -> String {
    let mut doc = json!({
        "artifact_path": "model",
        "flavors": {
            "onnx": {
                "code": null,
                "data": ONNX_FILE,
                "onnx_version": v.signature.producer_version,
                // Without it the flavor asks for CUDA first, and warns where there is none.
                "providers": ["CPUExecutionProvider"],
            },
            "python_function": {
                "data": ONNX_FILE,
                "loader_module": "mlflow.onnx",
            },
        },
        "model_uuid": v.sha256.get(..32).unwrap_or(&v.sha256),
        "model_size_bytes": v.size,
        "utc_time_created": v.created_at,
        "metadata": {"lakescore_model": v.model, "lakescore_version": v.version, "sha256": v.sha256},
    });
    if let Some(signature) = mlflow_signature(v) {
        doc["signature"] = signature;
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// The signature as MLflow enforces it, where it can be written so that MLflow's own calls
/// work on it (none otherwise: MLflow then passes inputs through unchecked).
///
/// Inputs are tensor specs. One input is left unnamed, so that a pandas DataFrame's
/// columns become its matrix, as `pyfunc.predict(df)` and `spark_udf(array(cols))` give it;
/// a float input is declared `float64`, pandas' type, which the onnx flavor casts to the
/// model's `float32`. Outputs are column specs, one value (or array) per row, from which
/// `spark_udf` derives its result type; with an output that is not a tensor (ZipMap's
/// maps) there is no output signature.
fn mlflow_signature(v: &ModelVersion) -> Option<Value> {
    let single = v.signature.inputs.len() == 1;
    let inputs = v
        .signature
        .inputs
        .iter()
        .map(|input| {
            let (elem, shape) = tensor(input)?;
            let dtype = match elem {
                "float" if single => "float64",
                other => numpy_dtype(other)?,
            };
            let shape: Vec<i64> = shape.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { -1 }).collect();
            let mut spec = json!({"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}});
            if !single {
                spec["name"] = Value::String(input.name.clone());
            }
            Some(spec)
        })
        .collect::<Option<Vec<Value>>>()
        .filter(|inputs| !inputs.is_empty())?;
    let outputs = v
        .signature
        .outputs
        .iter()
        .map(|output| {
            let (elem, shape) = tensor(output)?;
            let column_type = match elem {
                "float" => "float",
                "double" => "double",
                "int64" => "long",
                "int32" => "integer",
                "bool" => "boolean",
                "string" => "string",
                _ => return None,
            };
            // [N] is a value per row; anything wider is an array per row.
            let spec = if shape.len() <= 1 {
                json!({"type": column_type, "name": output.name, "required": true})
            } else {
                json!({"type": "array", "items": {"type": column_type}, "name": output.name, "required": true})
            };
            Some(spec)
        })
        .collect::<Option<Vec<Value>>>();
    let mut signature = json!({"inputs": Value::Array(inputs).to_string(), "params": null});
    if let Some(outputs) = outputs.filter(|o| !o.is_empty()) {
        signature["outputs"] = Value::String(Value::Array(outputs).to_string());
    }
    Some(signature)
}

/// A tensor's element type and shape; `None` for what is not a tensor of known rank.
fn tensor(value: &ValueInfo) -> Option<(&str, &[Dim])> {
    if !value.value_type.starts_with("tensor(") {
        return None;
    }
    Some((value.elem_type.as_deref()?, value.shape.as_deref()?))
}

/// NumPy's name for an ONNX element type, as MLflow's tensor specs write it.
fn numpy_dtype(elem: &str) -> Option<&'static str> {
    Some(match elem {
        "float" => "float32",
        "double" => "float64",
        "float16" => "float16",
        "int8" => "int8",
        "int16" => "int16",
        "int32" => "int32",
        "int64" => "int64",
        "uint8" => "uint8",
        "uint16" => "uint16",
        "uint32" => "uint32",
        "uint64" => "uint64",
        "bool" => "bool",
        "string" => "object",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lakescore_core::wire::Signature;

    fn tensor_value(name: &str, elem: &str, shape: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            value_type: format!("tensor({elem})"),
            elem_type: Some(elem.into()),
            shape: Some(shape),
        }
    }

    fn version(inputs: Vec<ValueInfo>, outputs: Vec<ValueInfo>) -> ModelVersion {
        ModelVersion {
            model: "fraud".into(),
            version: 3,
            sha256: "ab".repeat(32),
            size: 1234,
            created_at: "2026-12-07T10:00:00.000Z".into(),
            created_by: "alice".into(),
            description: String::new(),
            tags: BTreeMap::new(),
            status: VersionStatus::Ready,
            aliases: vec!["champion".into()],
            signature: Signature { inputs, outputs, producer_version: "1.20.0".into(), ..Default::default() },
            backends: Default::default(),
        }
    }

    fn signature_of(v: &ModelVersion) -> (Value, Option<Value>) {
        let doc: Value = serde_json::from_str(&mlmodel(v)).expect("MLmodel is JSON, hence YAML");
        let sig = &doc["signature"];
        let inputs = serde_json::from_str(sig["inputs"].as_str().expect("inputs")).expect("inputs JSON");
        let outputs = sig["outputs"].as_str().map(|s| serde_json::from_str(s).expect("outputs JSON"));
        (inputs, outputs)
    }

    #[test]
    fn a_classifier_gets_one_unnamed_float64_input_and_column_outputs() {
        let v = version(
            vec![tensor_value("float_input", "float", vec![Dim::Unknown, Dim::Fixed(4)])],
            vec![
                tensor_value("label", "int64", vec![Dim::Symbolic("N".into())]),
                tensor_value("probabilities", "float", vec![Dim::Unknown, Dim::Fixed(2)]),
            ],
        );
        let (inputs, outputs) = signature_of(&v);
        assert_eq!(inputs, json!([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]));
        assert_eq!(
            outputs,
            Some(json!([
                {"type": "long", "name": "label", "required": true},
                {"type": "array", "items": {"type": "float"}, "name": "probabilities", "required": true},
            ]))
        );
        let doc: Value = serde_json::from_str(&mlmodel(&v)).expect("json");
        assert_eq!(doc["flavors"]["python_function"]["loader_module"], "mlflow.onnx");
        assert_eq!(doc["flavors"]["onnx"]["data"], ONNX_FILE);
    }

    #[test]
    fn several_inputs_are_named_and_maps_leave_the_outputs_undeclared() {
        let v = version(
            vec![
                tensor_value("amount", "float", vec![Dim::Unknown, Dim::Fixed(1)]),
                tensor_value("merchant", "string", vec![Dim::Unknown, Dim::Fixed(1)]),
            ],
            vec![
                tensor_value("label", "int64", vec![Dim::Unknown]),
                ValueInfo {
                    name: "probabilities".into(),
                    value_type: "seq(map(int64,tensor(float)))".into(),
                    elem_type: None,
                    shape: None,
                },
            ],
        );
        let (inputs, outputs) = signature_of(&v);
        assert_eq!(inputs[0]["name"], "amount");
        assert_eq!(inputs[0]["tensor-spec"]["dtype"], "float32");
        assert_eq!(inputs[1]["tensor-spec"]["dtype"], "object");
        assert_eq!(outputs, None);
    }

    #[test]
    fn artifact_paths_name_a_version_and_one_of_its_two_files() {
        assert_eq!(parse_artifact_path("lakescore-models/fraud/3").expect("dir"), ("fraud".into(), 3, None));
        assert_eq!(
            parse_artifact_path("lakescore-models/fraud/3/model.onnx").expect("file"),
            ("fraud".into(), 3, Some(ONNX_FILE.into()))
        );
        for bad in [
            "",
            "other/fraud/3",
            "lakescore-models/fraud",
            "lakescore-models/fraud/x",
            "lakescore-models/fraud/3/../x",
            "lakescore-models/fraud/3/MLmodel/x",
        ] {
            let e = parse_artifact_path(bad).expect_err(bad);
            assert_eq!(e.code, "RESOURCE_DOES_NOT_EXIST", "{bad}");
        }
    }

    #[test]
    fn order_by_accepts_the_order_results_come_in() {
        assert!(check_order_by(&["name".into(), "name ASC".into()], &["name"], "name").is_ok());
        assert!(check_order_by(&["name DESC".into()], &["name"], "name").is_err());
        assert!(check_order_by(&["version_number DESC".into()], &["name", "version_number"], "").is_ok());
        assert!(check_order_by(&["last_updated_timestamp DESC".into()], &["name"], "name").is_err());
    }

    #[test]
    fn registry_errors_get_mlflow_codes_and_statuses() {
        let cases = [
            (RegistryError::NotFound("x".into()), "RESOURCE_DOES_NOT_EXIST", 404),
            (RegistryError::Conflict("x".into()), "RESOURCE_ALREADY_EXISTS", 400),
            (RegistryError::Forbidden("x".into()), "PERMISSION_DENIED", 403),
            (RegistryError::Unauthorized("x".into()), "UNAUTHENTICATED", 401),
            (RegistryError::BadRequest("x".into()), "INVALID_PARAMETER_VALUE", 400),
            (RegistryError::Unavailable("x".into()), "TEMPORARILY_UNAVAILABLE", 503),
        ];
        for (e, code, status) in cases {
            let m = MlflowError::from(e);
            assert_eq!((m.code, m.status.as_u16()), (code, status));
        }
    }
}

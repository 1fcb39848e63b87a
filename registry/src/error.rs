//! The registry's one error type, mapped once to an HTTP problem+json response (RFC 9457).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// The upload is not a usable ONNX model.
    #[error("{0}")]
    InvalidModel(String),
    /// A dependency (database, object storage) is unreachable or failing.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::InvalidModel(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, dereferenceable-looking problem type per error kind.
    fn problem_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "https://lakescore.dev/problems/bad-request",
            Self::Unauthorized(_) => "https://lakescore.dev/problems/unauthorized",
            Self::Forbidden(_) => "https://lakescore.dev/problems/forbidden",
            Self::NotFound(_) => "https://lakescore.dev/problems/not-found",
            Self::Conflict(_) => "https://lakescore.dev/problems/conflict",
            Self::PayloadTooLarge(_) => "https://lakescore.dev/problems/payload-too-large",
            Self::UnsupportedMediaType(_) => "https://lakescore.dev/problems/unsupported-media-type",
            Self::RangeNotSatisfiable(_) => "https://lakescore.dev/problems/range-not-satisfiable",
            Self::InvalidModel(_) => "https://lakescore.dev/problems/invalid-model",
            Self::Unavailable(_) => "https://lakescore.dev/problems/dependency-unavailable",
            Self::Internal(_) => "https://lakescore.dev/problems/internal",
        }
    }
}

/// RFC 9457 problem details, as every error response body.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request rejected");
        }
        let problem = Problem {
            problem_type: self.problem_type().to_string(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound("not found".into()),
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(format!("database unavailable: {e}")),
            sqlx::Error::Database(db) if is_connection_loss(db.code().as_deref()) => {
                Self::Unavailable(format!("database unavailable: {e}"))
            }
            sqlx::Error::Database(db) if is_timeout(db.code().as_deref(), db.message()) => {
                Self::Unavailable(format!("database timed out: {e}"))
            }
            _ => Self::Internal(format!("database error: {e}")),
        }
    }
}

/// SQLSTATE classes that mean "the database went away", not "the query was wrong":
/// 08 connection exception, 57P01..57P03 admin shutdown / crash / cannot connect now.
fn is_connection_loss(code: Option<&str>) -> bool {
    matches!(code, Some(c) if c.starts_with("08") || c.starts_with("57P"))
}

/// A statement that ran out of time: PostgreSQL's statement or lock timeout (57014, 55P03),
/// SQLite still busy or locked after its busy timeout.
fn is_timeout(code: Option<&str>, message: &str) -> bool {
    matches!(code, Some("57014" | "55P03" | "5" | "6")) || message.contains("database is locked")
}

impl From<object_store::Error> for RegistryError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => {
                Self::Unavailable(format!("artifact missing from storage: {path}"))
            }
            other => Self::Unavailable(format!("object storage error: {other}")),
        }
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(format!("I/O error: {e}"))
    }
}

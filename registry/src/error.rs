//! The registry's one error type, mapped once to an [`ErrorCode`], from which its HTTP
//! problem+json response (RFC 9457) and its gRPC status follow.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lakescore_core::reference::ReferenceError;
use lakescore_core::store::StoreError;
pub use lakescore_core::wire::Problem;
use lakescore_core::ErrorCode;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What a 503 asks clients to wait before they try again, in seconds.
const RETRY_AFTER_SECS: &str = "5";

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
    /// A lock another request holds (an `Idempotency-Key` still being processed): 409 with
    /// the problem type `locked`, on which clients wait and send the request again.
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// The upload is not a usable ONNX model.
    #[error("{0}")]
    InvalidModel(String),
    /// An `Idempotency-Key` sent again with a different request.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A dependency (database, object storage) is unreachable or failing.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// What kind of failure this is; the HTTP status, the problem type and the gRPC code
    /// all follow from it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::InvalidArgument,
            Self::Unauthorized(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Locked(_) => ErrorCode::Locked,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::HeadersTooLarge(_) => ErrorCode::HeadersTooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::RangeNotSatisfiable(_) => ErrorCode::RangeNotSatisfiable,
            Self::InvalidModel(_) => ErrorCode::InvalidModel,
            Self::IdempotencyKeyReused(_) => ErrorCode::IdempotencyKeyReused,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
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
            problem_type: self.code().problem_type().to_string(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if self.code().is_transient() {
            // A dependency is down or a call timed out: tell clients when to try again.
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        e.code().status(e.to_string())
    }
}

impl From<ReferenceError> for RegistryError {
    fn from(e: ReferenceError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        Self::BadRequest(e.to_string())
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

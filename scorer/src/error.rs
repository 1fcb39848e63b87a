//! The scorer's one error type, mapped once to an [`ErrorCode`] and through it to a gRPC
//! status.

use std::fmt;

use lakescore_core::reference::ReferenceError;
use lakescore_core::store::StoreError;
use lakescore_core::ErrorCode;

/// Every failure the scoring worker reports. Each variant maps to exactly one gRPC code
/// (see the `From<ScoreError> for tonic::Status` impl); messages are meant for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    /// The request (command, columns, values) does not fit: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown model, version, alias or input object: `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// No or invalid credentials: `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not read the model or the storage location: `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the system is not in a state to serve it (archived
    /// version, missing engine): `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A batch or model over the configured limits: `RESOURCE_EXHAUSTED`.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (registry, object store) cannot be reached: `UNAVAILABLE`.
    #[error("{0}")]
    Unavailable(String),
    /// The method or feature is not implemented: `UNIMPLEMENTED`.
    #[error("{0}")]
    Unimplemented(String),
    /// The client went away or cancelled: `CANCELLED`.
    #[error("{0}")]
    Cancelled(String),
    /// Stored data is corrupt (e.g. an artifact whose sha256 does not match): `DATA_LOSS`.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or an unexpected failure inside the worker or the engine: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
}

/// Result alias used across the crate.
pub type Result<T, E = ScoreError> = std::result::Result<T, E>;

impl ScoreError {
    /// `INVALID_ARGUMENT` from anything printable.
    pub fn invalid(msg: impl fmt::Display) -> Self {
        ScoreError::InvalidArgument(msg.to_string())
    }

    /// `INTERNAL` from anything printable.
    pub fn internal(msg: impl fmt::Display) -> Self {
        ScoreError::Internal(msg.to_string())
    }

    /// What kind of failure this is; the gRPC status follows from it.
    pub fn code(&self) -> ErrorCode {
        match self {
            ScoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ScoreError::NotFound(_) => ErrorCode::NotFound,
            ScoreError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ScoreError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ScoreError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            ScoreError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            ScoreError::Unavailable(_) => ErrorCode::Unavailable,
            ScoreError::Unimplemented(_) => ErrorCode::Unimplemented,
            ScoreError::Cancelled(_) => ErrorCode::Cancelled,
            ScoreError::DataLoss(_) => ErrorCode::DataLoss,
            ScoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error of `code` with `msg`: how errors that crossed a transport (a registry
    /// answer, another server's status) become the worker's own.
    pub fn from_code(code: ErrorCode, msg: impl Into<String>) -> Self {
        let msg = msg.into();
        match code {
            ErrorCode::InvalidArgument
            | ErrorCode::UnsupportedMediaType
            | ErrorCode::InvalidModel
            | ErrorCode::IdempotencyKeyReused
            | ErrorCode::RangeNotSatisfiable => ScoreError::InvalidArgument(msg),
            ErrorCode::Unauthenticated => ScoreError::Unauthenticated(msg),
            ErrorCode::PermissionDenied => ScoreError::PermissionDenied(msg),
            ErrorCode::NotFound => ScoreError::NotFound(msg),
            ErrorCode::Conflict | ErrorCode::FailedPrecondition => ScoreError::FailedPrecondition(msg),
            ErrorCode::PayloadTooLarge | ErrorCode::HeadersTooLarge | ErrorCode::ResourceExhausted => {
                ScoreError::ResourceExhausted(msg)
            }
            ErrorCode::Unavailable | ErrorCode::DeadlineExceeded => ScoreError::Unavailable(msg),
            ErrorCode::Cancelled => ScoreError::Cancelled(msg),
            ErrorCode::Unimplemented => ScoreError::Unimplemented(msg),
            ErrorCode::DataLoss => ScoreError::DataLoss(msg),
            ErrorCode::Internal => ScoreError::Internal(msg),
        }
    }

    /// The message without the code.
    pub fn message(&self) -> &str {
        match self {
            ScoreError::InvalidArgument(m)
            | ScoreError::NotFound(m)
            | ScoreError::Unauthenticated(m)
            | ScoreError::PermissionDenied(m)
            | ScoreError::FailedPrecondition(m)
            | ScoreError::ResourceExhausted(m)
            | ScoreError::Unavailable(m)
            | ScoreError::Unimplemented(m)
            | ScoreError::Cancelled(m)
            | ScoreError::DataLoss(m)
            | ScoreError::Internal(m) => m,
        }
    }

    /// Prefix the message with context, keeping the code.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        let msg = format!("{ctx}: {}", self.message());
        self.with_message(msg)
    }

    fn with_message(&self, msg: String) -> Self {
        match self {
            ScoreError::InvalidArgument(_) => ScoreError::InvalidArgument(msg),
            ScoreError::NotFound(_) => ScoreError::NotFound(msg),
            ScoreError::Unauthenticated(_) => ScoreError::Unauthenticated(msg),
            ScoreError::PermissionDenied(_) => ScoreError::PermissionDenied(msg),
            ScoreError::FailedPrecondition(_) => ScoreError::FailedPrecondition(msg),
            ScoreError::ResourceExhausted(_) => ScoreError::ResourceExhausted(msg),
            ScoreError::Unavailable(_) => ScoreError::Unavailable(msg),
            ScoreError::Unimplemented(_) => ScoreError::Unimplemented(msg),
            ScoreError::Cancelled(_) => ScoreError::Cancelled(msg),
            ScoreError::DataLoss(_) => ScoreError::DataLoss(msg),
            ScoreError::Internal(_) => ScoreError::Internal(msg),
        }
    }

    /// Map an object-store error: a missing object is `NOT_FOUND`, refused access
    /// `PERMISSION_DENIED`, anything else `UNAVAILABLE`.
    pub fn from_store(err: object_store::Error, what: impl fmt::Display) -> Self {
        match err {
            object_store::Error::NotFound { .. } => ScoreError::NotFound(format!("{what}: not found")),
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ScoreError::PermissionDenied(format!("{what}: {err}"))
            }
            object_store::Error::InvalidPath { .. } => ScoreError::InvalidArgument(format!("{what}: {err}")),
            other => ScoreError::Unavailable(format!("{what}: {other}")),
        }
    }

    /// Turn a status received from a client's stream back into an error. A stream the
    /// client ended (cancelled, timed out, aborted) is `CANCELLED`; an oversized message
    /// names the worker's limit.
    pub fn from_status(status: &tonic::Status) -> Self {
        let msg = status.message().to_string();
        match (status.code(), ErrorCode::from_grpc(status)) {
            (tonic::Code::Cancelled | tonic::Code::DeadlineExceeded | tonic::Code::Aborted, _) => {
                ScoreError::Cancelled(format!("client stream ended: {msg}"))
            }
            (tonic::Code::OutOfRange, ErrorCode::ResourceExhausted) => ScoreError::ResourceExhausted(format!(
                "a Flight message is over the worker's limit (max_message_bytes): {msg}"
            )),
            (_, code) => ScoreError::from_code(code, msg),
        }
    }
}

impl From<ScoreError> for tonic::Status {
    fn from(err: ScoreError) -> Self {
        let code = err.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %err, "internal error");
        }
        tonic::Status::new(code.grpc_code(), err.message().to_string())
    }
}

impl From<ReferenceError> for ScoreError {
    fn from(err: ReferenceError) -> Self {
        ScoreError::InvalidArgument(err.to_string())
    }
}

impl From<StoreError> for ScoreError {
    fn from(err: StoreError) -> Self {
        ScoreError::InvalidArgument(err.to_string())
    }
}

impl From<arrow::error::ArrowError> for ScoreError {
    fn from(err: arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as E;
        match err {
            E::ExternalError(e) => match e.downcast::<ScoreError>() {
                Ok(inner) => *inner,
                Err(e) => ScoreError::Internal(e.to_string()),
            },
            E::CastError(m) | E::InvalidArgumentError(m) | E::SchemaError(m) | E::ParseError(m) => {
                ScoreError::InvalidArgument(m)
            }
            E::MemoryError(m) => ScoreError::ResourceExhausted(m),
            other => ScoreError::Internal(other.to_string()),
        }
    }
}

impl From<parquet::errors::ParquetError> for ScoreError {
    fn from(err: parquet::errors::ParquetError) -> Self {
        use parquet::errors::ParquetError as E;
        match err {
            E::External(e) => match e.downcast::<ScoreError>() {
                Ok(inner) => *inner,
                Err(e) => match e.downcast::<object_store::Error>() {
                    Ok(store) => ScoreError::from_store(*store, "object store"),
                    Err(e) => ScoreError::Unavailable(e.to_string()),
                },
            },
            E::ArrowError(m) => ScoreError::InvalidArgument(format!("parquet: {m}")),
            other => ScoreError::InvalidArgument(format!("parquet: {other}")),
        }
    }
}

impl From<arrow_flight::error::FlightError> for ScoreError {
    fn from(err: arrow_flight::error::FlightError) -> Self {
        use arrow_flight::error::FlightError as E;
        match err {
            E::Tonic(status) => ScoreError::from_status(&status),
            E::Arrow(e) => ScoreError::from(e),
            E::ExternalError(e) => match e.downcast::<ScoreError>() {
                Ok(inner) => *inner,
                Err(e) => ScoreError::Internal(e.to_string()),
            },
            E::ProtocolError(m) | E::DecodeError(m) => {
                ScoreError::InvalidArgument(format!("invalid Flight stream: {m}"))
            }
            E::NotYetImplemented(m) => ScoreError::Unimplemented(m),
        }
    }
}

impl From<ScoreError> for arrow_flight::error::FlightError {
    fn from(err: ScoreError) -> Self {
        arrow_flight::error::FlightError::ExternalError(Box::new(err))
    }
}

impl From<tokio::task::JoinError> for ScoreError {
    fn from(err: tokio::task::JoinError) -> Self {
        ScoreError::Internal(format!("worker task failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_status_codes() {
        let s: tonic::Status = ScoreError::NotFound("model x".into()).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "model x");
        let e = ScoreError::InvalidArgument("bad".into()).context("column 'a'");
        assert_eq!(e, ScoreError::InvalidArgument("column 'a': bad".into()));
    }

    #[test]
    fn round_trips_through_flight_error() {
        let f: arrow_flight::error::FlightError = ScoreError::PermissionDenied("no".into()).into();
        assert_eq!(ScoreError::from(f), ScoreError::PermissionDenied("no".into()));
        let a = arrow::error::ArrowError::ExternalError(Box::new(ScoreError::NotFound("m".into())));
        assert_eq!(ScoreError::from(a), ScoreError::NotFound("m".into()));
    }
}

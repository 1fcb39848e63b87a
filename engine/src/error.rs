//! The scorer's one error type, mapped once to an [`ErrorCode`] and through it to a gRPC
//! status carrying the code's reason ([`ErrorCode::status`]).

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
    /// A query ran past its time limit: `DEADLINE_EXCEEDED`.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Stored data is corrupt (e.g. an artifact whose sha256 does not match): `DATA_LOSS`.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or an unexpected failure inside the worker or the engine: `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// A lock another run holds (a batch job running elsewhere): `FAILED_PRECONDITION`,
    /// with the reason `locked`, on which clients wait and call again.
    #[error("{0}")]
    Locked(String),
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
            ScoreError::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            ScoreError::DataLoss(_) => ErrorCode::DataLoss,
            ScoreError::Internal(_) => ErrorCode::Internal,
            ScoreError::Locked(_) => ErrorCode::Locked,
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
            ErrorCode::Locked => ScoreError::Locked(msg),
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
            | ScoreError::DeadlineExceeded(m)
            | ScoreError::DataLoss(m)
            | ScoreError::Internal(m)
            | ScoreError::Locked(m) => m,
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
            ScoreError::DeadlineExceeded(_) => ScoreError::DeadlineExceeded(msg),
            ScoreError::DataLoss(_) => ScoreError::DataLoss(msg),
            ScoreError::Internal(_) => ScoreError::Internal(msg),
            ScoreError::Locked(_) => ScoreError::Locked(msg),
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
            // A store without conditional writes: what needs them (job locks, Delta commits,
            // manifests never written over) cannot be made safe there.
            object_store::Error::NotImplemented { .. } => ScoreError::FailedPrecondition(format!(
                "{what}: this store does not do the conditional writes that job locks and commits need ({err}); \
                 for S3, use a store or endpoint that supports If-None-Match"
            )),
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
        code.status(err.message())
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
        Self::from_arrow_ref(&err)
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

#[cfg(feature = "datafusion")]
impl From<datafusion::error::DataFusionError> for ScoreError {
    fn from(err: datafusion::error::DataFusionError) -> Self {
        Self::from_datafusion(&err)
    }
}

#[cfg(feature = "datafusion")]
impl ScoreError {
    /// A DataFusion error as the worker's own: errors the worker raised inside a query
    /// (`predict`, the storage roots) keep their code; the planner's are the query's fault.
    fn from_datafusion(err: &datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as E;
        match err {
            E::External(e) => {
                if let Some(inner) = e.downcast_ref::<ScoreError>() {
                    inner.clone()
                } else if let Some(inner) = e.downcast_ref::<E>() {
                    Self::from_datafusion(inner)
                } else if let Some(store) = e.downcast_ref::<object_store::Error>() {
                    Self::from_store_ref(store)
                } else if let Some(arrow) = e.downcast_ref::<arrow::error::ArrowError>() {
                    Self::from_arrow_ref(arrow)
                } else {
                    ScoreError::Internal(e.to_string())
                }
            }
            E::ArrowError(e, _) => Self::from_arrow_ref(e),
            E::ObjectStore(e) => Self::from_store_ref(e),
            E::ParquetError(e) => ScoreError::InvalidArgument(format!("parquet: {e}")),
            E::IoError(e) => ScoreError::Unavailable(format!("I/O: {e}")),
            E::SQL(e, _) => ScoreError::InvalidArgument(format!("SQL: {e}")),
            E::NotImplemented(m) => ScoreError::Unimplemented(m.clone()),
            E::Plan(m) | E::Configuration(m) | E::Execution(m) | E::Substrait(m) | E::Ffi(m) => {
                ScoreError::InvalidArgument(m.clone())
            }
            E::SchemaError(e, _) => ScoreError::InvalidArgument(e.to_string()),
            E::ResourcesExhausted(m) => ScoreError::ResourceExhausted(format!(
                "the query needs more memory than its limit (sql.query_memory_bytes): {m}"
            )),
            E::ExecutionJoin(e) => ScoreError::Internal(format!("query task failed: {e}")),
            E::Internal(m) => ScoreError::Internal(m.clone()),
            E::Context(_, inner) | E::Diagnostic(_, inner) => Self::from_datafusion(inner),
            E::Shared(inner) => Self::from_datafusion(inner),
            E::Collection(all) => match all.first() {
                Some(first) => Self::from_datafusion(first),
                None => ScoreError::Internal("empty error collection".into()),
            },
        }
    }

    fn from_store_ref(err: &object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { path, .. } => ScoreError::NotFound(format!("{path}: not found")),
            object_store::Error::PermissionDenied { source, .. } => ScoreError::PermissionDenied(source.to_string()),
            object_store::Error::Unauthenticated { .. } => ScoreError::PermissionDenied(err.to_string()),
            object_store::Error::InvalidPath { .. } => ScoreError::InvalidArgument(err.to_string()),
            other => ScoreError::Unavailable(other.to_string()),
        }
    }
}

impl ScoreError {
    /// An Arrow error as the worker's own: one the worker raised keeps its code.
    fn from_arrow_ref(err: &arrow::error::ArrowError) -> Self {
        use arrow::error::ArrowError as A;
        match err {
            A::ExternalError(e) => match e.downcast_ref::<ScoreError>() {
                Some(inner) => inner.clone(),
                None => ScoreError::Internal(e.to_string()),
            },
            A::CastError(m) | A::InvalidArgumentError(m) | A::SchemaError(m) | A::ParseError(m) => {
                ScoreError::InvalidArgument(m.clone())
            }
            A::MemoryError(m) => ScoreError::ResourceExhausted(m.clone()),
            other => ScoreError::Internal(other.to_string()),
        }
    }
}

#[cfg(feature = "datafusion")]
impl From<ScoreError> for datafusion::error::DataFusionError {
    fn from(err: ScoreError) -> Self {
        datafusion::error::DataFusionError::External(Box::new(err))
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

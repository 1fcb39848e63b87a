//! [`ErrorCode`]: the one table from which an error gets both its HTTP status (and
//! problem+json type) and its gRPC code. Each crate's error enum maps to an `ErrorCode`
//! once; incoming gRPC statuses (from the registry, from a Flight client stream) are
//! decoded here too, so a code means the same thing on every hop.

/// What kind of failure an error is, independent of the transport that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or does not fit: 400, `INVALID_ARGUMENT`.
    InvalidArgument,
    /// No or an invalid token: 401, `UNAUTHENTICATED`.
    Unauthenticated,
    /// The caller may not do this: 403, `PERMISSION_DENIED`.
    PermissionDenied,
    /// The model, version, alias or object does not exist: 404, `NOT_FOUND`.
    NotFound,
    /// It exists already, or a concurrent change won: 409, `ALREADY_EXISTS`.
    Conflict,
    /// Valid, but not in a state to be served (an archived version): 409,
    /// `FAILED_PRECONDITION`.
    FailedPrecondition,
    /// A body over the size cap: 413, `RESOURCE_EXHAUSTED`.
    PayloadTooLarge,
    /// Request headers over the size limit (a huge bearer token): 431, `RESOURCE_EXHAUSTED`.
    HeadersTooLarge,
    /// The wrong content type: 415, `INVALID_ARGUMENT`.
    UnsupportedMediaType,
    /// A byte range outside the object: 416, `OUT_OF_RANGE`.
    RangeNotSatisfiable,
    /// The upload is not a usable ONNX model: 422, `INVALID_ARGUMENT`.
    InvalidModel,
    /// An `Idempotency-Key` sent again with a different request: 422, `INVALID_ARGUMENT`.
    IdempotencyKeyReused,
    /// Over a configured limit (message, batch, memory, concurrency): 429,
    /// `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// The caller or the server gave up waiting: 504, `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// The caller went away or cancelled: 499, `CANCELLED`.
    Cancelled,
    /// Not implemented: 501, `UNIMPLEMENTED`.
    Unimplemented,
    /// A dependency (database, storage, registry) is down: 503, `UNAVAILABLE`.
    Unavailable,
    /// Stored bytes are corrupt (a sha256 that does not match): 500, `DATA_LOSS`.
    DataLoss,
    /// A bug or an unexpected failure: 500, `INTERNAL`.
    Internal,
    /// A lock another run holds (a batch job running on another worker, or a crashed run's
    /// lock that is not stale yet): 409, `FAILED_PRECONDITION`. The same call succeeds once
    /// the lock is released or goes stale.
    Locked,
}

use prost::Message;

impl ErrorCode {
    /// The HTTP status code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::Conflict | Self::FailedPrecondition | Self::Locked => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RangeNotSatisfiable => 416,
            Self::HeadersTooLarge => 431,
            Self::InvalidModel | Self::IdempotencyKeyReused => 422,
            Self::ResourceExhausted => 429,
            Self::Cancelled => 499,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::DeadlineExceeded => 504,
            Self::DataLoss | Self::Internal => 500,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument | Self::UnsupportedMediaType | Self::InvalidModel | Self::IdempotencyKeyReused => {
                Code::InvalidArgument
            }
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::Conflict => Code::AlreadyExists,
            Self::FailedPrecondition | Self::Locked => Code::FailedPrecondition,
            Self::PayloadTooLarge | Self::HeadersTooLarge | Self::ResourceExhausted => Code::ResourceExhausted,
            Self::RangeNotSatisfiable => Code::OutOfRange,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Cancelled => Code::Cancelled,
            Self::Unimplemented => Code::Unimplemented,
            Self::Unavailable => Code::Unavailable,
            Self::DataLoss => Code::DataLoss,
            Self::Internal => Code::Internal,
        }
    }

    /// A stable problem type URI for problem+json bodies (RFC 9457).
    pub fn problem_type(self) -> &'static str {
        match self {
            Self::InvalidArgument => "https://lakescore.dev/problems/bad-request",
            Self::Unauthenticated => "https://lakescore.dev/problems/unauthorized",
            Self::PermissionDenied => "https://lakescore.dev/problems/forbidden",
            Self::NotFound => "https://lakescore.dev/problems/not-found",
            Self::Conflict => "https://lakescore.dev/problems/conflict",
            Self::FailedPrecondition => "https://lakescore.dev/problems/failed-precondition",
            Self::PayloadTooLarge => "https://lakescore.dev/problems/payload-too-large",
            Self::HeadersTooLarge => "https://lakescore.dev/problems/headers-too-large",
            Self::UnsupportedMediaType => "https://lakescore.dev/problems/unsupported-media-type",
            Self::RangeNotSatisfiable => "https://lakescore.dev/problems/range-not-satisfiable",
            Self::InvalidModel => "https://lakescore.dev/problems/invalid-model",
            Self::IdempotencyKeyReused => "https://lakescore.dev/problems/idempotency-key-reused",
            Self::ResourceExhausted => "https://lakescore.dev/problems/resource-exhausted",
            Self::DeadlineExceeded => "https://lakescore.dev/problems/deadline-exceeded",
            Self::Cancelled => "https://lakescore.dev/problems/cancelled",
            Self::Unimplemented => "https://lakescore.dev/problems/unimplemented",
            Self::Unavailable => "https://lakescore.dev/problems/dependency-unavailable",
            Self::DataLoss => "https://lakescore.dev/problems/data-loss",
            Self::Internal => "https://lakescore.dev/problems/internal",
            Self::Locked => "https://lakescore.dev/problems/locked",
        }
    }

    /// The stable reason this code travels as between processes: the last segment of its
    /// problem type (`not-found`, `locked`, …), in problem+json's `type` over HTTP and in
    /// a `google.rpc.ErrorInfo` of the status details over gRPC ([`ErrorCode::status`]).
    /// Clients branch on it, never on a message's wording.
    pub fn reason(self) -> &'static str {
        let ty = self.problem_type();
        ty.rsplit('/').next().unwrap_or(ty)
    }

    /// The code of a [`reason`](Self::reason), if it is one.
    pub fn from_reason(reason: &str) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.reason() == reason)
    }

    /// A gRPC status of this code carrying `message`, with the code's reason in its details
    /// (`grpc-status-details-bin`: a `google.rpc.Status` holding a `google.rpc.ErrorInfo`
    /// of domain `lakescore.dev`, as gRPC's richer error model has it).
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let message = message.into();
        let info = ErrorInfo { reason: self.reason().to_string(), domain: ERROR_DOMAIN.to_string() };
        let details = RpcStatus {
            code: self.grpc_code() as i32,
            message: message.clone(),
            details: vec![ProtoAny { type_url: ERROR_INFO_TYPE.to_string(), value: info.encode_to_vec() }],
        };
        tonic::Status::with_details(self.grpc_code(), message, details.encode_to_vec().into())
    }

    /// The reason in a status's details, when a lakescore server sent it.
    fn from_status_details(status: &tonic::Status) -> Option<Self> {
        let details = RpcStatus::decode(status.details()).ok()?;
        details
            .details
            .iter()
            .filter(|any| any.type_url == ERROR_INFO_TYPE)
            .filter_map(|any| ErrorInfo::decode(any.value.as_slice()).ok())
            .find(|info| info.domain == ERROR_DOMAIN)
            .and_then(|info| Self::from_reason(&info.reason))
    }

    /// Decodes a gRPC status received from another party (the registry, a client's
    /// stream): by the reason in its details when a lakescore server sent one, else by its
    /// gRPC code. Codes that have no counterpart of their own (`UNKNOWN`, `ABORTED`) are
    /// `Internal`; `OK` should never arrive as an error and is `Internal` too.
    pub fn from_grpc(status: &tonic::Status) -> Self {
        use tonic::Code;
        if let Some(code) = Self::from_status_details(status).filter(|c| c.grpc_code() == status.code()) {
            return code;
        }
        match status.code() {
            // tonic's decoder answers OUT_OF_RANGE for a message over the configured
            // decoding limit; gRPC's own code for that is RESOURCE_EXHAUSTED.
            Code::OutOfRange if status.message().contains("message length too large") => Self::ResourceExhausted,
            Code::InvalidArgument => Self::InvalidArgument,
            Code::OutOfRange => Self::RangeNotSatisfiable,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::Conflict,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::ResourceExhausted => Self::ResourceExhausted,
            Code::DeadlineExceeded => Self::DeadlineExceeded,
            Code::Cancelled => Self::Cancelled,
            Code::Unimplemented => Self::Unimplemented,
            Code::Unavailable => Self::Unavailable,
            Code::DataLoss => Self::DataLoss,
            Code::Ok | Code::Unknown | Code::Aborted | Code::Internal => Self::Internal,
        }
    }

    /// Decodes an HTTP error status received from another party (the registry's REST API).
    /// Statuses the table above does not produce fall into their class: other 4xx are
    /// `InvalidArgument`, other 5xx `Unavailable` (a gateway or proxy in between).
    pub fn from_http(status: u16) -> Self {
        match status {
            400 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 | 410 => Self::NotFound,
            409 => Self::Conflict,
            412 => Self::FailedPrecondition,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            416 => Self::RangeNotSatisfiable,
            422 => Self::InvalidModel,
            431 => Self::HeadersTooLarge,
            429 => Self::ResourceExhausted,
            499 => Self::Cancelled,
            500 => Self::Internal,
            501 => Self::Unimplemented,
            504 => Self::DeadlineExceeded,
            s if s >= 500 => Self::Unavailable,
            _ => Self::InvalidArgument,
        }
    }

    /// Whether a request that failed with this code may succeed when simply sent again.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::DeadlineExceeded)
    }
}

/// Every code, for decoding reasons.
const ALL_CODES: &[ErrorCode] = &[
    ErrorCode::InvalidArgument,
    ErrorCode::Unauthenticated,
    ErrorCode::PermissionDenied,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::FailedPrecondition,
    ErrorCode::PayloadTooLarge,
    ErrorCode::HeadersTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::RangeNotSatisfiable,
    ErrorCode::InvalidModel,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::ResourceExhausted,
    ErrorCode::DeadlineExceeded,
    ErrorCode::Cancelled,
    ErrorCode::Unimplemented,
    ErrorCode::Unavailable,
    ErrorCode::DataLoss,
    ErrorCode::Internal,
    ErrorCode::Locked,
];

/// The `ErrorInfo.domain` of lakescore's reasons.
pub const ERROR_DOMAIN: &str = "lakescore.dev";
const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// `google.rpc.Status`, what `grpc-status-details-bin` holds.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.ErrorInfo` (its `metadata`, field 3, is not used).
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
}

/// The size of a request's header list as HTTP/2 counts it (RFC 7541: name + value + 32 per
/// field): what the registry and the worker compare with their header limits, so that a call
/// over them is answered on its own (431 / `RESOURCE_EXHAUSTED`) rather than by the transport
/// closing the connection.
pub fn header_list_bytes(headers: &tonic::codegen::http::HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[ErrorCode] = ALL_CODES;

    /// Sent with its reason, every code decodes as itself, not only as its gRPC code;
    /// a status from elsewhere (no details, or details of another domain) by its gRPC code.
    #[test]
    fn reasons_in_status_details_keep_the_exact_code() {
        for &code in ALL {
            let status = code.status("x");
            assert_eq!(ErrorCode::from_grpc(&status), code, "{code:?}");
            assert_eq!(ErrorCode::from_reason(code.reason()), Some(code));
        }
        assert_eq!(ErrorCode::Locked.reason(), "locked");
        assert_eq!(ErrorCode::from_reason("no-such-reason"), None);
        let plain = tonic::Status::failed_precondition("x");
        assert_eq!(ErrorCode::from_grpc(&plain), ErrorCode::FailedPrecondition);
        let garbage = tonic::Status::with_details(tonic::Code::NotFound, "x", bytes::Bytes::from_static(b"\xff\x01"));
        assert_eq!(ErrorCode::from_grpc(&garbage), ErrorCode::NotFound);
    }

    /// A code sent over gRPC and decoded on the other side keeps its meaning: the same
    /// gRPC code again, and the same HTTP class where the code is its own.
    #[test]
    fn grpc_round_trip_keeps_the_code() {
        for &code in ALL {
            let status = tonic::Status::new(code.grpc_code(), "x");
            let back = ErrorCode::from_grpc(&status);
            assert_eq!(back.grpc_code(), code.grpc_code(), "{code:?}");
        }
        for &code in &[
            ErrorCode::FailedPrecondition,
            ErrorCode::Internal,
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(ErrorCode::from_grpc(&tonic::Status::new(code.grpc_code(), "x")), code);
        }
    }

    /// What the registry answers over HTTP decodes to the code it was encoded from.
    #[test]
    fn http_round_trip_keeps_the_code() {
        for &code in ALL {
            let back = ErrorCode::from_http(code.http_status());
            match code {
                // 409, 422 and 500 are shared: the first of each pair is what decodes.
                ErrorCode::FailedPrecondition | ErrorCode::Locked => assert_eq!(back, ErrorCode::Conflict),
                ErrorCode::IdempotencyKeyReused => assert_eq!(back, ErrorCode::InvalidModel),
                ErrorCode::DataLoss => assert_eq!(back, ErrorCode::Internal),
                _ => assert_eq!(back, code, "{code:?}"),
            }
        }
        assert_eq!(ErrorCode::from_http(502), ErrorCode::Unavailable);
        assert_eq!(ErrorCode::from_http(418), ErrorCode::InvalidArgument);
    }

    #[test]
    fn oversized_messages_are_resource_exhausted() {
        let status = tonic::Status::out_of_range("Error, decoded message length too large: found 9 bytes");
        assert_eq!(ErrorCode::from_grpc(&status), ErrorCode::ResourceExhausted);
    }

    #[test]
    fn problem_types_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &code in ALL {
            assert!(seen.insert(code.problem_type()), "{code:?}");
        }
    }
}

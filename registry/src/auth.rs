//! Who is calling. Token validation (OIDC) plugs in here; without it every caller is
//! the anonymous local user.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::RegistryError;

/// The principal behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token subject (`oid`/`sub`), recorded as `created_by`.
    pub subject: String,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self { subject: "anonymous".to_string() }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = RegistryError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_else(Caller::anonymous))
    }
}

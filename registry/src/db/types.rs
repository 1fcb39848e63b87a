//! The registry's entity and wire types, free of SQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::onnx::Signature;

pub type Tags = BTreeMap<String, String>;

/// A registered model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub name: String,
    pub description: String,
    pub tags: Tags,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
    /// Highest version that is `ready`, if any.
    pub latest_version: Option<i64>,
    /// Alias name → version.
    pub aliases: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    Ready,
    Archived,
}

impl VersionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Archived => "archived",
        }
    }
}

/// One immutable version of a model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    pub model: String,
    pub version: i64,
    /// Hex sha256 of the ONNX file: the version's identity.
    pub sha256: String,
    /// Size of the ONNX file in bytes.
    pub size: i64,
    pub created_at: String,
    pub created_by: String,
    pub description: String,
    pub tags: Tags,
    pub status: VersionStatus,
    /// Aliases that point at this version.
    pub aliases: Vec<String>,
    pub signature: Signature,
    /// Engines checked at registration: `{"tract": "ok" | "unsupported: <reason>"}`.
    /// ONNX Runtime, the primary engine, is checked by workers when they load the model.
    pub backends: BTreeMap<String, String>,
}

/// What a new version row needs; the version number is assigned by [`Store::insert_version`].
pub struct NewVersion<'a> {
    pub sha256: &'a str,
    pub size: i64,
    pub created_by: &'a str,
    pub description: &'a str,
    pub tags: &'a Tags,
    pub signature: &'a Signature,
    pub backends: &'a BTreeMap<String, String>,
}

/// A page of results and the token for the next one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// What a caller may do with one model by ownership or grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
    Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    /// `user:<oid>`, `group:<object id>`, `role:<app role>` or `app:<client id>`.
    pub principal: String,
    pub permission: Permission,
    pub granted_at: String,
    pub granted_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub principal: String,
    pub action: String,
    pub model: Option<String>,
    pub detail: serde_json::Value,
}

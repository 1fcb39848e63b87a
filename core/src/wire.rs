//! The records the registry serves and that workers, the CLI and clients read: one
//! definition each, serialized the same way on every path (REST JSON, the gRPC service's
//! `record_json`, the CLI's `-o json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Free-form key/value tags on models and versions.
pub type Tags = BTreeMap<String, String>;

/// A registered model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
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

/// A version's lifecycle state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VersionStatus {
    /// Servable: resolvable by name, alias or number.
    #[default]
    Ready,
    /// Kept for lineage: resolvable only as `name:N` and never scored.
    Archived,
}

impl VersionStatus {
    /// The lowercase name, as stored and as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Archived => "archived",
        }
    }

    /// From the stored lowercase name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ready" => Some(Self::Ready),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

impl From<VersionStatus> for lakescore_proto::registry::VersionStatus {
    fn from(status: VersionStatus) -> Self {
        match status {
            VersionStatus::Ready => Self::Ready,
            VersionStatus::Archived => Self::Archived,
        }
    }
}

impl TryFrom<lakescore_proto::registry::VersionStatus> for VersionStatus {
    type Error = String;

    fn try_from(status: lakescore_proto::registry::VersionStatus) -> Result<Self, String> {
        use lakescore_proto::registry::VersionStatus as P;
        match status {
            P::Ready => Ok(Self::Ready),
            P::Archived => Ok(Self::Archived),
            P::Unspecified => Err("the registry sent no version status".into()),
        }
    }
}

/// One immutable version of a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default)]
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

impl ModelVersion {
    /// `name:version`, the reference that always selects this version.
    pub fn pinned_reference(&self) -> String {
        format!("{}:{}", self.model, self.version)
    }
}

/// What a registered version's ONNX file says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Signature {
    #[serde(default)]
    pub ir_version: i64,
    #[serde(default)]
    pub producer_name: String,
    #[serde(default)]
    pub producer_version: String,
    #[serde(default)]
    pub graph_name: String,
    #[serde(default)]
    pub opset_imports: Vec<OpsetImport>,
    /// True when the graph uses operators of the `ai.onnx.ml` domain (classic ML models:
    /// trees, linear classifiers, ZipMap, ...), which pure tensor runtimes often lack.
    #[serde(default)]
    pub uses_ai_onnx_ml: bool,
    #[serde(default)]
    pub inputs: Vec<ValueInfo>,
    #[serde(default)]
    pub outputs: Vec<ValueInfo>,
    /// `metadata_props` of the ModelProto.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An operator set the model imports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OpsetImport {
    /// Empty string for the default `ai.onnx` domain.
    pub domain: String,
    pub version: i64,
}

/// One graph input or output of a signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ValueInfo {
    pub name: String,
    /// The ONNX type, written as ONNX writes it: `tensor(float)`, `seq(map(int64,tensor(float)))`.
    #[serde(rename = "type")]
    pub value_type: String,
    /// Element type for tensors (`float`, `int64`, `string`, ...), absent for other types.
    #[serde(default)]
    pub elem_type: Option<String>,
    /// Shape for tensors: a number per fixed dimension, a name per symbolic one, null where
    /// the model leaves the dimension unnamed. Absent when the rank itself is unknown.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    #[serde(default)]
    pub shape: Option<Vec<Dim>>,
}

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic dimension (`N`, `batch`).
    Symbolic(String),
    /// A dimension the model leaves unnamed (`null`).
    Unknown,
}

/// A per-model permission granted to a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

impl Permission {
    /// The lowercase name, as stored and as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// A grant on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Grant {
    /// `user:<oid>`, `group:<object id>`, `role:<app role>` or `app:<client id>`.
    pub principal: String,
    pub permission: Permission,
    pub granted_at: String,
    pub granted_by: String,
}

/// One write recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub principal: String,
    pub action: String,
    pub model: Option<String>,
    pub detail: serde_json::Value,
}

/// One page of a listing, with the (opaque) token of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

// ---- request and response bodies of the REST API ---------------------------------------

/// `POST /models`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Tags,
}

/// Fields to change; absent fields stay as they are. `tags` replaces the whole set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateFields {
    pub description: Option<String>,
    pub tags: Option<Tags>,
}

/// Optional metadata sent with an upload (`metadata` part of a multipart upload).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VersionMetadata {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Tags,
}

/// `PUT /models/{name}/aliases/{alias}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub version: i64,
}

/// One change to an alias: where it pointed before and after, when, by whom.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AliasChange {
    pub alias: String,
    /// The version it points at from then on; null: the alias was removed (deleted, or
    /// its version archived).
    pub version: Option<i64>,
    /// The version it pointed at before; null: the alias was created.
    pub previous_version: Option<i64>,
    pub at: String,
    /// The caller who made the change (empty for aliases set before history was kept).
    pub by: String,
}

/// A page of an alias's history, newest first, as `GET …/aliases/{alias}/history` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AliasHistory {
    pub changes: Vec<AliasChange>,
    pub next_page_token: Option<String>,
}

impl From<Page<AliasChange>> for AliasHistory {
    fn from(page: Page<AliasChange>) -> Self {
        Self { changes: page.items, next_page_token: page.next_page_token }
    }
}

/// An alias and the version it points at.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AliasRecord {
    pub model: String,
    pub alias: String,
    pub version: i64,
}

/// `PUT /models/{name}/grants`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutGrant {
    /// `user:<oid>`, `group:<object id>`, `role:<app role>` or `app:<client id>`.
    pub principal: String,
    pub permission: Permission,
}

/// A page of models, as `GET /models` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ModelList {
    pub models: Vec<Model>,
    pub next_page_token: Option<String>,
    /// Why the listing may be missing models the caller expects (a token in group overage
    /// sees no model granted to its groups); absent when there is nothing to say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A page of versions, as `GET /models/{name}/versions` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VersionList {
    pub versions: Vec<ModelVersion>,
    pub next_page_token: Option<String>,
}

/// A page of audit entries, as `GET /audit` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    pub next_page_token: Option<String>,
}

impl From<Page<Model>> for ModelList {
    fn from(page: Page<Model>) -> Self {
        Self { models: page.items, next_page_token: page.next_page_token, warnings: Vec::new() }
    }
}

impl From<Page<ModelVersion>> for VersionList {
    fn from(page: Page<ModelVersion>) -> Self {
        Self { versions: page.items, next_page_token: page.next_page_token }
    }
}

impl From<Page<AuditEntry>> for AuditList {
    fn from(page: Page<AuditEntry>) -> Self {
        Self { entries: page.items, next_page_token: page.next_page_token }
    }
}

/// RFC 9457 problem details: the body of every REST error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_registry_record() {
        let json = r#"{"model": "fraud", "version": 3, "sha256": "ab", "size": 123, "status": "archived",
            "created_at": "2026-01-01T00:00:00Z", "tags": {"a": "b"},
            "signature": {"inputs": [{"name":"X","type":"tensor(float)","elem_type":"float","shape":["N",4]},
                                     {"name":"Y","type":"tensor(float)","elem_type":"float","shape":[null,1]}],
                          "outputs": [{"name":"p","type":"seq(map(int64,tensor(float)))"}]}}"#;
        let v: ModelVersion = serde_json::from_str(json).unwrap();
        assert_eq!(v.pinned_reference(), "fraud:3");
        assert_eq!(v.status, VersionStatus::Archived);
        assert_eq!(v.signature.inputs[0].shape.as_ref().unwrap(), &vec![Dim::Symbolic("N".into()), Dim::Fixed(4)]);
        assert_eq!(v.signature.inputs[1].shape.as_ref().unwrap()[0], Dim::Unknown);
        assert_eq!(v.signature.outputs[0].shape, None);
        let again: ModelVersion = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn unknown_statuses_are_refused() {
        assert!(serde_json::from_str::<VersionStatus>("\"deleted\"").is_err());
        assert_eq!(VersionStatus::parse("archived"), Some(VersionStatus::Archived));
    }
}

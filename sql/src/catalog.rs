//! The registry as SQL tables: `lakescore.models`, `lakescore.versions` and
//! `lakescore.aliases`, read from the registry's HTTP API with the session's token when a
//! query names them, so they show what the caller may read and nothing more.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use lakescore_engine::error::Result;
use lakescore_engine::source::{Credentials, HttpModelSource, HttpSourceOptions, ModelSource};

/// The schema's name in SQL.
pub const SCHEMA: &str = "lakescore";
const TABLES: [&str; 3] = ["models", "versions", "aliases"];

/// `lakescore.*` for one session (one caller's token).
pub(crate) struct RegistryTables {
    registry: HttpModelSource,
    creds: Credentials,
}

impl std::fmt::Debug for RegistryTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryTables").field("registry", &self.registry.describe()).finish()
    }
}

fn text(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl RegistryTables {
    pub(crate) fn new(registry: url::Url, options: HttpSourceOptions, creds: Credentials) -> Result<Self> {
        Ok(Self { registry: HttpModelSource::new(registry, options)?, creds })
    }

    async fn batch(&self, name: &str) -> Result<RecordBatch> {
        let models = self.registry.list_models(&self.creds).await?;
        let (schema, columns): (Vec<Field>, Vec<ArrayRef>) = match name {
            "models" => (
                vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("description", DataType::Utf8, false),
                    Field::new("latest_version", DataType::Int64, true),
                    Field::new("aliases", DataType::Utf8, false),
                    Field::new("tags", DataType::Utf8, false),
                    Field::new("created_at", DataType::Utf8, false),
                    Field::new("created_by", DataType::Utf8, false),
                    Field::new("updated_at", DataType::Utf8, false),
                ],
                vec![
                    text(models.iter().map(|m| m.name.clone())),
                    text(models.iter().map(|m| m.description.clone())),
                    Arc::new(Int64Array::from_iter(models.iter().map(|m| m.latest_version))),
                    text(models.iter().map(|m| json(&m.aliases))),
                    text(models.iter().map(|m| json(&m.tags))),
                    text(models.iter().map(|m| m.created_at.clone())),
                    text(models.iter().map(|m| m.created_by.clone())),
                    text(models.iter().map(|m| m.updated_at.clone())),
                ],
            ),
            "aliases" => {
                let rows: Vec<(String, String, i64)> = models
                    .iter()
                    .flat_map(|m| m.aliases.iter().map(|(a, v)| (m.name.clone(), a.clone(), *v)))
                    .collect();
                (
                    vec![
                        Field::new("model", DataType::Utf8, false),
                        Field::new("alias", DataType::Utf8, false),
                        Field::new("version", DataType::Int64, false),
                    ],
                    vec![
                        text(rows.iter().map(|r| r.0.clone())),
                        text(rows.iter().map(|r| r.1.clone())),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    ],
                )
            }
            _ => {
                let mut versions = Vec::new();
                for m in &models {
                    versions.extend(self.registry.list_versions(&m.name, &self.creds).await?);
                }
                (
                    vec![
                        Field::new("model", DataType::Utf8, false),
                        Field::new("version", DataType::Int64, false),
                        Field::new("sha256", DataType::Utf8, false),
                        Field::new("size", DataType::Int64, false),
                        Field::new("status", DataType::Utf8, false),
                        Field::new("aliases", DataType::Utf8, false),
                        Field::new("description", DataType::Utf8, false),
                        Field::new("tags", DataType::Utf8, false),
                        Field::new("inputs", DataType::Utf8, false),
                        Field::new("outputs", DataType::Utf8, false),
                        Field::new("backends", DataType::Utf8, false),
                        Field::new("created_at", DataType::Utf8, false),
                        Field::new("created_by", DataType::Utf8, false),
                    ],
                    vec![
                        text(versions.iter().map(|v| v.model.clone())),
                        Arc::new(Int64Array::from_iter_values(versions.iter().map(|v| v.version))),
                        text(versions.iter().map(|v| v.sha256.clone())),
                        Arc::new(Int64Array::from_iter_values(versions.iter().map(|v| v.size))),
                        text(versions.iter().map(|v| json(&v.status).trim_matches('"').to_string())),
                        text(versions.iter().map(|v| v.aliases.join(","))),
                        text(versions.iter().map(|v| v.description.clone())),
                        text(versions.iter().map(|v| json(&v.tags))),
                        text(versions.iter().map(|v| json(&v.signature.inputs))),
                        text(versions.iter().map(|v| json(&v.signature.outputs))),
                        text(versions.iter().map(|v| json(&v.backends))),
                        text(versions.iter().map(|v| v.created_at.clone())),
                        text(versions.iter().map(|v| v.created_by.clone())),
                    ],
                )
            }
        };
        Ok(RecordBatch::try_new(Arc::new(Schema::new(schema)), columns)?)
    }
}

#[async_trait]
impl SchemaProvider for RegistryTables {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if !TABLES.contains(&name) {
            return Ok(None);
        }
        let batch = self.batch(name).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema: SchemaRef = batch.schema();
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

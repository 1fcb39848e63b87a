//! Aliases: named, movable pointers at a model's ready versions.

use sqlx::Row;

use super::{now, ModelVersion, Store, VersionStatus};
use crate::error::{RegistryError, Result};

impl Store {
    /// Points `alias` at `version` in one statement: an alias moves atomically.
    pub async fn set_alias(&self, model: &str, alias: &str, version: i64) -> Result<ModelVersion> {
        let target = self.get_version(model, version).await?;
        if target.status == VersionStatus::Archived {
            return Err(RegistryError::Conflict(format!("{model}:{version} is archived; an alias cannot point at it")));
        }
        let id = self.model_id(model).await?;
        let result = sqlx::query(
            "INSERT INTO aliases (model_id, alias, version, updated_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS \
               (SELECT 1 FROM model_versions WHERE model_id = $1 AND version = $3 AND status = 'ready') \
             ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(alias)
        .bind(version)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            // Archived between the check above and the write.
            return Err(RegistryError::Conflict(format!("{model}:{version} is archived; an alias cannot point at it")));
        }
        self.get_version(model, version).await
    }

    pub async fn get_alias(&self, model: &str, alias: &str) -> Result<i64> {
        let id = self.model_id(model).await?;
        sqlx::query("SELECT version FROM aliases WHERE model_id = $1 AND alias = $2")
            .bind(id)
            .bind(alias)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")))
    }

    pub async fn delete_alias(&self, model: &str, alias: &str) -> Result<()> {
        let id = self.model_id(model).await?;
        let deleted = sqlx::query("DELETE FROM aliases WHERE model_id = $1 AND alias = $2")
            .bind(id)
            .bind(alias)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")));
        }
        Ok(())
    }
}

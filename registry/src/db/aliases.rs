//! Aliases: named, movable pointers at a model's ready versions, and the history of every
//! change to them (what an alias pointed at, at any time).

use sqlx::Row;

use super::models::lock_model;
use super::{now, ModelVersion, Page, Store, VersionStatus};
use crate::error::{RegistryError, Result};
use lakescore_core::wire::AliasChange;

impl Store {
    /// Points `alias` at `version` and records the move, in one transaction that first
    /// takes the model's row lock: concurrent moves queue, so each history entry's
    /// `previous` is the entry before it.
    pub async fn set_alias(&self, model: &str, alias: &str, version: i64, by: &str) -> Result<ModelVersion> {
        let target = self.get_version(model, version).await?;
        if target.status == VersionStatus::Archived {
            return Err(archived(model, version));
        }
        let ts = now();
        let mut tx = self.pool.begin().await?;
        let id = lock_model(&mut tx, model).await?;
        let previous = current(&mut *tx, id, alias).await?;
        let result = sqlx::query(
            "INSERT INTO aliases (model_id, alias, version, updated_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS \
               (SELECT 1 FROM model_versions WHERE model_id = $1 AND version = $3 AND status = 'ready') \
             ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(alias)
        .bind(version)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            // Archived between the check above and the write.
            return Err(archived(model, version));
        }
        record(&mut tx, id, alias, Some(version), previous, &ts, by).await?;
        tx.commit().await?;
        self.get_version(model, version).await
    }

    pub async fn get_alias(&self, model: &str, alias: &str) -> Result<i64> {
        let id = self.model_id(model).await?;
        current(&self.pool, id, alias)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")))
    }

    pub async fn delete_alias(&self, model: &str, alias: &str, by: &str) -> Result<()> {
        let ts = now();
        let mut tx = self.pool.begin().await?;
        let id = lock_model(&mut tx, model).await?;
        let Some(previous) = current(&mut *tx, id, alias).await? else {
            return Err(RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")));
        };
        sqlx::query("DELETE FROM aliases WHERE model_id = $1 AND alias = $2")
            .bind(id)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
        record(&mut tx, id, alias, None, Some(previous), &ts, by).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The changes to `alias`, newest first; the page token is the last entry's id.
    pub async fn alias_history(
        &self,
        model: &str,
        alias: &str,
        page_size: i64,
        before: Option<i64>,
    ) -> Result<Page<AliasChange>> {
        let id = self.model_id(model).await?;
        let rows = sqlx::query(&format!(
            "SELECT id, version, previous, changed_at, changed_by FROM alias_history \
             WHERE model_id = $1 AND alias = $2 AND id < $3 ORDER BY id DESC LIMIT {}",
            page_size + 1
        ))
        .bind(id)
        .bind(alias)
        .bind(before.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > page_size;
        let mut changes = Vec::new();
        let mut last = None;
        for row in rows.into_iter().take(page_size as usize) {
            last = Some(row.try_get::<i64, _>(0)?);
            changes.push(AliasChange {
                alias: alias.to_string(),
                version: row.try_get(1)?,
                previous_version: row.try_get(2)?,
                at: row.try_get(3)?,
                by: row.try_get(4)?,
            });
        }
        Ok(Page { items: changes, next_page_token: if more { last.map(|id| id.to_string()) } else { None } })
    }

    /// The version `alias` pointed at at `at` (a stored time, RFC 3339 UTC milliseconds).
    pub async fn alias_at(&self, model: &str, alias: &str, at: &str) -> Result<i64> {
        let id = self.model_id(model).await?;
        let row = sqlx::query(
            "SELECT version FROM alias_history WHERE model_id = $1 AND alias = $2 AND changed_at <= $3 \
             ORDER BY changed_at DESC, id DESC LIMIT 1",
        )
        .bind(id)
        .bind(alias)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get::<Option<i64>, _>(0))
            .transpose()?
            .flatten()
            .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' had no alias '{alias}' at {at}")))
    }

    /// The newest version of `model` created at or before `at` that is ready now.
    pub async fn latest_at(&self, model: &str, at: &str) -> Result<i64> {
        let id = self.model_id(model).await?;
        sqlx::query(
            "SELECT MAX(version) FROM model_versions WHERE model_id = $1 AND created_at <= $2 AND status = 'ready'",
        )
        .bind(id)
        .bind(at)
        .fetch_one(&self.pool)
        .await?
        .try_get::<Option<i64>, _>(0)?
        .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' had no ready version at {at}")))
    }
}

fn archived(model: &str, version: i64) -> RegistryError {
    RegistryError::Conflict(format!("{model}:{version} is archived; an alias cannot point at it"))
}

/// Where `alias` points now (on the pool, or inside a transaction).
async fn current<'c, E>(db: E, model_id: i64, alias: &str) -> Result<Option<i64>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    Ok(sqlx::query("SELECT version FROM aliases WHERE model_id = $1 AND alias = $2")
        .bind(model_id)
        .bind(alias)
        .fetch_optional(db)
        .await?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?)
}

/// One history entry, in the transaction that makes the change.
pub(super) async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    model_id: i64,
    alias: &str,
    version: Option<i64>,
    previous: Option<i64>,
    at: &str,
    by: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO alias_history (model_id, alias, version, previous, changed_at, changed_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(model_id)
    .bind(alias)
    .bind(version)
    .bind(previous)
    .bind(at)
    .bind(by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

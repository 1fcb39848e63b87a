//! Model versions: insert under the model's counter, get, list, update, archive, resolve.

use std::collections::{BTreeSet, HashMap};

use sqlx::any::AnyRow;
use sqlx::Row;

use super::models::{clause_sql, compare, visibility_sql, SqlParams};
use super::{
    model_not_found, now, placeholders, version_not_found, DatabaseKind, ModelVersion, NewVersion, Page, Store, Tags,
    VersionStatus,
};
use crate::error::{RegistryError, Result};
use crate::filter::{Clause, Op};
use lakescore_core::reference::{ModelRef, VersionSelector};

impl Store {
    /// Inserts a version under the next number of the model's counter. The counter update
    /// is the transaction's first statement, so it takes the write lock (SQLite) or the
    /// row lock (PostgreSQL) before anything is read: concurrent uploads queue, and the
    /// numbers come out 1, 2, 3, … without gaps or duplicates.
    pub async fn insert_version(&self, model: &str, new: NewVersion<'_>) -> Result<ModelVersion> {
        let signature = serde_json::to_string(new.signature)
            .map_err(|e| RegistryError::Internal(format!("signature encoding: {e}")))?;
        let tags = serde_json::to_string(new.tags).map_err(|e| RegistryError::Internal(format!("tags: {e}")))?;
        let backends =
            serde_json::to_string(new.backends).map_err(|e| RegistryError::Internal(format!("backends: {e}")))?;
        let ts = now();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE models SET last_version = last_version + 1, updated_at = $1 WHERE name = $2 RETURNING id, last_version",
        )
        .bind(&ts)
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| model_not_found(model))?;
        let (id, version): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        sqlx::query(
            "INSERT INTO model_versions (model_id, version, sha256, size, created_at, created_by, description, tags, status, signature, backends) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'ready', $9, $10)",
        )
        .bind(id)
        .bind(version)
        .bind(new.sha256)
        .bind(new.size)
        .bind(&ts)
        .bind(new.created_by)
        .bind(new.description)
        .bind(&tags)
        .bind(&signature)
        .bind(&backends)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_version(model, version).await
    }

    const VERSION_COLUMNS: &'static str = "m.name, v.version, v.sha256, v.size, v.created_at, v.created_by, \
         v.description, v.tags, v.status, v.signature, v.model_id, v.backends";

    /// Builds versions from `VERSION_COLUMNS` rows, reading the aliases of the whole page in
    /// one query: one round trip however long the page.
    async fn versions_from_rows(&self, rows: Vec<AnyRow>) -> Result<Vec<ModelVersion>> {
        let keys = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(10)?, r.try_get::<i64, _>(1)?)))
            .collect::<Result<Vec<(i64, i64)>>>()?;
        let mut aliases: HashMap<(i64, i64), Vec<String>> = HashMap::new();
        // An empty `IN ()` is a syntax error, and an empty page has nothing to look up.
        if !keys.is_empty() {
            // Two lists instead of row values, which SQLite and PostgreSQL spell alike only
            // in recent versions; rows of other (model, version) pairs are just not used.
            let ids: BTreeSet<i64> = keys.iter().map(|k| k.0).collect();
            let versions: BTreeSet<i64> = keys.iter().map(|k| k.1).collect();
            let sql = format!(
                "SELECT model_id, version, alias FROM aliases WHERE model_id IN ({}) AND version IN ({}) ORDER BY alias",
                placeholders(1, ids.len()),
                placeholders(ids.len() + 1, versions.len())
            );
            let mut q = sqlx::query(&sql);
            for v in ids.iter().chain(&versions) {
                q = q.bind(*v);
            }
            // In the database's alias order, as each version's list was read before.
            for r in q.fetch_all(&self.pool).await? {
                aliases.entry((r.try_get(0)?, r.try_get(1)?)).or_default().push(r.try_get(2)?);
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (row, key) in rows.into_iter().zip(keys) {
            let version = key.1;
            let aliases = aliases.remove(&key).unwrap_or_default();
            let tags: String = row.try_get(7)?;
            let status: String = row.try_get(8)?;
            let signature: String = row.try_get(9)?;
            let backends: String = row.try_get(11)?;
            out.push(ModelVersion {
                model: row.try_get(0)?,
                version,
                sha256: row.try_get(2)?,
                size: row.try_get(3)?,
                created_at: row.try_get(4)?,
                created_by: row.try_get(5)?,
                description: row.try_get(6)?,
                tags: serde_json::from_str(&tags).map_err(|e| RegistryError::Internal(format!("stored tags: {e}")))?,
                status: VersionStatus::parse(&status).ok_or_else(|| {
                    RegistryError::Internal(format!("stored status '{status}' is neither ready nor archived"))
                })?,
                aliases,
                signature: serde_json::from_str(&signature)
                    .map_err(|e| RegistryError::Internal(format!("stored signature: {e}")))?,
                backends: serde_json::from_str(&backends).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    pub async fn get_version(&self, model: &str, version: i64) -> Result<ModelVersion> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM model_versions v JOIN models m ON m.id = v.model_id WHERE m.name = $1 AND v.version = $2",
            Self::VERSION_COLUMNS
        ))
        .bind(model)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                self.versions_from_rows(vec![row]).await?.pop().ok_or_else(|| version_not_found(model, version))
            }
            None => {
                self.model_id(model).await?;
                Err(version_not_found(model, version))
            }
        }
    }

    pub async fn list_versions(
        &self,
        model: &str,
        status: Option<VersionStatus>,
        page_size: i64,
        after: Option<i64>,
    ) -> Result<Page<ModelVersion>> {
        let id = self.model_id(model).await?;
        let mut rows = sqlx::query(&format!(
            "SELECT {} FROM model_versions v JOIN models m ON m.id = v.model_id \
             WHERE v.model_id = $1 AND v.version > $2 AND ($3 = '' OR v.status = $3) ORDER BY v.version LIMIT {}",
            Self::VERSION_COLUMNS,
            page_size + 1
        ))
        .bind(id)
        .bind(after.unwrap_or(0))
        .bind(status.map_or("", VersionStatus::as_str))
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        let items = self.versions_from_rows(rows).await?;
        let next_page_token = if more { items.last().map(|v| v.version.to_string()) } else { None };
        Ok(Page { items, next_page_token })
    }

    pub async fn update_version(
        &self,
        model: &str,
        version: i64,
        description: Option<&str>,
        tags: Option<&Tags>,
    ) -> Result<ModelVersion> {
        let tags =
            tags.map(serde_json::to_string).transpose().map_err(|e| RegistryError::Internal(format!("tags: {e}")))?;
        let updated = sqlx::query(
            "UPDATE model_versions SET description = COALESCE($1, description), tags = COALESCE($2, tags) \
             WHERE model_id = (SELECT id FROM models WHERE name = $3) AND version = $4",
        )
        .bind(description)
        .bind(tags)
        .bind(model)
        .bind(version)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            self.model_id(model).await?;
            return Err(version_not_found(model, version));
        }
        self.get_version(model, version).await
    }

    /// Archives a version: it stays resolvable by number, and the aliases that pointed at
    /// it are removed in the same transaction (an alias never leads to an archived version).
    pub async fn archive_version(&self, model: &str, version: i64, by: &str) -> Result<ModelVersion> {
        let id = self.model_id(model).await?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE model_versions SET status = 'archived' WHERE model_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(version_not_found(model, version));
        }
        // The aliases it loses are changes too: recorded as removed.
        let ts = now();
        let dropped: Vec<String> = sqlx::query("SELECT alias FROM aliases WHERE model_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for alias in &dropped {
            super::aliases::record(&mut tx, id, alias, None, Some(version), &ts, by).await?;
        }
        sqlx::query("DELETE FROM aliases WHERE model_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_version(model, version).await
    }

    pub async fn resolve(&self, reference: &ModelRef) -> Result<ModelVersion> {
        let name = &reference.name;
        match &reference.selector {
            VersionSelector::Version(v) => self.get_version(name, *v).await,
            VersionSelector::Alias(alias) => {
                let v = self.get_alias(name, alias).await?;
                self.get_version(name, v).await
            }
            VersionSelector::Latest => {
                let model = self.get_model(name).await?;
                let v = model
                    .latest_version
                    .ok_or_else(|| RegistryError::NotFound(format!("model '{name}' has no ready version")))?;
                self.get_version(name, v).await
            }
        }
    }

    pub async fn is_artifact_referenced(&self, sha256: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM model_versions WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Sets (`Some`) or removes (`None`) one tag of a version, leaving the others as they
    /// are. The no-op UPDATE first takes the row's write lock, so two tags set at once
    /// both land.
    pub async fn set_version_tag(
        &self,
        model: &str,
        version: i64,
        key: &str,
        value: Option<&str>,
    ) -> Result<ModelVersion> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE model_versions SET tags = tags WHERE model_id = (SELECT id FROM models WHERE name = $1) \
             AND version = $2 RETURNING tags",
        )
        .bind(model)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            self.model_id(model).await?;
            return Err(version_not_found(model, version));
        };
        let stored: String = row.try_get(0)?;
        let mut tags: Tags =
            serde_json::from_str(&stored).map_err(|e| RegistryError::Internal(format!("stored tags: {e}")))?;
        match value {
            Some(v) => tags.insert(key.to_string(), v.to_string()),
            None => tags.remove(key),
        };
        let tags = serde_json::to_string(&tags).map_err(|e| RegistryError::Internal(format!("tags: {e}")))?;
        sqlx::query(
            "UPDATE model_versions SET tags = $1 WHERE model_id = (SELECT id FROM models WHERE name = $2) AND version = $3",
        )
        .bind(&tags)
        .bind(model)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_version(model, version).await
    }

    /// Versions of every model matching `filter` (on the model's name and description,
    /// the version's tags), by model name, newest version first; the page token is
    /// `name:version` of the last one returned. `visible_to` as for `list_models`.
    pub async fn search_versions(
        &self,
        filter: &[Clause],
        visible_to: Option<(&str, &[String])>,
        page_size: i64,
        after: Option<(&str, i64)>,
    ) -> Result<Page<ModelVersion>> {
        let mut sql = format!(
            "SELECT {} FROM model_versions v JOIN models m ON m.id = v.model_id WHERE 1 = 1",
            Self::VERSION_COLUMNS
        );
        let kind = self.kind();
        let mut params = SqlParams::default();
        for c in filter {
            let cond = clause_sql(c, &mut params, |key, op, value| {
                // A version's tags are one JSON object.
                let tag = match kind {
                    DatabaseKind::Sqlite => format!("(SELECT j.value FROM json_each(v.tags) j WHERE j.key = {key})"),
                    DatabaseKind::Postgres => format!("(CAST(v.tags AS jsonb) ->> {key})"),
                };
                match op {
                    // "tag is not X" also matches versions without the tag.
                    Op::Ne => format!("({tag} IS NULL OR {tag} <> {value})"),
                    _ => compare(op, &tag, value),
                }
            });
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        if let Some((subject, principals)) = visible_to {
            sql.push_str(&visibility_sql(subject, principals, &mut params));
        }
        if let Some((name, version)) = after {
            let name = params.push(name);
            // Versions are bound as text like every other parameter; compared as numbers.
            let version = params.push(&version.to_string());
            sql.push_str(&format!(
                " AND (m.name > {name} OR (m.name = {name} AND v.version < CAST({version} AS BIGINT)))"
            ));
        }
        sql.push_str(&format!(" ORDER BY m.name, v.version DESC LIMIT {}", page_size + 1));
        let mut rows = params.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        let items = self.versions_from_rows(rows).await?;
        let next_page_token = if more { items.last().map(|v| format!("{}:{}", v.model, v.version)) } else { None };
        Ok(Page { items, next_page_token })
    }
}

//! Registry metadata in SQLite or PostgreSQL through sqlx's `Any` driver: one set of
//! portable queries (TEXT, BIGINT, `$n` parameters) serves both databases.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{RegistryError, Result};
use crate::filter::{Clause, Field, Op};
use lakescore_core::reference::{ModelRef, VersionSelector};
use lakescore_core::wire::Signature;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

pub use lakescore_core::wire::{AuditEntry, Grant, Model, ModelVersion, Page, Permission, Tags, VersionStatus};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) when needed, and migrates.
    /// A statement that runs or waits for a lock longer than `statement_timeout` fails
    /// (503 for the caller) instead of holding the request.
    pub async fn connect(url: &str, max_connections: u32, statement_timeout: Duration) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(RegistryError::BadRequest(format!(
                "unsupported database URL '{}': use sqlite://… or postgres://…",
                redact_url(url)
            )));
        };
        if backend == Backend::Sqlite {
            if let Some(dir) = sqlite_path(url).and_then(|p| p.parent().map(|d| d.to_path_buf())) {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(&dir)?;
                }
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { max_connections.min(8) } else { max_connections })
            // Also how long a request waits for an unreachable database before its 503.
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                let timeout_ms = statement_timeout.as_millis();
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            // WAL lets readers run beside the one writer; the busy timeout makes
                            // concurrent writers queue instead of failing with "database is locked".
                            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                            sqlx::query(&format!("PRAGMA busy_timeout = {timeout_ms}")).execute(&mut *conn).await?;
                            sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                        }
                        Backend::Postgres => {
                            sqlx::query(&format!("SET statement_timeout = {timeout_ms}")).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| RegistryError::Unavailable(format!("cannot open database {}: {e}", redact_url(url))))?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|e| RegistryError::Unavailable(format!("database migration failed: {e}")))?;
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- models ------------------------------------------------------------------------

    pub async fn create_model(&self, name: &str, description: &str, tags: &Tags, created_by: &str) -> Result<Model> {
        let ts = now();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO models (name, description, created_at, updated_at, created_by) VALUES ($1, $2, $3, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(description)
        .bind(&ts)
        .bind(created_by)
        .fetch_one(&mut *tx)
        .await;
        let id: i64 = match inserted {
            Ok(row) => row.try_get(0)?,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(RegistryError::Conflict(format!("model '{name}' already exists")))
            }
            Err(e) => return Err(e.into()),
        };
        for (k, v) in tags {
            sqlx::query("INSERT INTO model_tags (model_id, key, value) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.get_model(name).await
    }

    async fn model_id(&self, name: &str) -> Result<i64> {
        sqlx::query("SELECT id FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .ok_or_else(|| model_not_found(name))
    }

    pub async fn get_model(&self, name: &str) -> Result<Model> {
        let row = sqlx::query(
            "SELECT id, name, description, created_at, updated_at, created_by, \
             (SELECT MAX(version) FROM model_versions v WHERE v.model_id = m.id AND v.status = 'ready') \
             FROM models m WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| model_not_found(name))?;
        let mut models = self.models_from_rows(vec![row]).await?;
        models.pop().ok_or_else(|| model_not_found(name))
    }

    async fn models_from_rows(&self, rows: Vec<AnyRow>) -> Result<Vec<Model>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let tags = sqlx::query("SELECT key, value FROM model_tags WHERE model_id = $1")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<Tags>>()?;
            let aliases = sqlx::query("SELECT alias, version FROM aliases WHERE model_id = $1")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            out.push(Model {
                name: row.try_get(1)?,
                description: row.try_get(2)?,
                tags,
                created_at: row.try_get(3)?,
                updated_at: row.try_get(4)?,
                created_by: row.try_get(5)?,
                latest_version: row.try_get(6)?,
                aliases,
            });
        }
        Ok(out)
    }

    /// Models matching `filter`, ordered by name; the page token is the last name returned.
    /// `visible_to`: when set (a caller without a global reader role), only models that
    /// subject owns or one of the principals has a grant on.
    pub async fn list_models(
        &self,
        filter: &[Clause],
        visible_to: Option<(&str, &[String])>,
        page_size: i64,
        after: Option<&str>,
    ) -> Result<Page<Model>> {
        let mut sql = String::from(
            "SELECT id, name, description, created_at, updated_at, created_by, \
             (SELECT MAX(version) FROM model_versions v WHERE v.model_id = m.id AND v.status = 'ready') \
             FROM models m WHERE 1 = 1",
        );
        let mut params: Vec<String> = Vec::new();
        let param = |v: &str, params: &mut Vec<String>| {
            params.push(v.to_string());
            format!("${}", params.len())
        };
        for c in filter {
            let cmp = |col: &str, value: String| match c.op {
                Op::Eq => format!("{col} = {value}"),
                Op::Ne => format!("{col} <> {value}"),
                Op::Like => format!("LOWER({col}) LIKE LOWER({value})"),
            };
            let cond = match &c.field {
                Field::Name => cmp("m.name", param(&c.value, &mut params)),
                Field::Description => cmp("m.description", param(&c.value, &mut params)),
                Field::Tag(key) => {
                    let k = param(key, &mut params);
                    let v = param(&c.value, &mut params);
                    match c.op {
                        // "tag is not X" also matches models without the tag.
                        Op::Ne => format!(
                            "NOT EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.key = {k} AND t.value = {v})"
                        ),
                        _ => format!(
                            "EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.key = {k} AND {})",
                            cmp("t.value", v)
                        ),
                    }
                }
            };
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        if let Some((subject, principals)) = visible_to {
            let owner = param(subject, &mut params);
            let list: Vec<String> = principals.iter().map(|p| param(p, &mut params)).collect();
            sql.push_str(&format!(
                " AND (m.created_by = {owner} OR EXISTS (SELECT 1 FROM model_grants g WHERE g.model_id = m.id AND g.principal IN ({})))",
                list.join(", ")
            ));
        }
        if let Some(after) = after {
            sql.push_str(&format!(" AND m.name > {}", param(after, &mut params)));
        }
        sql.push_str(&format!(" ORDER BY m.name LIMIT {}", page_size + 1));
        let mut q = sqlx::query(&sql);
        for p in &params {
            q = q.bind(p);
        }
        let mut rows = q.fetch_all(&self.pool).await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        let items = self.models_from_rows(rows).await?;
        let next_page_token = if more { items.last().map(|m| m.name.clone()) } else { None };
        Ok(Page { items, next_page_token })
    }

    pub async fn update_model(&self, name: &str, description: Option<&str>, tags: Option<&Tags>) -> Result<Model> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query(
            "UPDATE models SET description = COALESCE($1, description), updated_at = $2 WHERE name = $3 RETURNING id",
        )
        .bind(description)
        .bind(now())
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| model_not_found(name))?
        .try_get(0)?;
        if let Some(tags) = tags {
            sqlx::query("DELETE FROM model_tags WHERE model_id = $1").bind(id).execute(&mut *tx).await?;
            for (k, v) in tags {
                sqlx::query("INSERT INTO model_tags (model_id, key, value) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.get_model(name).await
    }

    /// Deletes a model. With versions present it needs `force`; returns the sha256 of
    /// every version that was deleted, so that unreferenced artifacts can be removed.
    pub async fn delete_model(&self, name: &str, force: bool) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        // Taking the row's write lock first (an UPDATE) serializes this with uploads.
        let id: i64 = sqlx::query("UPDATE models SET updated_at = $1 WHERE name = $2 RETURNING id")
            .bind(now())
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| model_not_found(name))?
            .try_get(0)?;
        let shas: Vec<String> = sqlx::query("SELECT sha256 FROM model_versions WHERE model_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if !shas.is_empty() && !force {
            return Err(RegistryError::Conflict(format!(
                "model '{name}' has {} version(s); delete them first or pass ?force=true",
                shas.len()
            )));
        }
        for table in ["aliases", "model_versions", "model_tags", "model_grants"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE model_id = $1")).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM models WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(shas)
    }

    // ---- versions ----------------------------------------------------------------------

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

    async fn versions_from_rows(&self, rows: Vec<AnyRow>) -> Result<Vec<ModelVersion>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let version: i64 = row.try_get(1)?;
            let model_id: i64 = row.try_get(10)?;
            let aliases = sqlx::query("SELECT alias FROM aliases WHERE model_id = $1 AND version = $2 ORDER BY alias")
                .bind(model_id)
                .bind(version)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
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
                status: VersionStatus::parse(&status).unwrap_or(VersionStatus::Ready),
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
        let rows = sqlx::query(&format!(
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
        let mut items = self.versions_from_rows(rows).await?;
        let more = items.len() as i64 > page_size;
        items.truncate(page_size as usize);
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
    pub async fn archive_version(&self, model: &str, version: i64) -> Result<ModelVersion> {
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
        sqlx::query("DELETE FROM aliases WHERE model_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_version(model, version).await
    }

    // ---- aliases -----------------------------------------------------------------------

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

    // ---- resolution and artifacts ------------------------------------------------------

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
}

impl Store {
    // ---- access, grants and audit --------------------------------------------------------

    /// What `subject` / `principals` may do with `model` by ownership and grants (global
    /// roles are the caller's business). Errors with 404 when the model does not exist.
    pub async fn model_access(&self, model: &str, subject: &str, principals: &[String]) -> Result<Access> {
        let placeholders: Vec<String> = (0..principals.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT m.created_by, (SELECT MAX(CASE g.permission WHEN 'write' THEN 2 ELSE 1 END) FROM model_grants g \
             WHERE g.model_id = m.id AND g.principal IN ({})) FROM models m WHERE m.name = $1",
            if placeholders.is_empty() { "NULL".to_string() } else { placeholders.join(", ") }
        );
        let mut q = sqlx::query(&sql).bind(model);
        for p in principals {
            q = q.bind(p);
        }
        let row = q.fetch_optional(&self.pool).await?.ok_or_else(|| model_not_found(model))?;
        let owner: String = row.try_get(0)?;
        let grant: Option<i64> = row.try_get(1)?;
        Ok(if owner == subject {
            Access::Owner
        } else {
            match grant {
                Some(2) => Access::Write,
                Some(_) => Access::Read,
                None => Access::None,
            }
        })
    }

    pub async fn list_grants(&self, model: &str) -> Result<Vec<Grant>> {
        let id = self.model_id(model).await?;
        sqlx::query(
            "SELECT principal, permission, granted_at, granted_by FROM model_grants WHERE model_id = $1 ORDER BY principal",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            let permission: String = r.try_get(1)?;
            Ok(Grant {
                principal: r.try_get(0)?,
                permission: if permission == "write" { Permission::Write } else { Permission::Read },
                granted_at: r.try_get(2)?,
                granted_by: r.try_get(3)?,
            })
        })
        .collect()
    }

    pub async fn put_grant(&self, model: &str, principal: &str, permission: Permission, by: &str) -> Result<()> {
        let id = self.model_id(model).await?;
        sqlx::query(
            "INSERT INTO model_grants (model_id, principal, permission, granted_at, granted_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (model_id, principal) DO UPDATE SET permission = excluded.permission, \
             granted_at = excluded.granted_at, granted_by = excluded.granted_by",
        )
        .bind(id)
        .bind(principal)
        .bind(permission.as_str())
        .bind(now())
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_grant(&self, model: &str, principal: &str) -> Result<()> {
        let id = self.model_id(model).await?;
        let deleted = sqlx::query("DELETE FROM model_grants WHERE model_id = $1 AND principal = $2")
            .bind(id)
            .bind(principal)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!("model '{model}' has no grant for '{principal}'")));
        }
        Ok(())
    }

    pub async fn record_audit(
        &self,
        principal: &str,
        action: &str,
        model: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, principal, action, model, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(now())
            .bind(principal)
            .bind(action)
            .bind(model)
            .bind(detail.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Audit entries, newest first; the page token is the last id returned.
    pub async fn list_audit(
        &self,
        model: Option<&str>,
        page_size: i64,
        before: Option<i64>,
    ) -> Result<Page<AuditEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT id, at, principal, action, model, detail FROM audit_log \
             WHERE ($1 = '' OR model = $1) AND id < $2 ORDER BY id DESC LIMIT {}",
            page_size + 1
        ))
        .bind(model.unwrap_or(""))
        .bind(before.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .into_iter()
            .map(|r| {
                let detail: String = r.try_get(5)?;
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    principal: r.try_get(2)?,
                    action: r.try_get(3)?,
                    model: r.try_get(4)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let more = items.len() as i64 > page_size;
        items.truncate(page_size as usize);
        let next_page_token = if more { items.last().map(|e| e.id.to_string()) } else { None };
        Ok(Page { items, next_page_token })
    }
}

/// What a caller may do with one model by ownership or grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    None,
    Read,
    Write,
    Owner,
}

fn model_not_found(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("model '{name}' does not exist"))
}

fn version_not_found(name: &str, version: i64) -> RegistryError {
    RegistryError::NotFound(format!("model '{name}' has no version {version}"))
}

fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// The URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

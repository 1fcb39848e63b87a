//! Models and their tags: create, get, list with filters, update, delete.

use std::collections::{BTreeMap, HashMap};

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{model_not_found, now, placeholders, Model, Page, Store, Tags};
use crate::error::{RegistryError, Result};
use crate::filter::{Clause, Field, Op};

impl Store {
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
        insert_tags(&mut tx, id, tags).await?;
        tx.commit().await?;
        self.get_model(name).await
    }

    pub(super) async fn model_id(&self, name: &str) -> Result<i64> {
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

    /// Builds models from `get_model` / `list_models` rows, reading the tags and the aliases
    /// of the whole page in one query each: two round trips however long the page.
    async fn models_from_rows(&self, rows: Vec<AnyRow>) -> Result<Vec<Model>> {
        let ids = rows.iter().map(|r| r.try_get::<i64, _>(0)).collect::<Result<Vec<_>, _>>()?;
        let mut tags: HashMap<i64, Tags> = HashMap::new();
        let mut aliases: HashMap<i64, BTreeMap<String, i64>> = HashMap::new();
        // An empty `IN ()` is a syntax error, and an empty page has nothing to look up.
        if !ids.is_empty() {
            let list = placeholders(1, ids.len());
            let for_ids = |sql| ids.iter().fold(sqlx::query(sql), |q, id| q.bind(*id));
            let sql = format!("SELECT model_id, key, value FROM model_tags WHERE model_id IN ({list})");
            for r in for_ids(&sql).fetch_all(&self.pool).await? {
                tags.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
            }
            let sql = format!("SELECT model_id, alias, version FROM aliases WHERE model_id IN ({list})");
            for r in for_ids(&sql).fetch_all(&self.pool).await? {
                aliases.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, r.try_get(2)?);
            }
        }
        rows.into_iter()
            .zip(ids)
            .map(|(row, id)| {
                Ok(Model {
                    name: row.try_get(1)?,
                    description: row.try_get(2)?,
                    tags: tags.remove(&id).unwrap_or_default(),
                    created_at: row.try_get(3)?,
                    updated_at: row.try_get(4)?,
                    created_by: row.try_get(5)?,
                    latest_version: row.try_get(6)?,
                    aliases: aliases.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
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
            insert_tags(&mut tx, id, tags).await?;
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
}

/// Writes a model's tags inside the transaction that creates or updates it.
async fn insert_tags(tx: &mut sqlx::Transaction<'_, sqlx::Any>, model_id: i64, tags: &Tags) -> Result<()> {
    for (k, v) in tags {
        sqlx::query("INSERT INTO model_tags (model_id, key, value) VALUES ($1, $2, $3)")
            .bind(model_id)
            .bind(k)
            .bind(v)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

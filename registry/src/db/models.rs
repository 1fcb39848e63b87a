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
        let mut params = SqlParams::default();
        for c in filter {
            let cond = clause_sql(c, &mut params, |key, op, value| {
                // Model tags are rows of model_tags.
                let cmp = compare(op, "t.value", value);
                match op {
                    // "tag is not X" also matches models without the tag.
                    Op::Ne => format!(
                        "NOT EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.key = {key} AND t.value = {value})"
                    ),
                    _ => format!("EXISTS (SELECT 1 FROM model_tags t WHERE t.model_id = m.id AND t.key = {key} AND {cmp})"),
                }
            });
            sql.push_str(" AND ");
            sql.push_str(&cond);
        }
        if let Some((subject, principals)) = visible_to {
            sql.push_str(&visibility_sql(subject, principals, &mut params));
        }
        if let Some(after) = after {
            sql.push_str(&format!(" AND m.name > {}", params.push(after)));
        }
        sql.push_str(&format!(" ORDER BY m.name LIMIT {}", page_size + 1));
        let mut rows = params.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
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
        // Taking the row's write lock first serializes this with uploads.
        let id = lock_model(&mut tx, name).await?;
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

    /// Sets (`Some`) or removes (`None`) one tag of a model, leaving the others as they
    /// are.
    pub async fn set_model_tag(&self, name: &str, key: &str, value: Option<&str>) -> Result<Model> {
        let mut tx = self.pool.begin().await?;
        let id = lock_model(&mut tx, name).await?;
        match value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO model_tags (model_id, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value",
                )
                .bind(id)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM model_tags WHERE model_id = $1 AND key = $2")
                    .bind(id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.get_model(name).await
    }
}

/// Marks the model updated as the transaction's first statement, which takes its row's
/// write lock (SQLite: the database's), so that the transaction queues behind any other
/// change to the model; answers the model's id.
pub(super) async fn lock_model(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> Result<i64> {
    Ok(sqlx::query("UPDATE models SET updated_at = $1 WHERE name = $2 RETURNING id")
        .bind(now())
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| model_not_found(name))?
        .try_get(0)?)
}

/// The bound parameters of a query being built, each written as its `$n` placeholder.
#[derive(Default)]
pub(super) struct SqlParams(Vec<String>);

impl SqlParams {
    /// Binds `value`; returns its placeholder.
    pub(super) fn push(&mut self, value: &str) -> String {
        self.0.push(value.to_string());
        format!("${}", self.0.len())
    }

    pub(super) fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for p in &self.0 {
            query = query.bind(p);
        }
        query
    }
}

/// `column op value` for a filter operator (LIKE ignores case, as the filter language says).
pub(super) fn compare(op: Op, column: &str, value: &str) -> String {
    match op {
        Op::Eq => format!("{column} = {value}"),
        Op::Ne => format!("{column} <> {value}"),
        Op::Like => format!("LOWER({column}) LIKE LOWER({value})"),
    }
}

/// One filter clause as SQL over `m` (models); tags are compared by `tag(key, op, value)`,
/// given the placeholders of the key and the value, since models and versions keep
/// their tags differently.
pub(super) fn clause_sql(c: &Clause, params: &mut SqlParams, tag: impl Fn(&str, Op, &str) -> String) -> String {
    match &c.field {
        Field::Name => compare(c.op, "m.name", &params.push(&c.value)),
        Field::Description => compare(c.op, "m.description", &params.push(&c.value)),
        Field::Tag(key) => {
            let k = params.push(key);
            let v = params.push(&c.value);
            tag(&k, c.op, &v)
        }
    }
}

/// ` AND …`: only models `subject` created or one of `principals` holds a grant on.
pub(super) fn visibility_sql(subject: &str, principals: &[String], params: &mut SqlParams) -> String {
    let owner = params.push(subject);
    let list: Vec<String> = principals.iter().map(|p| params.push(p)).collect();
    format!(
        " AND (m.created_by = {owner} OR EXISTS (SELECT 1 FROM model_grants g WHERE g.model_id = m.id AND g.principal IN ({})))",
        list.join(", ")
    )
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

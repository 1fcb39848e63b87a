//! Per-model grants and the access they (or ownership) give a caller.

use sqlx::Row;

use super::{model_not_found, now, placeholders, Access, Grant, Permission, Store};
use crate::error::{RegistryError, Result};

impl Store {
    /// What `subject` / `principals` may do with `model` by ownership and grants (global
    /// roles are the caller's business). Errors with 404 when the model does not exist.
    pub async fn model_access(&self, model: &str, subject: &str, principals: &[String]) -> Result<Access> {
        let sql = format!(
            "SELECT m.created_by, (SELECT MAX(CASE g.permission WHEN 'write' THEN 2 ELSE 1 END) FROM model_grants g \
             WHERE g.model_id = m.id AND g.principal IN ({})) FROM models m WHERE m.name = $1",
            if principals.is_empty() { "NULL".to_string() } else { placeholders(2, principals.len()) }
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
}

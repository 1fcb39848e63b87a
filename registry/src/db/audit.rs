//! The audit log: one row per write, listed newest first.

use sqlx::Row;

use super::{now, AuditEntry, Page, Store};
use crate::error::Result;

impl Store {
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

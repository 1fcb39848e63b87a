//! Idempotency keys: the answer to a creating POST, kept so that a client who lost it and
//! retries with the same `Idempotency-Key` gets it again instead of a second model or version.

use sqlx::Row;

use super::{now, Store};
use crate::error::Result;

/// How long an answer is kept for replay.
pub const IDEMPOTENCY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// What a reservation of `(principal, key)` found.
#[derive(Debug, PartialEq)]
pub enum Reservation {
    /// The key is new (or expired): the request runs, then [`Store::complete_idempotency`].
    Fresh,
    /// The same request finished before: its status and JSON body.
    Replay { status: u16, response: String },
    /// The key was used for a different request.
    Mismatch { operation: String },
    /// The first request with this key is still running.
    InProgress,
}

impl Store {
    /// Claims `key` for `principal`'s request, or says why not.
    pub async fn reserve_idempotency(
        &self,
        principal: &str,
        key: &str,
        operation: &str,
        request_hash: &str,
    ) -> Result<Reservation> {
        let cutoff = (chrono::Utc::now() - IDEMPOTENCY_TTL).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(&cutoff).execute(&self.pool).await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (principal, idempotency_key, operation, request_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (principal, idempotency_key) DO NOTHING",
        )
        .bind(principal)
        .bind(key)
        .bind(operation)
        .bind(request_hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Reservation::Fresh);
        }
        let row = sqlx::query(
            "SELECT operation, request_hash, status, response FROM idempotency_keys \
             WHERE principal = $1 AND idempotency_key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        // Gone between the two statements (expired, or the first request failed): a retry.
        let Some(row) = row else { return Ok(Reservation::InProgress) };
        let (stored_operation, stored_hash): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if stored_operation != operation || stored_hash != request_hash {
            return Ok(Reservation::Mismatch { operation: stored_operation });
        }
        match (row.try_get::<Option<i64>, _>(2)?, row.try_get::<Option<String>, _>(3)?) {
            (Some(status), Some(response)) => {
                Ok(Reservation::Replay { status: u16::try_from(status).unwrap_or(200), response })
            }
            _ => Ok(Reservation::InProgress),
        }
    }

    /// Records the answer of a request that ran under a reserved key.
    pub async fn complete_idempotency(&self, principal: &str, key: &str, status: u16, response: &str) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $1, response = $2 WHERE principal = $3 AND idempotency_key = $4",
        )
        .bind(i64::from(status))
        .bind(response)
        .bind(principal)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees a key whose request failed, so that a retry runs it again.
    pub async fn release_idempotency(&self, principal: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND idempotency_key = $2 AND status IS NULL")
            .bind(principal)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The model's version holding the artifact `sha256`, newest first, if any is ready.
    pub async fn ready_version_with_sha(&self, model: &str, sha256: &str) -> Result<Option<i64>> {
        let id = self.model_id(model).await?;
        let row = sqlx::query(
            "SELECT version FROM model_versions WHERE model_id = $1 AND sha256 = $2 AND status = 'ready' \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(id)
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }
}

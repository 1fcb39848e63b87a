//! Registry metadata in SQLite or PostgreSQL through sqlx's `Any` driver: one set of
//! portable queries (TEXT, BIGINT, `$n` parameters) serves both databases.

mod aliases;
mod audit;
mod grants;
mod idempotency;
mod models;
#[cfg(test)]
mod tests;
mod types;
mod versions;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::error::{RegistryError, Result};

pub use idempotency::{Reservation, IDEMPOTENCY_TTL};
pub use types::{Access, AuditEntry, Grant, Model, ModelVersion, NewVersion, Page, Permission, Tags, VersionStatus};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Which database a [`Store`] talks to (named apart from the scorer's inference `Backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// The registry's metadata database: a connection pool and the queries of `db`'s submodules.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: DatabaseKind,
    /// Connections the pool has handed out: one per statement run on the pool, one per
    /// transaction. Counted by the pool's hooks, so no query can slip past it; tests read
    /// it to show that a listing's round trips do not grow with the page.
    #[cfg(test)]
    checkouts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// The current time as stored in the database: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) when needed, and migrates.
    /// A statement that runs or waits for a lock longer than `statement_timeout` fails
    /// (503 for the caller) instead of holding the request.
    pub async fn connect(url: &str, max_connections: u32, statement_timeout: Duration) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            DatabaseKind::Postgres
        } else {
            return Err(RegistryError::BadRequest(format!(
                "unsupported database URL '{}': use sqlite://… or postgres://…",
                redact_url(url)
            )));
        };
        if kind == DatabaseKind::Sqlite {
            if let Some(dir) = sqlite_path(url).and_then(|p| p.parent().map(|d| d.to_path_buf())) {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(&dir)?;
                }
            }
        }
        #[cfg(test)]
        let checkouts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        #[cfg(test)]
        let counted = checkouts.clone();
        let options = AnyPoolOptions::new()
            .max_connections(if kind == DatabaseKind::Sqlite { max_connections.min(8) } else { max_connections })
            // Also how long a request waits for an unreachable database before its 503.
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                // A new connection goes straight to its caller, without `before_acquire`.
                #[cfg(test)]
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let timeout_ms = statement_timeout.as_millis();
                Box::pin(async move {
                    match kind {
                        DatabaseKind::Sqlite => {
                            // WAL lets readers run beside the one writer; the busy timeout makes
                            // concurrent writers queue instead of failing with "database is locked".
                            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                            sqlx::query(&format!("PRAGMA busy_timeout = {timeout_ms}")).execute(&mut *conn).await?;
                            sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                        }
                        DatabaseKind::Postgres => {
                            sqlx::query(&format!("SET statement_timeout = {timeout_ms}")).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        #[cfg(test)]
        let options = {
            let counted = checkouts.clone();
            options.before_acquire(move |_conn, _meta| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Box::pin(async { Ok(true) })
            })
        };
        let pool = options
            .connect(url)
            .await
            .map_err(|e| RegistryError::Unavailable(format!("cannot open database {}: {e}", redact_url(url))))?;
        let migrator = match kind {
            DatabaseKind::Sqlite => &SQLITE_MIGRATIONS,
            DatabaseKind::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|e| RegistryError::Unavailable(format!("database migration failed: {e}")))?;
        Ok(Self {
            pool,
            kind,
            #[cfg(test)]
            checkouts,
        })
    }

    /// How many connections the pool has handed out so far (see the field).
    #[cfg(test)]
    fn checkouts(&self) -> usize {
        self.checkouts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `$first, $first+1, …`, `n` parameters for an `IN (…)` list: the `Any` driver binds no
/// arrays, so `= ANY($1)` (PostgreSQL only) is out, and a spelled-out list works on both.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
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

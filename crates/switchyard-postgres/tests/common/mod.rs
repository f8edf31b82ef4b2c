//! Shared test helpers: a fresh schema per test on the local PostgreSQL.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use switchyard::Message;
use switchyard_postgres::{Schema, migrate};

/// The database the tests use (`SWITCHYARD_PG_URL`, default the local `test` database).
pub fn url() -> String {
    std::env::var("SWITCHYARD_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A test message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ping {
    pub key: String,
    pub n: i64,
}

impl Message for Ping {
    const TOPIC: &'static str = "test.ping";
}

/// A fresh schema (migrated) in the test database; `finish` drops it.
pub struct TestDb {
    pub pool: PgPool,
    pub schema: Schema,
}

impl TestDb {
    /// Connects and migrates a fresh schema; `None` (after saying so loudly) when PostgreSQL
    /// is unreachable and CI is unset; under CI an unreachable server fails the test.
    pub async fn new(tag: &str) -> Option<Self> {
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {} unreachable under CI: {e}", url());
                }
                eprintln!(
                    "SKIPPED: PostgreSQL at {} unreachable ({e}); set CI to fail instead",
                    url()
                );
                return None;
            }
        };
        let schema = Schema::new(unique(tag)).expect("valid schema name");
        migrate(&pool, &schema).await.expect("migrate");
        Some(Self { pool, schema })
    }

    /// Runs `sql` with `{schema}` replaced.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(&sql.replace("{schema}", self.schema.as_str()))
            .execute(&self.pool)
            .await
            .expect("exec");
    }

    /// A scalar query with `{schema}` replaced.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(&sql.replace("{schema}", self.schema.as_str()))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Drops the schema.
    pub async fn finish(self) {
        sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.pool)
            .await
            .expect("drop schema");
        self.pool.close().await;
    }
}

/// A schema name no other test run uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` until it holds or `timeout` passes (for state in another process or in the
/// database, which has no event to wait on); returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

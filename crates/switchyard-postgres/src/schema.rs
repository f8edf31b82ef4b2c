//! The schema the tables live in, and the embedded migrations that create them.

use std::fmt;

use sqlx::PgPool;

use crate::Error;

/// The embedded migrations, in order: (version, name, SQL with `{schema}` placeholders).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "outbox", include_str!("../migrations/0001_outbox.sql")),
    (2, "inbox", include_str!("../migrations/0002_inbox.sql")),
    (
        3,
        "dead_letters",
        include_str!("../migrations/0003_dead_letters.sql"),
    ),
];

/// A validated PostgreSQL schema name (`[a-z_][a-z0-9_]*`, at most 50 bytes), so it can be
/// spliced into SQL without quoting. Every table of this crate lives in one schema.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if first_ok && rest_ok && name.len() <= 50 {
            Ok(Self(name))
        } else {
            Err(Error::InvalidSchema(name))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The NOTIFY channel the outbox signals new rows on.
    pub(crate) fn channel(&self) -> String {
        format!("{}_outbox", self.0)
    }

    /// `sql` with `{schema}` replaced by the name.
    pub(crate) fn sql(&self, sql: &str) -> String {
        sql.replace("{schema}", &self.0)
    }
}

impl Default for Schema {
    /// `switchyard`.
    fn default() -> Self {
        Self("switchyard".into())
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.0)
    }
}

/// Creates the schema and its tables, applying the embedded migrations not applied yet
/// (recorded in `<schema>.migrations`). Safe to call from several processes at once: they
/// serialize on an advisory lock. Returns how many migrations it applied.
pub async fn migrate(pool: &PgPool, schema: &Schema) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("switchyard-migrate:{schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&schema.sql("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&schema.sql(
        "CREATE TABLE IF NOT EXISTS {schema}.migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    ))
    .execute(&mut *tx)
    .await?;
    let applied: Vec<i64> =
        sqlx::query_scalar(&schema.sql("SELECT version FROM {schema}.migrations"))
            .fetch_all(&mut *tx)
            .await?;
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(&schema.sql(sql)).execute(&mut *tx).await?;
        sqlx::query(&schema.sql("INSERT INTO {schema}.migrations (version, name) VALUES ($1, $2)"))
            .bind(version)
            .bind(*name)
            .execute(&mut *tx)
            .await?;
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(Schema::new("t_1").is_ok());
        assert!(Schema::new("_x").is_ok());
        for bad in ["", "1a", "A", "a-b", "a;drop table x", "a b"] {
            assert!(Schema::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
            assert!(sql.contains("{schema}."));
        }
    }
}

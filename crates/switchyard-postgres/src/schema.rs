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

/// PostgreSQL's key words that cannot name a schema unquoted (its "reserved" and "reserved
/// (can be function or type)" categories, PostgreSQL 16), sorted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// A validated PostgreSQL schema name (`[a-z_][a-z0-9_]*`, at most 50 bytes, not a reserved
/// key word such as `order` or `user`, not starting with `pg_`), so it can be spliced into
/// SQL without quoting. Every table of this crate lives in one schema.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    /// Validates `name`: [`Error::InvalidSchema`] for anything PostgreSQL would not take as an
    /// unquoted schema name.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let plain = first_ok && rest_ok && name.len() <= 50;
        if !plain || RESERVED.binary_search(&name.as_str()).is_ok() || name.starts_with("pg_") {
            return Err(Error::InvalidSchema(name));
        }
        Ok(Self(name))
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
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a;drop table x",
            "a b",
            "order",
            "user",
            "pg_x",
        ] {
            assert!(Schema::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Schema::new("orders").is_ok());
        assert!(Schema::new("users").is_ok());
    }

    #[test]
    fn the_reserved_words_are_sorted_for_the_binary_search() {
        assert!(RESERVED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
            assert!(sql.contains("{schema}."));
        }
    }
}

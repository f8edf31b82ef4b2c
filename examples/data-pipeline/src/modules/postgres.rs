//! The PostgreSQL implementation of [`AppStore`]: sqlx (tokio, rustls), the app's tables in
//! one schema, created by embedded migrations at start.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::store::{AppStore, RowCounts, StoreError, redact_url};
use super::{
    AnomalyDay, Features, Insights, ModuleError, QualityIssue, RawRow, Recommendation, SaleRow,
    Tables,
};

/// The embedded migrations, in order: (version, name, SQL). Each runs once per schema,
/// recorded in `<schema>.app_migrations`.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tables",
        include_str!("../../migrations/postgres/0001_tables.sql"),
    ),
    (
        2,
        "run_records",
        include_str!("../../migrations/postgres/0002_run_records.sql"),
    ),
];

/// The reference app's store on PostgreSQL: a connection pool whose connections have the
/// app's schema as their `search_path`, so the SQL names tables without a schema.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    schema: String,
}

/// Whether `name` is a schema name that can be spliced into SQL unquoted.
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 50
}

impl PgStore {
    /// Connects to `url`, creates `schema` if missing and applies the migrations it has not
    /// had yet (serialized between processes by an advisory lock).
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        if !valid_schema(schema) {
            return Err(StoreError::InvalidSchema(schema.to_owned()));
        }
        let unavailable = |e: sqlx::Error| StoreError::Unavailable {
            url: redact_url(url),
            message: e.to_string(),
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(unavailable)?
            .options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let store = Self {
            pool,
            url: url.to_owned(),
            schema: schema.to_owned(),
        };
        store.migrate().await.map_err(unavailable)?;
        Ok(store)
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<usize, sqlx::Error> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("data-pipeline-migrate:{s}"))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.app_migrations (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
        ))
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT version FROM {s}.app_migrations"))
                .fetch_all(&mut *tx)
                .await?;
        let mut count = 0;
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(&format!(
                "INSERT INTO {s}.app_migrations (version, name) VALUES ($1, $2)"
            ))
            .bind(version)
            .bind(*name)
            .execute(&mut *tx)
            .await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }
}

impl From<sqlx::Error> for ModuleError {
    fn from(e: sqlx::Error) -> Self {
        let retryable = matches!(
            &e,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
        );
        Self::new("Database", e.to_string(), retryable)
    }
}

/// A Rust integer as a PostgreSQL BIGINT.
fn int<T: TryInto<i64> + Copy + std::fmt::Display>(n: T) -> Result<i64, ModuleError> {
    n.try_into()
        .map_err(|_| ModuleError::new("Database", format!("{n} does not fit in a BIGINT"), false))
}

/// A BIGINT as a Rust integer.
fn uint<T: TryFrom<i64>>(v: i64) -> Result<T, ModuleError> {
    T::try_from(v).map_err(|_| ModuleError::new("Database", format!("{v} is out of range"), false))
}

fn json_error(e: serde_json::Error) -> ModuleError {
    ModuleError::new("Database", format!("raw row fields: {e}"), false)
}

/// Replaces the rows of `run` in `table` and records that the row set exists.
async fn clear_batch(c: &mut PgConnection, run: &str, table: &str) -> Result<(), ModuleError> {
    sqlx::query(&format!("DELETE FROM {table} WHERE run = $1"))
        .bind(run)
        .execute(&mut *c)
        .await?;
    sqlx::query("INSERT INTO batches (run, tbl) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(run)
        .bind(table)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn has_batch(pool: &PgPool, run: &str, table: &str) -> Result<bool, ModuleError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE run = $1 AND tbl = $2)")
            .bind(run)
            .bind(table)
            .fetch_one(pool)
            .await?,
    )
}

async fn count(pool: &PgPool, run: &str, table: &str) -> Result<usize, ModuleError> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE run = $1"))
        .bind(run)
        .fetch_one(pool)
        .await?;
    uint(n)
}

async fn put_file(c: &mut PgConnection, name: &str, text: &str) -> Result<(), ModuleError> {
    sqlx::query(
        "INSERT INTO files (name, text) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET text = excluded.text",
    )
    .bind(name)
    .bind(text)
    .execute(&mut *c)
    .await?;
    Ok(())
}

// Bulk inserts: one statement per table, the rows as arrays unnested in order.

async fn put_raw_rows(c: &mut PgConnection, run: &str, rows: &[RawRow]) -> Result<(), ModuleError> {
    clear_batch(c, run, "raw_rows").await?;
    let lines = rows
        .iter()
        .map(|r| int(r.line))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = rows
        .iter()
        .map(|r| serde_json::to_string(&r.fields).map_err(json_error))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO raw_rows (run, line, fields)
         SELECT $1, u.line, u.fields FROM UNNEST($2::BIGINT[], $3::TEXT[])
         WITH ORDINALITY AS u(line, fields, ord) ORDER BY u.ord",
    )
    .bind(run)
    .bind(lines)
    .bind(fields)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_sales(c: &mut PgConnection, run: &str, rows: &[SaleRow]) -> Result<(), ModuleError> {
    clear_batch(c, run, "sales").await?;
    let lines = rows
        .iter()
        .map(|r| int(r.line))
        .collect::<Result<Vec<_>, _>>()?;
    let days: Vec<i64> = rows.iter().map(|r| i64::from(r.day)).collect();
    let regions: Vec<&str> = rows.iter().map(|r| r.region.as_str()).collect();
    let products: Vec<&str> = rows.iter().map(|r| r.product.as_str()).collect();
    let units: Vec<i64> = rows.iter().map(|r| i64::from(r.units)).collect();
    let prices: Vec<f64> = rows.iter().map(|r| r.unit_price).collect();
    sqlx::query(
        "INSERT INTO sales (run, line, day, region, product, units, unit_price)
         SELECT $1, u.line, u.day, u.region, u.product, u.units, u.price
         FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
                     $7::FLOAT8[])
         WITH ORDINALITY AS u(line, day, region, product, units, price, ord) ORDER BY u.ord",
    )
    .bind(run)
    .bind(lines)
    .bind(days)
    .bind(regions)
    .bind(products)
    .bind(units)
    .bind(prices)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_issues(
    c: &mut PgConnection,
    run: &str,
    issues: &[QualityIssue],
) -> Result<(), ModuleError> {
    clear_batch(c, run, "quality_issues").await?;
    let lines = issues
        .iter()
        .map(|i| int(i.line))
        .collect::<Result<Vec<_>, _>>()?;
    let columns: Vec<&str> = issues.iter().map(|i| i.column.as_str()).collect();
    let rules: Vec<&str> = issues.iter().map(|i| i.rule.as_str()).collect();
    let values: Vec<&str> = issues.iter().map(|i| i.value.as_str()).collect();
    sqlx::query(
        "INSERT INTO quality_issues (run, line, column_name, rule, value)
         SELECT $1, u.line, u.col, u.rule, u.value
         FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
         WITH ORDINALITY AS u(line, col, rule, value, ord) ORDER BY u.ord",
    )
    .bind(run)
    .bind(lines)
    .bind(columns)
    .bind(rules)
    .bind(values)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_features(c: &mut PgConnection, run: &str, f: &Features) -> Result<(), ModuleError> {
    for table in [
        "features",
        "revenue_by_region",
        "units_by_product",
        "daily_revenue",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE run = $1"))
            .bind(run)
            .execute(&mut *c)
            .await?;
    }
    sqlx::query(
        "INSERT INTO features (run, rows, total_revenue, mean_row_revenue, std_row_revenue)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run)
    .bind(int(f.rows)?)
    .bind(f.total_revenue)
    .bind(f.mean_row_revenue)
    .bind(f.std_row_revenue)
    .execute(&mut *c)
    .await?;
    let (regions, revenues): (Vec<&str>, Vec<f64>) = f
        .revenue_by_region
        .iter()
        .map(|(r, v)| (r.as_str(), *v))
        .unzip();
    sqlx::query(
        "INSERT INTO revenue_by_region (run, region, revenue)
         SELECT $1, * FROM UNNEST($2::TEXT[], $3::FLOAT8[])",
    )
    .bind(run)
    .bind(regions)
    .bind(revenues)
    .execute(&mut *c)
    .await?;
    let products: Vec<&str> = f.units_by_product.keys().map(String::as_str).collect();
    let units = f
        .units_by_product
        .values()
        .map(|u| int(*u))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO units_by_product (run, product, units)
         SELECT $1, * FROM UNNEST($2::TEXT[], $3::BIGINT[])",
    )
    .bind(run)
    .bind(products)
    .bind(units)
    .execute(&mut *c)
    .await?;
    let days = (0..f.daily_revenue.len())
        .map(int)
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO daily_revenue (run, day, revenue)
         SELECT $1, * FROM UNNEST($2::BIGINT[], $3::FLOAT8[])",
    )
    .bind(run)
    .bind(days)
    .bind(&f.daily_revenue)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_insights(c: &mut PgConnection, run: &str, ins: &Insights) -> Result<(), ModuleError> {
    for table in ["insights", "anomalies"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE run = $1"))
            .bind(run)
            .execute(&mut *c)
            .await?;
    }
    sqlx::query(
        "INSERT INTO insights (run, trend_per_day, trend, z_threshold) VALUES ($1, $2, $3, $4)",
    )
    .bind(run)
    .bind(ins.trend_per_day)
    .bind(&ins.trend)
    .bind(ins.z_threshold)
    .execute(&mut *c)
    .await?;
    let days: Vec<i64> = ins.anomalies.iter().map(|a| i64::from(a.day)).collect();
    let revenues: Vec<f64> = ins.anomalies.iter().map(|a| a.revenue).collect();
    let zs: Vec<f64> = ins.anomalies.iter().map(|a| a.z).collect();
    sqlx::query(
        "INSERT INTO anomalies (run, day, revenue, z)
         SELECT $1, u.day, u.revenue, u.z FROM UNNEST($2::BIGINT[], $3::FLOAT8[], $4::FLOAT8[])
         WITH ORDINALITY AS u(day, revenue, z, ord) ORDER BY u.ord",
    )
    .bind(run)
    .bind(days)
    .bind(revenues)
    .bind(zs)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_report(c: &mut PgConnection, run: &str, md: &str) -> Result<(), ModuleError> {
    sqlx::query(
        "INSERT INTO reports (run, markdown) VALUES ($1, $2)
         ON CONFLICT (run) DO UPDATE SET markdown = excluded.markdown",
    )
    .bind(run)
    .bind(md)
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn put_recommendations(
    c: &mut PgConnection,
    run: &str,
    recs: &[Recommendation],
) -> Result<(), ModuleError> {
    clear_batch(c, run, "recommendations").await?;
    let priorities: Vec<&str> = recs.iter().map(|r| r.priority.as_str()).collect();
    let actions: Vec<&str> = recs.iter().map(|r| r.action.as_str()).collect();
    let reasons: Vec<&str> = recs.iter().map(|r| r.reason.as_str()).collect();
    sqlx::query(
        "INSERT INTO recommendations (run, priority, action, reason)
         SELECT $1, u.priority, u.action, u.reason
         FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[])
         WITH ORDINALITY AS u(priority, action, reason, ord) ORDER BY u.ord",
    )
    .bind(run)
    .bind(priorities)
    .bind(actions)
    .bind(reasons)
    .execute(&mut *c)
    .await?;
    Ok(())
}

#[async_trait]
impl AppStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn describe(&self) -> String {
        format!("{} (schema {})", redact_url(&self.url), self.schema)
    }

    async fn ping(&self) -> Result<(), ModuleError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn get_file(&self, name: &str) -> Result<Option<String>, ModuleError> {
        Ok(sqlx::query_scalar("SELECT text FROM files WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn put_file(&self, name: &str, text: &str) -> Result<(), ModuleError> {
        let mut c = self.pool.acquire().await?;
        put_file(&mut c, name, text).await
    }

    async fn files(&self) -> Result<BTreeMap<String, String>, ModuleError> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, text FROM files")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn put_raw_rows(&self, run: &str, rows: &[RawRow]) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        put_raw_rows(&mut tx, run, rows).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn raw_rows(&self, run: &str) -> Result<Option<Vec<RawRow>>, ModuleError> {
        if !has_batch(&self.pool, run, "raw_rows").await? {
            return Ok(None);
        }
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT line, fields FROM raw_rows WHERE run = $1 ORDER BY seq")
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(line, fields)| {
                Ok(RawRow {
                    line: uint(line)?,
                    fields: serde_json::from_str(&fields).map_err(json_error)?,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn put_validated(
        &self,
        run: &str,
        sales: &[SaleRow],
        issues: &[QualityIssue],
    ) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        put_sales(&mut tx, run, sales).await?;
        put_issues(&mut tx, run, issues).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sales(&self, run: &str) -> Result<Option<Vec<SaleRow>>, ModuleError> {
        if !has_batch(&self.pool, run, "sales").await? {
            return Ok(None);
        }
        let rows: Vec<(i64, i64, String, String, i64, f64)> = sqlx::query_as(
            "SELECT line, day, region, product, units, unit_price FROM sales
             WHERE run = $1 ORDER BY seq",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(line, day, region, product, units, unit_price)| {
                Ok(SaleRow {
                    line: uint(line)?,
                    day: uint(day)?,
                    region,
                    product,
                    units: uint(units)?,
                    unit_price,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn issues(&self, run: &str) -> Result<Option<Vec<QualityIssue>>, ModuleError> {
        if !has_batch(&self.pool, run, "quality_issues").await? {
            return Ok(None);
        }
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT line, column_name, rule, value FROM quality_issues
             WHERE run = $1 ORDER BY seq",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(line, column, rule, value)| {
                Ok(QualityIssue {
                    line: uint(line)?,
                    column,
                    rule,
                    value,
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    async fn sales_features(&self, run: &str) -> Result<Option<Features>, ModuleError> {
        if !has_batch(&self.pool, run, "sales").await? {
            return Ok(None);
        }
        let (rows, total, max_day): (i64, f64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(units * unit_price), 0)::FLOAT8,
                    COALESCE(MAX(day), 0)
             FROM sales WHERE run = $1",
        )
        .bind(run)
        .fetch_one(&self.pool)
        .await?;
        let rows: usize = uint(rows)?;
        if rows == 0 {
            return Ok(Some(Features::default()));
        }
        let mean = total / rows as f64;
        let var: f64 = sqlx::query_scalar(
            "SELECT (SUM((units * unit_price - $2) * (units * unit_price - $2)) / COUNT(*))::FLOAT8
             FROM sales WHERE run = $1",
        )
        .bind(run)
        .bind(mean)
        .fetch_one(&self.pool)
        .await?;
        let mut f = Features {
            rows,
            total_revenue: total,
            mean_row_revenue: mean,
            std_row_revenue: var.sqrt(),
            daily_revenue: vec![0.0; uint::<usize>(max_day)? + 1],
            ..Features::default()
        };
        let regions: Vec<(String, f64)> = sqlx::query_as(
            "SELECT region, SUM(units * unit_price)::FLOAT8 FROM sales WHERE run = $1
             GROUP BY region",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        f.revenue_by_region = regions.into_iter().collect();
        let products: Vec<(String, i64)> = sqlx::query_as(
            "SELECT product, SUM(units)::BIGINT FROM sales WHERE run = $1 GROUP BY product",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        f.units_by_product = products
            .into_iter()
            .map(|(p, u)| Ok((p, uint(u)?)))
            .collect::<Result<_, ModuleError>>()?;
        let daily: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT day, SUM(units * unit_price)::FLOAT8 FROM sales WHERE run = $1 GROUP BY day",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        for (day, revenue) in daily {
            if let Some(slot) = f.daily_revenue.get_mut(uint::<usize>(day)?) {
                *slot = revenue;
            }
        }
        Ok(Some(f))
    }

    async fn put_features(&self, run: &str, f: &Features) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        put_features(&mut tx, run, f).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn features(&self, run: &str) -> Result<Option<Features>, ModuleError> {
        let head: Option<(i64, f64, f64, f64)> = sqlx::query_as(
            "SELECT rows, total_revenue, mean_row_revenue, std_row_revenue FROM features
             WHERE run = $1",
        )
        .bind(run)
        .fetch_optional(&self.pool)
        .await?;
        let Some((rows, total_revenue, mean_row_revenue, std_row_revenue)) = head else {
            return Ok(None);
        };
        let regions: Vec<(String, f64)> =
            sqlx::query_as("SELECT region, revenue FROM revenue_by_region WHERE run = $1")
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        let products: Vec<(String, i64)> =
            sqlx::query_as("SELECT product, units FROM units_by_product WHERE run = $1")
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        let daily: Vec<f64> =
            sqlx::query_scalar("SELECT revenue FROM daily_revenue WHERE run = $1 ORDER BY day")
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        Ok(Some(Features {
            rows: uint(rows)?,
            total_revenue,
            mean_row_revenue,
            std_row_revenue,
            revenue_by_region: regions.into_iter().collect(),
            units_by_product: products
                .into_iter()
                .map(|(p, u)| Ok((p, uint(u)?)))
                .collect::<Result<_, ModuleError>>()?,
            daily_revenue: daily,
        }))
    }

    async fn put_insights(&self, run: &str, ins: &Insights) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        put_insights(&mut tx, run, ins).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insights(&self, run: &str) -> Result<Option<Insights>, ModuleError> {
        let head: Option<(f64, String, f64)> =
            sqlx::query_as("SELECT trend_per_day, trend, z_threshold FROM insights WHERE run = $1")
                .bind(run)
                .fetch_optional(&self.pool)
                .await?;
        let Some((trend_per_day, trend, z_threshold)) = head else {
            return Ok(None);
        };
        let rows: Vec<(i64, f64, f64)> =
            sqlx::query_as("SELECT day, revenue, z FROM anomalies WHERE run = $1 ORDER BY seq")
                .bind(run)
                .fetch_all(&self.pool)
                .await?;
        Ok(Some(Insights {
            anomalies: rows
                .into_iter()
                .map(|(day, revenue, z)| {
                    Ok(AnomalyDay {
                        day: uint(day)?,
                        revenue,
                        z,
                    })
                })
                .collect::<Result<_, ModuleError>>()?,
            trend_per_day,
            trend,
            z_threshold,
        }))
    }

    async fn put_run_record(
        &self,
        run: &str,
        started_ms: i64,
        record: &str,
    ) -> Result<(), ModuleError> {
        sqlx::query(
            "INSERT INTO run_records (run, started_ms, record) VALUES ($1, $2, $3)
             ON CONFLICT (run) DO UPDATE SET started_ms = excluded.started_ms,
             record = excluded.record",
        )
        .bind(run)
        .bind(started_ms)
        .bind(record)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn run_records(&self, limit: usize) -> Result<Vec<String>, ModuleError> {
        Ok(sqlx::query_scalar(
            "SELECT record FROM run_records ORDER BY started_ms DESC, run DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn put_report(&self, run: &str, markdown: &str) -> Result<(), ModuleError> {
        let mut c = self.pool.acquire().await?;
        put_report(&mut c, run, markdown).await
    }

    async fn report(&self, run: &str) -> Result<Option<String>, ModuleError> {
        Ok(
            sqlx::query_scalar("SELECT markdown FROM reports WHERE run = $1")
                .bind(run)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_recommendations(
        &self,
        run: &str,
        recs: &[Recommendation],
    ) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        put_recommendations(&mut tx, run, recs).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn recommendations(&self, run: &str) -> Result<Option<Vec<Recommendation>>, ModuleError> {
        if !has_batch(&self.pool, run, "recommendations").await? {
            return Ok(None);
        }
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT priority, action, reason FROM recommendations WHERE run = $1 ORDER BY seq",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(
            rows.into_iter()
                .map(|(priority, action, reason)| Recommendation {
                    priority,
                    action,
                    reason,
                })
                .collect(),
        ))
    }

    async fn row_counts(&self, run: &str) -> Result<RowCounts, ModuleError> {
        Ok(RowCounts {
            staged: count(&self.pool, run, "raw_rows").await?,
            valid: count(&self.pool, run, "sales").await?,
            issues: count(&self.pool, run, "quality_issues").await?,
        })
    }

    async fn runs(&self) -> Result<Vec<String>, ModuleError> {
        Ok(sqlx::query_scalar(
            "SELECT run FROM batches UNION SELECT run FROM features
             UNION SELECT run FROM insights UNION SELECT run FROM reports ORDER BY run",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn replace_all(&self, t: &Tables) -> Result<(), ModuleError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "TRUNCATE files, batches, raw_rows, sales, quality_issues, features,
             revenue_by_region, units_by_product, daily_revenue, insights, anomalies, reports,
             recommendations",
        )
        .execute(&mut *tx)
        .await?;
        for (name, text) in &t.files {
            put_file(&mut tx, name, text).await?;
        }
        for (run, rows) in &t.raw_rows {
            put_raw_rows(&mut tx, run, rows).await?;
        }
        for (run, rows) in &t.sales {
            put_sales(&mut tx, run, rows).await?;
        }
        for (run, rows) in &t.quality_issues {
            put_issues(&mut tx, run, rows).await?;
        }
        for (run, f) in &t.features {
            put_features(&mut tx, run, f).await?;
        }
        for (run, ins) in &t.insights {
            put_insights(&mut tx, run, ins).await?;
        }
        for (run, md) in &t.reports {
            put_report(&mut tx, run, md).await?;
        }
        for (run, recs) in &t.recommendations {
            put_recommendations(&mut tx, run, recs).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("data_pipeline"));
        assert!(valid_schema("_t1"));
        for bad in ["", "1a", "A", "a-b", "a;drop table x", "a b"] {
            assert!(!valid_schema(bad), "{bad:?} accepted");
        }
    }
}

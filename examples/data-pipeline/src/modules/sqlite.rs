//! The SQLite implementation of [`AppStore`]: bundled SQLite through `rusqlite`, in memory
//! or in one database file, and the SQL behind it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::store::{AppStore, RowCounts};
use super::{
    AnomalyDay, Features, Insights, ModuleError, QualityIssue, RawRow, Recommendation, SaleRow,
    Tables,
};

/// The file name of the database in a store's directory.
pub const DB_FILE: &str = "pipeline.db";

/// The schema, run each time the database is opened (every statement is idempotent). Row
/// tables keep insertion order through their rowid; `batches` records which per-run row sets
/// exist (so an empty set is told apart from a missing one).
const SCHEMA: &str = include_str!("../../migrations/sqlite/0001_tables.sql");

/// The reference app's store on SQLite (bundled, through `rusqlite`): in memory, or in one
/// database file (created if missing; the tables of earlier runs stay there). Clones share one
/// connection behind a mutex; every call runs on tokio's blocking pool (`spawn_blocking`), so
/// neither the lock nor SQLite's file I/O ever holds up an async worker. The database is
/// opened (and the schema created) on first use, or by [`AppStore::ping`].
#[derive(Debug, Clone, Default)]
pub struct SqliteStore {
    db: Arc<Mutex<Option<Connection>>>,
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// A store on a fresh in-memory database.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A store on the database file `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            db: Arc::default(),
            path: Some(path.into()),
        }
    }

    /// The database file, if any (`None`: in memory).
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the connection (opened on first use) with the lock held, on the blocking
    /// pool.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, ModuleError> + Send + 'static,
    ) -> Result<R, ModuleError> {
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a call panicked mid-way; SQLite rolled back any open
            // transaction, so the connection is still usable.
            let mut slot = db.lock().unwrap_or_else(|p| p.into_inner());
            let conn = match &mut *slot {
                Some(conn) => conn,
                empty => empty.insert(open(path.as_deref())?),
            };
            f(conn)
        })
        .await
        .map_err(|e| ModuleError::new("Database", format!("SQLite call: {e}"), false))?
    }
}

fn open(path: Option<&std::path::Path>) -> Result<Connection, ModuleError> {
    let conn = match path {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ModuleError::new("Io", format!("{}: {e}", dir.display()), true))?;
            }
            Connection::open(path)?
        }
        None => Connection::open_in_memory()?,
    };
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

#[async_trait]
impl AppStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("sqlite:{}", p.display()),
            None => "sqlite::memory:".into(),
        }
    }

    async fn ping(&self) -> Result<(), ModuleError> {
        self.call(|_| Ok(())).await
    }

    async fn get_file(&self, name: &str) -> Result<Option<String>, ModuleError> {
        let name = name.to_owned();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT text FROM files WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?,
            )
        })
        .await
    }

    async fn put_file(&self, name: &str, text: &str) -> Result<(), ModuleError> {
        let (name, text) = (name.to_owned(), text.to_owned());
        self.call(move |c| put_file(c, &name, &text)).await
    }

    async fn files(&self) -> Result<BTreeMap<String, String>, ModuleError> {
        self.call(|c| {
            let mut st = c.prepare("SELECT name, text FROM files")?;
            let files = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(files)
        })
        .await
    }

    async fn put_raw_rows(&self, run: &str, rows: &[RawRow]) -> Result<(), ModuleError> {
        let (run, rows) = (run.to_owned(), rows.to_vec());
        self.call(move |c| {
            let tx = c.transaction()?;
            put_raw_rows(&tx, &run, &rows)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn raw_rows(&self, run: &str) -> Result<Option<Vec<RawRow>>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_raw_rows(c, &run)).await
    }

    async fn put_validated(
        &self,
        run: &str,
        sales: &[SaleRow],
        issues: &[QualityIssue],
    ) -> Result<(), ModuleError> {
        let (run, sales, issues) = (run.to_owned(), sales.to_vec(), issues.to_vec());
        self.call(move |c| {
            let tx = c.transaction()?;
            put_sales(&tx, &run, &sales)?;
            put_issues(&tx, &run, &issues)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn sales(&self, run: &str) -> Result<Option<Vec<SaleRow>>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_sales(c, &run)).await
    }

    async fn issues(&self, run: &str) -> Result<Option<Vec<QualityIssue>>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_issues(c, &run)).await
    }

    async fn sales_features(&self, run: &str) -> Result<Option<Features>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| sales_features(c, &run)).await
    }

    async fn put_features(&self, run: &str, f: &Features) -> Result<(), ModuleError> {
        let (run, f) = (run.to_owned(), f.clone());
        self.call(move |c| {
            let tx = c.transaction()?;
            put_features(&tx, &run, &f)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn features(&self, run: &str) -> Result<Option<Features>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_features(c, &run)).await
    }

    async fn put_insights(&self, run: &str, ins: &Insights) -> Result<(), ModuleError> {
        let (run, ins) = (run.to_owned(), ins.clone());
        self.call(move |c| {
            let tx = c.transaction()?;
            put_insights(&tx, &run, &ins)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn insights(&self, run: &str) -> Result<Option<Insights>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_insights(c, &run)).await
    }

    async fn put_run_record(
        &self,
        run: &str,
        started_ms: i64,
        record: &str,
    ) -> Result<(), ModuleError> {
        let (run, record) = (run.to_owned(), record.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO run_records (run, started_ms, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run) DO UPDATE SET started_ms = excluded.started_ms,
                 record = excluded.record",
                params![run, started_ms, record],
            )?;
            Ok(())
        })
        .await
    }

    async fn run_records(&self, limit: usize) -> Result<Vec<String>, ModuleError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT record FROM run_records ORDER BY started_ms DESC, run DESC LIMIT ?1",
            )?;
            let rows = st.query_map([limit], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_report(&self, run: &str, markdown: &str) -> Result<(), ModuleError> {
        let (run, md) = (run.to_owned(), markdown.to_owned());
        self.call(move |c| put_report(c, &run, &md)).await
    }

    async fn report(&self, run: &str) -> Result<Option<String>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT markdown FROM reports WHERE run = ?1", [run], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    async fn put_recommendations(
        &self,
        run: &str,
        recs: &[Recommendation],
    ) -> Result<(), ModuleError> {
        let (run, recs) = (run.to_owned(), recs.to_vec());
        self.call(move |c| {
            let tx = c.transaction()?;
            put_recommendations(&tx, &run, &recs)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn recommendations(&self, run: &str) -> Result<Option<Vec<Recommendation>>, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| get_recommendations(c, &run)).await
    }

    async fn row_counts(&self, run: &str) -> Result<RowCounts, ModuleError> {
        let run = run.to_owned();
        self.call(move |c| {
            Ok(RowCounts {
                staged: count(c, &run, "raw_rows")?,
                valid: count(c, &run, "sales")?,
                issues: count(c, &run, "quality_issues")?,
            })
        })
        .await
    }

    async fn runs(&self) -> Result<Vec<String>, ModuleError> {
        self.call(|c| {
            strings(
                c,
                "SELECT run FROM batches UNION SELECT run FROM features
                 UNION SELECT run FROM insights UNION SELECT run FROM reports ORDER BY run",
            )
        })
        .await
    }

    async fn replace_all(&self, tables: &Tables) -> Result<(), ModuleError> {
        let t = tables.clone();
        self.call(move |c| replace_tables(c, &t)).await
    }
}

impl From<rusqlite::Error> for ModuleError {
    fn from(e: rusqlite::Error) -> Self {
        let retryable = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        Self::new("Database", e.to_string(), retryable)
    }
}

/// A Rust integer as an SQLite integer.
fn int<T: TryInto<i64> + Copy + std::fmt::Display>(n: T) -> Result<i64, ModuleError> {
    n.try_into().map_err(|_| {
        ModuleError::new(
            "Database",
            format!("{n} does not fit in an SQLite integer"),
            false,
        )
    })
}

/// Column `i` of a row, an SQLite integer, as a Rust integer.
fn col<T: TryFrom<i64>>(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let v: i64 = row.get(i)?;
    T::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

fn json_error(e: serde_json::Error) -> ModuleError {
    ModuleError::new("Database", format!("raw row fields: {e}"), false)
}

fn put_file(c: &Connection, name: &str, text: &str) -> Result<(), ModuleError> {
    c.execute(
        "INSERT INTO files (name, text) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET text = excluded.text",
        params![name, text],
    )?;
    Ok(())
}

/// Replaces the rows of `run` in `table` and records that the row set exists.
fn clear_batch(c: &Connection, run: &str, table: &str) -> Result<(), ModuleError> {
    c.execute(&format!("DELETE FROM {table} WHERE run = ?1"), [run])?;
    c.execute(
        "INSERT OR IGNORE INTO batches (run, tbl) VALUES (?1, ?2)",
        [run, table],
    )?;
    Ok(())
}

fn has_batch(c: &Connection, run: &str, table: &str) -> Result<bool, ModuleError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM batches WHERE run = ?1 AND tbl = ?2)",
        [run, table],
        |r| r.get(0),
    )?)
}

fn count(c: &Connection, run: &str, table: &str) -> Result<usize, ModuleError> {
    Ok(c.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE run = ?1"),
        [run],
        |r| col(r, 0),
    )?)
}

fn put_raw_rows(c: &Connection, run: &str, rows: &[RawRow]) -> Result<(), ModuleError> {
    clear_batch(c, run, "raw_rows")?;
    let mut st = c.prepare("INSERT INTO raw_rows (run, line, fields) VALUES (?1, ?2, ?3)")?;
    for r in rows {
        let fields = serde_json::to_string(&r.fields).map_err(json_error)?;
        st.execute(params![run, int(r.line)?, fields])?;
    }
    Ok(())
}

fn get_raw_rows(c: &Connection, run: &str) -> Result<Option<Vec<RawRow>>, ModuleError> {
    if !has_batch(c, run, "raw_rows")? {
        return Ok(None);
    }
    let mut st = c.prepare("SELECT line, fields FROM raw_rows WHERE run = ?1 ORDER BY rowid")?;
    let rows = st
        .query_map([run], |r| Ok((col(r, 0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<(usize, String)>, _>>()?;
    rows.into_iter()
        .map(|(line, fields)| {
            Ok(RawRow {
                line,
                fields: serde_json::from_str(&fields).map_err(json_error)?,
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn put_sales(c: &Connection, run: &str, rows: &[SaleRow]) -> Result<(), ModuleError> {
    clear_batch(c, run, "sales")?;
    let mut st = c.prepare(
        "INSERT INTO sales (run, line, day, region, product, units, unit_price)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in rows {
        st.execute(params![
            run,
            int(r.line)?,
            r.day,
            r.region,
            r.product,
            r.units,
            r.unit_price
        ])?;
    }
    Ok(())
}

fn get_sales(c: &Connection, run: &str) -> Result<Option<Vec<SaleRow>>, ModuleError> {
    if !has_batch(c, run, "sales")? {
        return Ok(None);
    }
    let mut st = c.prepare(
        "SELECT line, day, region, product, units, unit_price FROM sales
         WHERE run = ?1 ORDER BY rowid",
    )?;
    let rows = st
        .query_map([run], |r| {
            Ok(SaleRow {
                line: col(r, 0)?,
                day: col(r, 1)?,
                region: r.get(2)?,
                product: r.get(3)?,
                units: col(r, 4)?,
                unit_price: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(rows))
}

fn put_issues(c: &Connection, run: &str, issues: &[QualityIssue]) -> Result<(), ModuleError> {
    clear_batch(c, run, "quality_issues")?;
    let mut st = c.prepare(
        "INSERT INTO quality_issues (run, line, column_name, rule, value)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for i in issues {
        st.execute(params![run, int(i.line)?, i.column, i.rule, i.value])?;
    }
    Ok(())
}

fn get_issues(c: &Connection, run: &str) -> Result<Option<Vec<QualityIssue>>, ModuleError> {
    if !has_batch(c, run, "quality_issues")? {
        return Ok(None);
    }
    let mut st = c.prepare(
        "SELECT line, column_name, rule, value FROM quality_issues
         WHERE run = ?1 ORDER BY rowid",
    )?;
    let rows = st
        .query_map([run], |r| {
            Ok(QualityIssue {
                line: col(r, 0)?,
                column: r.get(1)?,
                rule: r.get(2)?,
                value: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(rows))
}

/// The features of the validated rows of `run`, aggregated by SQL over `sales` (`None` when
/// the run was not validated; `rows == 0` when it has no valid rows).
fn sales_features(c: &Connection, run: &str) -> Result<Option<Features>, ModuleError> {
    if !has_batch(c, run, "sales")? {
        return Ok(None);
    }
    let (rows, total, max_day): (usize, f64, usize) = c.query_row(
        "SELECT COUNT(*), TOTAL(units * unit_price), COALESCE(MAX(day), 0)
         FROM sales WHERE run = ?1",
        [run],
        |r| Ok((col(r, 0)?, r.get(1)?, col(r, 2)?)),
    )?;
    if rows == 0 {
        return Ok(Some(Features::default()));
    }
    let mean = total / rows as f64;
    let var: f64 = c.query_row(
        "SELECT TOTAL((units * unit_price - ?2) * (units * unit_price - ?2)) / COUNT(*)
         FROM sales WHERE run = ?1",
        params![run, mean],
        |r| r.get(0),
    )?;
    let mut f = Features {
        rows,
        total_revenue: total,
        mean_row_revenue: mean,
        std_row_revenue: var.sqrt(),
        daily_revenue: vec![0.0; max_day + 1],
        ..Features::default()
    };
    let mut st = c.prepare(
        "SELECT region, TOTAL(units * unit_price) FROM sales WHERE run = ?1 GROUP BY region",
    )?;
    f.revenue_by_region = st
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut st =
        c.prepare("SELECT product, SUM(units) FROM sales WHERE run = ?1 GROUP BY product")?;
    f.units_by_product = st
        .query_map([run], |r| Ok((r.get(0)?, col(r, 1)?)))?
        .collect::<Result<_, _>>()?;
    let mut st =
        c.prepare("SELECT day, TOTAL(units * unit_price) FROM sales WHERE run = ?1 GROUP BY day")?;
    let daily = st
        .query_map([run], |r| Ok((col::<usize>(r, 0)?, r.get::<_, f64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    for (day, revenue) in daily {
        if let Some(slot) = f.daily_revenue.get_mut(day) {
            *slot = revenue;
        }
    }
    Ok(Some(f))
}

fn put_features(c: &Connection, run: &str, f: &Features) -> Result<(), ModuleError> {
    for table in [
        "features",
        "revenue_by_region",
        "units_by_product",
        "daily_revenue",
    ] {
        c.execute(&format!("DELETE FROM {table} WHERE run = ?1"), [run])?;
    }
    c.execute(
        "INSERT INTO features (run, rows, total_revenue, mean_row_revenue, std_row_revenue)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            run,
            int(f.rows)?,
            f.total_revenue,
            f.mean_row_revenue,
            f.std_row_revenue
        ],
    )?;
    let mut st =
        c.prepare("INSERT INTO revenue_by_region (run, region, revenue) VALUES (?1, ?2, ?3)")?;
    for (region, revenue) in &f.revenue_by_region {
        st.execute(params![run, region, revenue])?;
    }
    let mut st =
        c.prepare("INSERT INTO units_by_product (run, product, units) VALUES (?1, ?2, ?3)")?;
    for (product, units) in &f.units_by_product {
        st.execute(params![run, product, int(*units)?])?;
    }
    let mut st = c.prepare("INSERT INTO daily_revenue (run, day, revenue) VALUES (?1, ?2, ?3)")?;
    for (day, revenue) in f.daily_revenue.iter().enumerate() {
        st.execute(params![run, int(day)?, revenue])?;
    }
    Ok(())
}

fn get_features(c: &Connection, run: &str) -> Result<Option<Features>, ModuleError> {
    let head = c
        .query_row(
            "SELECT rows, total_revenue, mean_row_revenue, std_row_revenue FROM features
             WHERE run = ?1",
            [run],
            |r| {
                Ok(Features {
                    rows: col(r, 0)?,
                    total_revenue: r.get(1)?,
                    mean_row_revenue: r.get(2)?,
                    std_row_revenue: r.get(3)?,
                    ..Features::default()
                })
            },
        )
        .optional()?;
    let Some(mut f) = head else {
        return Ok(None);
    };
    let mut st = c.prepare("SELECT region, revenue FROM revenue_by_region WHERE run = ?1")?;
    f.revenue_by_region = st
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut st = c.prepare("SELECT product, units FROM units_by_product WHERE run = ?1")?;
    f.units_by_product = st
        .query_map([run], |r| Ok((r.get(0)?, col(r, 1)?)))?
        .collect::<Result<_, _>>()?;
    let mut st = c.prepare("SELECT revenue FROM daily_revenue WHERE run = ?1 ORDER BY day")?;
    f.daily_revenue = st
        .query_map([run], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(f))
}

fn put_insights(c: &Connection, run: &str, ins: &Insights) -> Result<(), ModuleError> {
    c.execute("DELETE FROM insights WHERE run = ?1", [run])?;
    c.execute("DELETE FROM anomalies WHERE run = ?1", [run])?;
    c.execute(
        "INSERT INTO insights (run, trend_per_day, trend, z_threshold) VALUES (?1, ?2, ?3, ?4)",
        params![run, ins.trend_per_day, ins.trend, ins.z_threshold],
    )?;
    let mut st =
        c.prepare("INSERT INTO anomalies (run, day, revenue, z) VALUES (?1, ?2, ?3, ?4)")?;
    for a in &ins.anomalies {
        st.execute(params![run, a.day, a.revenue, a.z])?;
    }
    Ok(())
}

fn get_insights(c: &Connection, run: &str) -> Result<Option<Insights>, ModuleError> {
    let head = c
        .query_row(
            "SELECT trend_per_day, trend, z_threshold FROM insights WHERE run = ?1",
            [run],
            |r| {
                Ok(Insights {
                    anomalies: Vec::new(),
                    trend_per_day: r.get(0)?,
                    trend: r.get(1)?,
                    z_threshold: r.get(2)?,
                })
            },
        )
        .optional()?;
    let Some(mut ins) = head else {
        return Ok(None);
    };
    let mut st =
        c.prepare("SELECT day, revenue, z FROM anomalies WHERE run = ?1 ORDER BY rowid")?;
    ins.anomalies = st
        .query_map([run], |r| {
            Ok(AnomalyDay {
                day: col(r, 0)?,
                revenue: r.get(1)?,
                z: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(ins))
}

fn put_report(c: &Connection, run: &str, md: &str) -> Result<(), ModuleError> {
    c.execute(
        "INSERT INTO reports (run, markdown) VALUES (?1, ?2)
         ON CONFLICT (run) DO UPDATE SET markdown = excluded.markdown",
        params![run, md],
    )?;
    Ok(())
}

fn put_recommendations(
    c: &Connection,
    run: &str,
    recs: &[Recommendation],
) -> Result<(), ModuleError> {
    clear_batch(c, run, "recommendations")?;
    let mut st = c.prepare(
        "INSERT INTO recommendations (run, priority, action, reason) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for r in recs {
        st.execute(params![run, r.priority, r.action, r.reason])?;
    }
    Ok(())
}

fn get_recommendations(
    c: &Connection,
    run: &str,
) -> Result<Option<Vec<Recommendation>>, ModuleError> {
    if !has_batch(c, run, "recommendations")? {
        return Ok(None);
    }
    let mut st = c.prepare(
        "SELECT priority, action, reason FROM recommendations WHERE run = ?1 ORDER BY rowid",
    )?;
    let rows = st
        .query_map([run], |r| {
            Ok(Recommendation {
                priority: r.get(0)?,
                action: r.get(1)?,
                reason: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(rows))
}

fn strings(c: &Connection, sql: &str) -> Result<Vec<String>, ModuleError> {
    let mut st = c.prepare(sql)?;
    let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(v)
}

/// Replaces every table with the contents of `t`, in one transaction.
fn replace_tables(c: &mut Connection, t: &Tables) -> Result<(), ModuleError> {
    let tx = c.transaction()?;
    tx.execute_batch(
        "DELETE FROM files; DELETE FROM batches; DELETE FROM raw_rows; DELETE FROM sales;
         DELETE FROM quality_issues; DELETE FROM features; DELETE FROM revenue_by_region;
         DELETE FROM units_by_product; DELETE FROM daily_revenue; DELETE FROM insights;
         DELETE FROM anomalies; DELETE FROM reports; DELETE FROM recommendations;",
    )?;
    for (name, text) in &t.files {
        put_file(&tx, name, text)?;
    }
    for (run, rows) in &t.raw_rows {
        put_raw_rows(&tx, run, rows)?;
    }
    for (run, rows) in &t.sales {
        put_sales(&tx, run, rows)?;
    }
    for (run, rows) in &t.quality_issues {
        put_issues(&tx, run, rows)?;
    }
    for (run, f) in &t.features {
        put_features(&tx, run, f)?;
    }
    for (run, ins) in &t.insights {
        put_insights(&tx, run, ins)?;
    }
    for (run, md) in &t.reports {
        put_report(&tx, run, md)?;
    }
    for (run, recs) in &t.recommendations {
        put_recommendations(&tx, run, recs)?;
    }
    tx.commit()?;
    Ok(())
}

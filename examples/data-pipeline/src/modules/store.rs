//! The SQLite store: schema, [`Store`] and the SQL behind it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{
    AnomalyDay, Features, Insights, ModuleError, QualityIssue, RawRow, Recommendation, SaleRow,
    Tables,
};

/// The file name of the database in a store's directory.
pub const DB_FILE: &str = "pipeline.db";

/// The schema. Row tables keep insertion order through their rowid; `batches` records which
/// per-run row sets exist (so an empty set is told apart from a missing one).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    run TEXT NOT NULL,
    tbl TEXT NOT NULL,
    PRIMARY KEY (run, tbl)
);
CREATE TABLE IF NOT EXISTS raw_rows (
    run TEXT NOT NULL,
    line INTEGER NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS raw_rows_run ON raw_rows (run);
CREATE TABLE IF NOT EXISTS sales (
    run TEXT NOT NULL,
    line INTEGER NOT NULL,
    day INTEGER NOT NULL,
    region TEXT NOT NULL,
    product TEXT NOT NULL,
    units INTEGER NOT NULL,
    unit_price REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_run ON sales (run);
CREATE TABLE IF NOT EXISTS quality_issues (
    run TEXT NOT NULL,
    line INTEGER NOT NULL,
    column_name TEXT NOT NULL,
    rule TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quality_issues_run ON quality_issues (run);
CREATE TABLE IF NOT EXISTS features (
    run TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    total_revenue REAL NOT NULL,
    mean_row_revenue REAL NOT NULL,
    std_row_revenue REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revenue_by_region (
    run TEXT NOT NULL,
    region TEXT NOT NULL,
    revenue REAL NOT NULL,
    PRIMARY KEY (run, region)
);
CREATE TABLE IF NOT EXISTS units_by_product (
    run TEXT NOT NULL,
    product TEXT NOT NULL,
    units INTEGER NOT NULL,
    PRIMARY KEY (run, product)
);
CREATE TABLE IF NOT EXISTS daily_revenue (
    run TEXT NOT NULL,
    day INTEGER NOT NULL,
    revenue REAL NOT NULL,
    PRIMARY KEY (run, day)
);
CREATE TABLE IF NOT EXISTS insights (
    run TEXT PRIMARY KEY,
    trend_per_day REAL NOT NULL,
    trend TEXT NOT NULL,
    z_threshold REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS anomalies (
    run TEXT NOT NULL,
    day INTEGER NOT NULL,
    revenue REAL NOT NULL,
    z REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_run ON anomalies (run);
CREATE TABLE IF NOT EXISTS reports (
    run TEXT PRIMARY KEY,
    markdown TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recommendations (
    run TEXT NOT NULL,
    priority TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recommendations_run ON recommendations (run);
";

/// The embedded database of the reference app: SQLite (bundled, through `rusqlite`), in memory
/// for [`Store::new`] or in `DIR/pipeline.db` for [`Store::in_dir`]. Modules read and write it
/// directly with SQL (data does not travel on the bus). Cheap to clone: clones share one
/// connection behind a mutex, which is held only for synchronous work. The database is opened
/// on first use, so an error opening it surfaces as a [`ModuleError`] of kind `Database`.
#[derive(Debug, Clone, Default)]
pub struct Store {
    db: Arc<Mutex<Option<Connection>>>,
    dir: Option<PathBuf>,
}

impl Store {
    /// An empty store on an in-memory database.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose database is `dir/pipeline.db` (created if missing; the tables of earlier
    /// runs stay there), whose files (the CSV staging loads) live in `dir`, and which
    /// [`persist`](Self::persist) exports to `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            db: Arc::default(),
            dir: Some(dir.into()),
        }
    }

    /// The directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn open(&self) -> Result<Connection, ModuleError> {
        let conn = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ModuleError::new("Io", format!("{}: {e}", dir.display()), true))?;
                Connection::open(dir.join(DB_FILE))?
            }
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(SCHEMA)?;
        Ok(conn)
    }

    /// The connection in `slot`, opened (and the schema created) on first use.
    pub(super) fn connection<'a>(
        &self,
        slot: &'a mut Option<Connection>,
    ) -> Result<&'a mut Connection, ModuleError> {
        Ok(match slot {
            Some(conn) => conn,
            empty => empty.insert(self.open()?),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        // A poisoned lock means a module panicked mid-call; SQLite rolled back any open
        // transaction, so the connection is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection with the lock held. `f` is synchronous, so the lock is
    /// never held across an `.await`.
    pub(super) fn db<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, ModuleError>,
    ) -> Result<R, ModuleError> {
        let mut guard = self.lock();
        f(self.connection(&mut guard)?)
    }

    /// Reads a file: from the directory when the store has one, else from the `files` table.
    pub fn read_file(&self, name: &str) -> Result<String, ModuleError> {
        if let Some(dir) = &self.dir {
            if name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(ModuleError::new(
                    "InvalidInput",
                    format!("bad file name {name:?}"),
                    false,
                ));
            }
            let path = dir.join(name);
            return std::fs::read_to_string(&path).map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    "MissingInput"
                } else {
                    "Io"
                };
                ModuleError::new(kind, format!("{}: {e}", path.display()), kind == "Io")
            });
        }
        self.db(|c| {
            Ok(
                c.query_row("SELECT text FROM files WHERE name = ?1", [name], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?,
            )
        })?
        .ok_or_else(|| ModuleError::new("MissingInput", format!("no file named {name:?}"), false))
    }

    /// Writes a file: into the directory when the store has one, else into the `files` table.
    pub fn write_file(&self, name: &str, text: String) -> Result<(), std::io::Error> {
        match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(name), text)
            }
            None => self
                .db(|c| {
                    put_file(c, name, &text)?;
                    Ok(())
                })
                .map_err(std::io::Error::other),
        }
    }

    /// Exports every table to `store.json` and every report to `report-<run>.md` in the
    /// directory (nothing without one; the database itself is already `pipeline.db` there).
    /// Returns the files written.
    pub fn persist(&self) -> Result<Vec<PathBuf>, std::io::Error> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        std::fs::create_dir_all(dir)?;
        let tables = self.try_snapshot().map_err(std::io::Error::other)?;
        let mut written = Vec::new();
        let json = serde_json::to_vec_pretty(&tables).map_err(std::io::Error::other)?;
        let path = dir.join("store.json");
        std::fs::write(&path, json)?;
        written.push(path);
        for (run, md) in &tables.reports {
            let path = dir.join(format!("report-{run}.md"));
            std::fs::write(&path, md)?;
            written.push(path);
        }
        Ok(written)
    }

    /// Runs `f` on a [`Tables`] view of the database and, if `f` changed it, writes every
    /// table back in one transaction, all with the lock held. Meant for tests and tools (it
    /// reads and rewrites everything); modules use SQL. A database error is logged: `f` then
    /// sees empty tables and nothing is written back.
    pub fn with<R>(&self, f: impl FnOnce(&mut Tables) -> R) -> R {
        let log = |e: ModuleError| tracing::error!(error = %e, "store: database error");
        let mut guard = self.lock();
        let mut conn = self.connection(&mut guard).map_err(log).ok();
        let before = conn
            .as_deref_mut()
            .and_then(|c| load_tables(c).map_err(log).ok());
        let mut tables = before.clone().unwrap_or_default();
        let r = f(&mut tables);
        if let (Some(c), Some(before)) = (conn, before)
            && tables != before
        {
            let _ = replace_tables(c, &tables).map_err(log);
        }
        r
    }

    /// A copy of every table, read from the database (empty tables, logged, on an error).
    pub fn snapshot(&self) -> Tables {
        self.try_snapshot().unwrap_or_else(|e| {
            tracing::error!(error = %e, "store: database error");
            Tables::default()
        })
    }

    /// A copy of every table, read from the database.
    pub fn try_snapshot(&self) -> Result<Tables, ModuleError> {
        self.db(|c| load_tables(c))
    }

    /// The tables of one run only (no files): what the frontend's run view shows.
    pub fn run_tables(&self, run: &str) -> Result<Tables, ModuleError> {
        self.db(|c| {
            let mut t = Tables::default();
            let key = || run.to_owned();
            if let Some(v) = get_raw_rows(c, run)? {
                t.raw_rows.insert(key(), v);
            }
            if let Some(v) = get_sales(c, run)? {
                t.sales.insert(key(), v);
            }
            if let Some(v) = get_issues(c, run)? {
                t.quality_issues.insert(key(), v);
            }
            if let Some(v) = get_features(c, run)? {
                t.features.insert(key(), v);
            }
            if let Some(v) = get_insights(c, run)? {
                t.insights.insert(key(), v);
            }
            if let Some(v) = get_recommendations(c, run)? {
                t.recommendations.insert(key(), v);
            }
            let report: Option<String> = c
                .query_row("SELECT markdown FROM reports WHERE run = ?1", [run], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(md) = report {
                t.reports.insert(key(), md);
            }
            Ok(t)
        })
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
pub(super) fn int<T: TryInto<i64> + Copy + std::fmt::Display>(n: T) -> Result<i64, ModuleError> {
    n.try_into().map_err(|_| {
        ModuleError::new(
            "Database",
            format!("{n} does not fit in an SQLite integer"),
            false,
        )
    })
}

/// Column `i` of a row, an SQLite integer, as a Rust integer.
pub(super) fn col<T: TryFrom<i64>>(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let v: i64 = row.get(i)?;
    T::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

pub(super) fn json_error(e: serde_json::Error) -> ModuleError {
    ModuleError::new("Database", format!("raw row fields: {e}"), false)
}

pub(super) fn put_file(c: &Connection, name: &str, text: &str) -> Result<(), ModuleError> {
    c.execute(
        "INSERT INTO files (name, text) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET text = excluded.text",
        params![name, text],
    )?;
    Ok(())
}

/// Replaces the rows of `run` in `table` and records that the row set exists.
pub(super) fn clear_batch(c: &Connection, run: &str, table: &str) -> Result<(), ModuleError> {
    c.execute(&format!("DELETE FROM {table} WHERE run = ?1"), [run])?;
    c.execute(
        "INSERT OR IGNORE INTO batches (run, tbl) VALUES (?1, ?2)",
        [run, table],
    )?;
    Ok(())
}

pub(super) fn has_batch(c: &Connection, run: &str, table: &str) -> Result<bool, ModuleError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM batches WHERE run = ?1 AND tbl = ?2)",
        [run, table],
        |r| r.get(0),
    )?)
}

pub(super) fn count(c: &Connection, run: &str, table: &str) -> Result<usize, ModuleError> {
    Ok(c.query_row(
        &format!("SELECT COUNT(*) FROM {table} WHERE run = ?1"),
        [run],
        |r| col(r, 0),
    )?)
}

pub(super) fn batch_runs(c: &Connection, table: &str) -> Result<Vec<String>, ModuleError> {
    let mut st = c.prepare("SELECT run FROM batches WHERE tbl = ?1 ORDER BY run")?;
    let runs = st
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(runs)
}

pub(super) fn put_raw_rows(c: &Connection, run: &str, rows: &[RawRow]) -> Result<(), ModuleError> {
    clear_batch(c, run, "raw_rows")?;
    let mut st = c.prepare("INSERT INTO raw_rows (run, line, fields) VALUES (?1, ?2, ?3)")?;
    for r in rows {
        let fields = serde_json::to_string(&r.fields).map_err(json_error)?;
        st.execute(params![run, int(r.line)?, fields])?;
    }
    Ok(())
}

pub(super) fn get_raw_rows(c: &Connection, run: &str) -> Result<Option<Vec<RawRow>>, ModuleError> {
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

pub(super) fn put_sales(c: &Connection, run: &str, rows: &[SaleRow]) -> Result<(), ModuleError> {
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

pub(super) fn get_sales(c: &Connection, run: &str) -> Result<Option<Vec<SaleRow>>, ModuleError> {
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

pub(super) fn put_issues(
    c: &Connection,
    run: &str,
    issues: &[QualityIssue],
) -> Result<(), ModuleError> {
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

pub(super) fn get_issues(
    c: &Connection,
    run: &str,
) -> Result<Option<Vec<QualityIssue>>, ModuleError> {
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

pub(super) fn put_features(c: &Connection, run: &str, f: &Features) -> Result<(), ModuleError> {
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

pub(super) fn get_features(c: &Connection, run: &str) -> Result<Option<Features>, ModuleError> {
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

pub(super) fn put_insights(c: &Connection, run: &str, ins: &Insights) -> Result<(), ModuleError> {
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

pub(super) fn get_insights(c: &Connection, run: &str) -> Result<Option<Insights>, ModuleError> {
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

pub(super) fn put_report(c: &Connection, run: &str, md: &str) -> Result<(), ModuleError> {
    c.execute(
        "INSERT INTO reports (run, markdown) VALUES (?1, ?2)
         ON CONFLICT (run) DO UPDATE SET markdown = excluded.markdown",
        params![run, md],
    )?;
    Ok(())
}

pub(super) fn put_recommendations(
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

pub(super) fn get_recommendations(
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

pub(super) fn strings(c: &Connection, sql: &str) -> Result<Vec<String>, ModuleError> {
    let mut st = c.prepare(sql)?;
    let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(v)
}

/// Reads every table into a [`Tables`] view.
pub(super) fn load_tables(c: &Connection) -> Result<Tables, ModuleError> {
    let mut t = Tables::default();
    let mut st = c.prepare("SELECT name, text FROM files")?;
    t.files = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for run in batch_runs(c, "raw_rows")? {
        if let Some(rows) = get_raw_rows(c, &run)? {
            t.raw_rows.insert(run, rows);
        }
    }
    for run in batch_runs(c, "sales")? {
        if let Some(rows) = get_sales(c, &run)? {
            t.sales.insert(run, rows);
        }
    }
    for run in batch_runs(c, "quality_issues")? {
        if let Some(rows) = get_issues(c, &run)? {
            t.quality_issues.insert(run, rows);
        }
    }
    for run in strings(c, "SELECT run FROM features")? {
        if let Some(f) = get_features(c, &run)? {
            t.features.insert(run, f);
        }
    }
    for run in strings(c, "SELECT run FROM insights")? {
        if let Some(ins) = get_insights(c, &run)? {
            t.insights.insert(run, ins);
        }
    }
    let mut st = c.prepare("SELECT run, markdown FROM reports")?;
    t.reports = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for run in batch_runs(c, "recommendations")? {
        if let Some(recs) = get_recommendations(c, &run)? {
            t.recommendations.insert(run, recs);
        }
    }
    Ok(t)
}

/// Replaces every table with the contents of `t`, in one transaction.
pub(super) fn replace_tables(c: &mut Connection, t: &Tables) -> Result<(), ModuleError> {
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

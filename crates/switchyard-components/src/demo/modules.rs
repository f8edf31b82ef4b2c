//! The modules of the reference app: plain Rust that does the work and reads and writes the
//! store (SQLite, bundled) directly with SQL. Processors call them; they never touch the bus.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Regions a row may have (business rule).
pub const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
/// Products a row may have (business rule).
pub const PRODUCTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The CSV header.
pub const HEADER: &str = "date,region,product,units,unit_price";

/// A module failed. Processors turn this into a failed context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ModuleError {
    /// Class of the error (`MissingInput`, `EmptyDataset`, `InjectedFailure`, ...).
    pub kind: String,
    /// What happened.
    pub message: String,
    /// Whether retrying may help.
    pub retryable: bool,
}

impl ModuleError {
    fn new(kind: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            retryable,
        }
    }
}

/// One CSV line as loaded by staging (strings, not yet validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
    /// The fields.
    pub fields: Vec<String>,
}

/// A validated sales row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaleRow {
    /// Line in the source file.
    pub line: usize,
    /// Day number since the first day of the dataset.
    pub day: u32,
    /// Region.
    pub region: String,
    /// Product.
    pub product: String,
    /// Units sold.
    pub units: u32,
    /// Price per unit.
    pub unit_price: f64,
}

impl SaleRow {
    /// Units × price.
    pub fn revenue(&self) -> f64 {
        f64::from(self.units) * self.unit_price
    }
}

/// A row that failed validation, in the quality issue table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityIssue {
    /// Line in the source file.
    pub line: usize,
    /// The column (or `row`).
    pub column: String,
    /// The rule broken (`schema.columns`, `schema.integer`, `rule.units_non_negative`, ...).
    pub rule: String,
    /// The offending value.
    pub value: String,
}

/// Statistics computed by analytics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Valid rows.
    pub rows: usize,
    /// Total revenue.
    pub total_revenue: f64,
    /// Mean revenue per row.
    pub mean_row_revenue: f64,
    /// Standard deviation of revenue per row.
    pub std_row_revenue: f64,
    /// Revenue per region.
    pub revenue_by_region: BTreeMap<String, f64>,
    /// Units per product.
    pub units_by_product: BTreeMap<String, u64>,
    /// Revenue per day (index = day).
    pub daily_revenue: Vec<f64>,
}

/// A day whose revenue is far from the mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyDay {
    /// Day number.
    pub day: u32,
    /// Its revenue.
    pub revenue: f64,
    /// Its z-score.
    pub z: f64,
}

/// What insight found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Insights {
    /// Days with |z| above the threshold.
    pub anomalies: Vec<AnomalyDay>,
    /// Least-squares slope of daily revenue (per day).
    pub trend_per_day: f64,
    /// `rising`, `falling` or `flat`.
    pub trend: String,
    /// The z-score threshold used.
    pub z_threshold: f64,
}

/// One proposed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recommendation {
    /// `high`, `medium` or `low`.
    pub priority: String,
    /// What to do.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// Every table of the store, as plain Rust values: the view [`Store::snapshot`] builds by
/// querying the database (and the shape of `store.json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Tables {
    /// Source files by name (CSV text), for a store without a directory.
    pub files: BTreeMap<String, String>,
    /// Staged raw rows per run.
    pub raw_rows: BTreeMap<String, Vec<RawRow>>,
    /// Validated rows per run.
    pub sales: BTreeMap<String, Vec<SaleRow>>,
    /// Quality issues per run.
    pub quality_issues: BTreeMap<String, Vec<QualityIssue>>,
    /// Features per run.
    pub features: BTreeMap<String, Features>,
    /// Insights per run.
    pub insights: BTreeMap<String, Insights>,
    /// Rendered Markdown reports per run.
    pub reports: BTreeMap<String, String>,
    /// Recommendations per run.
    pub recommendations: BTreeMap<String, Vec<Recommendation>>,
}

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
    fn connection<'a>(
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
    fn db<R>(
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

fn batch_runs(c: &Connection, table: &str) -> Result<Vec<String>, ModuleError> {
    let mut st = c.prepare("SELECT run FROM batches WHERE tbl = ?1 ORDER BY run")?;
    let runs = st
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(runs)
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

/// Reads every table into a [`Tables`] view.
fn load_tables(c: &Connection) -> Result<Tables, ModuleError> {
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

/// A small deterministic generator (xorshift), so the dataset is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Generates the sample dataset: `rows` sales over 30 days with a rising trend, one spike day
/// (day 17, about five times the usual revenue) and a few invalid rows (one in 25): a negative
/// unit count, a missing price, an unknown region, a malformed number or a short line.
pub fn generate_csv(rows: usize, seed: u64) -> String {
    let mut rng = Rng(seed.max(1) | 1);
    let mut out = String::from(HEADER);
    out.push('\n');
    for i in 0..rows {
        let day = (i % 30) as u32;
        let region = REGIONS[rng.below(4) as usize];
        let product = PRODUCTS[rng.below(3) as usize];
        let base = 10 + u64::from(day) / 3 + rng.below(5);
        let units = if day == 17 { base * 5 } else { base };
        let price = 2.0 + rng.below(300) as f64 / 100.0;
        let line = if i % 25 == 7 {
            match (i / 25) % 5 {
                0 => format!(
                    "2026-01-{:02},{region},{product},-{units},{price:.2}",
                    day + 1
                ),
                1 => format!("2026-01-{:02},{region},{product},{units},", day + 1),
                2 => format!(
                    "2026-01-{:02},atlantis,{product},{units},{price:.2}",
                    day + 1
                ),
                3 => format!("2026-01-{:02},{region},{product},1O,{price:.2}", day + 1),
                _ => format!("2026-01-{:02},{region}", day + 1),
            }
        } else {
            format!(
                "2026-01-{:02},{region},{product},{units},{price:.2}",
                day + 1
            )
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Staging: loads file `dataset` from the store into the raw rows of `run` (one transaction).
/// Returns the number of rows staged.
pub fn stage(store: &Store, run: &str, dataset: &str) -> Result<usize, ModuleError> {
    let text = store.read_file(dataset)?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        Some((_, h)) => {
            return Err(ModuleError::new(
                "SchemaMismatch",
                format!("unexpected header {h:?}"),
                false,
            ));
        }
        None => return Err(ModuleError::new("EmptyDataset", "the file is empty", false)),
    }
    let rows: Vec<RawRow> = lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| RawRow {
            line: i + 1,
            fields: l.split(',').map(|f| f.trim().to_owned()).collect(),
        })
        .collect();
    store.db(|c| {
        let tx = c.transaction()?;
        put_raw_rows(&tx, run, &rows)?;
        tx.commit()?;
        Ok(rows.len())
    })
}

fn issue(line: usize, column: &str, rule: &str, value: &str) -> QualityIssue {
    QualityIssue {
        line,
        column: column.to_owned(),
        rule: rule.to_owned(),
        value: value.to_owned(),
    }
}

fn parse_day(s: &str) -> Option<u32> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m != "01" {
        return None;
    }
    let d: u32 = d.parse().ok()?;
    (1..=31).contains(&d).then(|| d - 1)
}

/// Validates one raw row against the schema and the business rules.
fn validate_row(r: &RawRow) -> Result<SaleRow, QualityIssue> {
    let cols = ["date", "region", "product", "units", "unit_price"];
    if r.fields.len() != cols.len() {
        return Err(issue(
            r.line,
            "row",
            "schema.columns",
            &format!("{} fields", r.fields.len()),
        ));
    }
    let f = &r.fields;
    let day = parse_day(&f[0]).ok_or_else(|| issue(r.line, "date", "schema.date", &f[0]))?;
    if !REGIONS.contains(&f[1].as_str()) {
        return Err(issue(r.line, "region", "rule.known_region", &f[1]));
    }
    if !PRODUCTS.contains(&f[2].as_str()) {
        return Err(issue(r.line, "product", "rule.known_product", &f[2]));
    }
    let units: i64 = f[3]
        .parse()
        .map_err(|_| issue(r.line, "units", "schema.integer", &f[3]))?;
    if units < 0 {
        return Err(issue(r.line, "units", "rule.units_non_negative", &f[3]));
    }
    if f[4].is_empty() {
        return Err(issue(r.line, "unit_price", "schema.required", ""));
    }
    let price: f64 = f[4]
        .parse()
        .map_err(|_| issue(r.line, "unit_price", "schema.number", &f[4]))?;
    if !(price > 0.0 && price.is_finite()) {
        return Err(issue(r.line, "unit_price", "rule.price_positive", &f[4]));
    }
    Ok(SaleRow {
        line: r.line,
        day,
        region: f[1].clone(),
        product: f[2].clone(),
        units: u32::try_from(units).unwrap_or(u32::MAX),
        unit_price: price,
    })
}

/// Quality: validates the staged rows of `run`; valid rows go to `sales`, the others to the
/// quality issue table (one transaction). Returns (valid, issues).
pub fn validate(store: &Store, run: &str) -> Result<(usize, usize), ModuleError> {
    store.db(|c| {
        let raw = get_raw_rows(c, run)?.ok_or_else(|| {
            ModuleError::new("MissingInput", format!("run {run} was not staged"), false)
        })?;
        let mut ok = Vec::new();
        let mut issues = Vec::new();
        for r in &raw {
            match validate_row(r) {
                Ok(row) => ok.push(row),
                Err(i) => issues.push(i),
            }
        }
        let tx = c.transaction()?;
        put_sales(&tx, run, &ok)?;
        put_issues(&tx, run, &issues)?;
        tx.commit()?;
        Ok((ok.len(), issues.len()))
    })
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Analytics: features and statistics of the valid rows of `run`, aggregated by SQL over the
/// `sales` table.
pub fn compute_features(store: &Store, run: &str) -> Result<Features, ModuleError> {
    store.db(|c| {
        if !has_batch(c, run, "sales")? {
            return Err(ModuleError::new(
                "MissingInput",
                format!("run {run} was not validated"),
                false,
            ));
        }
        let (rows, total, max_day): (usize, f64, usize) = c.query_row(
            "SELECT COUNT(*), TOTAL(units * unit_price), COALESCE(MAX(day), 0)
             FROM sales WHERE run = ?1",
            [run],
            |r| Ok((col(r, 0)?, r.get(1)?, col(r, 2)?)),
        )?;
        if rows == 0 {
            return Err(ModuleError::new("EmptyDataset", "no valid rows", false));
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
        {
            let mut st = c.prepare(
                "SELECT region, TOTAL(units * unit_price) FROM sales WHERE run = ?1 GROUP BY region",
            )?;
            f.revenue_by_region = st
                .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut st = c.prepare(
                "SELECT product, SUM(units) FROM sales WHERE run = ?1 GROUP BY product",
            )?;
            f.units_by_product = st
                .query_map([run], |r| Ok((r.get(0)?, col(r, 1)?)))?
                .collect::<Result<_, _>>()?;
            let mut st = c.prepare(
                "SELECT day, TOTAL(units * unit_price) FROM sales WHERE run = ?1 GROUP BY day",
            )?;
            let daily = st
                .query_map([run], |r| Ok((col::<usize>(r, 0)?, r.get::<_, f64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            for (day, revenue) in daily {
                if let Some(slot) = f.daily_revenue.get_mut(day) {
                    *slot = revenue;
                }
            }
        }
        let tx = c.transaction()?;
        put_features(&tx, run, &f)?;
        tx.commit()?;
        Ok(f)
    })
}

/// Insight: z-score anomalies and the linear trend of daily revenue.
pub fn detect_insights(
    store: &Store,
    run: &str,
    z_threshold: f64,
) -> Result<Insights, ModuleError> {
    store.db(|c| {
        let f = get_features(c, run)?.ok_or_else(|| {
            ModuleError::new("MissingInput", format!("no features for run {run}"), false)
        })?;
        let ys = &f.daily_revenue;
        let (mean, std) = mean_std(ys);
        let anomalies = ys
            .iter()
            .enumerate()
            .filter_map(|(d, &y)| {
                let z = if std > 0.0 { (y - mean) / std } else { 0.0 };
                (z.abs() > z_threshold).then_some(AnomalyDay {
                    day: d as u32,
                    revenue: y,
                    z,
                })
            })
            .collect::<Vec<_>>();
        // Trend without the anomalous days, by least squares.
        let skip: BTreeSet<u32> = anomalies.iter().map(|a| a.day).collect();
        let pts: Vec<(f64, f64)> = ys
            .iter()
            .enumerate()
            .filter(|(d, _)| !skip.contains(&(*d as u32)))
            .map(|(d, &y)| (d as f64, y))
            .collect();
        let n = pts.len() as f64;
        let slope = if n >= 2.0 {
            let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
            let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
            let num: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
            let den: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
            if den > 0.0 { num / den } else { 0.0 }
        } else {
            0.0
        };
        let rel = if mean.abs() > 0.0 { slope / mean } else { 0.0 };
        let trend = if rel > 0.005 {
            "rising"
        } else if rel < -0.005 {
            "falling"
        } else {
            "flat"
        };
        let ins = Insights {
            anomalies,
            trend_per_day: slope,
            trend: trend.to_owned(),
            z_threshold,
        };
        let tx = c.transaction()?;
        put_insights(&tx, run, &ins)?;
        tx.commit()?;
        Ok(ins)
    })
}

/// Preview (called by the staging processor at the CPM's direct request): the number of data
/// lines and the header of a file, without staging it.
pub fn preview(store: &Store, dataset: &str) -> Result<(usize, String), ModuleError> {
    let text = store.read_file(dataset)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default().to_owned();
    Ok((lines.count(), header))
}

/// Report: renders the Markdown report of `run`. Returns its length in bytes.
pub fn render_report(store: &Store, run: &str) -> Result<usize, ModuleError> {
    store.db(|c| {
        let missing =
            || ModuleError::new("MissingInput", format!("run {run} is incomplete"), false);
        let f = get_features(c, run)?.ok_or_else(missing)?;
        let ins = get_insights(c, run)?.ok_or_else(missing)?;
        let issues = count(c, run, "quality_issues")?;
        let staged = count(c, run, "raw_rows")?;
        let mut md = String::new();
        let _ = writeln!(md, "# Sales report — run {run}\n");
        let _ = writeln!(md, "## Data quality\n");
        let _ = writeln!(md, "- rows staged: {staged}");
        let _ = writeln!(md, "- valid rows: {}", f.rows);
        let _ = writeln!(md, "- quality issues: {issues}\n");
        let _ = writeln!(md, "## Revenue\n");
        let _ = writeln!(md, "- total: {:.2}", f.total_revenue);
        let _ = writeln!(
            md,
            "- per row: mean {:.2}, std {:.2}\n",
            f.mean_row_revenue, f.std_row_revenue
        );
        let _ = writeln!(md, "| region | revenue |\n|---|---:|");
        for (r, v) in &f.revenue_by_region {
            let _ = writeln!(md, "| {r} | {v:.2} |");
        }
        let _ = writeln!(md, "\n| product | units |\n|---|---:|");
        for (p, u) in &f.units_by_product {
            let _ = writeln!(md, "| {p} | {u} |");
        }
        let _ = writeln!(md, "\n## Insights\n");
        let _ = writeln!(
            md,
            "- trend: {} ({:+.2} per day)",
            ins.trend, ins.trend_per_day
        );
        for a in &ins.anomalies {
            let _ = writeln!(
                md,
                "- anomaly: day {} revenue {:.2} (z = {:.2})",
                a.day + 1,
                a.revenue,
                a.z
            );
        }
        let len = md.len();
        put_report(c, run, &md)?;
        Ok(len)
    })
}

/// Recommendation: proposes actions from quality, insights and features.
pub fn recommend(store: &Store, run: &str) -> Result<Vec<Recommendation>, ModuleError> {
    store.db(|c| {
        let missing =
            || ModuleError::new("MissingInput", format!("run {run} is incomplete"), false);
        let f = get_features(c, run)?.ok_or_else(missing)?;
        let ins = get_insights(c, run)?.ok_or_else(missing)?;
        let issues = count(c, run, "quality_issues")?;
        let staged = count(c, run, "raw_rows")?.max(1);
        let mut recs = Vec::new();
        let share = issues as f64 / staged as f64;
        if share > 0.02 {
            recs.push(Recommendation {
                priority: "high".into(),
                action: "fix the data source: validate units and prices at entry".into(),
                reason: format!("{:.1}% of rows failed validation", share * 100.0),
            });
        }
        for a in &ins.anomalies {
            recs.push(Recommendation {
                priority: "medium".into(),
                action: format!("investigate day {}", a.day + 1),
                reason: format!(
                    "revenue {:.2} is {:.1} standard deviations off",
                    a.revenue, a.z
                ),
            });
        }
        if let Some((region, rev)) = f.revenue_by_region.iter().max_by(|a, b| a.1.total_cmp(b.1)) {
            recs.push(Recommendation {
                priority: "low".into(),
                action: format!("expand in {region}"),
                reason: format!("highest revenue ({rev:.2})"),
            });
        }
        if ins.trend == "falling" {
            recs.push(Recommendation {
                priority: "high".into(),
                action: "review pricing".into(),
                reason: "daily revenue is falling".into(),
            });
        }
        let tx = c.transaction()?;
        put_recommendations(&tx, run, &recs)?;
        tx.commit()?;
        Ok(recs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(line: &str) -> RawRow {
        RawRow {
            line: 2,
            fields: line.split(',').map(str::to_owned).collect(),
        }
    }

    #[test]
    fn validation_rules() {
        let ok = validate_row(&raw("2026-01-05,north,alpha,12,2.50")).unwrap();
        assert_eq!((ok.day, ok.units), (4, 12));
        assert!((ok.revenue() - 30.0).abs() < 1e-9);
        let rule = |l: &str| validate_row(&raw(l)).unwrap_err().rule;
        assert_eq!(rule("2026-01-05,north"), "schema.columns");
        assert_eq!(rule("2026-02-05,north,alpha,1,1"), "schema.date");
        assert_eq!(rule("2026-01-05,mars,alpha,1,1"), "rule.known_region");
        assert_eq!(rule("2026-01-05,north,omega,1,1"), "rule.known_product");
        assert_eq!(rule("2026-01-05,north,alpha,1O,1"), "schema.integer");
        assert_eq!(
            rule("2026-01-05,north,alpha,-3,1"),
            "rule.units_non_negative"
        );
        assert_eq!(rule("2026-01-05,north,alpha,3,"), "schema.required");
        assert_eq!(rule("2026-01-05,north,alpha,3,x"), "schema.number");
        assert_eq!(rule("2026-01-05,north,alpha,3,0"), "rule.price_positive");
    }

    #[test]
    fn generated_data_is_deterministic_with_one_invalid_row_in_25() {
        assert_eq!(generate_csv(100, 7), generate_csv(100, 7));
        assert_ne!(generate_csv(100, 7), generate_csv(100, 8));
        let store = Store::new();
        store.with(|t| t.files.insert("f".into(), generate_csv(250, 3)));
        assert_eq!(stage(&store, "r", "f").unwrap(), 250);
        assert_eq!(validate(&store, "r").unwrap(), (240, 10));
    }

    #[test]
    fn missing_inputs_are_errors_not_panics() {
        let store = Store::new();
        assert_eq!(stage(&store, "r", "nope").unwrap_err().kind, "MissingInput");
        assert_eq!(validate(&store, "r").unwrap_err().kind, "MissingInput");
        assert_eq!(
            compute_features(&store, "r").unwrap_err().kind,
            "MissingInput"
        );
        assert_eq!(
            detect_insights(&store, "r", 2.0).unwrap_err().kind,
            "MissingInput"
        );
        assert_eq!(render_report(&store, "r").unwrap_err().kind, "MissingInput");
        assert_eq!(recommend(&store, "r").unwrap_err().kind, "MissingInput");
        store.with(|t| t.files.insert("bad".into(), "a,b\n1,2\n".into()));
        assert_eq!(
            stage(&store, "r", "bad").unwrap_err().kind,
            "SchemaMismatch"
        );
        store.with(|t| t.files.insert("empty".into(), String::new()));
        assert_eq!(
            stage(&store, "r", "empty").unwrap_err().kind,
            "EmptyDataset"
        );
    }

    #[test]
    fn falling_trend_is_detected() {
        let store = Store::new();
        store.with(|t| {
            t.features.insert(
                "r".into(),
                Features {
                    daily_revenue: (0..30).map(|d| 1000.0 - 20.0 * f64::from(d)).collect(),
                    ..Features::default()
                },
            )
        });
        let ins = detect_insights(&store, "r", 2.5).unwrap();
        assert_eq!(ins.trend, "falling");
        assert!((ins.trend_per_day + 20.0).abs() < 1e-9);
        assert!(ins.anomalies.is_empty());
    }

    #[test]
    fn sql_features_match_the_rows() {
        let store = Store::new();
        store.write_file("f", generate_csv(300, 5)).unwrap();
        stage(&store, "r", "f").unwrap();
        validate(&store, "r").unwrap();
        let f = compute_features(&store, "r").unwrap();
        let t = store.snapshot();
        let rows = &t.sales["r"];
        let revenues: Vec<f64> = rows.iter().map(SaleRow::revenue).collect();
        let (mean, std) = mean_std(&revenues);
        assert_eq!(f.rows, rows.len());
        assert!((f.total_revenue - revenues.iter().sum::<f64>()).abs() < 1e-6);
        assert!((f.mean_row_revenue - mean).abs() < 1e-9);
        assert!((f.std_row_revenue - std).abs() < 1e-9);
        let daily: f64 = f.daily_revenue.iter().sum();
        assert!((daily - f.total_revenue).abs() < 1e-6);
        let units: u64 = rows.iter().map(|r| u64::from(r.units)).sum();
        assert_eq!(f.units_by_product.values().sum::<u64>(), units);
        assert_eq!(t.features["r"], f);
    }

    #[test]
    fn the_tables_view_round_trips_and_empty_sets_are_kept() {
        let store = Store::new();
        store.write_file("h", format!("{HEADER}\n")).unwrap();
        assert_eq!(stage(&store, "r", "h").unwrap(), 0);
        assert_eq!(validate(&store, "r").unwrap(), (0, 0));
        assert_eq!(
            compute_features(&store, "r").unwrap_err().kind,
            "EmptyDataset"
        );
        let before = store.snapshot();
        assert_eq!(before.raw_rows["r"], Vec::<RawRow>::new());
        store.with(|t| t.reports.insert("x".into(), "# x".into()));
        let after = store.snapshot();
        assert_eq!(after.reports["x"], "# x");
        assert_eq!(after.raw_rows, before.raw_rows);
        assert_eq!(after.files, before.files);
    }

    #[test]
    fn a_store_with_a_directory_keeps_its_database_in_pipeline_db() {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let store = Store::in_dir(&dir);
        store.write_file("f.csv", generate_csv(50, 2)).unwrap();
        assert_eq!(stage(&store, "r", "f.csv").unwrap(), 50);
        assert_eq!(validate(&store, "r").unwrap(), (48, 2));
        drop(store);
        assert!(dir.join(DB_FILE).is_file());
        let reopened = Store::in_dir(&dir);
        let t = reopened.snapshot();
        assert_eq!(t.sales["r"].len(), 48);
        assert!(t.files.is_empty());
        assert_eq!(compute_features(&reopened, "r").unwrap().rows, 48);
        drop(reopened);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

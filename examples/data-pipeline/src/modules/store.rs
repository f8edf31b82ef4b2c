//! The store the modules read and write: the [`AppStore`] trait (one implementation per
//! database), the [`Store`] handle the app passes around, and the choice of database from a
//! `DATABASE_URL`.
//!
//! The trait is async: processors are async handlers on the bus's tokio workers, and a
//! PostgreSQL query is network I/O, which must be awaited rather than block a worker (with two
//! workers, one slow query would stall half the bus). SQLite, which is synchronous, runs each
//! call on tokio's blocking pool instead. It is object safe (through `async_trait`), so the
//! database is chosen at run time from the URL behind one `Arc<dyn AppStore>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::sqlite::{DB_FILE, SqliteStore};
use super::{
    Features, Insights, ModuleError, QualityIssue, RawRow, Recommendation, SaleRow, Tables,
};

/// How many rows of each row table one run has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Staged (raw) rows.
    pub staged: usize,
    /// Valid rows (`sales`).
    pub valid: usize,
    /// Quality issues.
    pub issues: usize,
}

/// One database behind the reference app: the SQL of every table, per dialect. A getter
/// returns `None` for a run that has no such data (a run with an empty row set returns an
/// empty `Vec`); each `put_*` replaces what the run had, in one transaction.
#[async_trait]
pub trait AppStore: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
    /// Where the data is, for messages (a URL without its password).
    fn describe(&self) -> String;
    /// Opens the database if it is not open yet: an unreachable database is an error here.
    async fn ping(&self) -> Result<(), ModuleError>;
    /// A file of the `files` table.
    async fn get_file(&self, name: &str) -> Result<Option<String>, ModuleError>;
    /// Writes (or replaces) a file of the `files` table.
    async fn put_file(&self, name: &str, text: &str) -> Result<(), ModuleError>;
    /// Every file of the `files` table.
    async fn files(&self) -> Result<BTreeMap<String, String>, ModuleError>;
    /// Replaces the staged rows of `run`.
    async fn put_raw_rows(&self, run: &str, rows: &[RawRow]) -> Result<(), ModuleError>;
    /// The staged rows of `run`, in order.
    async fn raw_rows(&self, run: &str) -> Result<Option<Vec<RawRow>>, ModuleError>;
    /// Replaces the valid rows and the quality issues of `run`, together.
    async fn put_validated(
        &self,
        run: &str,
        sales: &[SaleRow],
        issues: &[QualityIssue],
    ) -> Result<(), ModuleError>;
    /// The valid rows of `run`, in order.
    async fn sales(&self, run: &str) -> Result<Option<Vec<SaleRow>>, ModuleError>;
    /// The quality issues of `run`, in order.
    async fn issues(&self, run: &str) -> Result<Option<Vec<QualityIssue>>, ModuleError>;
    /// The features of the valid rows of `run`, aggregated by SQL over `sales` (`None`: not
    /// validated; `rows == 0` and nothing else: no valid rows). Not stored.
    async fn sales_features(&self, run: &str) -> Result<Option<Features>, ModuleError>;
    /// Replaces the features of `run`.
    async fn put_features(&self, run: &str, f: &Features) -> Result<(), ModuleError>;
    /// The stored features of `run`.
    async fn features(&self, run: &str) -> Result<Option<Features>, ModuleError>;
    /// Replaces the insights (and anomalies) of `run`.
    async fn put_insights(&self, run: &str, ins: &Insights) -> Result<(), ModuleError>;
    /// The insights of `run`.
    async fn insights(&self, run: &str) -> Result<Option<Insights>, ModuleError>;
    /// Keeps the CPM's record of `run` (JSON), replacing an earlier one of the same run.
    async fn put_run_record(
        &self,
        run: &str,
        started_ms: i64,
        record: &str,
    ) -> Result<(), ModuleError>;
    /// The newest `limit` run records kept (JSON), newest first.
    async fn run_records(&self, limit: usize) -> Result<Vec<String>, ModuleError>;
    /// Replaces the Markdown report of `run`.
    async fn put_report(&self, run: &str, markdown: &str) -> Result<(), ModuleError>;
    /// The Markdown report of `run`.
    async fn report(&self, run: &str) -> Result<Option<String>, ModuleError>;
    /// Replaces the recommendations of `run`.
    async fn put_recommendations(
        &self,
        run: &str,
        recs: &[Recommendation],
    ) -> Result<(), ModuleError>;
    /// The recommendations of `run`, in order.
    async fn recommendations(&self, run: &str) -> Result<Option<Vec<Recommendation>>, ModuleError>;
    /// How many rows each row table has for `run` (counted by SQL).
    async fn row_counts(&self, run: &str) -> Result<RowCounts, ModuleError>;
    /// Every run with data in any table, sorted.
    async fn runs(&self) -> Result<Vec<String>, ModuleError>;
    /// Replaces every table with `tables`, in one transaction.
    async fn replace_all(&self, tables: &Tables) -> Result<(), ModuleError>;
}

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `DATABASE_URL` names a database the app does not support.
    #[error(
        "unsupported DATABASE_URL {url}: use postgres://... (or postgresql://...), sqlite:PATH or sqlite::memory:"
    )]
    UnsupportedScheme {
        /// The URL, without its password.
        url: String,
    },
    /// The PostgreSQL schema name is not `[a-z_][a-z0-9_]*` (at most 50 bytes).
    #[error("invalid PostgreSQL schema name {0:?}: use [a-z_][a-z0-9_]*, at most 50 bytes")]
    InvalidSchema(String),
    /// The database did not answer, or refused the migrations.
    #[error("database {url}: {message}")]
    Unavailable {
        /// The URL, without its password.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// `url` with the password of its user info replaced by `***`
/// (`postgres://app:secret@db/x` → `postgres://app:***@db/x`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The store of the reference app: a database ([`AppStore`]: SQLite or PostgreSQL) and,
/// optionally, a directory for the source files and exports. Modules read and write it
/// directly with SQL (data does not travel on the bus). Cheap to clone: clones share the
/// database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<dyn AppStore>,
    dir: Option<PathBuf>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store on an in-memory SQLite database.
    pub fn new() -> Self {
        Self::on(Arc::new(SqliteStore::in_memory()), None)
    }

    /// A store whose database is the SQLite file `dir/pipeline.db` (created if missing; the
    /// tables of earlier runs stay there), whose files (the CSV staging loads) live in `dir`,
    /// and which [`persist`](Self::persist) exports to `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self::on(Arc::new(SqliteStore::file(dir.join(DB_FILE))), Some(dir))
    }

    /// A store on `db`, with files in `dir` when given (else in the `files` table).
    pub fn on(db: Arc<dyn AppStore>, dir: Option<PathBuf>) -> Self {
        Self { db, dir }
    }

    /// Opens the store `database_url` names, migrated and answering: `None` (or empty) is
    /// SQLite, in `dir/pipeline.db` with a directory and in memory without;
    /// `sqlite:PATH` (or `sqlite://PATH`) is SQLite in the file `PATH`, `sqlite::memory:` in
    /// memory; `postgres://...` or `postgresql://...` is PostgreSQL, with the app's tables
    /// in `pg_schema` (created if missing, migrations applied). Anything else, an
    /// unreachable database or a failed migration is an error naming the URL without its
    /// password.
    pub async fn open(
        database_url: Option<&str>,
        pg_schema: &str,
        dir: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        let url = database_url.map(str::trim).filter(|u| !u.is_empty());
        let store = match url {
            None => match dir {
                Some(dir) => Self::in_dir(dir),
                None => Self::new(),
            },
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                let pg = super::postgres::PgStore::connect(u, pg_schema).await?;
                Self::on(Arc::new(pg), dir)
            }
            Some(u) if u.starts_with("sqlite:") => {
                let rest = &u["sqlite:".len()..];
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                let path = rest.split('?').next().unwrap_or_default();
                let db = match path {
                    "" => match &dir {
                        Some(dir) => SqliteStore::file(dir.join(DB_FILE)),
                        None => SqliteStore::in_memory(),
                    },
                    ":memory:" => SqliteStore::in_memory(),
                    path => SqliteStore::file(path),
                };
                Self::on(Arc::new(db), dir)
            }
            Some(u) => {
                return Err(StoreError::UnsupportedScheme { url: redact_url(u) });
            }
        };
        store.db.ping().await.map_err(|e| StoreError::Unavailable {
            url: redact_url(&store.db.describe()),
            message: e.to_string(),
        })?;
        Ok(store)
    }

    /// `DATABASE_URL` from the environment, if set and not empty.
    pub fn url_from_env() -> Option<String> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
    }

    /// The database: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.db.kind()
    }

    /// Where the data is (a URL without its password).
    pub fn describe(&self) -> String {
        redact_url(&self.db.describe())
    }

    /// The database behind the store, shared (the CPM's run history writes to it).
    pub fn shared_database(&self) -> Arc<dyn AppStore> {
        self.db.clone()
    }

    /// The database.
    pub fn database(&self) -> &dyn AppStore {
        &*self.db
    }

    /// The directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads a file: from the directory when the store has one, else from the `files` table.
    pub async fn read_file(&self, name: &str) -> Result<String, ModuleError> {
        if let Some(dir) = &self.dir {
            if name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(ModuleError::new(
                    "InvalidInput",
                    format!("bad file name {name:?}"),
                    false,
                ));
            }
            let path = dir.join(name);
            return tokio::fs::read_to_string(&path).await.map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    "MissingInput"
                } else {
                    "Io"
                };
                ModuleError::new(kind, format!("{}: {e}", path.display()), kind == "Io")
            });
        }
        self.db.get_file(name).await?.ok_or_else(|| {
            ModuleError::new("MissingInput", format!("no file named {name:?}"), false)
        })
    }

    /// Writes a file: into the directory when the store has one, else into the `files` table.
    pub async fn write_file(&self, name: &str, text: String) -> Result<(), std::io::Error> {
        match &self.dir {
            Some(dir) => {
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::write(dir.join(name), text).await
            }
            None => self
                .db
                .put_file(name, &text)
                .await
                .map_err(std::io::Error::other),
        }
    }

    /// Exports every table to `store.json` and every report to `report-<run>.md` in the
    /// directory (nothing without one). Returns the files written.
    pub async fn persist(&self) -> Result<Vec<PathBuf>, std::io::Error> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        tokio::fs::create_dir_all(dir).await?;
        let tables = self.try_snapshot().await.map_err(std::io::Error::other)?;
        let mut written = Vec::new();
        let json = serde_json::to_vec_pretty(&tables).map_err(std::io::Error::other)?;
        let path = dir.join("store.json");
        tokio::fs::write(&path, json).await?;
        written.push(path);
        for (run, md) in &tables.reports {
            let path = dir.join(format!("report-{run}.md"));
            tokio::fs::write(&path, md).await?;
            written.push(path);
        }
        Ok(written)
    }

    /// Runs `f` on a [`Tables`] view of the database and, if `f` changed it, writes every
    /// table back in one transaction. Meant for tests and tools (it reads and rewrites
    /// everything, and a concurrent write between the two is lost); modules use SQL. A
    /// database error is logged: `f` then sees empty tables and nothing is written back.
    pub async fn with<R>(&self, f: impl FnOnce(&mut Tables) -> R) -> R {
        let log = |e: ModuleError| tracing::error!(error = %e, "store: database error");
        let before = self.try_snapshot().await.map_err(log).ok();
        let mut tables = before.clone().unwrap_or_default();
        let r = f(&mut tables);
        if let Some(before) = before
            && tables != before
        {
            let _ = self.db.replace_all(&tables).await.map_err(log);
        }
        r
    }

    /// A copy of every table, read from the database (empty tables, logged, on an error).
    pub async fn snapshot(&self) -> Tables {
        self.try_snapshot().await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "store: database error");
            Tables::default()
        })
    }

    /// A copy of every table, read from the database.
    pub async fn try_snapshot(&self) -> Result<Tables, ModuleError> {
        let mut t = Tables {
            files: self.db.files().await?,
            ..Tables::default()
        };
        for run in self.db.runs().await? {
            let one = self.run_tables(&run).await?;
            t.raw_rows.extend(one.raw_rows);
            t.sales.extend(one.sales);
            t.quality_issues.extend(one.quality_issues);
            t.features.extend(one.features);
            t.insights.extend(one.insights);
            t.reports.extend(one.reports);
            t.recommendations.extend(one.recommendations);
        }
        Ok(t)
    }

    /// The tables of one run only (no files): what the frontend's run view shows.
    pub async fn run_tables(&self, run: &str) -> Result<Tables, ModuleError> {
        let mut t = Tables::default();
        let key = || run.to_owned();
        if let Some(v) = self.db.raw_rows(run).await? {
            t.raw_rows.insert(key(), v);
        }
        if let Some(v) = self.db.sales(run).await? {
            t.sales.insert(key(), v);
        }
        if let Some(v) = self.db.issues(run).await? {
            t.quality_issues.insert(key(), v);
        }
        if let Some(v) = self.db.features(run).await? {
            t.features.insert(key(), v);
        }
        if let Some(v) = self.db.insights(run).await? {
            t.insights.insert(key(), v);
        }
        if let Some(v) = self.db.recommendations(run).await? {
            t.recommendations.insert(key(), v);
        }
        if let Some(md) = self.db.report(run).await? {
            t.reports.insert(key(), md);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/x?sslmode=require"),
            "postgres://app:***@db.example:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@db/x"),
            "postgres://app@db/x",
            "no password"
        );
        assert_eq!(redact_url("mysql://u:p@h/d"), "mysql://u:***@h/d");
        assert_eq!(redact_url("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    }
}

//! The modules of the reference app: plain Rust that does the work and reads and writes the
//! store (SQLite or PostgreSQL, [`Store`]) directly with SQL. Processors call them; they never
//! touch the bus.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

mod postgres;
mod sqlite;
mod store;

pub use postgres::PgStore;
pub use sqlite::{DB_FILE, SqliteStore};
pub use store::{AppStore, RowCounts, Store, StoreError, redact_url};

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
pub async fn stage(store: &Store, run: &str, dataset: &str) -> Result<usize, ModuleError> {
    let text = store.read_file(dataset).await?;
    match text.lines().next() {
        Some(h) if h.trim() == HEADER => {}
        Some(h) => {
            return Err(ModuleError::new(
                "SchemaMismatch",
                format!("unexpected header {h:?}"),
                false,
            ));
        }
        None => return Err(ModuleError::new("EmptyDataset", "the file is empty", false)),
    }
    let rows = parse_rows(&text)?;
    store.database().put_raw_rows(run, &rows).await?;
    Ok(rows.len())
}

/// The rows after the header, read as RFC 4180 CSV: a quoted field is its value (a comma,
/// a doubled quote or a line break inside the quotes is part of it), each field trimmed, a
/// row's `line` the line it starts on (1 = the header); blank lines are skipped.
fn parse_rows(text: &str) -> Result<Vec<RawRow>, ModuleError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    // The line of byte `counted` of the text (1 = the header).
    let (mut line, mut counted) = (1, 0);
    for record in reader.records().skip(1) {
        let record = record
            .map_err(|e| ModuleError::new("MalformedCsv", format!("unreadable CSV: {e}"), false))?;
        // A line of nothing but blanks (the reader skips only empty ones).
        if record.len() == 1 && record.get(0) == Some("") {
            continue;
        }
        // The reader's position of a record includes the empty lines it skipped before it:
        // count lines up to the record's first byte instead (from the previous record's, as
        // records come in order).
        let at = (record.position().map_or(0, |p| p.byte()) as usize).min(text.len());
        let skipped = text.as_bytes()[at..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let start = at + skipped;
        line += text.as_bytes()[counted..start.max(counted)]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = start.max(counted);
        rows.push(RawRow {
            line,
            fields: record.iter().map(str::to_owned).collect(),
        });
    }
    Ok(rows)
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
pub async fn validate(store: &Store, run: &str) -> Result<(usize, usize), ModuleError> {
    let raw = store.database().raw_rows(run).await?.ok_or_else(|| {
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
    store.database().put_validated(run, &ok, &issues).await?;
    Ok((ok.len(), issues.len()))
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
/// `sales` table, stored in `features`.
pub async fn compute_features(store: &Store, run: &str) -> Result<Features, ModuleError> {
    let f = store.database().sales_features(run).await?.ok_or_else(|| {
        ModuleError::new(
            "MissingInput",
            format!("run {run} was not validated"),
            false,
        )
    })?;
    if f.rows == 0 {
        return Err(ModuleError::new("EmptyDataset", "no valid rows", false));
    }
    store.database().put_features(run, &f).await?;
    Ok(f)
}

/// Insight: z-score anomalies and the linear trend of daily revenue.
pub async fn detect_insights(
    store: &Store,
    run: &str,
    z_threshold: f64,
) -> Result<Insights, ModuleError> {
    let f = store.database().features(run).await?.ok_or_else(|| {
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
    store.database().put_insights(run, &ins).await?;
    Ok(ins)
}

/// Preview (called by the staging processor at the CPM's direct request): the number of data
/// lines and the header of a file, without staging it.
pub async fn preview(store: &Store, dataset: &str) -> Result<(usize, String), ModuleError> {
    let text = store.read_file(dataset).await?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default().to_owned();
    Ok((lines.count(), header))
}

/// Report: renders the Markdown report of `run`. Returns its length in bytes.
pub async fn render_report(store: &Store, run: &str) -> Result<usize, ModuleError> {
    let db = store.database();
    let missing = || ModuleError::new("MissingInput", format!("run {run} is incomplete"), false);
    let f = db.features(run).await?.ok_or_else(missing)?;
    let ins = db.insights(run).await?.ok_or_else(missing)?;
    let RowCounts { staged, issues, .. } = db.row_counts(run).await?;
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
    db.put_report(run, &md).await?;
    Ok(len)
}

/// Recommendation: proposes actions from quality, insights and features.
pub async fn recommend(store: &Store, run: &str) -> Result<Vec<Recommendation>, ModuleError> {
    let db = store.database();
    let missing = || ModuleError::new("MissingInput", format!("run {run} is incomplete"), false);
    let f = db.features(run).await?.ok_or_else(missing)?;
    let ins = db.insights(run).await?.ok_or_else(missing)?;
    let RowCounts { staged, issues, .. } = db.row_counts(run).await?;
    let staged = staged.max(1);
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
    db.put_recommendations(run, &recs).await?;
    Ok(recs)
}

#[cfg(test)]
mod tests;

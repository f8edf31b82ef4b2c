//! The modules of the reference app: plain Rust that does the work and reads and writes the
//! store (SQLite, bundled) directly with SQL. Processors call them; they never touch the bus.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rusqlite::params;
use serde::{Deserialize, Serialize};

mod store;

use store::*;
pub use store::{DB_FILE, Store};

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

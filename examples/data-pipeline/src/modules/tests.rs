//! The modules on both stores: each test in `on_both_stores!` runs once on an in-memory SQLite
//! database and once on PostgreSQL (a fresh schema of the local `test` database, dropped at
//! the end; skipped loudly when the server is unreachable and CI is unset).

use super::*;
use crate::testdb::TestPg;

/// Defines, for each `async fn name(store: Store) { ... }`, a module `name` with two tests:
/// `sqlite` and `postgres`.
macro_rules! on_both_stores {
    ($(async fn $name:ident($store:ident: Store) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($store: Store) $body

            #[tokio::test]
            async fn sqlite() {
                body(Store::new()).await
            }

            #[tokio::test]
            async fn postgres() {
                let Some(db) = TestPg::new(stringify!($name)).await else {
                    return;
                };
                body(db.store().await).await;
                db.finish().await;
            }
        }
    )*};
}

fn raw(line: &str) -> RawRow {
    RawRow {
        line: 2,
        fields: line.split(',').map(str::to_owned).collect(),
    }
}

/// RFC 4180: quotes are removed, a quoted comma, doubled quote or line break stays in its
/// field, blank lines are skipped, each row keeps the line it starts on (1 = the header).
#[test]
fn an_upload_is_read_as_rfc_4180_csv() {
    let text = format!(
        "{HEADER}\n\"2026-01-01\", north ,alpha,1,\"2.50\"\n\n2026-01-02,\"a, \"\"b\"\"\nc\",x,1,1\n2026-01-03,south\n"
    );
    let rows = parse_rows(&text).unwrap();
    let got: Vec<(usize, Vec<&str>)> = rows
        .iter()
        .map(|r| (r.line, r.fields.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        got,
        [
            (2, vec!["2026-01-01", "north", "alpha", "1", "2.50"]),
            (4, vec!["2026-01-02", "a, \"b\"\nc", "x", "1", "1"]),
            (6, vec!["2026-01-03", "south"]),
        ]
    );
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

on_both_stores! {
    async fn generated_data_is_deterministic_with_one_invalid_row_in_25(store: Store) {
        assert_eq!(generate_csv(100, 7), generate_csv(100, 7));
        assert_ne!(generate_csv(100, 7), generate_csv(100, 8));
        store.with(|t| t.files.insert("f".into(), generate_csv(250, 3))).await;
        assert_eq!(stage(&store, "r", "f").await.unwrap(), 250);
        assert_eq!(validate(&store, "r").await.unwrap(), (240, 10));
    }

    async fn missing_inputs_are_errors_not_panics(store: Store) {
        let kind = |r: Result<usize, ModuleError>| r.unwrap_err().kind;
        assert_eq!(kind(stage(&store, "r", "nope").await), "MissingInput");
        assert_eq!(validate(&store, "r").await.unwrap_err().kind, "MissingInput");
        assert_eq!(
            compute_features(&store, "r").await.unwrap_err().kind,
            "MissingInput"
        );
        assert_eq!(
            detect_insights(&store, "r", 2.0).await.unwrap_err().kind,
            "MissingInput"
        );
        assert_eq!(kind(render_report(&store, "r").await), "MissingInput");
        assert_eq!(recommend(&store, "r").await.unwrap_err().kind, "MissingInput");
        store.with(|t| t.files.insert("bad".into(), "a,b\n1,2\n".into())).await;
        assert_eq!(kind(stage(&store, "r", "bad").await), "SchemaMismatch");
        store.with(|t| t.files.insert("empty".into(), String::new())).await;
        assert_eq!(kind(stage(&store, "r", "empty").await), "EmptyDataset");
    }

    async fn falling_trend_is_detected(store: Store) {
        store
            .with(|t| {
                t.features.insert(
                    "r".into(),
                    Features {
                        daily_revenue: (0..30).map(|d| 1000.0 - 20.0 * f64::from(d)).collect(),
                        ..Features::default()
                    },
                )
            })
            .await;
        let ins = detect_insights(&store, "r", 2.5).await.unwrap();
        assert_eq!(ins.trend, "falling");
        assert!((ins.trend_per_day + 20.0).abs() < 1e-9);
        assert!(ins.anomalies.is_empty());
    }

    async fn sql_features_match_the_rows(store: Store) {
        store.write_file("f", generate_csv(300, 5)).await.unwrap();
        stage(&store, "r", "f").await.unwrap();
        validate(&store, "r").await.unwrap();
        let f = compute_features(&store, "r").await.unwrap();
        let t = store.snapshot().await;
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

    async fn the_tables_view_round_trips_and_empty_sets_are_kept(store: Store) {
        store.write_file("h", format!("{HEADER}\n")).await.unwrap();
        assert_eq!(stage(&store, "r", "h").await.unwrap(), 0);
        assert_eq!(validate(&store, "r").await.unwrap(), (0, 0));
        assert_eq!(
            compute_features(&store, "r").await.unwrap_err().kind,
            "EmptyDataset"
        );
        let before = store.snapshot().await;
        assert_eq!(before.raw_rows["r"], Vec::<RawRow>::new());
        store.with(|t| t.reports.insert("x".into(), "# x".into())).await;
        let after = store.snapshot().await;
        assert_eq!(after.reports["x"], "# x");
        assert_eq!(after.raw_rows, before.raw_rows);
        assert_eq!(after.files, before.files);
    }

    async fn a_full_run_reads_back_what_every_module_wrote(store: Store) {
        store.write_file("f", generate_csv(200, 9)).await.unwrap();
        assert_eq!(stage(&store, "r", "f").await.unwrap(), 200);
        let (valid, issues) = validate(&store, "r").await.unwrap();
        let f = compute_features(&store, "r").await.unwrap();
        let ins = detect_insights(&store, "r", 2.5).await.unwrap();
        let bytes = render_report(&store, "r").await.unwrap();
        let recs = recommend(&store, "r").await.unwrap();
        let t = store.run_tables("r").await.unwrap();
        assert_eq!(t.raw_rows["r"].len(), 200);
        assert_eq!(t.raw_rows["r"][0].line, 2, "rows keep their order");
        assert_eq!(t.raw_rows["r"][199].line, 201);
        assert_eq!((t.sales["r"].len(), t.quality_issues["r"].len()), (valid, issues));
        assert_eq!(t.features["r"], f);
        assert_eq!(t.insights["r"], ins);
        assert_eq!(t.reports["r"].len(), bytes);
        assert!(t.reports["r"].contains(&format!("- valid rows: {valid}")));
        assert_eq!(t.recommendations["r"], recs);
        let counts = store.database().row_counts("r").await.unwrap();
        assert_eq!(counts, RowCounts { staged: 200, valid, issues });
        // A run written again replaces its rows.
        assert_eq!(stage(&store, "r", "f").await.unwrap(), 200);
        assert_eq!(store.database().row_counts("r").await.unwrap().staged, 200);
        assert_eq!(store.database().runs().await.unwrap(), ["r"]);
    }
}

#[tokio::test]
async fn a_store_with_a_directory_keeps_its_database_in_pipeline_db() {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-store-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let store = Store::in_dir(&dir);
    store
        .write_file("f.csv", generate_csv(50, 2))
        .await
        .unwrap();
    assert_eq!(stage(&store, "r", "f.csv").await.unwrap(), 50);
    assert_eq!(validate(&store, "r").await.unwrap(), (48, 2));
    drop(store);
    assert!(dir.join(DB_FILE).is_file());
    let reopened = Store::in_dir(&dir);
    let t = reopened.snapshot().await;
    assert_eq!(t.sales["r"].len(), 48);
    assert!(t.files.is_empty());
    assert_eq!(compute_features(&reopened, "r").await.unwrap().rows, 48);
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_keeps_its_tables_and_migrates_once() {
    let Some(db) = TestPg::new("reopen").await else {
        return;
    };
    let store = db.store().await;
    assert_eq!(store.kind(), "postgres");
    store.write_file("f", generate_csv(50, 2)).await.unwrap();
    assert_eq!(stage(&store, "r", "f").await.unwrap(), 50);
    assert_eq!(validate(&store, "r").await.unwrap(), (48, 2));
    // Opening the same schema again applies no migration and sees the rows.
    let again = db.store().await;
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {}.app_migrations",
        db.schema()
    ))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(applied as usize, super::postgres::MIGRATIONS.len());
    assert_eq!(again.snapshot().await.sales["r"].len(), 48);
    // The rows are in the schema's tables, as plain SQL sees them.
    let staged: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {}.raw_rows WHERE run = 'r'",
        db.schema()
    ))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(staged, 50);
    db.finish().await;
}

-- The reference app's tables on SQLite. Every statement is idempotent: it runs each time the
-- database is opened.
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
-- The CPM's run history (one JSON record per run), so a restarted app lists its earlier runs.
CREATE TABLE IF NOT EXISTS run_records (
    run TEXT PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    record TEXT NOT NULL
);

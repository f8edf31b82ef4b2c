-- The reference app's tables on PostgreSQL, in the schema the store was opened with (the
-- connection's search_path). Applied once, recorded in app_migrations. Row tables keep
-- insertion order through `seq`; `batches` records which per-run row sets exist (so an empty
-- set is told apart from a missing one).
CREATE TABLE files (
    name TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE batches (
    run TEXT NOT NULL,
    tbl TEXT NOT NULL,
    PRIMARY KEY (run, tbl)
);
CREATE TABLE raw_rows (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run TEXT NOT NULL,
    line BIGINT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX raw_rows_run ON raw_rows (run, seq);
CREATE TABLE sales (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run TEXT NOT NULL,
    line BIGINT NOT NULL,
    day BIGINT NOT NULL,
    region TEXT NOT NULL,
    product TEXT NOT NULL,
    units BIGINT NOT NULL,
    unit_price DOUBLE PRECISION NOT NULL
);
CREATE INDEX sales_run ON sales (run, seq);
CREATE TABLE quality_issues (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run TEXT NOT NULL,
    line BIGINT NOT NULL,
    column_name TEXT NOT NULL,
    rule TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX quality_issues_run ON quality_issues (run, seq);
CREATE TABLE features (
    run TEXT PRIMARY KEY,
    rows BIGINT NOT NULL,
    total_revenue DOUBLE PRECISION NOT NULL,
    mean_row_revenue DOUBLE PRECISION NOT NULL,
    std_row_revenue DOUBLE PRECISION NOT NULL
);
CREATE TABLE revenue_by_region (
    run TEXT NOT NULL,
    region TEXT NOT NULL,
    revenue DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run, region)
);
CREATE TABLE units_by_product (
    run TEXT NOT NULL,
    product TEXT NOT NULL,
    units BIGINT NOT NULL,
    PRIMARY KEY (run, product)
);
CREATE TABLE daily_revenue (
    run TEXT NOT NULL,
    day BIGINT NOT NULL,
    revenue DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run, day)
);
CREATE TABLE insights (
    run TEXT PRIMARY KEY,
    trend_per_day DOUBLE PRECISION NOT NULL,
    trend TEXT NOT NULL,
    z_threshold DOUBLE PRECISION NOT NULL
);
CREATE TABLE anomalies (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run TEXT NOT NULL,
    day BIGINT NOT NULL,
    revenue DOUBLE PRECISION NOT NULL,
    z DOUBLE PRECISION NOT NULL
);
CREATE INDEX anomalies_run ON anomalies (run, seq);
CREATE TABLE reports (
    run TEXT PRIMARY KEY,
    markdown TEXT NOT NULL
);
CREATE TABLE recommendations (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run TEXT NOT NULL,
    priority TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX recommendations_run ON recommendations (run, seq);

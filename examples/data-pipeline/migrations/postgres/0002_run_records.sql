-- The CPM's run history (one JSON record per run), so a restarted app lists its earlier runs.
CREATE TABLE IF NOT EXISTS run_records (
    run TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    record TEXT NOT NULL
);

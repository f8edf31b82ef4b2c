-- Dead letters, one per message id (a newer one replaces the older).
CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    seq        BIGSERIAL,
    id         TEXT PRIMARY KEY,
    topic      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    letter     JSONB NOT NULL,
    stored_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS dead_letters_seq ON {schema}.dead_letters (seq);

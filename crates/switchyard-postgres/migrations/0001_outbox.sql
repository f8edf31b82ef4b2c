-- The transactional outbox: one row per message written inside a business transaction.
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL,
    topic        TEXT NOT NULL,
    ordering_key TEXT,
    headers      JSONB NOT NULL,
    payload      BYTEA NOT NULL,
    meta         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    deliver_at   TIMESTAMPTZ,
    sent_at      TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON {schema}.outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON {schema}.outbox (sent_at) WHERE sent_at IS NOT NULL;

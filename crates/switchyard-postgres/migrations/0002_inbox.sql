-- The inbox: message ids a consumer has handled, written in the handler's own transaction.
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, message_id)
);

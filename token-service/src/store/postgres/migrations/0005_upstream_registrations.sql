-- The gateway's DCR registration at each upstream authorization server (SQLite migration 15),
-- sealed with the encryption key.
CREATE TABLE upstream_registrations (
    issuer TEXT PRIMARY KEY,
    sealed BYTEA NOT NULL,
    registered_at BIGINT NOT NULL
);

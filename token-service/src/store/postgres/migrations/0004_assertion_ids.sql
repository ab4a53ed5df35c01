-- The assertion ids (`jti`) already used (SQLite migration 14): client assertions' and
-- ID-JAGs', kept until the assertion expires.
CREATE TABLE assertion_ids (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX assertion_ids_expiry ON assertion_ids(expires_at);

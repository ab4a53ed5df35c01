-- Issue 20: the assertion ids (`jti`) already used, client assertions' and ID-JAGs', kept
-- until the assertion expires (then the sweep deletes them).
CREATE TABLE assertion_ids (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX assertion_ids_expiry ON assertion_ids(expires_at);

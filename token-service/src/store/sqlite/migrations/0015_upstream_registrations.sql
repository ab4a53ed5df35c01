-- Issue 21: the gateway's DCR registration at each upstream authorization server, keyed by
-- its issuer; the registration (client id, secret, redirect URI) sealed with the encryption key.
CREATE TABLE upstream_registrations (
    issuer TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    registered_at INTEGER NOT NULL
);

-- The revocation feed the filter polls: grants, sessions and users whose TEs must be
-- refused until `expires_at` (when every TE they cover has expired).
CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    at          INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX revocations_expiry ON revocations(expires_at);

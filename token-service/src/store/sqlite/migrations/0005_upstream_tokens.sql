-- Upstream provider tokens (TI), sealed by the vault; `refresh_lease` is held by the one
-- process refreshing the row.
CREATE TABLE upstream_tokens (
    user          TEXT NOT NULL,
    route         TEXT NOT NULL,
    access_token  BLOB,
    refresh_token BLOB,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER,
    granted_at    INTEGER NOT NULL,
    scope         TEXT NOT NULL,
    extra_scope   TEXT NOT NULL DEFAULT '',
    refused_until INTEGER,
    last_refused_at INTEGER,
    after_refusal INTEGER NOT NULL DEFAULT 0,
    refresh_lease INTEGER,
    version       INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (user, route)
);
CREATE TABLE upstream_flows (
    state_hash  TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

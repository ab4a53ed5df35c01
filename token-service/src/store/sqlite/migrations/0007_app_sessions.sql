-- Browser sign-in on mcp: client routes: one-time app codes and app sessions (both keyed
-- by the SHA-256 of their secret).
CREATE TABLE app_codes (
    code_hash   TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE TABLE app_sessions (
    secret_hash TEXT PRIMARY KEY,
    route       TEXT NOT NULL,
    user        TEXT NOT NULL,
    sid         TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX app_sessions_expiry ON app_sessions(expires_at);

-- Sign-ins at the organisation's identity provider, and its users' claims as of their
-- last sign-in (`key` is `{iss}#{sub}`).
CREATE TABLE idp_logins (
    state_hash  TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE TABLE idp_users (
    key         TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    name        TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE consents (
    email       TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    resource    TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (email, client_id, resource)
);
CREATE TABLE login_failures (
    account     TEXT NOT NULL,
    failed_at   INTEGER NOT NULL
);
CREATE INDEX login_failures_account ON login_failures(account, failed_at);

DROP TABLE login_failures;
-- One row per sign-in attempt: pending while its password is checked, then a failure
-- (successes are deleted). `bucket` is the account's untrusted-client bucket or a
-- device cookie's own.
CREATE TABLE login_attempts (
    id          INTEGER PRIMARY KEY,
    bucket      TEXT NOT NULL,
    at          INTEGER NOT NULL,
    pending     INTEGER NOT NULL
);
CREATE INDEX login_attempts_bucket ON login_attempts(bucket, at);
CREATE TABLE devices (
    secret_hash TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Issue 18, the SQLite migrations 8 to 12 in one: rate limits shared by every replica, leases
-- (one sweep at a time), whose a code is (sign-out and revocation burn a user's codes), the
-- revocation feed, and the TE signing keys every replica shares.
CREATE TABLE rate_buckets (
    limiter     TEXT NOT NULL,
    client      TEXT NOT NULL,
    tokens      BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (limiter, client)
);
CREATE INDEX rate_buckets_at ON rate_buckets(at);

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    until       BIGINT NOT NULL
);

ALTER TABLE auth_codes ADD COLUMN "user" TEXT;
ALTER TABLE auth_codes ADD COLUMN sid TEXT;
ALTER TABLE auth_codes ADD COLUMN client_id TEXT;
ALTER TABLE auth_codes ADD COLUMN resource TEXT;
UPDATE auth_codes SET
    "user" = COALESCE(data::json->>'user', data::json->>'email'),
    sid = data::json->>'sid',
    client_id = data::json->'request'->>'client_id',
    resource = data::json->'request'->>'resource';
CREATE INDEX auth_codes_user ON auth_codes("user");
CREATE INDEX auth_codes_sid ON auth_codes(sid);
CREATE INDEX grants_user ON grants(email);
CREATE INDEX grants_sid ON grants(sid);
CREATE INDEX sessions_user ON sessions(email);
CREATE INDEX app_sessions_user ON app_sessions("user");

-- Writers take an advisory lock before drawing `seq`, so `seq` order is commit order and a
-- poller that has read up to a `seq` never misses a smaller one committed later.
CREATE TABLE revocations (
    seq         BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    at          BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX revocations_expiry ON revocations(expires_at);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    seq         BIGINT NOT NULL UNIQUE,
    alg         TEXT NOT NULL,
    sealed_key  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    signs_from  BIGINT NOT NULL,
    retire_at   BIGINT
);

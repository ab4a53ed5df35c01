-- Rate limits shared by every replica: one token bucket per limiter and client address.
-- A bucket untouched for a minute is full again and carries nothing: the sweep deletes it.
CREATE TABLE rate_buckets (
    limiter     TEXT NOT NULL,
    client      TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (limiter, client)
);
CREATE INDEX rate_buckets_at ON rate_buckets(at);

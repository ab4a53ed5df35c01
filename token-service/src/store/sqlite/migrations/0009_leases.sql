-- Work every replica schedules and one does at a time (the sweep): who holds it, until when.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    until       INTEGER NOT NULL
);

-- The authorization server that issued a discovered route's upstream tokens (SQLite
-- migration 16).
ALTER TABLE upstream_tokens ADD COLUMN authorization_server TEXT NOT NULL DEFAULT '';

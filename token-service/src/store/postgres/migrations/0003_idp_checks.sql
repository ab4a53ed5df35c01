-- Deprovisioning at the identity provider (SQLite migration 13): the provider's tokens of each
-- of its users (sealed), when the provider last vouched for the user, and which replica checks
-- the user now, until when.
ALTER TABLE idp_users ADD COLUMN refresh_token BYTEA;
ALTER TABLE idp_users ADD COLUMN access_token BYTEA;
ALTER TABLE idp_users ADD COLUMN checked_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE idp_users ADD COLUMN lease_holder TEXT;
ALTER TABLE idp_users ADD COLUMN lease_until BIGINT;
UPDATE idp_users SET checked_at = updated_at;
CREATE INDEX idp_users_checked ON idp_users(checked_at);

-- Deprovisioning at the identity provider (issue 18): each of its users is checked again
-- there. The provider's tokens, sealed with the encryption key (NULL: none issued); when the
-- provider last vouched for the user (a sign-in or a check); and which replica checks the
-- user now, until when (a conditional UPDATE takes it, so one replica at a time refreshes).
ALTER TABLE idp_users ADD COLUMN refresh_token BLOB;
ALTER TABLE idp_users ADD COLUMN access_token BLOB;
ALTER TABLE idp_users ADD COLUMN checked_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idp_users ADD COLUMN lease_holder TEXT;
ALTER TABLE idp_users ADD COLUMN lease_until INTEGER;
-- Users who signed in before count as checked at their last sign-in.
UPDATE idp_users SET checked_at = updated_at;
CREATE INDEX idp_users_checked ON idp_users(checked_at);

-- Issue 21: the authorization server that issued a discovered route's upstream tokens, so a
-- token of a server the upstream no longer names is not used or refreshed there.
ALTER TABLE upstream_tokens ADD COLUMN authorization_server TEXT NOT NULL DEFAULT '';

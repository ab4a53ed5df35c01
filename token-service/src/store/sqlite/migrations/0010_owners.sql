-- Whose a code is, so that sign-out and revocation can burn a user's or a session's codes
-- before they are redeemed; and the indexes those revocations look up by.
ALTER TABLE auth_codes ADD COLUMN user TEXT;
ALTER TABLE auth_codes ADD COLUMN sid TEXT;
ALTER TABLE auth_codes ADD COLUMN client_id TEXT;
ALTER TABLE auth_codes ADD COLUMN resource TEXT;
UPDATE auth_codes SET
    user = COALESCE(json_extract(data, '$.user'), json_extract(data, '$.email')),
    sid = json_extract(data, '$.sid'),
    client_id = json_extract(data, '$.request.client_id'),
    resource = json_extract(data, '$.request.resource');
CREATE INDEX auth_codes_user ON auth_codes(user);
CREATE INDEX auth_codes_sid ON auth_codes(sid);
CREATE INDEX grants_user ON grants(email);
CREATE INDEX grants_sid ON grants(sid);
CREATE INDEX sessions_user ON sessions(email);
CREATE INDEX app_sessions_user ON app_sessions(user);
CREATE INDEX app_sessions_sid ON app_sessions(sid);

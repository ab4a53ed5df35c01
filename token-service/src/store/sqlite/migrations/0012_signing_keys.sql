-- The TE signing keys every replica shares. The private key is sealed with the encryption
-- key. `seq` is unique so that two writers adding "the next key" (two replicas starting on
-- an empty store, two rotations at once) cannot both win.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL UNIQUE,
    alg         TEXT NOT NULL,
    sealed_key  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    -- Unix seconds: from then on it signs (until a newer key's signs_from).
    signs_from  INTEGER NOT NULL,
    -- NULL until a newer key replaces it; then when it leaves the JWKS.
    retire_at   INTEGER
);

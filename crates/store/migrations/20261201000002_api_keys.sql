-- API keys. Only a SHA-256 digest of each key is stored: the key itself is
-- shown once, when it is created. Keys are 256 random bits, so a plain
-- digest is as strong as a slow password hash would be, and checking one
-- costs microseconds.
CREATE TABLE api_keys (
    key_id      UUID        PRIMARY KEY,
    tenant_id   TEXT        NOT NULL,
    role        TEXT        NOT NULL CHECK (role IN ('admin', 'claim')),
    name        TEXT,
    digest      BYTEA       NOT NULL UNIQUE CHECK (length(digest) = 32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- The PostgreSQL lock backend's schema. Idempotent: applied by
-- PostgresLockBackend::install() and by scripts/sqlx-prepare.
-- One row per resource ever locked; a released or expired lease keeps its
-- row (and so its last token), which is what makes tokens increase.
CREATE TABLE IF NOT EXISTS turnstile_locks (
    resource    TEXT        PRIMARY KEY,
    owner       TEXT        NOT NULL,
    token       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

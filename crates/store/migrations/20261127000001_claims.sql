-- Coupons and SKUs share one table: both are "resources" with a stock, a
-- fencing token and, for coupons, a per-user limit.
CREATE TABLE resources (
    kind            TEXT        NOT NULL CHECK (kind IN ('coupon', 'sku')),
    id              TEXT        NOT NULL,
    total           BIGINT      NOT NULL CHECK (total >= 0),
    remaining       BIGINT      NOT NULL CHECK (remaining >= 0),
    per_user_limit  INTEGER     CHECK (per_user_limit IS NULL OR per_user_limit > 0),
    -- The newest fencing token a write on this resource was accepted under.
    -- Writes carry their lease's token and are refused unless it is newer.
    fence           BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id),
    CHECK (remaining <= total)
);

-- One row per accepted claim; the API inserts it as pending, a worker
-- decides it. No foreign key to resources: a claim for an unknown resource
-- is recorded and rejected rather than lost.
CREATE TABLE claims (
    claim_id      UUID        PRIMARY KEY,
    tenant_id     TEXT        NOT NULL,
    kind          TEXT        NOT NULL,
    resource_id   TEXT        NOT NULL,
    user_id       TEXT        NOT NULL,
    quantity      INTEGER     NOT NULL CHECK (quantity > 0),
    -- Copied from the resource at acceptance: the per-user limit is 1, so the
    -- unique index below can enforce it in the database itself.
    one_per_user  BOOLEAN     NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'granted', 'rejected')),
    reason        TEXT,
    fence         BIGINT,
    accepted_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at    TIMESTAMPTZ,
    CHECK ((status = 'pending') = (decided_at IS NULL))
);

CREATE UNIQUE INDEX claims_one_grant_per_user
    ON claims (kind, resource_id, user_id) WHERE status = 'granted' AND one_per_user;
CREATE INDEX claims_granted_by_user ON claims (kind, resource_id, user_id) WHERE status = 'granted';
CREATE INDEX claims_pending ON claims (kind, resource_id) WHERE status = 'pending';

-- Idempotency records (IETF httpapi idempotency-key draft), per tenant.
CREATE TABLE idempotency_keys (
    tenant_id    TEXT        NOT NULL,
    key          TEXT        NOT NULL,
    fingerprint  BYTEA       NOT NULL,
    claim_id     UUID        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Resources belong to a tenant: the same coupon code in two tenants is two
-- coupons, with two stocks, two fences and two per-user limits. Every
-- resource that existed before tenants did moves into tenant 'default'.
--
-- Claims keep their tenant: a claim's id is derived from it (and the
-- idempotency key), so changing it would break replays. A claim made
-- before this migration by another tenant on what is now a 'default'
-- resource names a resource that does not exist in its own tenant; if it
-- is still pending, it is rejected as unknown, never decided against
-- another tenant's stock.
ALTER TABLE resources ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE resources ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE resources DROP CONSTRAINT resources_pkey;
ALTER TABLE resources ADD PRIMARY KEY (tenant_id, kind, id);

-- The per-user limit and the grant count are per tenant's resource too.
DROP INDEX claims_one_grant_per_user;
CREATE UNIQUE INDEX claims_one_grant_per_user
    ON claims (tenant_id, kind, resource_id, user_id) WHERE status = 'granted' AND one_per_user;
DROP INDEX claims_granted_by_user;
CREATE INDEX claims_granted_by_user
    ON claims (tenant_id, kind, resource_id, user_id) WHERE status = 'granted';

-- The idempotency record moves into the claim it created. A claim's id is
-- the UUID v5 of its tenant and key, so the claims primary key already
-- makes a key unique per tenant; the separate table cost every accepted
-- claim a second heap row and two more index entries, in the statement that
-- is most of Postgres' work under a flash sale.
--
-- The request's fingerprint (to answer 422 to a key reused with another
-- request) is kept as long as the claim, which is "at least 24 h" and more.
-- It is NULL only for claims written by a worker from the event alone (their
-- acceptance transaction failed after publishing) and for claims whose key
-- had already been purged: a request with such a key replays the claim.
ALTER TABLE claims ADD COLUMN fingerprint BYTEA;

UPDATE claims c SET fingerprint = k.fingerprint
  FROM idempotency_keys k
 WHERE k.claim_id = c.claim_id;

DROP TABLE idempotency_keys;

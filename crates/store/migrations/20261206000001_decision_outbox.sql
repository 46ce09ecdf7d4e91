-- Decisions whose ClaimDecided Kafka has not acknowledged yet (the outbox).
--
-- A decision is committed in `claims`; its announcement follows from here.
-- The sweeper and the invalid-claim rejection write a row in the same
-- transaction as the decision, so an announcement owed is never lost with a
-- process. The consume path announces at once and writes a row only for a
-- message Kafka did not take: until then its partition offset is not stored,
-- so a crash redelivers the batch and it is announced again. A relay in every
-- worker sends what is due, deletes what Kafka acknowledged, and pushes the
-- rest back with backoff and jitter (`next_attempt_at`).
CREATE TABLE decision_outbox (
    claim_id        UUID        PRIMARY KEY REFERENCES claims (claim_id) ON DELETE CASCADE,
    -- Where the announcement goes: deployments with their own topic prefix
    -- can share a database, and each relays only its own.
    topic           TEXT        NOT NULL,
    owed_since      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX decision_outbox_due ON decision_outbox (topic, next_attempt_at);

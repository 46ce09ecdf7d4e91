-- No query looks up pending claims by resource (the worker reads a batch's
-- claims by id, the sweeper uses claims_pending_since), yet every accepted
-- claim paid for an entry here and every decision for its removal.
DROP INDEX IF EXISTS claims_pending;

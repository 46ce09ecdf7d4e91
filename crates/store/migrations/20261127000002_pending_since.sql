-- The worker's sweeper looks for claims left pending too long (a message the
-- broker lost or skipped); this keeps that lookup cheap however many decided
-- claims there are.
CREATE INDEX claims_pending_since ON claims (accepted_at) WHERE status = 'pending';

-- Where each route's bulk transfer (`b24-relay backfill`) stands: the last
-- source deal id handled, and the process running it (a lease, database
-- clock, ms) so that two backfills of one route never run at once.
CREATE TABLE backfills (
    route TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    last_id BIGINT,
    enqueued BIGINT NOT NULL DEFAULT 0,
    already BIGINT NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until BIGINT,
    started_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);

-- Claims take live jobs before backfill jobs.
CREATE INDEX jobs_due_live_first ON jobs ((trigger = 'backfill'), next_run_at, id)
    WHERE state = 'pending';

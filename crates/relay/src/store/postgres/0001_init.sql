-- b24-relay on PostgreSQL, schema version 1. Times are milliseconds since
-- the epoch, taken from the database's clock (b24_now_ms) so that replicas
-- on machines whose clocks differ agree on leases.
CREATE FUNCTION b24_now_ms() RETURNS BIGINT
    LANGUAGE SQL VOLATILE
    AS $$ SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    portal TEXT NOT NULL,
    deal_id BIGINT NOT NULL,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'skipped', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0,
    next_run_at BIGINT NOT NULL,
    lease_until BIGINT,
    -- The replica holding the lease.
    lease_owner TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    message TEXT,
    target_deal_id BIGINT
);
-- One waiting and one running job per deal at most, whatever the replicas do.
CREATE UNIQUE INDEX jobs_one_pending_per_deal ON jobs (portal, deal_id) WHERE state = 'pending';
CREATE UNIQUE INDEX jobs_one_running_per_deal ON jobs (portal, deal_id) WHERE state = 'running';
CREATE INDEX jobs_due ON jobs (next_run_at, id) WHERE state = 'pending';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_by_state ON jobs (state, id);

CREATE TABLE links (
    kind TEXT NOT NULL,
    source_portal TEXT NOT NULL,
    source_id BIGINT NOT NULL,
    target_portal TEXT NOT NULL,
    target_id BIGINT,
    synced_hash TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, source_portal, source_id, target_portal)
);

CREATE TABLE copied_files (
    source_portal TEXT NOT NULL,
    deal_id BIGINT NOT NULL,
    target_portal TEXT NOT NULL,
    field TEXT NOT NULL,
    file_id BIGINT NOT NULL,
    PRIMARY KEY (source_portal, deal_id, target_portal, field, file_id)
);

CREATE TABLE app_installs (
    portal TEXT PRIMARY KEY,
    client_endpoint TEXT NOT NULL,
    domain TEXT NOT NULL,
    member_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    application_token TEXT NOT NULL,
    access_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    reinstall_reason TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE rule_calls (
    id BIGSERIAL PRIMARY KEY,
    portal TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    deal_id BIGINT NOT NULL,
    workflow_id TEXT NOT NULL,
    event_token TEXT NOT NULL,
    route TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    answered_at BIGINT,
    answer_error TEXT
);
CREATE INDEX rule_calls_open ON rule_calls (job_id) WHERE answered_at IS NULL;

CREATE TABLE attempts (
    job_id BIGINT NOT NULL,
    number INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, number)
);

-- One leaky bucket per portal shared by the replicas (rate_scope = "shared"):
-- requests not yet drained, as of updated_us (microseconds, database clock).
CREATE TABLE rate_buckets (
    portal TEXT PRIMARY KEY,
    level DOUBLE PRECISION NOT NULL,
    updated_us BIGINT NOT NULL
);

-- Serving replicas, for metrics and `store status`.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- `b24-relay store copy`: which job of which source store each copied job
-- came from, so that copying again updates instead of duplicating.
CREATE TABLE copied_jobs (
    source TEXT NOT NULL,
    source_id BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    PRIMARY KEY (source, source_id)
);

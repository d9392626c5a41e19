-- The authorization server an application was installed with
-- (auth[server_endpoint]): its tokens are refreshed there.
ALTER TABLE app_installs ADD COLUMN server_endpoint TEXT;

-- One worker at a time looks up and creates the target record of a source
-- party (contact, company): deals sharing it on several workers or
-- replicas never create two. A claim lapses at `until` (database clock, ms).
CREATE TABLE party_claims (
    kind TEXT NOT NULL,
    source_portal TEXT NOT NULL,
    source_id BIGINT NOT NULL,
    target_portal TEXT NOT NULL,
    holder TEXT NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (kind, source_portal, source_id, target_portal)
);

-- Events the relay expects about a source deal because it wrote to that
-- deal itself (its report back): they need not be read again.
CREATE TABLE expected_echoes (
    portal TEXT NOT NULL,
    deal_id BIGINT NOT NULL,
    expected BIGINT NOT NULL,
    until BIGINT NOT NULL,
    PRIMARY KEY (portal, deal_id)
);

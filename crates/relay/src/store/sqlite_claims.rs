//! Short-lived coordination in SQLite: per-party claims (one worker at a
//! time may look up and create the target contact or company of a source
//! party, so concurrent deals sharing it never create two) and the echoes
//! the relay expects of its own write-backs (an outgoing-webhook event the
//! relay caused itself need not be read again). The tables are in the
//! store's schema (version 2); each function runs inside the writer's
//! transaction.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{LinkKey, StoreError, now_ms};

pub(super) fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

pub(super) fn claim_party(
    c: &Connection,
    key: &LinkKey<'_>,
    holder: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let changed = c.execute(
        "INSERT INTO party_claims (kind, source_portal, source_id, target_portal, holder, until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT DO UPDATE SET holder = excluded.holder, until = excluded.until
         WHERE party_claims.until < ?7 OR party_claims.holder = excluded.holder",
        params![
            key.kind.as_str(),
            key.source_portal,
            key.source_id,
            key.target_portal,
            holder,
            now + millis(lease),
            now
        ],
    )?;
    Ok(changed == 1)
}

pub(super) fn release_party(
    c: &Connection,
    key: &LinkKey<'_>,
    holder: &str,
) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM party_claims WHERE kind = ?1 AND source_portal = ?2
         AND source_id = ?3 AND target_portal = ?4 AND holder = ?5",
        params![
            key.kind.as_str(),
            key.source_portal,
            key.source_id,
            key.target_portal,
            holder
        ],
    )?;
    Ok(())
}

pub(super) fn expect_echo(
    c: &Connection,
    portal: &str,
    deal_id: i64,
    window: Duration,
) -> Result<(), StoreError> {
    let now = now_ms();
    c.execute(
        "INSERT INTO expected_echoes (portal, deal_id, expected, until) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT DO UPDATE SET
            expected = CASE WHEN expected_echoes.until < ?4 THEN 1 ELSE expected_echoes.expected + 1 END,
            until = excluded.until",
        params![portal, deal_id, now + millis(window), now],
    )?;
    Ok(())
}

pub(super) fn take_echo(
    c: &Connection,
    portal: &str,
    deal_id: i64,
    events: u32,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let expected: Option<i64> = c
        .query_row(
            "SELECT expected FROM expected_echoes WHERE portal = ?1 AND deal_id = ?2 AND until >= ?3",
            params![portal, deal_id, now],
            |row| row.get(0),
        )
        .optional()?;
    let echo = expected.is_some_and(|n| i64::from(events) <= n);
    if echo {
        c.execute(
            "UPDATE expected_echoes SET expected = expected - ?3 WHERE portal = ?1 AND deal_id = ?2",
            params![portal, deal_id, events],
        )?;
    } else if expected.is_some() {
        // More events than echoes: a person changed the deal too; the
        // expectation is used up by this transfer.
        c.execute(
            "DELETE FROM expected_echoes WHERE portal = ?1 AND deal_id = ?2",
            params![portal, deal_id],
        )?;
    }
    c.execute(
        "DELETE FROM expected_echoes WHERE until < ?1 OR expected <= 0",
        params![now],
    )?;
    Ok(echo)
}

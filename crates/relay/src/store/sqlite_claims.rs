//! Short-lived coordination in SQLite: per-party claims (one worker at a
//! time may look up and create the target contact or company of a source
//! party, so concurrent deals sharing it never create two) and the echoes
//! the relay expects of its own write-backs (an outgoing-webhook event the
//! relay caused itself need not be read again).

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::sqlite::SqliteStore;
use super::{LinkKey, StoreError, now_ms};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS party_claims (
    kind TEXT NOT NULL,
    source_portal TEXT NOT NULL,
    source_id INTEGER NOT NULL,
    target_portal TEXT NOT NULL,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (kind, source_portal, source_id, target_portal)
);
CREATE TABLE IF NOT EXISTS expected_echoes (
    portal TEXT NOT NULL,
    deal_id INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (portal, deal_id)
);
";

/// Columns added to existing tables since the first release: SQLite has
/// no `ADD COLUMN IF NOT EXISTS`.
pub(super) fn migrate(connection: &rusqlite::Connection) -> Result<(), StoreError> {
    let has = |table: &str, column: &str| -> Result<bool, StoreError> {
        let mut statement = connection.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = statement.query_map([], |row| row.get::<_, String>(1))?;
        for name in names {
            if name? == column {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if !has("app_installs", "server_endpoint")? {
        connection.execute_batch("ALTER TABLE app_installs ADD COLUMN server_endpoint TEXT")?;
    }
    Ok(())
}

fn ms(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

impl SqliteStore {
    pub(super) fn claim_party(
        &self,
        key: &LinkKey<'_>,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
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
                    now + ms(lease),
                    now
                ],
            )?;
            Ok(changed == 1)
        })
    }

    pub(super) fn release_party(&self, key: &LinkKey<'_>, holder: &str) -> Result<(), StoreError> {
        self.with(|c| {
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
        })
    }

    pub(super) fn expect_echo(
        &self,
        portal: &str,
        deal_id: i64,
        window: Duration,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let now = now_ms();
            c.execute(
                "INSERT INTO expected_echoes (portal, deal_id, expected, until) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT DO UPDATE SET
                    expected = CASE WHEN expected_echoes.until < ?4 THEN 1 ELSE expected_echoes.expected + 1 END,
                    until = excluded.until",
                params![portal, deal_id, now + ms(window), now],
            )?;
            Ok(())
        })
    }

    pub(super) fn take_echo(
        &self,
        portal: &str,
        deal_id: i64,
        events: u32,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let now = now_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let expected: Option<i64> = tx
                .query_row(
                    "SELECT expected FROM expected_echoes WHERE portal = ?1 AND deal_id = ?2 AND until >= ?3",
                    params![portal, deal_id, now],
                    |row| row.get(0),
                )
                .optional()?;
            let echo = expected.is_some_and(|n| i64::from(events) <= n);
            if echo {
                tx.execute(
                    "UPDATE expected_echoes SET expected = expected - ?3 WHERE portal = ?1 AND deal_id = ?2",
                    params![portal, deal_id, events],
                )?;
            } else if expected.is_some() {
                // More events than echoes: a person changed the deal too;
                // the expectation is used up by this transfer.
                tx.execute(
                    "DELETE FROM expected_echoes WHERE portal = ?1 AND deal_id = ?2",
                    params![portal, deal_id],
                )?;
            }
            tx.execute(
                "DELETE FROM expected_echoes WHERE until < ?1 OR expected <= 0",
                params![now],
            )?;
            tx.commit()?;
            Ok(echo)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LinkKind;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("relay.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn one_holder_at_a_time_until_released_or_lapsed() {
        let (_dir, store) = store();
        let key = LinkKey {
            kind: LinkKind::Contact,
            source_portal: "partner",
            source_id: 5,
            target_portal: "esb",
        };
        let lease = Duration::from_secs(60);
        assert!(store.claim_party(&key, "a", lease).unwrap());
        assert!(
            store.claim_party(&key, "a", lease).unwrap(),
            "the holder may renew"
        );
        assert!(!store.claim_party(&key, "b", lease).unwrap());
        store.release_party(&key, "b").unwrap();
        assert!(
            !store.claim_party(&key, "b", lease).unwrap(),
            "only the holder releases"
        );
        store.release_party(&key, "a").unwrap();
        assert!(store.claim_party(&key, "b", Duration::ZERO).unwrap());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            store.claim_party(&key, "c", lease).unwrap(),
            "a lapsed claim is taken over"
        );
    }

    #[test]
    fn an_expected_echo_is_taken_once_and_more_events_are_real() {
        let (_dir, store) = store();
        let window = Duration::from_secs(30);
        assert!(!store.take_echo("partner", 7, 1).unwrap());
        store.expect_echo("partner", 7, window).unwrap();
        assert!(
            !store.take_echo("partner", 7, 2).unwrap(),
            "two events: one is a person's"
        );
        assert!(
            !store.take_echo("partner", 7, 1).unwrap(),
            "the expectation was used up"
        );
        store.expect_echo("partner", 7, window).unwrap();
        assert!(store.take_echo("partner", 7, 1).unwrap());
        assert!(!store.take_echo("partner", 7, 1).unwrap());
        store.expect_echo("partner", 8, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !store.take_echo("partner", 8, 1).unwrap(),
            "a late echo is read like any event"
        );
    }
}

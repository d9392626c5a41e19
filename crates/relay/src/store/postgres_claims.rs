//! Party claims and expected echoes in PostgreSQL (see `sqlite_claims`):
//! the same rules, on the database's clock, so replicas on machines whose
//! clocks differ agree on when a claim lapses.

use std::time::Duration;

use super::postgres::PgStore;
use super::sqlite_claims::millis;
use super::{LinkKey, StoreError};

impl PgStore {
    pub(super) async fn claim_party(
        &self,
        key: &LinkKey<'_>,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "INSERT INTO party_claims (kind, source_portal, source_id, target_portal, holder, until)
                 VALUES ($1, $2, $3, $4, $5, b24_now_ms() + $6)
                 ON CONFLICT (kind, source_portal, source_id, target_portal) DO UPDATE
                 SET holder = EXCLUDED.holder, until = EXCLUDED.until
                 WHERE party_claims.until < b24_now_ms() OR party_claims.holder = EXCLUDED.holder",
                &[
                    &key.kind.as_str(),
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                    &holder,
                    &millis(lease),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    pub(super) async fn release_party(
        &self,
        key: &LinkKey<'_>,
        holder: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM party_claims WHERE kind = $1 AND source_portal = $2
                 AND source_id = $3 AND target_portal = $4 AND holder = $5",
                &[
                    &key.kind.as_str(),
                    &key.source_portal,
                    &key.source_id,
                    &key.target_portal,
                    &holder,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn expect_echo(
        &self,
        portal: &str,
        deal_id: i64,
        window: Duration,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO expected_echoes (portal, deal_id, expected, until)
                 VALUES ($1, $2, 1, b24_now_ms() + $3)
                 ON CONFLICT (portal, deal_id) DO UPDATE SET
                    expected = CASE WHEN expected_echoes.until < b24_now_ms() THEN 1
                                    ELSE expected_echoes.expected + 1 END,
                    until = EXCLUDED.until",
                &[&portal, &deal_id, &millis(window)],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn take_echo(
        &self,
        portal: &str,
        deal_id: i64,
        events: u32,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let expected: Option<i64> = tx
            .query_opt(
                "SELECT expected FROM expected_echoes
                 WHERE portal = $1 AND deal_id = $2 AND until >= b24_now_ms() FOR UPDATE",
                &[&portal, &deal_id],
            )
            .await?
            .map(|row| row.get(0));
        let events = i64::from(events);
        let echo = expected.is_some_and(|n| events <= n);
        if echo {
            tx.execute(
                "UPDATE expected_echoes SET expected = expected - $3 WHERE portal = $1 AND deal_id = $2",
                &[&portal, &deal_id, &events],
            )
            .await?;
        } else if expected.is_some() {
            tx.execute(
                "DELETE FROM expected_echoes WHERE portal = $1 AND deal_id = $2",
                &[&portal, &deal_id],
            )
            .await?;
        }
        tx.execute(
            "DELETE FROM expected_echoes WHERE until < b24_now_ms() OR expected <= 0",
            &[],
        )
        .await?;
        tx.commit().await?;
        Ok(echo)
    }
}

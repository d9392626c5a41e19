//! Application mode in PostgreSQL: installed applications (tokens replaced
//! in one statement after every refresh), the rule runs waiting for their
//! job, and the lock that makes an OAuth refresh single-flight across
//! replicas.

use b24_client::{Secret, TokenPair};

use super::postgres::PgStore;
use super::{AppInstall, RuleCall, StoreError};

impl PgStore {
    pub(super) async fn save_install(
        &self,
        portal: &str,
        install: &AppInstall,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO app_installs (portal, client_endpoint, domain, member_id, scopes,
                    application_token, access_token, refresh_token, reinstall_reason, updated_at,
                    server_endpoint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, b24_now_ms(), $9)
                 ON CONFLICT (portal) DO UPDATE SET client_endpoint = EXCLUDED.client_endpoint,
                    server_endpoint = EXCLUDED.server_endpoint,
                    domain = EXCLUDED.domain, member_id = EXCLUDED.member_id,
                    scopes = EXCLUDED.scopes, application_token = EXCLUDED.application_token,
                    access_token = EXCLUDED.access_token, refresh_token = EXCLUDED.refresh_token,
                    reinstall_reason = NULL, updated_at = EXCLUDED.updated_at",
                &[
                    &portal,
                    &install.client_endpoint,
                    &install.domain,
                    &install.member_id,
                    &install.scopes,
                    &install.application_token.expose(),
                    &install.tokens.access_token.expose(),
                    &install.tokens.refresh_token.expose(),
                    &install.server_endpoint,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn install(&self, portal: &str) -> Result<Option<AppInstall>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT client_endpoint, domain, member_id, scopes, application_token,
                        access_token, refresh_token, reinstall_reason, updated_at, server_endpoint
                 FROM app_installs WHERE portal = $1",
                &[&portal],
            )
            .await?;
        Ok(row.map(|row| AppInstall {
            client_endpoint: row.get(0),
            domain: row.get(1),
            member_id: row.get(2),
            scopes: row.get(3),
            application_token: Secret::new(row.get::<_, String>(4)),
            tokens: TokenPair {
                access_token: Secret::new(row.get::<_, String>(5)),
                refresh_token: Secret::new(row.get::<_, String>(6)),
            },
            reinstall_reason: row.get(7),
            updated_at_ms: row.get(8),
            server_endpoint: row.get(9),
        }))
    }

    pub(super) async fn save_tokens(
        &self,
        portal: &str,
        tokens: &TokenPair,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE app_installs SET access_token = $2, refresh_token = $3, updated_at = b24_now_ms()
                 WHERE portal = $1",
                &[
                    &portal,
                    &tokens.access_token.expose(),
                    &tokens.refresh_token.expose(),
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn flag_reinstall(
        &self,
        portal: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE app_installs SET reinstall_reason = $2, updated_at = b24_now_ms() WHERE portal = $1",
                &[&portal, &reason],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn calls_to_answer(
        &self,
        portal: &str,
        job_id: Option<i64>,
    ) -> Result<Vec<RuleCall>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT r.id, r.portal, r.job_id, r.deal_id, r.workflow_id, r.event_token, r.route
                 FROM rule_calls r JOIN jobs j ON j.id = r.job_id
                 WHERE r.answered_at IS NULL AND r.portal = $1 AND ($2::bigint IS NULL OR r.job_id = $2)
                   AND j.state IN ('done', 'skipped', 'failed')
                 ORDER BY r.id",
                &[&portal, &job_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| RuleCall {
                id: row.get(0),
                portal: row.get(1),
                job_id: row.get(2),
                deal_id: row.get(3),
                workflow_id: row.get(4),
                event_token: row.get(5),
                route: row.get(6),
            })
            .collect())
    }

    pub(super) async fn answered(&self, id: i64, error: Option<&str>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE rule_calls SET answered_at = b24_now_ms(), answer_error = $2 WHERE id = $1",
                &[&id, &error],
            )
            .await?;
        Ok(())
    }
}

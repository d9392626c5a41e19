//! Application mode in SQLite: the installed application of each portal
//! (its tokens replaced in one statement after every refresh) and the rule
//! runs that wait for their job's result.

use b24_client::{Secret, TokenPair};
use rusqlite::{Connection, OptionalExtension, params};

use super::sqlite_jobs::enqueue;
use super::{AppInstall, Enqueued, RuleCall, StoreError, now_ms};

pub(super) fn save_install(
    c: &Connection,
    portal: &str,
    install: &AppInstall,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO app_installs (portal, client_endpoint, domain, member_id, scopes,
                application_token, access_token, refresh_token, reinstall_reason, updated_at,
                server_endpoint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10)
             ON CONFLICT (portal) DO UPDATE SET client_endpoint = excluded.client_endpoint,
                server_endpoint = excluded.server_endpoint,
                domain = excluded.domain, member_id = excluded.member_id,
                scopes = excluded.scopes, application_token = excluded.application_token,
                access_token = excluded.access_token, refresh_token = excluded.refresh_token,
                reinstall_reason = NULL, updated_at = excluded.updated_at",
        params![
            portal,
            install.client_endpoint,
            install.domain,
            install.member_id,
            install.scopes,
            install.application_token.expose(),
            install.tokens.access_token.expose(),
            install.tokens.refresh_token.expose(),
            now_ms(),
            install.server_endpoint
        ],
    )?;
    Ok(())
}

pub(super) fn install(c: &Connection, portal: &str) -> Result<Option<AppInstall>, StoreError> {
    Ok(c.query_row(
        "SELECT client_endpoint, domain, member_id, scopes, application_token,
                    access_token, refresh_token, reinstall_reason, updated_at, server_endpoint
             FROM app_installs WHERE portal = ?1",
        params![portal],
        |row| {
            Ok(AppInstall {
                client_endpoint: row.get(0)?,
                domain: row.get(1)?,
                member_id: row.get(2)?,
                scopes: row.get(3)?,
                application_token: Secret::new(row.get::<_, String>(4)?),
                tokens: TokenPair {
                    access_token: Secret::new(row.get::<_, String>(5)?),
                    refresh_token: Secret::new(row.get::<_, String>(6)?),
                },
                reinstall_reason: row.get(7)?,
                updated_at_ms: row.get(8)?,
                server_endpoint: row.get(9)?,
            })
        },
    )
    .optional()?)
}

pub(super) fn save_tokens(
    c: &Connection,
    portal: &str,
    tokens: &TokenPair,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE app_installs SET access_token = ?2, refresh_token = ?3, updated_at = ?4
             WHERE portal = ?1",
        params![
            portal,
            tokens.access_token.expose(),
            tokens.refresh_token.expose(),
            now_ms()
        ],
    )?;
    Ok(())
}

pub(super) fn flag_reinstall(c: &Connection, portal: &str, reason: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE app_installs SET reinstall_reason = ?2, updated_at = ?3 WHERE portal = ?1",
        params![portal, reason, now_ms()],
    )?;
    Ok(())
}

pub(super) fn queue_rule_call(
    c: &Connection,
    portal: &str,
    deal_id: i64,
    workflow_id: &str,
    event_token: &str,
    route: &str,
) -> Result<Enqueued, StoreError> {
    let enqueued = enqueue(c, portal, deal_id, "app-rule")?;
    c.execute(
            "INSERT INTO rule_calls (portal, job_id, deal_id, workflow_id, event_token, route, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![portal, enqueued.job_id, deal_id, workflow_id, event_token, route, now_ms()],
        )?;
    Ok(enqueued)
}

pub(super) fn calls_to_answer(
    c: &Connection,
    portal: &str,
    job_id: Option<i64>,
) -> Result<Vec<RuleCall>, StoreError> {
    let mut statement = c.prepare(
        "SELECT r.id, r.portal, r.job_id, r.deal_id, r.workflow_id, r.event_token, r.route
             FROM rule_calls r JOIN jobs j ON j.id = r.job_id
             WHERE r.answered_at IS NULL AND r.portal = ?1 AND (?2 IS NULL OR r.job_id = ?2)
               AND j.state IN ('done', 'skipped', 'failed')
             ORDER BY r.id",
    )?;
    let rows = statement.query_map(params![portal, job_id], |row| {
        Ok(RuleCall {
            id: row.get(0)?,
            portal: row.get(1)?,
            job_id: row.get(2)?,
            deal_id: row.get(3)?,
            workflow_id: row.get(4)?,
            event_token: row.get(5)?,
            route: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn answered(c: &Connection, id: i64, error: Option<&str>) -> Result<(), StoreError> {
    c.execute(
        "UPDATE rule_calls SET answered_at = ?2, answer_error = ?3 WHERE id = ?1",
        params![id, now_ms(), error],
    )?;
    Ok(())
}

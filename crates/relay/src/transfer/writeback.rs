//! Telling the source portal what happened, in one `batch`: a timeline
//! comment in the portal's language, the configured field with the target
//! deal id, and a personal notification (`im.notify`) to the deal's
//! responsible user as the route's `notify` says. Then the link remembers
//! what was synced, so a repeat of the same event costs no target request,
//! and the echo the relay's own field update causes is expected, so it
//! costs no source read either.

use std::time::Duration;

use b24_client::{Batch, CommandOutcome};
use serde_json::{Map, json};

use super::{
    Dialect, ErrorKind, RouteOutcome, SourceDeal, Transfer, TransferError, command_error, push,
};
use crate::config::{Notify, Route};
use crate::messages;
use crate::portals::id_of;

/// How long an event about a deal counts as the echo of the relay's own
/// write-back. Bitrix24 delivers it within seconds; one arriving later is
/// read like any event (it costs a read, never a lost change).
pub const ECHO_WINDOW: Duration = Duration::from_secs(30);

pub(crate) async fn write_back(
    transfer: &Transfer,
    route: &Route,
    source: &SourceDeal,
    outcome: &RouteOutcome,
) -> Result<(), TransferError> {
    let Some(target_id) = outcome.target_id() else {
        return Ok(());
    };
    let from = transfer.portal(&route.from)?;
    let to = transfer.portal(&route.to)?;
    let language = from.config.language;
    let link = format!("{}/crm/deal/details/{target_id}/", to.config.public_url);
    let mut batch = Batch::new();
    let comment = match outcome {
        RouteOutcome::Created { .. } => {
            Some(messages::transferred(language, &route.to, target_id, &link))
        }
        RouteOutcome::Updated { .. } => {
            Some(messages::updated(language, &route.to, target_id, &link))
        }
        _ => None,
    };
    let changed = comment.is_some();
    if let Some(comment) = comment.filter(|_| route.writeback_comment) {
        push(
            &mut batch,
            "comment",
            "crm.timeline.comment.add",
            json!({"fields": {"ENTITY_ID": source.id, "ENTITY_TYPE": "deal", "COMMENT": comment}}),
        );
    }
    let mut field_written = false;
    if let Some(field) = &route.writeback_field {
        let current = source.deal.get(field).map(crate::mapping::scalar);
        if current.as_deref() != Some(target_id.to_string().as_str()) {
            let mut fields = Map::new();
            let (method, params) = match from.dialect.get() {
                Dialect::Legacy => {
                    fields.insert(crate::mapping::upper_name(field), json!(target_id));
                    (
                        "crm.deal.update",
                        json!({"id": source.id, "fields": fields}),
                    )
                }
                Dialect::Item => {
                    fields.insert(field.clone(), json!(target_id));
                    (
                        "crm.item.update",
                        json!({"entityTypeId": 2, "id": source.id, "fields": fields}),
                    )
                }
            };
            push(&mut batch, "field", method, params);
            field_written = true;
        }
    }
    let responsible = id_of(source.deal.get("assignedById"));
    if let (Notify::Always, true, Some(user)) = (route.notify, changed, responsible) {
        let deal_link = format!("{}/crm/deal/details/{}/", from.config.public_url, source.id);
        push(
            &mut batch,
            "notify",
            "im.notify",
            json!({"to": user, "type": "SYSTEM", "message": messages::notify_transferred(
                language, &source.title(), &deal_link, &route.to, target_id)}),
        );
    }
    if !batch.is_empty() {
        let done = from.client.batch(&batch).await;
        for name in ["comment", "field"] {
            if let Some(outcome) = done
                .get(name)
                .filter(|o| !matches!(o, CommandOutcome::Done(_)))
            {
                return Err(command_error(
                    &format!("write-back ({name}) on {}", route.from),
                    Some(outcome),
                    done.stopped_by.as_ref(),
                ));
            }
        }
        if let Some(outcome) = done
            .get("notify")
            .filter(|o| !matches!(o, CommandOutcome::Done(_)))
        {
            // A missing `im` scope must not undo a transfer.
            tracing::warn!(portal = %route.from, deal = source.id, ?outcome, "could not notify the responsible user");
        }
        if field_written && expects_events(transfer, &route.from) {
            transfer
                .store
                .expect_echo(&route.from, source.id, ECHO_WINDOW)
                .await?;
        }
    }
    let key = transfer.deal_key(route, source.id);
    let digest = super::target::source_digest(route, source);
    transfer
        .store
        .set_link(&key, target_id, Some(&digest))
        .await?;
    Ok(())
}

/// Whether deal updates on this portal come back as events (an outgoing
/// webhook is configured): only then does a write-back have an echo.
fn expects_events(transfer: &Transfer, portal: &str) -> bool {
    transfer
        .config
        .portals
        .get(portal)
        .is_some_and(|p| p.application_token.is_some() || p.app.is_some())
}

/// Tells the people on the source deal that it could not be transferred,
/// in words they can act on (the commands that fix it are in the log and
/// `jobs show`): a comment, and a notification to the responsible user
/// unless every route says `notify = "never"`.
pub async fn report_failure(
    transfer: &Transfer,
    portal_name: &str,
    deal_id: i64,
    error: &TransferError,
) {
    let Some(portal) = transfer.portals.get(portal_name) else {
        return;
    };
    let routes: Vec<&Route> = transfer
        .config
        .routes
        .iter()
        .filter(|r| r.from == portal_name)
        .collect();
    let comment = routes.iter().any(|r| r.writeback_comment);
    let notify = routes.iter().any(|r| r.notify != Notify::Never);
    if !comment && !notify {
        return;
    }
    if error.kind == ErrorKind::NotFound
        && error
            .context
            .contains(&format!("deal {deal_id} does not exist"))
    {
        // Nothing to comment on.
        return;
    }
    let language = portal.config.language;
    let mut targets: Vec<&str> = routes.iter().map(|r| r.to.as_str()).collect();
    targets.dedup();
    let target = targets.join(", ");
    let reason = error.for_people(language);
    let text = messages::failed(language, &target, &reason);
    let mut batch = Batch::new();
    if comment {
        push(
            &mut batch,
            "comment",
            "crm.timeline.comment.add",
            json!({"fields": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal", "COMMENT": text}}),
        );
    }
    if notify {
        let dialect = portal.dialect.get();
        let (method, params) = dialect.get(2, json!(deal_id));
        push(&mut batch, "deal", method, params);
        let deal_link = format!("{}/crm/deal/details/{deal_id}/", portal.config.public_url);
        let title = match dialect {
            Dialect::Item => "$result[deal][item][title]",
            Dialect::Legacy => "$result[deal][TITLE]",
        };
        push(
            &mut batch,
            "notify",
            "im.notify",
            json!({
                "to": dialect.deal_field_reference("deal", "assignedById"),
                "type": "SYSTEM",
                "message": messages::notify_failed(language, title, &deal_link, &target, &reason),
            }),
        );
    }
    let done = portal.client.batch(&batch).await;
    for (command, outcome) in &done.commands {
        if !matches!(outcome, CommandOutcome::Done(_)) {
            tracing::warn!(portal = portal_name, deal_id, command = %command.name, ?outcome,
                stopped_by = ?done.stopped_by.as_ref().map(|e| e.to_string()),
                "could not tell the source deal's people about the failure");
        }
    }
}

//! Write: the planned batch on the target (with the files, downloaded from
//! the source first), then the links — deal, new contacts and companies —
//! and the copied files are recorded.

use std::collections::BTreeMap;

use b24_client::CommandOutcome;
use base64::Engine;
use serde_json::{Value, json};

use super::lookup::Found;
use super::plan::Planned;
use super::{Party, SourceFile};
use crate::config::Route;
use crate::portals::PortalHandle;
use crate::store::{Link, LinkKey};
use crate::transfer::{
    ErrorKind, RouteOutcome, SourceDeal, Transfer, TransferError, command_error,
};

#[allow(clippy::too_many_arguments)]
pub(crate) async fn write(
    transfer: &Transfer,
    route: &Route,
    source: &SourceDeal,
    target: &PortalHandle,
    key: &LinkKey<'_>,
    parties: &mut [Party<'_>],
    found: &Found,
    mut planned: Planned,
    files: &[SourceFile],
    digest: &str,
    link: Option<&Link>,
) -> Result<RouteOutcome, TransferError> {
    let store = &transfer.store;
    let dialect = planned.dialect;
    let uploads = download(transfer, route, files, &found.pending_files).await?;
    if !uploads.is_empty() {
        add_files(&mut planned, found, &uploads);
    }
    let done = target.client.batch(&planned.batch).await;
    if target.dialect.notice_batch(&done, &target.config.name) {
        return Err(TransferError::transient(
            ErrorKind::Portal(b24_client::ApiErrorKind::MethodNotFound),
            format!(
                "crm.item.* is missing on {}; the next attempt uses crm.deal.*",
                route.to
            ),
        ));
    }
    for party in parties.iter_mut().filter(|p| p.target_id.is_none()) {
        let name = format!("{}_add", party.name);
        let id = done.result(&name).and_then(|r| dialect.written_id(r, None));
        let Some(id) = id else {
            return Err(command_error(
                &format!(
                    "creating the {} on {}",
                    if party.entity_type_id == 3 {
                        "contact"
                    } else {
                        "company"
                    },
                    route.to
                ),
                done.get(&name),
                done.stopped_by.as_ref(),
            ));
        };
        let party_key = LinkKey {
            kind: party.kind,
            source_portal: &route.from,
            source_id: party.source_id,
            target_portal: &route.to,
        };
        store.set_link(&party_key, id, None).await?;
        party.target_id = Some(id);
    }
    let target_id = match done
        .result("deal")
        .and_then(|r| dialect.written_id(r, found.deal_id))
    {
        Some(id) => id,
        None => {
            let action = if planned.creates_deal {
                "creating"
            } else {
                "updating"
            };
            let mut error = command_error(
                &format!("{action} the deal on {}", route.to),
                done.get("deal"),
                done.stopped_by.as_ref(),
            );
            if error.kind == ErrorKind::NotFound {
                error.context = format!(
                    "target deal {} no longer exists on {} (deleted there?); remove its link with `b24-relay links rebuild --route {}` or replay after restoring it",
                    found.deal_id.unwrap_or_default(),
                    route.to,
                    route.name
                );
            }
            return Err(error);
        }
    };
    store.set_link(key, target_id, None).await?;
    let mut by_field: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (file, _, _) in &uploads {
        by_field
            .entry(&file.source_field)
            .or_default()
            .push(file.id);
    }
    for (field, ids) in by_field {
        store.add_copied_files(key, field, &ids).await?;
    }
    if planned.sets_rows && !matches!(done.get("rows"), Some(CommandOutcome::Done(_))) {
        return Err(command_error(
            &format!("setting product rows on {}", route.to),
            done.get("rows"),
            done.stopped_by.as_ref(),
        ));
    }
    let _ = (source, digest);
    // "Transferred" until a transfer of this deal completed once: a create
    // whose answer was lost and that a retry found is still the first.
    let first = planned.creates_deal || link.and_then(|l| l.synced_hash.as_ref()).is_none();
    Ok(if first {
        RouteOutcome::Created {
            route: route.name.clone(),
            target_id,
        }
    } else {
        RouteOutcome::Updated {
            route: route.name.clone(),
            target_id,
        }
    })
}

/// Downloads the files to copy, through the source's bucket and with the
/// client that read the deal (the application's token or the webhook).
async fn download<'a>(
    transfer: &Transfer,
    route: &Route,
    files: &'a [SourceFile],
    pending: &[usize],
) -> Result<Vec<(&'a SourceFile, String, Vec<u8>)>, TransferError> {
    let mut uploads = Vec::new();
    if pending.is_empty() {
        return Ok(uploads);
    }
    let from = transfer.portal(&route.from)?;
    let reader = from.reader();
    for &index in pending {
        let file = &files[index];
        let download = reader.download(&file.url).await.map_err(|error| {
            let mut error = TransferError::client(
                format!(
                    "downloading file {} of {} from {}",
                    file.id, file.source_field, route.from
                ),
                error,
            );
            error.kind = match error.kind {
                ErrorKind::Transport | ErrorKind::OutcomeUnknown => error.kind,
                _ => ErrorKind::File,
            };
            error
        })?;
        let name = download.name.unwrap_or_else(|| format!("file-{}", file.id));
        uploads.push((file, name, download.bytes));
    }
    Ok(uploads)
}

/// Puts the uploads into the deal command, keeping the files the target
/// deal has (an update that omits existing file ids deletes them).
fn add_files(planned: &mut Planned, found: &Found, uploads: &[(&SourceFile, String, Vec<u8>)]) {
    let dialect = planned.dialect;
    let mut by_field: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (file, name, data) in uploads {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        by_field
            .entry(&file.target_field)
            .or_default()
            .push(dialect.upload(name, encoded));
    }
    let mut commands: Vec<b24_client::BatchCommand> = planned.batch.commands().to_vec();
    let Some(deal) = commands.iter_mut().find(|c| c.name == "deal") else {
        return;
    };
    for (field, mut values) in by_field {
        let mut kept: Vec<Value> = found
            .existing_files
            .get(field)
            .map(|ids| ids.iter().map(|id| json!({"id": id})).collect())
            .unwrap_or_default();
        kept.append(&mut values);
        let name = match dialect {
            crate::transfer::Dialect::Item => field.to_owned(),
            crate::transfer::Dialect::Legacy => crate::mapping::upper_name(field),
        };
        deal.params["fields"][name] = Value::Array(kept);
    }
    let mut batch = b24_client::Batch::new();
    for command in commands {
        crate::transfer::push(&mut batch, &command.name, &command.method, command.params);
    }
    planned.batch = batch;
}

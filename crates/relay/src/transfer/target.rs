//! The target side of one route: look up → plan → write.
//!
//! - [`lookup`]: one `batch` on the target for everything the link table
//!   does not know: the deal by `originatorId`/`originId` whenever it has
//!   no link (not only after a create in doubt: the store may have been
//!   lost or restored), each contact and company by the same markers and by
//!   phone and e-mail (under a per-party claim, so concurrent workers never
//!   both create one), target users by e-mail, and the files already on the
//!   deal.
//! - [`plan`]: the mapping with what was looked up, and the write batch:
//!   new contacts and company, the deal (create or update), product rows.
//! - [`write`]: one `batch`, then the links, claims and copied files are
//!   recorded.
//!
//! A plain new deal costs two target requests (look-up, write); a deal
//! whose source content did not change since its last transfer costs none.

mod lookup;
mod plan;
mod write;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{RouteOutcome, SourceDeal, Transfer, TransferError};
use crate::config::Route;
use crate::mapping;
use crate::portals::id_of;
use crate::store::LinkKind;

/// A contact or company that travels with the deal.
#[derive(Debug)]
pub(crate) struct Party<'a> {
    pub kind: LinkKind,
    /// Command-name stem: `contact0`, `contact1`, …, `company`.
    pub name: String,
    pub entity_type_id: i64,
    pub source_id: i64,
    pub record: &'a Map<String, Value>,
    /// Known target id (linked or found), else created in the write batch.
    pub target_id: Option<i64>,
    /// This transfer holds the party's claim (release it when done).
    pub claimed: bool,
}

/// A source file to copy: field, file id, download link.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub source_field: String,
    pub target_field: String,
    pub id: i64,
    pub url: String,
}

/// Transfers `source` along `route` on the target (write-back aside).
pub async fn transfer_route(
    transfer: &Transfer,
    route: &Route,
    source: &SourceDeal,
    dry_run: bool,
    holder: &str,
) -> Result<RouteOutcome, TransferError> {
    let target = transfer.portal(&route.to)?;
    let key = transfer.deal_key(route, source.id);
    let link = transfer.store.link(&key).await?;
    let mut catalogs = transfer.route_catalogs(route, false).await?;
    let digest = source_digest(route, source);
    if let Some(target_id) = link
        .as_ref()
        .and_then(|l| l.target_id)
        .filter(|_| link.as_ref().and_then(|l| l.synced_hash.as_deref()) == Some(digest.as_str()))
    {
        return Ok(RouteOutcome::Unchanged {
            route: route.name.clone(),
            target_id,
        });
    }
    let mut parties = parties(route, source);
    let files = source_files(route, source);
    let up = lookup::LookUp {
        transfer,
        route,
        source,
        target,
        key: key.clone(),
        holder,
    };
    let found = match up
        .run(&link, &mut parties, &files, &catalogs, dry_run)
        .await
    {
        Ok(found) => found,
        Err(error) => {
            release_claims(transfer, route, &parties, holder).await;
            return Err(error);
        }
    };
    let planned = loop {
        match plan::plan(route, source, &parties, &found, &catalogs, &link) {
            Ok(planned) => break planned,
            // Options may have been added since the catalogues were cached.
            Err(error) if !catalogs.refreshed && error.kind == super::ErrorKind::Mapping => {
                catalogs = transfer.route_catalogs(route, true).await?;
                catalogs.refreshed = true;
            }
            Err(error) => {
                release_claims(transfer, route, &parties, holder).await;
                return Err(error);
            }
        }
    };
    if dry_run {
        release_claims(transfer, route, &parties, holder).await;
        return Ok(RouteOutcome::Planned {
            route: route.name.clone(),
            fields: planned.preview(),
        });
    }
    let result = write::write(
        transfer,
        route,
        source,
        target,
        &key,
        &mut parties,
        &found,
        planned,
        &files,
        &digest,
        link.as_ref(),
    )
    .await;
    release_claims(transfer, route, &parties, holder).await;
    result
}

async fn release_claims(transfer: &Transfer, route: &Route, parties: &[Party<'_>], holder: &str) {
    for party in parties.iter().filter(|p| p.claimed) {
        let key = crate::store::LinkKey {
            kind: party.kind,
            source_portal: &route.from,
            source_id: party.source_id,
            target_portal: &route.to,
        };
        if let Err(error) = transfer.store.release_party(&key, holder).await {
            // The claim lapses with its lease.
            tracing::warn!(%error, party = %party.name, "cannot release a party claim");
        }
    }
}

/// The contacts (primary first) and the company the route takes along.
fn parties<'a>(route: &Route, source: &'a SourceDeal) -> Vec<Party<'a>> {
    let mut parties = Vec::new();
    if route.company {
        if let Some(record) = &source.company {
            if let Some(source_id) = id_of(record.get("id")) {
                parties.push(Party {
                    kind: LinkKind::Company,
                    name: "company".into(),
                    entity_type_id: 4,
                    source_id,
                    record,
                    target_id: None,
                    claimed: false,
                });
            }
        }
    }
    if route.contact {
        for (index, record) in source.contacts.iter().enumerate() {
            if let Some(source_id) = id_of(record.get("id")) {
                parties.push(Party {
                    kind: LinkKind::Contact,
                    name: format!("contact{index}"),
                    entity_type_id: 3,
                    source_id,
                    record,
                    target_id: None,
                    claimed: false,
                });
            }
        }
    }
    parties
}

fn source_files(route: &Route, source: &SourceDeal) -> Vec<SourceFile> {
    let mut files = Vec::new();
    for field in &route.files {
        let target_field = route.fields.get(field).unwrap_or(field).clone();
        let values = match source.deal.get(field) {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(one) => vec![one.clone()],
        };
        for value in values {
            let (Some(id), Some(url)) = (id_of(value.get("id")), value["urlMachine"].as_str())
            else {
                continue;
            };
            files.push(SourceFile {
                source_field: field.clone(),
                target_field: target_field.clone(),
                id,
                url: url.to_owned(),
            });
        }
    }
    files
}

/// A digest of everything on the source that the route writes to the
/// target (and of the route itself), to notice "nothing changed" before
/// any target request. `+rows` marks a transfer that wrote product rows.
pub(crate) fn source_digest(route: &Route, source: &SourceDeal) -> String {
    let mut fields: BTreeMap<&str, Value> = BTreeMap::new();
    for field in route.fields.keys().map(String::as_str).chain([
        "stageId",
        "categoryId",
        "isManualOpportunity",
        "currencyId",
    ]) {
        let value = match source.deal.get(field) {
            // File links carry tokens that change: only the file ids count.
            Some(Value::Array(items)) if route.files.iter().any(|f| f == field) => json!(
                items
                    .iter()
                    .map(|f| f.get("id").cloned().unwrap_or(Value::Null))
                    .collect::<Vec<_>>()
            ),
            Some(value) => value.clone(),
            None => Value::Null,
        };
        fields.insert(field, value);
    }
    let rows = route
        .products
        .then(|| mapping::map_product_rows(&source.rows));
    let parties: Vec<(String, Value)> = source
        .contacts
        .iter()
        .map(|c| {
            (
                "contact".to_owned(),
                c.get("id").cloned().unwrap_or(Value::Null),
            )
        })
        .chain(source.company.iter().map(|c| {
            (
                "company".to_owned(),
                c.get("id").cloned().unwrap_or(Value::Null),
            )
        }))
        .collect();
    let hash = mapping::digest(&json!({
        "route": format!("{route:?}"),
        "fields": fields,
        "rows": rows,
        "parties": parties,
        "responsible": source.responsible_email(),
    }));
    let had_rows = rows.as_ref().is_some_and(|r| !r.is_empty());
    if had_rows {
        format!("{hash}+rows")
    } else {
        hash
    }
}

/// Whether the previous transfer (by its digest) wrote product rows; an
/// unknown previous state counts as "maybe".
pub(crate) fn wrote_rows_before(hash: Option<&str>) -> bool {
    hash.is_none_or(|h| h.ends_with("+rows"))
}

//! `b24-relay links rebuild --route NAME`: the link table rebuilt from the
//! target portal itself, after the store was lost or restored from an old
//! copy. Every record the relay creates carries `originatorId =
//! b24-relay:<source portal>` and `originId = <source id>`; the target's
//! deals, contacts and companies with the route's marker are read in id
//! order (50 pages chained per request) and linked to their source records.
//! Transfers are exactly once without it (they look records up by the same
//! markers); a rebuilt table saves those look-ups and lets `jobs` and rule
//! answers name the target deals again.

use std::collections::BTreeMap;

use b24_client::IdScan;
use serde_json::{Value, json};

use crate::config::Route;
use crate::portals::id_of;
use crate::store::{LinkKey, LinkKind};
use crate::transfer::{Dialect, Transfer, TransferError, originator};

/// What a rebuild found and did, per kind of record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebuildReport {
    /// Records with the route's marker, by kind.
    pub scanned: BTreeMap<&'static str, usize>,
    /// Links written (or that would be, with `--dry-run`).
    pub added: usize,
    /// Links that already named the same target record.
    pub kept: usize,
    /// Source records with more than one target record, or whose link
    /// names another one: listed, never changed silently.
    pub conflicts: Vec<String>,
    /// HTTP requests made to the target.
    pub requests: usize,
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scanned: Vec<String> = self
            .scanned
            .iter()
            .map(|(kind, n)| format!("{n} {kind}(s)"))
            .collect();
        write!(
            f,
            "scanned {} in {} request(s); {} link(s) added, {} already right",
            scanned.join(", "),
            self.requests,
            self.added,
            self.kept
        )?;
        for conflict in &self.conflicts {
            write!(f, "\nCONFLICT {conflict}")?;
        }
        Ok(())
    }
}

fn kind_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Deal => "deal",
        LinkKind::Contact => "contact",
        LinkKind::Company => "company",
    }
}

/// Rebuilds the links of `route` from its target portal.
pub async fn rebuild(
    transfer: &Transfer,
    route: &Route,
    dry_run: bool,
) -> Result<RebuildReport, TransferError> {
    let target = transfer.portal(&route.to)?;
    // The dialect is found by the catalogue read (crm.item.* or not).
    target.deal_catalog(false).await.map_err(|e| {
        TransferError::client(format!("reading the deal fields of {}", route.to), e)
    })?;
    let marker = originator(&route.from);
    let mut report = RebuildReport::default();
    for (kind, entity_type_id) in [
        (LinkKind::Deal, 2),
        (LinkKind::Contact, 3),
        (LinkKind::Company, 4),
    ] {
        let mut scan = match target.dialect.get() {
            Dialect::Item => IdScan::items(
                entity_type_id,
                json!({"=originatorId": marker}),
                &["id", "originId"],
            ),
            Dialect::Legacy => IdScan::legacy(
                match entity_type_id {
                    3 => "crm.contact.list",
                    4 => "crm.company.list",
                    _ => "crm.deal.list",
                },
                json!({"=ORIGINATOR_ID": marker}),
                &["ID", "ORIGIN_ID"],
            ),
        };
        let mut by_source: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        let mut scanned = 0;
        loop {
            report.requests += 1;
            let chunk = scan.next_chunk(&target.client).await.map_err(|e| {
                TransferError::client(
                    format!(
                        "reading the {}s the relay created on {}",
                        kind_name(kind),
                        route.to
                    ),
                    e,
                )
            })?;
            let Some(records) = chunk else {
                break;
            };
            for record in &records {
                let id = id_of(record.get("id").or_else(|| record.get("ID")));
                let origin = record
                    .get("originId")
                    .or_else(|| record.get("ORIGIN_ID"))
                    .and_then(|v| id_of(Some(v)));
                if let (Some(id), Some(origin)) = (id, origin) {
                    by_source.entry(origin).or_default().push(id);
                    scanned += 1;
                }
            }
            if scan.is_finished() {
                break;
            }
        }
        report.scanned.insert(kind_name(kind), scanned);
        for (source_id, mut ids) in by_source {
            ids.sort_unstable();
            let first = ids[0];
            if ids.len() > 1 {
                report.conflicts.push(format!(
                    "{} {source_id} of {} has {} records on {}: {} (linked: {first}; merge the others on the portal)",
                    kind_name(kind),
                    route.from,
                    ids.len(),
                    route.to,
                    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
            let key = LinkKey {
                kind,
                source_portal: &route.from,
                source_id,
                target_portal: &route.to,
            };
            match transfer.store.link(&key).await?.and_then(|l| l.target_id) {
                Some(linked) if linked == first || ids.contains(&linked) => report.kept += 1,
                Some(linked) => report.conflicts.push(format!(
                    "{} {source_id} of {} is linked to {linked}, but {} holds {} for it; the link is kept",
                    kind_name(kind),
                    route.from,
                    route.to,
                    first
                )),
                None => {
                    if !dry_run {
                        transfer.store.set_link(&key, first, None).await?;
                    }
                    report.added += 1;
                }
            }
        }
    }
    Ok(report)
}

/// For tests and tools: the markers a record created for `source_portal` carries.
pub fn markers(source_portal: &str, source_id: i64) -> Value {
    json!({"originatorId": originator(source_portal), "originId": source_id.to_string()})
}

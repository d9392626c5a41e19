//! Plan: the mapping, with the users and records the look-up found, and
//! the write batch it comes to. Nothing here talks to a portal.

use b24_client::Batch;
use serde_json::{Map, Value, json};

use super::lookup::Found;
use super::{Party, wrote_rows_before};
use crate::config::Route;
use crate::mapping::{self, CrmKind, MappedDeal};
use crate::store::{Link, LinkKind};
use crate::transfer::{Dialect, RouteCatalogs, SourceDeal, TransferError, originator, push};

/// The write batch and what it means.
pub(crate) struct Planned {
    pub mapped: MappedDeal,
    pub batch: Batch,
    pub dialect: Dialect,
    /// The deal is created by this batch.
    pub creates_deal: bool,
    /// Product rows are set by this batch.
    pub sets_rows: bool,
}

impl Planned {
    /// What `transfer --dry-run` prints.
    pub fn preview(&self) -> Value {
        let commands: Vec<Value> = self
            .batch
            .commands()
            .iter()
            .map(|c| json!({"name": c.name, "method": c.method, "params": c.params}))
            .collect();
        json!({
            "fields": self.mapped.fields,
            "onCreate": self.mapped.on_create,
            "commands": commands,
        })
    }
}

pub(crate) fn plan(
    route: &Route,
    source: &SourceDeal,
    parties: &[Party<'_>],
    found: &Found,
    catalogs: &RouteCatalogs,
    link: &Option<Link>,
) -> Result<Planned, TransferError> {
    let plans = mapping::plan_fields(route, catalogs.catalogs()).map_err(|errors| {
        TransferError::mapping(format!("route {}: mapping the deal", route.name), errors)
    })?;
    let dialect = found.dialect;
    let mut resolved = found.resolved.clone();
    for party in parties {
        let kind = match party.kind {
            LinkKind::Contact => CrmKind::Contact,
            LinkKind::Company => CrmKind::Company,
            LinkKind::Deal => CrmKind::Deal,
        };
        // A party created in this batch is bound by a reference to it.
        let target = match party.target_id {
            Some(id) => json!(id),
            None => dialect.reference(&format!("{}_add", party.name)),
        };
        resolved.records.insert((kind, party.source_id), target);
    }
    let mapped = mapping::map_deal(route, &plans, &source.deal, &resolved, found.responsible)
        .map_err(|errors| {
            TransferError::mapping(format!("route {}: mapping the deal", route.name), errors)
        })?;
    let mut batch = Batch::new();
    // Company first: new contacts are linked to it.
    let company_ref = parties
        .iter()
        .find(|p| p.kind == LinkKind::Company)
        .map(|p| match p.target_id {
            Some(id) => json!(id),
            None => dialect.reference(&format!("{}_add", p.name)),
        });
    for party in parties.iter().filter(|p| p.target_id.is_none()) {
        let mut fields = party_fields(party, &route.from);
        if party.kind == LinkKind::Contact {
            if let Some(company) = &company_ref {
                fields.insert("companyId".into(), company.clone());
            }
        }
        let (method, params) = dialect.add(party.entity_type_id, fields);
        push(&mut batch, &format!("{}_add", party.name), method, params);
    }
    let mut fields = mapped.fields.clone();
    let contacts: Vec<Value> = parties
        .iter()
        .filter(|p| p.kind == LinkKind::Contact)
        .map(|p| match p.target_id {
            Some(id) => json!(id),
            None => dialect.reference(&format!("{}_add", p.name)),
        })
        .collect();
    if route.contact {
        fields.insert("contactIds".into(), Value::Array(contacts));
    }
    if route.company {
        fields.insert("companyId".into(), company_ref.unwrap_or(Value::Null));
    }
    let deal_id = found.deal_id;
    let (method, params) = match deal_id {
        Some(id) => dialect.update_deal(id, fields),
        None => {
            let mut create = MappedDeal {
                fields,
                on_create: mapped.on_create.clone(),
            }
            .for_create();
            create.insert("originatorId".into(), json!(originator(&route.from)));
            create.insert("originId".into(), json!(source.id.to_string()));
            dialect.add(2, create)
        }
    };
    push(&mut batch, "deal", method, params);
    let mut sets_rows = false;
    if route.products {
        let rows = mapping::map_product_rows(&source.rows);
        // An empty list clears the rows of a deal that had some (it goes
        // as its own call: `[]` cannot travel inside `batch`).
        let previous = link.as_ref().and_then(|l| l.synced_hash.as_deref());
        let needed = !rows.is_empty() || (deal_id.is_some() && wrote_rows_before(previous));
        if needed {
            let owner = match deal_id {
                Some(id) => json!(id),
                None => dialect.reference("deal"),
            };
            let (method, params) = dialect.set_rows(owner, rows);
            push(&mut batch, "rows", method, params);
            sets_rows = true;
        }
    }
    Ok(Planned {
        mapped,
        batch,
        dialect,
        creates_deal: deal_id.is_none(),
        sets_rows,
    })
}

/// A new contact/company on the target: names and communications, marked
/// with where it came from.
fn party_fields(party: &Party<'_>, source_portal: &str) -> Map<String, Value> {
    const KEPT: &[&str] = &["name", "secondName", "lastName", "post", "title"];
    let mut fields = Map::new();
    for key in KEPT {
        if let Some(value) = party.record.get(*key).filter(|v| !v.is_null()) {
            fields.insert((*key).to_owned(), value.clone());
        }
    }
    let fm: Vec<Value> = party
        .record
        .get("fm")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    json!({"typeId": row["typeId"], "value": row["value"], "valueType": row["valueType"]})
                })
                .collect()
        })
        .unwrap_or_default();
    if !fm.is_empty() {
        fields.insert("fm".into(), Value::Array(fm));
    }
    fields.insert("originatorId".into(), json!(originator(source_portal)));
    fields.insert("originId".into(), json!(party.source_id.to_string()));
    fields
}

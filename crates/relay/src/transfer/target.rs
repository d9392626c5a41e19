//! The target side of a transfer: find what already exists (link table,
//! then `originatorId`/`originId`, phone and e-mail), then write the deal,
//! its product rows, a new contact/company and files in one `batch`.
//!
//! Exactly once: before a create is sent, the link row is marked "create in
//! flight" (durably). A later attempt that finds the mark looks the record
//! up by `originatorId`/`originId` before creating anything, so neither a
//! crash between the create and the link write, nor a lost response, gives
//! a second record. Without the mark no create was ever sent, and the
//! lookup request is saved.

use std::collections::BTreeMap;

use std::sync::atomic::Ordering;

use b24_client::{ApiErrorKind, Batch, CommandOutcome};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::dialect::Dialect;
use super::{RouteOutcome, SourceDeal, Transfer, TransferError, command_error, originator, push};
use crate::config::Route;
use crate::mapping::{self, MappedDeal, scalar};
use crate::portals::{PortalHandle, id_of};
use crate::store::{LinkKey, LinkKind};

pub struct Upsert<'a> {
    pub transfer: &'a Transfer,
    pub route: &'a Route,
    pub source: &'a SourceDeal,
    pub target: &'a PortalHandle,
    pub key: LinkKey<'a>,
    pub mapped: MappedDeal,
}

/// A contact or company that travels with the deal.
struct Party<'a> {
    kind: LinkKind,
    /// `contact` or `company`: batch command prefix and the deal's field stem.
    name: &'static str,
    entity_type_id: i64,
    source_id: i64,
    record: &'a Map<String, Value>,
    /// Known target id (linked or found), else created in the write batch.
    target_id: Option<i64>,
}

/// A source file to copy: field, file id, download link.
struct SourceFile {
    source_field: String,
    target_field: String,
    id: i64,
    url: String,
}

impl Upsert<'_> {
    fn link_key(&self, kind: LinkKind, source_id: i64) -> LinkKey<'_> {
        LinkKey {
            kind,
            source_portal: &self.route.from,
            source_id,
            target_portal: &self.route.to,
        }
    }

    /// Returns the outcome and the digest to remember once write-back is done.
    pub async fn run(self) -> Result<(RouteOutcome, String), TransferError> {
        let store = &self.transfer.store;
        let route_name = self.route.name.clone();
        let link = store.link(&self.key).await?;
        let mut parties = self.parties();
        let files = self.source_files();
        let rows = self
            .route
            .products
            .then(|| mapping::map_product_rows(&self.source.rows));
        let hash = mapping::digest(&json!({
            "fields": self.mapped.fields,
            "rows": rows,
            // Contacts and companies are linked, not kept in sync: only
            // which one the deal points to matters here.
            "parties": parties.iter().map(|p| (p.name, p.source_id)).collect::<Vec<_>>(),
            "files": files.iter().map(|f| f.id).collect::<Vec<_>>(),
        }));
        let linked = link.as_ref().and_then(|l| l.target_id);
        if let Some(target_id) = linked
            .filter(|_| link.as_ref().and_then(|l| l.synced_hash.as_deref()) == Some(hash.as_str()))
        {
            return Ok((
                RouteOutcome::Unchanged {
                    route: route_name,
                    target_id,
                },
                hash,
            ));
        }
        let create_in_doubt = link.is_some() && linked.is_none();
        let mut deal_id = linked;
        // Files already copied into this target deal are not sent again.
        let mut pending: Vec<&SourceFile> = Vec::new();
        for file in &files {
            if !store
                .copied_files(&self.key, &file.source_field)
                .await?
                .contains(&file.id)
            {
                pending.push(file);
            }
        }
        let mut existing_files: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        self.look_up(
            create_in_doubt,
            &mut deal_id,
            &mut parties,
            &pending,
            &mut existing_files,
        )
        .await?;
        let mut uploads: Vec<(&SourceFile, String, Vec<u8>)> = Vec::new();
        for file in pending {
            let (name, data) = self
                .target_download(file)
                .await
                .map_err(TransferError::Transient)?;
            uploads.push((file, name, data));
        }
        let dialect = self.dialect();
        let mut batch = Batch::new();
        for party in parties.iter().filter(|p| p.target_id.is_none()) {
            store
                .mark_creating(&self.link_key(party.kind, party.source_id))
                .await?;
            let (method, params) =
                dialect.add(party.entity_type_id, party_fields(party, &self.route.from));
            push(&mut batch, &format!("{}_add", party.name), method, params);
        }
        let mut fields = self.mapped.fields.clone();
        for party in &parties {
            let value = match party.target_id {
                Some(id) => json!(id),
                None => dialect.reference(&format!("{}_add", party.name)),
            };
            fields.insert(format!("{}Id", party.name), value);
        }
        let mut target_fields: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (file, name, data) in &uploads {
            let encoded = base64::engine::general_purpose::STANDARD.encode(data);
            target_fields
                .entry(&file.target_field)
                .or_default()
                .push(dialect.upload(name, encoded));
        }
        for (field, mut values) in target_fields {
            // Keeping the ids already there: an update that omits them deletes them.
            let mut kept: Vec<Value> = existing_files
                .get(field)
                .map(|ids| ids.iter().map(|id| json!({"id": id})).collect())
                .unwrap_or_default();
            kept.append(&mut values);
            fields.insert(field.to_owned(), Value::Array(kept));
        }
        let created = deal_id.is_none();
        let (method, params) = match deal_id {
            Some(id) => dialect.update_deal(id, fields),
            None => {
                let mut create = self.mapped.on_create.clone();
                create.extend(fields);
                create.insert("originatorId".into(), json!(originator(&self.route.from)));
                create.insert("originId".into(), json!(self.source.id.to_string()));
                store.mark_creating(&self.key).await?;
                dialect.add(2, create)
            }
        };
        push(&mut batch, "deal", method, params);
        // An empty list cannot travel inside `batch` (its query-string
        // encoding drops it); a new deal has no rows anyway, and an existing
        // one is cleared by a direct call after the batch.
        let clear_rows = matches!(&rows, Some(r) if r.is_empty()) && deal_id.is_some();
        if let Some(rows) = rows.filter(|r| !r.is_empty()) {
            let owner = match deal_id {
                Some(id) => json!(id),
                None => dialect.reference("deal"),
            };
            let (method, params) = dialect.set_rows(owner, rows);
            push(&mut batch, "rows", method, params);
        }
        let done = self.target.client.batch(&batch).await;
        self.notice_missing_item_api(&done)?;
        for party in parties.iter().filter(|p| p.target_id.is_none()) {
            let name = format!("{}_add", party.name);
            let id = done.result(&name).and_then(|r| dialect.written_id(r, None));
            match id {
                Some(id) => {
                    store
                        .set_link(&self.link_key(party.kind, party.source_id), id, None)
                        .await?
                }
                None => {
                    return Err(command_error(
                        &format!("creating the {} on {}", party.name, self.route.to),
                        done.get(&name),
                        done.stopped_by.as_ref(),
                    ));
                }
            }
        }
        let target_id = match done
            .result("deal")
            .and_then(|r| dialect.written_id(r, deal_id))
        {
            Some(id) => id,
            None => {
                let action = if created { "creating" } else { "updating" };
                return Err(command_error(
                    &format!("{action} the deal on {}", self.route.to),
                    done.get("deal"),
                    done.stopped_by.as_ref(),
                ));
            }
        };
        store.set_link(&self.key, target_id, None).await?;
        let mut by_field: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (file, _, _) in &uploads {
            by_field
                .entry(&file.source_field)
                .or_default()
                .push(file.id);
        }
        for (field, ids) in by_field {
            store.add_copied_files(&self.key, field, &ids).await?;
        }
        if clear_rows {
            let (method, params) = dialect.set_rows(json!(target_id), Vec::new());
            self.target
                .client
                .call(method, &params)
                .await
                .map_err(|e| super::classify(&e))?;
        } else if self.route.products
            && !self.source.rows.is_empty()
            && !matches!(done.get("rows"), Some(CommandOutcome::Done(_)))
        {
            return Err(command_error(
                &format!("setting product rows on {}", self.route.to),
                done.get("rows"),
                done.stopped_by.as_ref(),
            ));
        }
        let outcome = if created {
            RouteOutcome::Created {
                route: route_name,
                target_id,
            }
        } else {
            RouteOutcome::Updated {
                route: route_name,
                target_id,
            }
        };
        Ok((outcome, hash))
    }

    fn dialect(&self) -> Dialect {
        if self.target.legacy_crm.load(Ordering::Relaxed) {
            Dialect::Legacy
        } else {
            Dialect::Item
        }
    }

    /// A box without `crm.item.*` answers ERROR_METHOD_NOT_FOUND: from now on
    /// its records are written with `crm.deal.*` (this attempt fails as
    /// transient and the retry uses them).
    fn notice_missing_item_api(
        &self,
        done: &b24_client::BatchOutcome,
    ) -> Result<(), TransferError> {
        let missing = done.commands.iter().any(|(command, outcome)| {
            command.method.starts_with("crm.item.")
                && matches!(outcome, CommandOutcome::Failed(api) if api.kind == ApiErrorKind::MethodNotFound)
        });
        if !missing {
            return Ok(());
        }
        self.target.legacy_crm.store(true, Ordering::Relaxed);
        tracing::warn!(portal = %self.route.to, "crm.item.* is missing; writing with crm.deal.*");
        Err(TransferError::Transient(format!(
            "crm.item.* is missing on {}; the next attempt uses crm.deal.*",
            self.route.to
        )))
    }

    fn parties(&self) -> Vec<Party<'_>> {
        let mut parties = Vec::new();
        for (wanted, record, kind, name, entity_type_id) in [
            (
                self.route.contact,
                &self.source.contact,
                LinkKind::Contact,
                "contact",
                3,
            ),
            (
                self.route.company,
                &self.source.company,
                LinkKind::Company,
                "company",
                4,
            ),
        ] {
            let Some(record) = record.as_ref().filter(|_| wanted) else {
                continue;
            };
            let Some(source_id) = id_of(record.get("id")) else {
                continue;
            };
            parties.push(Party {
                kind,
                name,
                entity_type_id,
                source_id,
                record,
                target_id: None,
            });
        }
        parties
    }

    fn source_files(&self) -> Vec<SourceFile> {
        let mut files = Vec::new();
        for field in &self.route.files {
            let target_field = self.route.fields.get(field).unwrap_or(field).clone();
            let values = match self.source.deal.get(field) {
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

    async fn target_download(&self, file: &SourceFile) -> Result<(String, Vec<u8>), String> {
        let from = self
            .transfer
            .portals
            .get(&self.route.from)
            .ok_or_else(|| format!("portal `{}` is not configured", self.route.from))?;
        from.download(&file.url).await
    }

    /// One `batch` on the target for everything not known from the links:
    /// a deal whose create is in doubt, contacts/companies, and the files
    /// already on the target deal when new ones are to be added.
    async fn look_up(
        &self,
        create_in_doubt: bool,
        deal_id: &mut Option<i64>,
        parties: &mut [Party<'_>],
        files: &[&SourceFile],
        existing_files: &mut BTreeMap<String, Vec<i64>>,
    ) -> Result<(), TransferError> {
        let store = &self.transfer.store;
        let dialect = self.dialect();
        let origin = originator(&self.route.from);
        let mut batch = Batch::new();
        if create_in_doubt {
            let (method, params) = dialect.find_by_origin(2, &origin, self.source.id);
            push(&mut batch, "origin", method, params);
        }
        for party in parties.iter_mut() {
            if let Some(link) = store
                .link(&self.link_key(party.kind, party.source_id))
                .await?
            {
                party.target_id = link.target_id;
            }
            if party.target_id.is_some() {
                continue;
            }
            let (method, params) =
                dialect.find_by_origin(party.entity_type_id, &origin, party.source_id);
            push(
                &mut batch,
                &format!("{}_origin", party.name),
                method,
                params,
            );
            for kind in ["PHONE", "EMAIL"] {
                let values = communications(party.record, kind);
                if !values.is_empty() {
                    push(
                        &mut batch,
                        &format!("{}_{}", party.name, kind.to_ascii_lowercase()),
                        "crm.duplicate.findbycomm",
                        json!({"entity_type": party.name.to_ascii_uppercase(), "type": kind, "values": values}),
                    );
                }
            }
        }
        let file_fields: Vec<&str> = files.iter().map(|f| f.target_field.as_str()).collect();
        if let Some(id) = deal_id.filter(|_| !file_fields.is_empty()) {
            let (method, params) = dialect.get_deal(id);
            push(&mut batch, "current", method, params);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let done = self.target.client.batch(&batch).await;
        self.notice_missing_item_api(&done)?;
        let require = |name: &str| -> Result<Value, TransferError> {
            done.result(name).cloned().ok_or_else(|| {
                command_error(
                    &format!("looking up on {}", self.route.to),
                    done.get(name),
                    done.stopped_by.as_ref(),
                )
            })
        };
        if create_in_doubt {
            let found = require("origin")?;
            *deal_id = dialect.first_id(&found);
            if let Some(id) = *deal_id {
                tracing::info!(route = %self.route.name, deal = self.source.id, target = id, "found the deal a previous attempt created");
                store.set_link(&self.key, id, None).await?;
            }
        }
        for party in parties.iter_mut().filter(|p| p.target_id.is_none()) {
            let upper = party.name.to_ascii_uppercase();
            let mut found = dialect.first_id(&require(&format!("{}_origin", party.name))?);
            for kind in ["phone", "email"] {
                let name = format!("{}_{kind}", party.name);
                if found.is_some() || done.get(&name).is_none() {
                    continue;
                }
                let result = require(&name)?;
                found = result[&upper]
                    .as_array()
                    .and_then(|ids| ids.iter().filter_map(|v| id_of(Some(v))).min());
            }
            if let Some(id) = found {
                store
                    .set_link(&self.link_key(party.kind, party.source_id), id, None)
                    .await?;
                party.target_id = Some(id);
            }
        }
        if deal_id.is_some() && !file_fields.is_empty() {
            let current = require("current")?;
            for field in file_fields {
                existing_files.insert(field.to_owned(), dialect.file_ids(&current, field));
            }
        }
        Ok(())
    }
}

/// PHONE or EMAIL values of a contact/company (`fm` rows of `crm.item.get`).
fn communications(record: &Map<String, Value>, kind: &str) -> Vec<String> {
    record
        .get("fm")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter(|row| scalar(&row["typeId"]) == kind)
                .map(|row| scalar(&row["value"]))
                .filter(|v| !v.is_empty())
                .take(20)
                .collect()
        })
        .unwrap_or_default()
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

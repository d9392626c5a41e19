//! Look-up: what exists on the target already, in one `batch`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use b24_client::Batch;
use serde_json::{Value, json};

use super::{Party, SourceFile};
use crate::config::Route;
use crate::mapping::{CrmKind, Needs, Resolved, scalar};
use crate::portals::users::email_key;
use crate::portals::{PortalHandle, id_of};
use crate::store::{Link, LinkKey, LinkKind};
use crate::transfer::{
    Dialect, ErrorKind, RouteCatalogs, SourceDeal, Transfer, TransferError, command_error,
    originator, push,
};

/// How long a transfer waits for another worker creating a shared contact
/// or company before it gives the job back (it is retried later).
const PARTY_WAIT: Duration = Duration::from_secs(20);

pub(crate) struct LookUp<'a> {
    pub transfer: &'a Transfer,
    pub route: &'a Route,
    pub source: &'a SourceDeal,
    pub target: &'a PortalHandle,
    pub key: LinkKey<'a>,
    pub holder: &'a str,
}

/// What the look-up found.
#[derive(Debug)]
pub(crate) struct Found {
    /// The dialect the target was looked up (and is written) with.
    pub dialect: Dialect,
    /// The target deal: linked, or found by its markers.
    pub deal_id: Option<i64>,
    /// Users and linked records the mapping needs.
    pub resolved: Resolved,
    /// The target user responsible for the deal, when the route maps it.
    pub responsible: Option<i64>,
    /// File ids already in the target deal's file fields.
    pub existing_files: BTreeMap<String, Vec<i64>>,
    /// Source files still to copy (not recorded as copied).
    pub pending_files: Vec<usize>,
}

impl LookUp<'_> {
    fn party_key(&self, party: &Party<'_>) -> LinkKey<'_> {
        LinkKey {
            kind: party.kind,
            source_portal: &self.route.from,
            source_id: party.source_id,
            target_portal: &self.route.to,
        }
    }

    pub async fn run(
        &self,
        link: &Option<Link>,
        parties: &mut [Party<'_>],
        files: &[SourceFile],
        catalogs: &RouteCatalogs,
        dry_run: bool,
    ) -> Result<Found, TransferError> {
        let store = &self.transfer.store;
        let mut found = Found {
            dialect: self.target.dialect.get(),
            deal_id: link.as_ref().and_then(|l| l.target_id),
            resolved: Resolved::default(),
            responsible: None,
            existing_files: BTreeMap::new(),
            pending_files: Vec::new(),
        };
        let needs = match crate::mapping::plan_fields(self.route, catalogs.catalogs()) {
            Ok(plans) => crate::mapping::needs(&plans, &self.source.deal),
            // The plan step reports what cannot map.
            Err(_) => Needs::default(),
        };
        found.resolved.records = self.linked_records(&needs).await?;
        for (index, file) in files.iter().enumerate() {
            let copied = store.copied_files(&self.key, &file.source_field).await?;
            if !copied.contains(&file.id) {
                found.pending_files.push(index);
            }
        }
        for party in parties.iter_mut() {
            if !dry_run {
                self.claim(party).await?;
            } else if let Some(link) = store.link(&self.party_key(party)).await? {
                party.target_id = link.target_id;
            }
        }
        // Without a completed transfer on record (a lost or restored store),
        // files already on the target deal may be copies of the source's.
        let history_unknown = link
            .as_ref()
            .is_none_or(|l| l.target_id.is_none() || l.synced_hash.is_none());
        let emails = self.emails_to_find(&needs);
        loop {
            let dialect = self.target.dialect.get();
            found.dialect = dialect;
            let mut batch = Batch::new();
            if found.deal_id.is_none() {
                let (method, params) =
                    dialect.find_by_origin(2, &originator(&self.route.from), self.source.id);
                push(&mut batch, "origin", method, params);
            }
            for party in parties.iter().filter(|p| p.target_id.is_none()) {
                let (method, params) = dialect.find_by_origin(
                    party.entity_type_id,
                    &originator(&self.route.from),
                    party.source_id,
                );
                push(
                    &mut batch,
                    &format!("{}_origin", party.name),
                    method,
                    params,
                );
                for kind in ["PHONE", "EMAIL"] {
                    let values = communications(party.record, kind);
                    if !values.is_empty() {
                        let entity = if party.entity_type_id == 3 {
                            "CONTACT"
                        } else {
                            "COMPANY"
                        };
                        push(
                            &mut batch,
                            &format!("{}_{}", party.name, kind.to_ascii_lowercase()),
                            "crm.duplicate.findbycomm",
                            json!({"entity_type": entity, "type": kind, "values": values}),
                        );
                    }
                }
            }
            for (index, email) in emails.iter().enumerate() {
                push(
                    &mut batch,
                    &format!("user{index}"),
                    "user.get",
                    json!({"FILTER": {"EMAIL": email, "ACTIVE": true}}),
                );
            }
            let pending_fields: Vec<&str> = found
                .pending_files
                .iter()
                .map(|&i| files[i].target_field.as_str())
                .collect();
            if let Some(id) = found.deal_id.filter(|_| !pending_fields.is_empty()) {
                let (method, params) = dialect.get(2, json!(id));
                push(&mut batch, "current", method, params);
            }
            if batch.is_empty() {
                self.resolve_users(&needs, &mut found);
                return Ok(found);
            }
            let done = self.target.client.batch(&batch).await;
            if self
                .target
                .dialect
                .notice_batch(&done, &self.target.config.name)
            {
                continue;
            }
            let require = |name: &str| -> Result<Value, TransferError> {
                done.result(name).cloned().ok_or_else(|| {
                    command_error(
                        &format!("looking up on {}", self.route.to),
                        done.get(name),
                        done.stopped_by.as_ref(),
                    )
                })
            };
            if found.deal_id.is_none() {
                found.deal_id = dialect.first_id(&require("origin")?);
                if let Some(id) = found.deal_id {
                    tracing::info!(route = %self.route.name, deal = self.source.id, target = id,
                        "the target already holds this deal (created before the store knew it); linking it");
                    if !dry_run {
                        store.set_link(&self.key, id, None).await?;
                    }
                }
            }
            for party in parties.iter_mut().filter(|p| p.target_id.is_none()) {
                let upper = if party.entity_type_id == 3 {
                    "CONTACT"
                } else {
                    "COMPANY"
                };
                let mut id = dialect.first_id(&require(&format!("{}_origin", party.name))?);
                for kind in ["phone", "email"] {
                    let name = format!("{}_{kind}", party.name);
                    if id.is_some() || done.get(&name).is_none() {
                        continue;
                    }
                    id = require(&name)?[upper]
                        .as_array()
                        .and_then(|ids| ids.iter().filter_map(|v| id_of(Some(v))).min());
                }
                if let Some(id) = id {
                    if !dry_run {
                        store.set_link(&self.party_key(party), id, None).await?;
                    }
                    party.target_id = Some(id);
                }
            }
            for (index, email) in emails.iter().enumerate() {
                let users = require(&format!("user{index}"))?;
                self.target.users.remember_email(email, &users);
            }
            if done.get("current").is_some() {
                let current = require("current")?;
                for field in &pending_fields {
                    found
                        .existing_files
                        .insert((*field).to_owned(), dialect.file_ids(&current, field));
                }
                if history_unknown && !dry_run {
                    self.assume_copied(files, &mut found).await?;
                }
            }
            // Found by its markers just now (a lost or restored store), with
            // files to add: what the deal holds decides what to upload.
            if found.deal_id.is_some()
                && !pending_fields.is_empty()
                && done.get("current").is_none()
            {
                let (method, params) = dialect.get(2, json!(found.deal_id));
                let current = self
                    .target
                    .client
                    .call(method, &params)
                    .await
                    .map_err(|e| {
                        TransferError::client(
                            format!("reading the target deal on {}", self.route.to),
                            e,
                        )
                    })?;
                for field in &pending_fields {
                    found.existing_files.insert(
                        (*field).to_owned(),
                        dialect.file_ids(&current.result, field),
                    );
                }
                if history_unknown && !dry_run {
                    self.assume_copied(files, &mut found).await?;
                }
            }
            self.resolve_users(&needs, &mut found);
            return Ok(found);
        }
    }

    /// A target deal found without a record of what was copied into it:
    /// as many of each field's source files as the target field holds are
    /// taken as copied already (in order), so a restored store never
    /// uploads a file twice. A file added on the source meanwhile still
    /// travels; one replaced there may be missed.
    async fn assume_copied(
        &self,
        files: &[SourceFile],
        found: &mut Found,
    ) -> Result<(), TransferError> {
        let mut taken: BTreeMap<String, usize> = BTreeMap::new();
        let mut copied: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        found.pending_files.retain(|&index| {
            let file = &files[index];
            let on_target = found
                .existing_files
                .get(&file.target_field)
                .map_or(0, Vec::len);
            let used = taken.entry(file.target_field.clone()).or_insert(0);
            if *used < on_target {
                *used += 1;
                copied
                    .entry(file.source_field.clone())
                    .or_default()
                    .push(file.id);
                false
            } else {
                true
            }
        });
        for (field, ids) in copied {
            tracing::info!(route = %self.route.name, deal = self.source.id, %field, files = ids.len(),
                "files already on the target deal are taken as copied (no record of copying them)");
            self.transfer
                .store
                .add_copied_files(&self.key, &field, &ids)
                .await?;
        }
        Ok(())
    }

    /// Takes the party's claim, or waits for the worker holding it to link
    /// the party. Returns with `target_id` set when a link exists.
    async fn claim(&self, party: &mut Party<'_>) -> Result<(), TransferError> {
        let store = &self.transfer.store;
        let lease = self.transfer.config.lease;
        let started = Instant::now();
        loop {
            if let Some(id) = store
                .link(&self.party_key(party))
                .await?
                .and_then(|l| l.target_id)
            {
                party.target_id = Some(id);
                return Ok(());
            }
            if store
                .claim_party(&self.party_key(party), self.holder, lease)
                .await?
            {
                party.claimed = true;
                // Linked meanwhile by the previous holder?
                if let Some(id) = store
                    .link(&self.party_key(party))
                    .await?
                    .and_then(|l| l.target_id)
                {
                    party.target_id = Some(id);
                }
                return Ok(());
            }
            if started.elapsed() > PARTY_WAIT {
                return Err(TransferError::transient(
                    ErrorKind::Busy,
                    format!(
                        "another transfer is creating {} {} on {}; trying again later",
                        if party.entity_type_id == 3 {
                            "contact"
                        } else {
                            "company"
                        },
                        party.source_id,
                        self.route.to
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// E-mails of the responsible user and of employee-field users that
    /// the target's user cache does not know yet.
    fn emails_to_find(&self, needs: &Needs) -> Vec<String> {
        let mut emails: Vec<String> = Vec::new();
        let mut want = |email: &str| {
            if self.target.users.cached_email(email).is_none()
                && !emails.iter().any(|e| e.eq_ignore_ascii_case(email))
            {
                emails.push(email.to_owned());
            }
        };
        if self.route.responsible.is_some() {
            if let Some(email) = self.source.responsible_email() {
                want(email);
            }
        }
        if let Some(from) = self.transfer.portals.get(&self.route.from) {
            for id in &needs.users {
                if let Some(email) = from.users.cached_user(*id).and_then(|u| u.email) {
                    want(&email);
                }
            }
        }
        emails
    }

    /// Source users (names, e-mails) and their target users, from the caches
    /// the reads and this look-up filled.
    fn resolve_users(&self, needs: &Needs, found: &mut Found) {
        let resolved = &mut found.resolved;
        resolved.user_fallback = self.route.responsible.as_ref().and_then(|r| r.fallback);
        let from = self.transfer.portals.get(&self.route.from);
        for id in &needs.users {
            let Some(user) = from.and_then(|p| p.users.cached_user(*id)) else {
                continue;
            };
            if let Some(email) = &user.email {
                if let Some(target) = self.target.users.cached_email(email) {
                    resolved.target_users.insert(email_key(email), target);
                }
            }
            resolved.source_users.insert(*id, user);
        }
        if let Some(rule) = &self.route.responsible {
            found.responsible = self
                .source
                .responsible_email()
                .and_then(|email| self.target.users.cached_email(email).flatten())
                .or(rule.fallback);
        }
    }

    /// Target ids of the records CRM binding fields point at, from the
    /// link table (records the relay transferred).
    async fn linked_records(
        &self,
        needs: &Needs,
    ) -> Result<BTreeMap<(CrmKind, i64), Value>, TransferError> {
        let mut records = BTreeMap::new();
        for (kind, id) in &needs.records {
            let link_kind = match kind {
                CrmKind::Contact => LinkKind::Contact,
                CrmKind::Company => LinkKind::Company,
                CrmKind::Deal => LinkKind::Deal,
                CrmKind::Lead => continue,
            };
            let key = LinkKey {
                kind: link_kind,
                source_portal: &self.route.from,
                source_id: *id,
                target_portal: &self.route.to,
            };
            if let Some(target) = self
                .transfer
                .store
                .link(&key)
                .await?
                .and_then(|l| l.target_id)
            {
                records.insert((*kind, *id), json!(target));
            }
        }
        Ok(records)
    }
}

/// PHONE or EMAIL values of a contact/company (`fm` rows of `crm.item.get`).
fn communications(record: &serde_json::Map<String, Value>, kind: &str) -> Vec<String> {
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

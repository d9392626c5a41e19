//! One transfer: read the source deal (one `batch`), decide by route, map,
//! upsert on the target ([`target`]), then write back on the source. Every
//! step is safe to repeat after a crash at any point: the link table, the
//! "create in flight" marker and the `originatorId`/`originId` lookup make
//! sure one source deal never gives two target deals.

mod dialect;
mod source;
mod target;

use std::sync::Arc;

use b24_client::{ApiErrorKind, Batch, CommandOutcome, Error as ClientError};
use serde_json::{Map, Value, json};

use crate::config::{Config, Route};
use crate::mapping::{self, Catalogs, MappingError};
use crate::portals::{PortalHandle, Portals};
use crate::store::{LinkKey, LinkKind, Store, StoreError};

pub use source::SourceDeal;

/// Why a transfer did not finish. Transient ones are retried with backoff;
/// permanent ones fail the job with this message for a person to act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for TransferError {
    fn from(error: StoreError) -> Self {
        TransferError::Transient(error.to_string())
    }
}

impl From<MappingError> for TransferError {
    fn from(error: MappingError) -> Self {
        TransferError::Permanent(error.to_string())
    }
}

/// Sorts a client error into retry-or-stop (BITRIX24.md §3).
pub fn classify(error: &ClientError) -> TransferError {
    let message = error.to_string();
    match error {
        ClientError::Api(api) => match api.kind {
            ApiErrorKind::NoAuthFound
            | ApiErrorKind::InvalidCredentials
            | ApiErrorKind::InvalidToken
            | ApiErrorKind::InsufficientScope
            | ApiErrorKind::MethodNotFound
            | ApiErrorKind::AccessDenied
            | ApiErrorKind::BatchLengthExceeded => TransferError::Permanent(message),
            ApiErrorKind::QueryLimitExceeded
            | ApiErrorKind::OperationTimeLimit
            | ApiErrorKind::OverloadLimit
            | ApiErrorKind::ExpiredToken => TransferError::Transient(message),
            _ if api.status >= 500 || api.code == "INTERNAL_SERVER_ERROR" => {
                TransferError::Transient(message)
            }
            _ => TransferError::Permanent(message),
        },
        ClientError::Config(_) => TransferError::Permanent(message),
        _ => TransferError::Transient(message),
    }
}

/// The error of one batch command that did not succeed.
pub(crate) fn command_error(
    what: &str,
    outcome: Option<&CommandOutcome>,
    stopped_by: Option<&ClientError>,
) -> TransferError {
    match outcome {
        Some(CommandOutcome::Failed(api)) => match classify(&ClientError::Api(api.clone())) {
            TransferError::Transient(m) => TransferError::Transient(format!("{what}: {m}")),
            TransferError::Permanent(m) => TransferError::Permanent(format!("{what}: {m}")),
        },
        _ => match stopped_by {
            Some(error) => classify(error),
            None => TransferError::Transient(format!("{what}: not run")),
        },
    }
}

/// What a transfer did for one route.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteOutcome {
    Created {
        route: String,
        target_id: i64,
    },
    Updated {
        route: String,
        target_id: i64,
    },
    Unchanged {
        route: String,
        target_id: i64,
    },
    /// `--dry-run`: what would be written.
    Planned {
        route: String,
        fields: Value,
    },
}

impl RouteOutcome {
    pub fn route(&self) -> &str {
        match self {
            RouteOutcome::Created { route, .. }
            | RouteOutcome::Updated { route, .. }
            | RouteOutcome::Unchanged { route, .. }
            | RouteOutcome::Planned { route, .. } => route,
        }
    }

    pub fn target_id(&self) -> Option<i64> {
        match self {
            RouteOutcome::Created { target_id, .. }
            | RouteOutcome::Updated { target_id, .. }
            | RouteOutcome::Unchanged { target_id, .. } => Some(*target_id),
            RouteOutcome::Planned { .. } => None,
        }
    }

    pub fn result_label(&self) -> &'static str {
        match self {
            RouteOutcome::Created { .. } => "created",
            RouteOutcome::Updated { .. } => "updated",
            RouteOutcome::Unchanged { .. } => "unchanged",
            RouteOutcome::Planned { .. } => "planned",
        }
    }
}

/// What a whole job came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Transferred {
    /// No route takes the deal in its current state.
    Skipped(String),
    Routes(Vec<RouteOutcome>),
}

/// Everything a transfer needs; shared by workers and the CLI.
pub struct Transfer {
    pub config: Arc<Config>,
    pub portals: Arc<Portals>,
    pub store: Store,
}

/// `originatorId` the relay writes on records it creates for `source_portal`.
pub fn originator(source_portal: &str) -> String {
    format!("b24-relay:{source_portal}")
}

impl Transfer {
    fn portal(&self, name: &str) -> Result<&Arc<PortalHandle>, TransferError> {
        self.portals.get(name).ok_or_else(|| {
            TransferError::Permanent(format!("portal `{name}` is not in the configuration"))
        })
    }

    /// Transfers one source deal along every route that takes it.
    pub async fn run(
        &self,
        portal_name: &str,
        deal_id: i64,
        dry_run: bool,
    ) -> Result<Transferred, TransferError> {
        let routes: Vec<&Route> = self
            .config
            .routes
            .iter()
            .filter(|r| r.from == portal_name)
            .collect();
        if routes.is_empty() {
            return Ok(Transferred::Skipped(format!(
                "no route starts at portal {portal_name}"
            )));
        }
        let source_portal = self.portal(portal_name)?;
        let source = source::read(source_portal, deal_id, &routes).await?;
        let mut reasons = Vec::new();
        let mut outcomes = Vec::new();
        for route in routes {
            if let Err(reason) = mapping::route_accepts(route, &source.deal) {
                reasons.push(reason);
                continue;
            }
            let outcome = self.run_route(route, &source, dry_run).await?;
            outcomes.push(outcome);
        }
        if outcomes.is_empty() {
            return Ok(Transferred::Skipped(reasons.join("; ")));
        }
        Ok(Transferred::Routes(outcomes))
    }

    async fn run_route(
        &self,
        route: &Route,
        source: &SourceDeal,
        dry_run: bool,
    ) -> Result<RouteOutcome, TransferError> {
        let from = self.portal(&route.from)?;
        let to = self.portal(&route.to)?;
        let ttl = self.config.field_cache_ttl;
        let responsible = match (&route.responsible, &source.responsible_email) {
            (Some(rule), Some(email)) => to
                .user_by_email(email)
                .await
                .map_err(|e| classify(&e))?
                .or(rule.fallback),
            (Some(rule), None) => rule.fallback,
            (None, _) => None,
        };
        let mapped = if route.values.is_empty() {
            mapping::map_deal(route, &source.deal, Catalogs::default(), responsible)?
        } else {
            let mut refresh = false;
            loop {
                let source_catalog = from.deal_catalog(ttl, refresh).await;
                let target_catalog = to.deal_catalog(ttl, refresh).await;
                let (source_catalog, target_catalog) = (
                    source_catalog.map_err(|e| classify(&e))?,
                    target_catalog.map_err(|e| classify(&e))?,
                );
                let catalogs = Catalogs {
                    source: Some(&source_catalog),
                    target: Some(&target_catalog),
                };
                match mapping::map_deal(route, &source.deal, catalogs, responsible) {
                    Ok(mapped) => break mapped,
                    // Options may have been added since the catalogues were cached.
                    Err(_) if !refresh => refresh = true,
                    Err(error) => return Err(error.into()),
                }
            }
        };
        if dry_run {
            let mut fields = mapped.on_create.clone();
            fields.extend(mapped.fields.clone());
            return Ok(RouteOutcome::Planned {
                route: route.name.clone(),
                fields: json!({
                    "fields": fields,
                    "productRows": route.products.then(|| mapping::map_product_rows(&source.rows)),
                    "contact": source.contact.as_ref().map(|c| c.get("id").cloned()),
                    "company": source.company.as_ref().map(|c| c.get("id").cloned()),
                }),
            });
        }
        let deal_key = LinkKey {
            kind: LinkKind::Deal,
            source_portal: &route.from,
            source_id: source.id,
            target_portal: &route.to,
        };
        let upsert = target::Upsert {
            transfer: self,
            route,
            source,
            target: to,
            key: deal_key.clone(),
            mapped,
        };
        let (outcome, hash) = upsert.run().await?;
        self.write_back(route, source, from, &outcome, &hash)
            .await?;
        Ok(outcome)
    }

    /// Timeline comment and the configured field on the source deal; then the
    /// link remembers what was synced, so a repeat of the same event is a no-op.
    async fn write_back(
        &self,
        route: &Route,
        source: &SourceDeal,
        from: &PortalHandle,
        outcome: &RouteOutcome,
        hash: &str,
    ) -> Result<(), TransferError> {
        let Some(target_id) = outcome.target_id() else {
            return Ok(());
        };
        let to = self.portal(&route.to)?;
        let link = format!("{}/crm/deal/details/{target_id}/", to.config.public_url);
        let mut batch = Batch::new();
        let comment = match outcome {
            RouteOutcome::Created { .. } => Some(format!(
                "Transferred to {} as deal #{target_id}: {link}",
                route.to
            )),
            RouteOutcome::Updated { .. } => Some(format!(
                "Changes sent to deal #{target_id} on {}: {link}",
                route.to
            )),
            _ => None,
        };
        if let Some(comment) = comment.filter(|_| route.writeback_comment) {
            push(
                &mut batch,
                "comment",
                "crm.timeline.comment.add",
                json!({"fields": {"ENTITY_ID": source.id, "ENTITY_TYPE": "deal", "COMMENT": comment}}),
            );
        }
        if let Some(field) = &route.writeback_field {
            let current = source.deal.get(field).map(mapping::scalar);
            if current.as_deref() != Some(target_id.to_string().as_str()) {
                let mut fields = Map::new();
                if from.legacy_crm.load(std::sync::atomic::Ordering::Relaxed) {
                    fields.insert(mapping::upper_name(field), json!(target_id));
                    push(
                        &mut batch,
                        "field",
                        "crm.deal.update",
                        json!({"id": source.id, "fields": fields}),
                    );
                } else {
                    fields.insert(field.clone(), json!(target_id));
                    push(
                        &mut batch,
                        "field",
                        "crm.item.update",
                        json!({"entityTypeId": 2, "id": source.id, "fields": fields}),
                    );
                }
            }
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
        }
        let key = LinkKey {
            kind: LinkKind::Deal,
            source_portal: &route.from,
            source_id: source.id,
            target_portal: &route.to,
        };
        self.store.set_link(&key, target_id, Some(hash)).await?;
        Ok(())
    }

    /// Tells the people on the source deal that the transfer failed and why.
    pub async fn report_failure(&self, portal_name: &str, deal_id: i64, message: &str) {
        let Some(portal) = self.portals.get(portal_name) else {
            return;
        };
        let wants_comment = self
            .config
            .routes
            .iter()
            .any(|r| r.from == portal_name && r.writeback_comment);
        if !wants_comment {
            return;
        }
        let comment = format!(
            "The deal could not be transferred: {message}. After fixing this, run `b24-relay jobs replay --failed`."
        );
        let params =
            json!({"fields": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal", "COMMENT": comment}});
        if let Err(error) = portal
            .client
            .call("crm.timeline.comment.add", &params)
            .await
        {
            tracing::warn!(portal = portal_name, deal_id, %error, "could not comment the failure on the source deal");
        }
    }
}

/// Adds a command whose name and method are constants of this module.
pub(crate) fn push(batch: &mut Batch, name: &str, method: &str, params: Value) {
    batch
        .push(name, method, params)
        .expect("command names and methods are valid constants");
}

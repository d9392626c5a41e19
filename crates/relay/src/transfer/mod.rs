//! One transfer: read the source deal (one `batch`), decide by route, then
//! on the target look up → plan → write ([`target`]), then write back on
//! the source ([`writeback`]). Every step is safe to repeat after a crash at
//! any point, and none trusts the store alone: a deal or party without a
//! link is looked up on the target by `originatorId`/`originId` before
//! anything is created, so losing the store, restoring an old backup or a
//! fresh relay on portals that already hold its deals never gives a second
//! target record.

mod dialect;
mod error;
mod source;
mod target;
mod writeback;

use std::sync::Arc;

use b24_client::{Batch, CommandOutcome, Error as ClientError};
use serde_json::Value;

use crate::config::{Config, Route};
use crate::mapping::{self, Catalogs, FieldCatalog};
use crate::portals::{PortalHandle, Portals};
use crate::store::{LinkKey, LinkKind, Store};

pub use dialect::{Dialect, DialectCell, camel_record};
pub use error::{ErrorKind, Retry, TransferError, classify};
pub use source::{ReadPlan, SourceDeal};
pub use writeback::report_failure;

/// The error of one batch command that did not succeed.
pub(crate) fn command_error(
    what: &str,
    outcome: Option<&CommandOutcome>,
    stopped_by: Option<&ClientError>,
) -> TransferError {
    match outcome {
        Some(CommandOutcome::Failed(api)) => {
            TransferError::client(what, ClientError::Api(api.clone()))
        }
        Some(CommandOutcome::Unknown) => match stopped_by {
            Some(error) => TransferError::client(what, clone_error(error)),
            None => TransferError::transient(ErrorKind::OutcomeUnknown, what),
        },
        _ => match stopped_by {
            Some(error) => TransferError::client(what, clone_error(error)),
            None => TransferError::transient(ErrorKind::Transport, format!("{what}: not run")),
        },
    }
}

/// Client errors are not `Clone` (they hold a reqwest error); a batch
/// outcome keeps its own, so the transfer error gets an equivalent one.
fn clone_error(error: &ClientError) -> ClientError {
    match error {
        ClientError::Api(api) => ClientError::Api(api.clone()),
        ClientError::MayHaveExecuted {
            portal,
            method,
            reason,
        } => ClientError::MayHaveExecuted {
            portal: portal.clone(),
            method: method.clone(),
            reason: reason.clone(),
        },
        ClientError::Http {
            portal,
            method,
            status,
        } => ClientError::Http {
            portal: portal.clone(),
            method: method.clone(),
            status: *status,
        },
        other => ClientError::InvalidResponse {
            portal: String::new(),
            method: String::new(),
            reason: other.to_string(),
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

/// Both portals' catalogues for a route.
pub(crate) struct RouteCatalogs {
    pub source: Arc<FieldCatalog>,
    pub target: Arc<FieldCatalog>,
    /// Fetched fresh for this transfer (after a mapping error on cached ones).
    pub refreshed: bool,
}

impl RouteCatalogs {
    pub fn catalogs(&self) -> Catalogs<'_> {
        Catalogs {
            source: Some(&self.source),
            target: Some(&self.target),
        }
    }
}

impl Transfer {
    pub(crate) fn portal(&self, name: &str) -> Result<&Arc<PortalHandle>, TransferError> {
        self.portals.get(name).ok_or_else(|| {
            TransferError::permanent(
                ErrorKind::Config,
                format!("portal `{name}` is not in the configuration"),
            )
        })
    }

    pub(crate) async fn route_catalogs(
        &self,
        route: &Route,
        refresh: bool,
    ) -> Result<RouteCatalogs, TransferError> {
        let from = self.portal(&route.from)?;
        let to = self.portal(&route.to)?;
        let source = from.deal_catalog(refresh).await.map_err(|e| {
            TransferError::client(format!("reading the deal fields of {}", route.from), e)
        })?;
        let target = to.deal_catalog(refresh).await.map_err(|e| {
            TransferError::client(format!("reading the deal fields of {}", route.to), e)
        })?;
        Ok(RouteCatalogs {
            source,
            target,
            refreshed: refresh,
        })
    }

    /// Transfers one source deal along every route that takes it.
    /// `holder` names this attempt in party claims (the job, or the CLI).
    pub async fn run(
        &self,
        portal_name: &str,
        deal_id: i64,
        dry_run: bool,
        holder: &str,
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
        // The catalogues decide which employee fields' users to read along.
        let mut plan = ReadPlan::for_routes(&routes);
        for route in &routes {
            let catalogs = self.route_catalogs(route, false).await?;
            for (field, _) in route.fields.iter() {
                let employee = catalogs
                    .source
                    .get(field)
                    .is_some_and(|f| f.kind == mapping::FieldType::Employee);
                if employee && !plan.employee_fields.contains(field) {
                    plan.employee_fields.push(field.clone());
                }
            }
        }
        let source = source::read(source_portal, deal_id, &plan).await?;
        let mut reasons = Vec::new();
        let mut outcomes = Vec::new();
        for route in routes {
            if let Err(reason) = mapping::route_accepts(route, &source.deal) {
                reasons.push(reason);
                continue;
            }
            let outcome = target::transfer_route(self, route, &source, dry_run, holder).await?;
            if !dry_run {
                writeback::write_back(self, route, &source, &outcome).await?;
            }
            outcomes.push(outcome);
        }
        if outcomes.is_empty() {
            return Ok(Transferred::Skipped(reasons.join("; ")));
        }
        Ok(Transferred::Routes(outcomes))
    }

    pub(crate) fn deal_key<'a>(&self, route: &'a Route, source_id: i64) -> LinkKey<'a> {
        LinkKey {
            kind: LinkKind::Deal,
            source_portal: &route.from,
            source_id,
            target_portal: &route.to,
        }
    }
}

/// Adds a command whose name and method are constants of this module.
pub(crate) fn push(batch: &mut Batch, name: &str, method: &str, params: Value) {
    batch
        .push(name, method, params)
        .expect("command names and methods are valid constants");
}

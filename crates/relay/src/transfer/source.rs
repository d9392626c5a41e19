//! Reading the source side in one `batch`, in the portal's dialect: the
//! deal, and — through `$result[deal][...]` references, which Bitrix24
//! fills in whole (arrays stay arrays: `CRestUtil::processBatchElement`)
//! — its product rows, all its contacts, its company, its responsible user
//! and the users its employee fields name. Everything comes back in
//! `crm.item.*` shape.

use b24_client::{ApiErrorKind, Batch, CommandOutcome};
use serde_json::{Map, Value, json};

use super::dialect::Dialect;
use super::error::{ErrorKind, TransferError};
use super::push;
use crate::config::Route;
use crate::mapping::SourceUser;
use crate::portals::{PortalHandle, id_of};

/// The source deal and what hangs off it.
#[derive(Debug, Clone, Default)]
pub struct SourceDeal {
    pub id: i64,
    pub deal: Map<String, Value>,
    pub rows: Vec<Value>,
    /// Every contact of the deal, the primary one first.
    pub contacts: Vec<Map<String, Value>>,
    pub company: Option<Map<String, Value>>,
    /// The responsible user (id, name, e-mail).
    pub responsible: Option<(i64, SourceUser)>,
}

impl SourceDeal {
    pub fn title(&self) -> String {
        crate::mapping::scalar(self.deal.get("title").unwrap_or(&Value::Null))
    }

    pub fn responsible_email(&self) -> Option<&str> {
        self.responsible
            .as_ref()
            .and_then(|(_, user)| user.email.as_deref())
    }
}

/// What the routes starting at this portal need read.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    pub products: bool,
    pub contacts: bool,
    pub company: bool,
    pub responsible: bool,
    /// Source employee fields whose users the mapping needs.
    pub employee_fields: Vec<String>,
}

impl ReadPlan {
    pub fn for_routes(routes: &[&Route]) -> Self {
        Self {
            products: routes.iter().any(|r| r.products),
            contacts: routes.iter().any(|r| r.contact),
            company: routes.iter().any(|r| r.company),
            responsible: true,
            employee_fields: Vec::new(),
        }
    }
}

/// Reads the deal in one request. A box without `crm.item.*` is noticed
/// on the first read and read again with `crm.deal.*` at once.
pub async fn read(
    portal: &PortalHandle,
    deal_id: i64,
    plan: &ReadPlan,
) -> Result<SourceDeal, TransferError> {
    loop {
        let dialect = portal.dialect.get();
        match read_with(portal, dialect, deal_id, plan).await {
            Err(Retry::OtherDialect) => continue,
            Err(Retry::Failed(error)) => return Err(error),
            Ok(read) => return Ok(read),
        }
    }
}

enum Retry {
    OtherDialect,
    Failed(TransferError),
}

impl From<TransferError> for Retry {
    fn from(error: TransferError) -> Self {
        Retry::Failed(error)
    }
}

fn command_failed(
    what: &str,
    outcome: Option<&CommandOutcome>,
    done: &b24_client::BatchOutcome,
) -> TransferError {
    super::command_error(what, outcome, done.stopped_by.as_ref())
}

async fn read_with(
    portal: &PortalHandle,
    dialect: Dialect,
    deal_id: i64,
    plan: &ReadPlan,
) -> Result<SourceDeal, Retry> {
    let reference = |field: &str| dialect.deal_field_reference("deal", field);
    let mut batch = Batch::new();
    let (method, params) = dialect.get(2, json!(deal_id));
    push(&mut batch, "deal", method, params);
    if plan.products {
        let (method, params) = dialect.list_rows(deal_id);
        push(&mut batch, "rows", method, params);
    }
    if plan.contacts {
        match dialect {
            // All contacts in one list; only those the deal names are used
            // (an empty list must not become "every contact").
            Dialect::Item => push(
                &mut batch,
                "contacts",
                "crm.item.list",
                json!({"entityTypeId": 3, "filter": {"@id": reference("contactIds")}, "select": ["*", "fm"]}),
            ),
            // crm.deal.get names only the primary contact.
            Dialect::Legacy => {
                let (method, params) = dialect.get(3, reference("contactId"));
                push(&mut batch, "contact", method, params);
            }
        }
    }
    if plan.company {
        let (method, params) = dialect.get(4, reference("companyId"));
        push(&mut batch, "company", method, params);
    }
    if plan.responsible {
        push(
            &mut batch,
            "user",
            "user.get",
            json!({"ID": reference("assignedById")}),
        );
    }
    for (index, field) in plan.employee_fields.iter().enumerate() {
        push(
            &mut batch,
            &format!("employees{index}"),
            "user.get",
            json!({"FILTER": {"ID": reference(field)}}),
        );
    }
    let reader = portal.reader();
    let done = reader.batch(&batch).await;
    let deal = match done.get("deal") {
        Some(CommandOutcome::Done(result)) => dialect.record(&result.result).ok_or_else(|| {
            TransferError::transient(
                ErrorKind::Transport,
                "reading the source deal: the answer holds no deal",
            )
        })?,
        Some(CommandOutcome::Failed(api)) if portal.dialect.notice(api, &portal.config.name) => {
            return Err(Retry::OtherDialect);
        }
        Some(CommandOutcome::Failed(api))
            if api.kind == ApiErrorKind::NotFound
                || (dialect == Dialect::Legacy && api.description == "Not found") =>
        {
            return Err(TransferError::permanent(
                ErrorKind::NotFound,
                format!(
                    "deal {deal_id} does not exist on {} (deleted?)",
                    portal.config.name
                ),
            )
            .into());
        }
        other => {
            let refused = match done.stopped_by.as_ref() {
                Some(error) => portal.app_refused(&reader, error).await,
                None => false,
            };
            let error = command_failed("reading the source deal", other, &done);
            if refused {
                // Nothing is lost: the next attempt reads with the webhook.
                let mut error = error;
                error.retry = super::error::Retry::Transient;
                error.context = format!("{}; reading with the webhook from now on", error.context);
                return Err(error.into());
            }
            return Err(error.into());
        }
    };
    let mut read = SourceDeal {
        id: deal_id,
        ..SourceDeal::default()
    };
    if plan.products {
        read.rows = done
            .result("rows")
            .and_then(|r| dialect.rows(r))
            .ok_or_else(|| command_failed("reading product rows", done.get("rows"), &done))?;
    }
    if plan.contacts {
        read.contacts = contacts(dialect, &deal, &done)?;
    }
    if plan.company && id_of(deal.get("companyId")).is_some() {
        read.company = match done.get("company") {
            Some(CommandOutcome::Done(result)) => dialect.record(&result.result),
            // Deleted since it was linked to the deal: the deal travels without it.
            Some(CommandOutcome::Failed(api))
                if api.kind == ApiErrorKind::NotFound || api.description == "Not found" =>
            {
                tracing::info!(deal = deal_id, "the deal's company no longer exists");
                None
            }
            other => return Err(command_failed("reading the deal's company", other, &done).into()),
        };
    }
    if plan.responsible {
        if let (Some(id), Some(users)) = (id_of(deal.get("assignedById")), done.result("user")) {
            portal.users.remember_users(users);
            read.responsible = portal.users.cached_user(id).map(|user| (id, user));
        }
    }
    for index in 0..plan.employee_fields.len() {
        if let Some(users) = done.result(&format!("employees{index}")) {
            portal.users.remember_users(users);
        }
    }
    read.deal = deal;
    Ok(read)
}

/// The deal's contacts, primary first, in the order the deal lists them.
fn contacts(
    dialect: Dialect,
    deal: &Map<String, Value>,
    done: &b24_client::BatchOutcome,
) -> Result<Vec<Map<String, Value>>, TransferError> {
    let primary = id_of(deal.get("contactId"));
    let mut wanted: Vec<i64> = primary.into_iter().collect();
    for id in deal
        .get("contactIds")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| id_of(Some(v)))
    {
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<Map<String, Value>> = match dialect {
        Dialect::Item => {
            let result = done.result("contacts").ok_or_else(|| {
                command_failed("reading the deal's contacts", done.get("contacts"), done)
            })?;
            result["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .cloned()
                .collect()
        }
        Dialect::Legacy => match done.get("contact") {
            Some(CommandOutcome::Done(result)) => {
                dialect.record(&result.result).into_iter().collect()
            }
            Some(CommandOutcome::Failed(api))
                if api.kind == ApiErrorKind::NotFound || api.description == "Not found" =>
            {
                Vec::new()
            }
            other => return Err(command_failed("reading the deal's contact", other, done)),
        },
    };
    // Contacts deleted since are left out; the deal travels without them.
    Ok(wanted
        .iter()
        .filter_map(|id| {
            found
                .iter()
                .find(|c| id_of(c.get("id")) == Some(*id))
                .cloned()
        })
        .collect())
}

//! Reading the source side in one `batch`: the deal, and — through
//! `$result[deal][item][...]` references — its product rows, contact,
//! company and responsible user.

use b24_client::{ApiErrorKind, Batch, CommandOutcome};
use serde_json::{Map, Value, json};

use super::{TransferError, command_error, push};
use crate::config::Route;
use crate::portals::{PortalHandle, id_of};

/// The source deal and what hangs off it.
#[derive(Debug, Clone, Default)]
pub struct SourceDeal {
    pub id: i64,
    pub deal: Map<String, Value>,
    pub rows: Vec<Value>,
    pub contact: Option<Map<String, Value>>,
    pub company: Option<Map<String, Value>>,
    pub responsible_email: Option<String>,
}

pub async fn read(
    portal: &PortalHandle,
    deal_id: i64,
    routes: &[&Route],
) -> Result<SourceDeal, TransferError> {
    let products = routes.iter().any(|r| r.products);
    let contact = routes.iter().any(|r| r.contact);
    let company = routes.iter().any(|r| r.company);
    let responsible = routes.iter().any(|r| r.responsible.is_some());
    let mut batch = Batch::new();
    push(
        &mut batch,
        "deal",
        "crm.item.get",
        json!({"entityTypeId": 2, "id": deal_id}),
    );
    if products {
        push(
            &mut batch,
            "rows",
            "crm.item.productrow.list",
            json!({"filter": {"=ownerType": "D", "=ownerId": deal_id}}),
        );
    }
    if contact {
        push(
            &mut batch,
            "contact",
            "crm.item.get",
            json!({"entityTypeId": 3, "id": "$result[deal][item][contactId]"}),
        );
    }
    if company {
        push(
            &mut batch,
            "company",
            "crm.item.get",
            json!({"entityTypeId": 4, "id": "$result[deal][item][companyId]"}),
        );
    }
    if responsible {
        push(
            &mut batch,
            "user",
            "user.get",
            json!({"ID": "$result[deal][item][assignedById]"}),
        );
    }
    let done = portal.client.batch(&batch).await;
    let deal = match done.get("deal") {
        Some(CommandOutcome::Done(result)) => {
            result.result["item"].as_object().cloned().ok_or_else(|| {
                TransferError::Transient("crm.item.get answered without an item".into())
            })?
        }
        Some(CommandOutcome::Failed(api)) if api.kind == ApiErrorKind::NotFound => {
            return Err(TransferError::Permanent(format!(
                "deal {deal_id} does not exist on {} (deleted?)",
                portal.config.name
            )));
        }
        other => {
            return Err(command_error(
                "reading the source deal",
                other,
                done.stopped_by.as_ref(),
            ));
        }
    };
    let mut read = SourceDeal {
        id: deal_id,
        ..SourceDeal::default()
    };
    if products {
        read.rows = match done.get("rows") {
            Some(CommandOutcome::Done(result)) => result.result["productRows"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            other => {
                return Err(command_error(
                    "reading product rows",
                    other,
                    done.stopped_by.as_ref(),
                ));
            }
        };
    }
    for (wanted, name, id_field) in [
        (contact, "contact", "contactId"),
        (company, "company", "companyId"),
    ] {
        if !wanted || id_of(deal.get(id_field)).is_none() {
            continue;
        }
        let record = match done.get(name) {
            Some(CommandOutcome::Done(result)) => result.result["item"].as_object().cloned(),
            other => {
                return Err(command_error(
                    &format!("reading the deal's {name}"),
                    other,
                    done.stopped_by.as_ref(),
                ));
            }
        };
        match name {
            "contact" => read.contact = record,
            _ => read.company = record,
        }
    }
    if responsible {
        read.responsible_email = done
            .result("user")
            .and_then(Value::as_array)
            .and_then(|users| users.first())
            .and_then(|user| user["EMAIL"].as_str())
            .filter(|email| !email.is_empty())
            .map(str::to_owned);
    }
    read.deal = deal;
    Ok(read)
}

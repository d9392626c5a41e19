//! Reading the source side in one `batch`: the deal, and — through
//! `$result[deal][item][...]` references — its product rows, contact,
//! company and responsible user. A box without `crm.item.*` is read with
//! `crm.deal.*` instead, and its UPPER_CASE answer is turned into the
//! camelCase shape the rest of the relay works with.

use std::sync::atomic::Ordering;

use b24_client::{ApiErrorKind, Batch, CommandOutcome};
use serde_json::{Map, Value, json};

use super::{TransferError, command_error, push};
use crate::config::Route;
use crate::mapping::camel_name;
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
    if portal.legacy_crm.load(Ordering::Relaxed) {
        return read_legacy(portal, deal_id, routes).await;
    }
    match read_items(portal, deal_id, routes).await {
        Err(ReadError::ItemApiMissing) => {
            tracing::warn!(portal = %portal.config.name, "crm.item.* is missing; reading deals with crm.deal.*");
            portal.legacy_crm.store(true, Ordering::Relaxed);
            read_legacy(portal, deal_id, routes).await
        }
        Err(ReadError::Failed(error)) => Err(error),
        Ok(read) => Ok(read),
    }
}

enum ReadError {
    ItemApiMissing,
    Failed(TransferError),
}

impl From<TransferError> for ReadError {
    fn from(error: TransferError) -> Self {
        ReadError::Failed(error)
    }
}

async fn read_items(
    portal: &PortalHandle,
    deal_id: i64,
    routes: &[&Route],
) -> Result<SourceDeal, ReadError> {
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
    let reader = portal.reader();
    let done = reader.batch(&batch).await;
    let deal = match done.get("deal") {
        Some(CommandOutcome::Done(result)) => {
            result.result["item"].as_object().cloned().ok_or_else(|| {
                TransferError::Transient("crm.item.get answered without an item".into())
            })?
        }
        Some(CommandOutcome::Failed(api)) if api.kind == ApiErrorKind::MethodNotFound => {
            return Err(ReadError::ItemApiMissing);
        }
        Some(CommandOutcome::Failed(api)) if api.kind == ApiErrorKind::NotFound => {
            return Err(missing_deal(portal, deal_id).into());
        }
        other => {
            let refused = match done.stopped_by.as_ref() {
                Some(error) => portal.app_refused(&reader, error).await,
                None => false,
            };
            if let Some(error) = done.stopped_by.as_ref().filter(|_| refused) {
                // Nothing is lost: the next attempt reads with the webhook.
                return Err(TransferError::Transient(format!(
                    "reading the source deal: {error}; reading with the webhook from now on"
                ))
                .into());
            }
            return Err(
                command_error("reading the source deal", other, done.stopped_by.as_ref()).into(),
            );
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
                return Err(
                    command_error("reading product rows", other, done.stopped_by.as_ref()).into(),
                );
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
            // Deleted since it was linked to the deal: the deal travels without it.
            Some(CommandOutcome::Failed(api)) if api.kind == ApiErrorKind::NotFound => {
                tracing::info!(deal = deal_id, "the deal's {name} no longer exists");
                None
            }
            other => {
                return Err(command_error(
                    &format!("reading the deal's {name}"),
                    other,
                    done.stopped_by.as_ref(),
                )
                .into());
            }
        };
        match name {
            "contact" => read.contact = record,
            _ => read.company = record,
        }
    }
    if responsible {
        read.responsible_email = responsible_email(done.result("user"));
    }
    read.deal = deal;
    Ok(read)
}

/// The e-mail of the deal's responsible user from a `user.get` result
/// (the same shape on both dialects).
fn responsible_email(users: Option<&Value>) -> Option<String> {
    users
        .and_then(Value::as_array)
        .and_then(|users| users.first())
        .and_then(|user| user["EMAIL"].as_str())
        .filter(|email| !email.is_empty())
        .map(str::to_owned)
}

fn missing_deal(portal: &PortalHandle, deal_id: i64) -> TransferError {
    TransferError::Permanent(format!(
        "deal {deal_id} does not exist on {} (deleted?)",
        portal.config.name
    ))
}

/// `crm.deal.*` / `crm.contact.*` / `crm.company.*`, for boxes without `crm.item.*`.
async fn read_legacy(
    portal: &PortalHandle,
    deal_id: i64,
    routes: &[&Route],
) -> Result<SourceDeal, TransferError> {
    let products = routes.iter().any(|r| r.products);
    let contact = routes.iter().any(|r| r.contact);
    let company = routes.iter().any(|r| r.company);
    let responsible = routes.iter().any(|r| r.responsible.is_some());
    let mut batch = Batch::new();
    push(&mut batch, "deal", "crm.deal.get", json!({"id": deal_id}));
    if products {
        push(
            &mut batch,
            "rows",
            "crm.deal.productrows.get",
            json!({"id": deal_id}),
        );
    }
    if contact {
        push(
            &mut batch,
            "contact",
            "crm.contact.get",
            json!({"id": "$result[deal][CONTACT_ID]"}),
        );
    }
    if company {
        push(
            &mut batch,
            "company",
            "crm.company.get",
            json!({"id": "$result[deal][COMPANY_ID]"}),
        );
    }
    if responsible {
        push(
            &mut batch,
            "user",
            "user.get",
            json!({"ID": "$result[deal][ASSIGNED_BY_ID]"}),
        );
    }
    let reader = portal.reader();
    let done = reader.batch(&batch).await;
    let deal = match done.get("deal") {
        Some(CommandOutcome::Done(result)) => match &result.result {
            Value::Object(fields) => camel_record(fields),
            _ => {
                return Err(TransferError::Transient(
                    "crm.deal.get answered without a deal".into(),
                ));
            }
        },
        Some(CommandOutcome::Failed(api)) if api.kind == ApiErrorKind::NotFound => {
            return Err(missing_deal(portal, deal_id));
        }
        other => {
            let refused = match done.stopped_by.as_ref() {
                Some(error) => portal.app_refused(&reader, error).await,
                None => false,
            };
            if let Some(error) = done.stopped_by.as_ref().filter(|_| refused) {
                return Err(TransferError::Transient(format!(
                    "reading the source deal: {error}; reading with the webhook from now on"
                )));
            }
            return Err(command_error(
                "reading the source deal (crm.deal.get)",
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
        let rows = done
            .result("rows")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                command_error(
                    "reading product rows (crm.deal.productrows.get)",
                    done.get("rows"),
                    done.stopped_by.as_ref(),
                )
            })?;
        read.rows = rows
            .iter()
            .filter_map(Value::as_object)
            .map(|row| Value::Object(camel_record(row)))
            .collect();
    }
    for (wanted, name, id_field) in [
        (contact, "contact", "contactId"),
        (company, "company", "companyId"),
    ] {
        if !wanted || id_of(deal.get(id_field)).is_none() {
            continue;
        }
        let record = done
            .result(name)
            .and_then(Value::as_object)
            .ok_or_else(|| {
                command_error(
                    &format!("reading the deal's {name}"),
                    done.get(name),
                    done.stopped_by.as_ref(),
                )
            })?;
        let record = Some(camel_record(record));
        match name {
            "contact" => read.contact = record,
            _ => read.company = record,
        }
    }
    if responsible {
        read.responsible_email = responsible_email(done.result("user"));
    }
    read.deal = deal;
    Ok(read)
}

/// A `crm.deal.*`-shaped record in `crm.item.*` shape: camelCase keys,
/// multifields (`PHONE`, `EMAIL`, ...) as `fm` rows, file links as
/// `urlMachine`.
fn camel_record(record: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut fm = Vec::new();
    for (key, value) in record {
        if matches!(key.as_str(), "PHONE" | "EMAIL" | "WEB" | "IM") {
            for row in value.as_array().into_iter().flatten() {
                fm.push(
                    json!({"typeId": key, "value": row["VALUE"], "valueType": row["VALUE_TYPE"]}),
                );
            }
            continue;
        }
        let value = match value {
            Value::Array(items) => Value::Array(items.iter().map(legacy_file).collect()),
            other => legacy_file(other),
        };
        out.insert(camel_name(key), value);
    }
    if !fm.is_empty() {
        out.insert("fm".into(), Value::Array(fm));
    }
    out
}

fn legacy_file(value: &Value) -> Value {
    match value.get("downloadUrl") {
        Some(url) => json!({"id": value["id"], "urlMachine": url}),
        None => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_names_and_records_become_item_shaped() {
        let record = json!({"ID": "3", "NAME": "Ivan", "PHONE": [{"ID": "9", "VALUE": "+1", "VALUE_TYPE": "WORK", "TYPE_ID": "PHONE"}],
                            "UF_CRM_DOCS": [{"id": 4, "showUrl": "/x", "downloadUrl": "http://h/d"}]});
        let camel = camel_record(record.as_object().unwrap());
        assert_eq!(camel["id"], "3");
        assert_eq!(
            camel["fm"],
            json!([{"typeId": "PHONE", "value": "+1", "valueType": "WORK"}])
        );
        assert_eq!(
            camel["ufCrm_DOCS"],
            json!([{"id": 4, "urlMachine": "http://h/d"}])
        );
    }
}

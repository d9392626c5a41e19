//! Reading a big list fast: Bitrix24's "ID greater than the last" paging
//! with the pages chained inside one `batch` (each page's filter refers to
//! the last id of the page before it, `$result[p0][items][49][id]`), so one
//! HTTP request reads up to 50 pages. A scan can be stopped and resumed from
//! the last id it returned.

use serde_json::{Map, Value, json};

use crate::batch::Batch;
use crate::paging::PAGE_SIZE;
use crate::{Client, CommandOutcome, Error};

/// A scan of one list method in id order.
#[derive(Debug, Clone)]
pub struct IdScan {
    method: String,
    params: Map<String, Value>,
    id_field: String,
    /// Where the records are in a page's result: `items` for `crm.item.list`.
    items_key: Option<String>,
    pages_per_request: usize,
    last_id: Option<i64>,
    finished: bool,
}

impl IdScan {
    /// `crm.item.list` of `entity_type_id` (ids in `id`, records in `items`).
    pub fn items(entity_type_id: i64, filter: Value, select: &[&str]) -> Self {
        let mut select: Vec<Value> = select.iter().map(|s| json!(s)).collect();
        if !select.iter().any(|s| s == "id" || s == "*") {
            select.push(json!("id"));
        }
        let mut params = Map::new();
        params.insert("entityTypeId".into(), json!(entity_type_id));
        params.insert("filter".into(), filter);
        params.insert("select".into(), Value::Array(select));
        Self {
            method: "crm.item.list".into(),
            params,
            id_field: "id".into(),
            items_key: Some("items".into()),
            pages_per_request: crate::MAX_BATCH_COMMANDS,
            last_id: None,
            finished: false,
        }
    }

    /// A `crm.deal.list`-style method (ids in `ID`, records in the result).
    pub fn legacy(method: &str, filter: Value, select: &[&str]) -> Self {
        let mut select: Vec<Value> = select.iter().map(|s| json!(s)).collect();
        if !select.iter().any(|s| s == "ID" || s == "*") {
            select.push(json!("ID"));
        }
        let mut params = Map::new();
        params.insert("filter".into(), filter);
        params.insert("select".into(), Value::Array(select));
        Self {
            method: method.to_owned(),
            params,
            id_field: "ID".into(),
            items_key: None,
            pages_per_request: crate::MAX_BATCH_COMMANDS,
            last_id: None,
            finished: false,
        }
    }

    /// Pages chained into one request (1..=50).
    pub fn pages_per_request(mut self, pages: usize) -> Self {
        self.pages_per_request = pages.clamp(1, crate::MAX_BATCH_COMMANDS);
        self
    }

    /// Continues after this id (a resumed scan).
    pub fn after(mut self, last_id: Option<i64>) -> Self {
        self.last_id = last_id;
        self
    }

    /// The last id returned so far: where a resumed scan starts.
    pub fn last_id(&self) -> Option<i64> {
        self.last_id
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn page_params(&self, after: Value) -> Value {
        let mut params = self.params.clone();
        params.insert("start".into(), json!(-1));
        params.insert("order".into(), json!({ self.id_field.as_str(): "ASC" }));
        let filter = params
            .entry("filter")
            .or_insert_with(|| Value::Object(Map::new()));
        if !filter.is_object() {
            *filter = Value::Object(Map::new());
        }
        filter
            .as_object_mut()
            .expect("made an object above")
            .insert(format!(">{}", self.id_field), after);
        Value::Object(params)
    }

    fn reference(&self, page: usize) -> Value {
        let last = PAGE_SIZE - 1;
        match &self.items_key {
            Some(key) => json!(format!(
                "$result[p{page}][{key}][{last}][{}]",
                self.id_field
            )),
            None => json!(format!("$result[p{page}][{last}][{}]", self.id_field)),
        }
    }

    fn records(&self, result: &Value) -> Vec<Value> {
        let list = match &self.items_key {
            Some(key) => &result[key.as_str()],
            None => result,
        };
        list.as_array().cloned().unwrap_or_default()
    }

    /// The next records (up to 50 pages of them) in one request; `None`
    /// once the list is exhausted.
    pub async fn next_chunk(&mut self, client: &Client) -> Result<Option<Vec<Value>>, Error> {
        if self.finished {
            return Ok(None);
        }
        let mut batch = Batch::new();
        for page in 0..self.pages_per_request {
            let after = match page {
                0 => json!(self.last_id.unwrap_or(0)),
                _ => self.reference(page - 1),
            };
            batch.push(format!("p{page}"), &self.method, self.page_params(after))?;
        }
        let done = client.batch(&batch).await;
        let mut out = Vec::new();
        for page in 0..self.pages_per_request {
            let name = format!("p{page}");
            let records = match done.get(&name) {
                Some(CommandOutcome::Done(result)) => self.records(&result.result),
                Some(CommandOutcome::Failed(api)) if page == 0 => {
                    return Err(Error::Api(api.clone()));
                }
                // A later page after a short one refers to a missing record.
                _ if page > 0 => break,
                _ => {
                    return Err(done.stopped_by.unwrap_or_else(|| Error::InvalidResponse {
                        portal: client.portal().to_owned(),
                        method: self.method.clone(),
                        reason: "the first page did not run".into(),
                    }));
                }
            };
            let short = records.len() < PAGE_SIZE;
            if let Some(id) = records
                .last()
                .and_then(|r| r.get(&self.id_field))
                .and_then(|v| match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                })
            {
                self.last_id = Some(id);
            }
            out.extend(records);
            if short {
                self.finished = true;
                break;
            }
        }
        if out.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        Ok(Some(out))
    }
}

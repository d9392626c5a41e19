//! List methods as an async stream of records, page by page.

use std::collections::VecDeque;

use futures_util::Stream;
use futures_util::stream;
use serde_json::{Map, Value, json};

use crate::{Client, Error};

/// Records per page of every Bitrix24 list method.
pub const PAGE_SIZE: usize = 50;

/// How to walk a list method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// `start=0, 50, ..` following the portal's `next`. Counts the total on
    /// every page, which is slow on big tables.
    Classic,
    /// Fast mode (BITRIX24.md §4): `start=-1`, ordered by `id_field`
    /// ascending, filter `>id_field` = last ID seen, stop on a short page.
    /// `id_field` is `ID` for `crm.deal.*`-style methods and `id` for
    /// `crm.item.*`. The caller's `order` is replaced; its `filter` is kept.
    ById { id_field: String },
}

impl Paging {
    pub fn by_id(id_field: impl Into<String>) -> Self {
        Paging::ById {
            id_field: id_field.into(),
        }
    }
}

struct Walk {
    client: Client,
    method: String,
    params: Map<String, Value>,
    paging: Paging,
    buffer: VecDeque<Value>,
    /// Classic: the next `start`. By ID: unused.
    next_start: u64,
    last_id: Option<Value>,
    finished: bool,
}

impl Client {
    /// Streams every record of a list method (`crm.item.list`,
    /// `crm.deal.list`, ...). `params` holds `filter`, `select`, `order` and
    /// the like; paging keys are managed here. Records come from the result
    /// itself when it is a list, or from its `items` list (`crm.item.list`),
    /// or from its only list-valued field. The stream ends after the first
    /// error.
    pub fn list(
        &self,
        method: &str,
        params: Value,
        paging: Paging,
    ) -> impl Stream<Item = Result<Value, Error>> + Send + 'static {
        let params = match params {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let walk = Walk {
            client: self.clone(),
            method: method.to_owned(),
            params,
            paging,
            buffer: VecDeque::new(),
            next_start: 0,
            last_id: None,
            finished: false,
        };
        stream::unfold(walk, |mut walk| async move {
            loop {
                if let Some(record) = walk.buffer.pop_front() {
                    return Some((Ok(record), walk));
                }
                if walk.finished {
                    return None;
                }
                if let Err(error) = walk.fetch_page().await {
                    walk.finished = true;
                    return Some((Err(error), walk));
                }
            }
        })
    }
}

impl Walk {
    async fn fetch_page(&mut self) -> Result<(), Error> {
        let mut params = self.params.clone();
        match &self.paging {
            Paging::Classic => {
                params.insert("start".into(), json!(self.next_start));
            }
            Paging::ById { id_field } => {
                params.insert("start".into(), json!(-1));
                params.insert("order".into(), json!({ id_field.as_str(): "ASC" }));
                if let Some(Value::Array(select)) = params.get_mut("select") {
                    let selects_id = select
                        .iter()
                        .any(|field| field.as_str().is_some_and(|f| f == id_field || f == "*"));
                    if !selects_id {
                        select.push(Value::String(id_field.clone()));
                    }
                }
                if let Some(last_id) = &self.last_id {
                    let filter = params
                        .entry("filter")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !filter.is_object() {
                        *filter = Value::Object(Map::new());
                    }
                    filter
                        .as_object_mut()
                        .expect("made an object above")
                        .insert(format!(">{id_field}"), last_id.clone());
                }
            }
        }
        let response = self
            .client
            .call(&self.method, &Value::Object(params))
            .await?;
        let records = page_records(response.result).map_err(|reason| Error::InvalidResponse {
            portal: self.client.portal().to_owned(),
            method: self.method.clone(),
            reason,
        })?;
        match &self.paging {
            Paging::Classic => match response.next {
                Some(next) if !records.is_empty() => self.next_start = next,
                _ => self.finished = true,
            },
            Paging::ById { id_field } => {
                if records.len() < PAGE_SIZE {
                    self.finished = true;
                } else {
                    let last = records.last().and_then(|record| record.get(id_field));
                    match last {
                        Some(id) if !id.is_null() => self.last_id = Some(id.clone()),
                        _ => {
                            return Err(Error::InvalidResponse {
                                portal: self.client.portal().to_owned(),
                                method: self.method.clone(),
                                reason: format!("records have no `{id_field}` field to page by"),
                            });
                        }
                    }
                }
            }
        }
        self.buffer.extend(records);
        Ok(())
    }
}

fn page_records(result: Value) -> Result<Vec<Value>, String> {
    match result {
        Value::Array(records) => Ok(records),
        Value::Object(mut object) => {
            if let Some(Value::Array(records)) = object.remove("items") {
                return Ok(records);
            }
            let mut lists = object.into_iter().filter_map(|(_, value)| match value {
                Value::Array(records) => Some(records),
                _ => None,
            });
            match (lists.next(), lists.next()) {
                (Some(records), None) => Ok(records),
                _ => Err("a list result must be a list or hold exactly one list".into()),
            }
        }
        _ => Err("a list result must be a list or hold exactly one list".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_records_in_the_usual_shapes() {
        assert_eq!(
            page_records(json!([{"ID": "1"}])).unwrap(),
            vec![json!({"ID": "1"})]
        );
        assert_eq!(
            page_records(json!({"items": [{"id": 1}]})).unwrap(),
            vec![json!({"id": 1})]
        );
        assert_eq!(
            page_records(json!({"tasks": [{"id": 1}]})).unwrap(),
            vec![json!({"id": 1})]
        );
        assert!(page_records(json!({"a": [], "b": []})).is_err());
        assert!(page_records(json!("text")).is_err());
    }
}

//! A portal's deal fields, fetched at most once per time to live: many
//! workers needing the catalogue at once make one request (the lock is held
//! across the fetch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use b24_client::{Client, Error as ClientError};
use serde_json::json;

use crate::mapping::{FieldCatalog, camel_name, parse_catalog};
use crate::transfer::{Dialect, DialectCell};

pub struct CatalogCache {
    ttl: Duration,
    cached: tokio::sync::Mutex<Option<(Instant, Arc<FieldCatalog>)>>,
}

impl CatalogCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The catalogue, fetched when older than the time to live or when
    /// `refresh` asks for a fresh copy (options added since).
    pub async fn get(
        &self,
        client: &Client,
        dialect: &DialectCell,
        portal: &str,
        refresh: bool,
    ) -> Result<Arc<FieldCatalog>, ClientError> {
        let mut cached = self.cached.lock().await;
        if let Some((_, catalog)) = cached
            .as_ref()
            .filter(|(at, _)| !refresh && at.elapsed() < self.ttl)
        {
            return Ok(catalog.clone());
        }
        let catalog = Arc::new(fetch(client, dialect, portal).await?);
        *cached = Some((Instant::now(), catalog.clone()));
        Ok(catalog)
    }
}

async fn fetch(
    client: &Client,
    dialect: &DialectCell,
    portal: &str,
) -> Result<FieldCatalog, ClientError> {
    if dialect.get() == Dialect::Item {
        match client
            .call("crm.item.fields", &json!({"entityTypeId": 2}))
            .await
        {
            Ok(response) => return Ok(parse_catalog(&response.result)),
            Err(ClientError::Api(api)) if dialect.notice(&api, portal) => {}
            Err(error) => return Err(error),
        }
    }
    // `crm.deal.fields`: UPPER_CASE keys straight under `result`.
    let response = client.call("crm.deal.fields", &json!({})).await?;
    Ok(parse_catalog(&json!({"fields": response.result}))
        .into_iter()
        .map(|(name, mut info)| {
            if info.title.is_empty() {
                info.title = name.clone();
            }
            (camel_name(&name), info)
        })
        .collect())
}

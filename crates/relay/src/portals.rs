//! The configured portals at run time. Each [`PortalHandle`] is made of
//! parts with one job each: the webhook client (every client of a portal
//! shares one rate-limit bucket), the API family the portal speaks
//! ([`DialectCell`], found once), the deal field catalogue
//! ([`CatalogCache`]), users by e-mail and by id ([`UserDirectory`]) and
//! the installed application's client (`app_slot`).

use std::collections::BTreeMap;
use std::sync::Arc;

use b24_client::{Client, Error as ClientError, RateLimits};
use serde_json::Value;

use crate::config::{Config, PortalConfig};
use crate::mapping::scalar;
use crate::metrics::{Metrics, PortalObserver};
use crate::transfer::DialectCell;

mod app_slot;
mod catalog;
pub mod users;

pub use catalog::CatalogCache;
pub use users::UserDirectory;

/// All portals of the configuration.
pub struct Portals {
    by_name: BTreeMap<String, Arc<PortalHandle>>,
}

/// One portal: its clients and caches.
pub struct PortalHandle {
    pub config: PortalConfig,
    /// The incoming webhook's client.
    pub client: Client,
    /// `crm.item.*`, or `crm.deal.*` on a box that was not updated.
    pub dialect: DialectCell,
    pub catalog: CatalogCache,
    pub users: UserDirectory,
    rate_limits: RateLimits,
    metrics: Arc<Metrics>,
    /// The installed local application's client, while its tokens work.
    /// One client per portal: its clones share the tokens, so concurrent
    /// `expired_token` answers make one refresh.
    app: std::sync::Mutex<Option<app_slot::AppSlot>>,
    /// Held while answering rule runs, so that no run is answered twice.
    pub answering: tokio::sync::Mutex<()>,
}

/// Requests of the bucket the relay leaves unused, so that timing jitter
/// between our count and the portal's (and a few calls from other tools on
/// the same webhook) do not reach the portal's limit. The drain rate, which
/// sets sustained throughput, is kept.
pub fn headroom(burst: u32) -> u32 {
    (burst / 20).max(3).min(burst.saturating_sub(1))
}

impl Portals {
    /// `shared`: the rate budget the store's replicas share, if any.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        shared: Option<Arc<dyn b24_client::SharedBucket>>,
    ) -> Result<Self, ClientError> {
        let rate_limits = match shared {
            Some(shared) => RateLimits::default().share_with(shared),
            None => RateLimits::default(),
        };
        let mut by_name = BTreeMap::new();
        for (name, portal) in &config.portals {
            let bucket = b24_client::BucketConfig {
                burst: portal.rate.burst - headroom(portal.rate.burst),
                drain_per_second: portal.rate.drain_per_second,
            };
            rate_limits.set_portal(&portal.webhook.portal(), bucket)?;
            let client = Client::builder(portal.webhook.clone(), rate_limits.clone())
                .observer(PortalObserver::new(name, metrics.clone()))
                // Transfers of different deals to one portal share batch requests.
                .coalesce_batches(true)
                .build()?;
            by_name.insert(
                name.clone(),
                Arc::new(PortalHandle {
                    config: portal.clone(),
                    client,
                    dialect: DialectCell::default(),
                    catalog: CatalogCache::new(config.field_cache_ttl),
                    users: UserDirectory::new(config.field_cache_ttl),
                    rate_limits: rate_limits.clone(),
                    metrics: metrics.clone(),
                    app: std::sync::Mutex::new(None),
                    answering: tokio::sync::Mutex::new(()),
                }),
            );
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PortalHandle>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<PortalHandle>)> {
        self.by_name.iter()
    }
}

impl PortalHandle {
    /// Source reads go through the application when it is installed (no
    /// second webhook needed), else through the webhook.
    pub fn reader(&self) -> Client {
        self.app_client().unwrap_or_else(|| self.client.clone())
    }

    /// The deal fields, from the cache unless `refresh` (see [`CatalogCache`]).
    pub async fn deal_catalog(
        &self,
        refresh: bool,
    ) -> Result<Arc<crate::mapping::FieldCatalog>, ClientError> {
        self.catalog
            .get(&self.client, &self.dialect, &self.config.name, refresh)
            .await
    }
}

/// Numeric id from a JSON value (`5`, `"5"`); zero and junk are `None`.
pub fn id_of(value: Option<&Value>) -> Option<i64> {
    value
        .map(scalar)
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_ids_and_keeps_headroom() {
        assert_eq!(id_of(Some(&json!("12"))), Some(12));
        assert_eq!(id_of(Some(&json!(0))), None);
        assert_eq!(id_of(None), None);
        assert_eq!(headroom(50), 3);
        assert_eq!(headroom(250), 12);
        assert_eq!(headroom(2), 1);
    }
}

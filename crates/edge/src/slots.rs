//! Connection slots, shared by every worker: who may hold one of the
//! `max_connections`, so that whatever other hosts do, the clients a route
//! admits by address (Bitrix24's nodes, `extra`, an office network) still
//! get served.
//!
//! - A client no route admits never gets here in the default mode: it is
//!   refused at accept, before TLS (see [`crate::accept`]).
//! - `reserved_connections` slots are kept for *listed* clients (admitted
//!   by address). Everyone else — clients of `any` routes, connections
//!   from a trusted X-Forwarded-For proxy (whose clients are only known
//!   per request), refused clients in `refuse_before_tls = false` mode —
//!   shares the rest, and when it is full their new connections are closed
//!   at once rather than queued behind them.
//! - A listed client that finds every slot taken waits for one (until its
//!   first-request deadline), as it would in nginx's or HAProxy's backlog.
//! - No client address holds more than `max_connections_per_address`
//!   (HAProxy's `src_conn_cur`, nginx's `limit_conn`); the address is the
//!   peer or the PROXY header's source, and a trusted X-Forwarded-For proxy
//!   is exempt (all its clients share its address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;

/// How a connection competes for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotClass {
    /// Admitted by address: may use the reserved slots, and waits.
    Listed,
    /// Everyone else: never the reserved slots, never waits.
    Other,
}

/// Why a connection got no slot (the `reason` label of
/// `b24_edge_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// Its address already holds `max_connections_per_address`.
    PerAddress,
    /// The slots it may use are all taken.
    MaxConnections,
    /// A listed client waited until its deadline.
    WaitTimeout,
}

/// The slots of one edge.
pub(crate) struct ConnectionSlots {
    total: Arc<Semaphore>,
    unlisted: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
}

/// A held slot; dropping it frees it.
pub(crate) struct Slot {
    _total: OwnedSemaphorePermit,
    _unlisted: Option<OwnedSemaphorePermit>,
    _address: Option<AddressGuard>,
}

impl ConnectionSlots {
    pub(crate) fn new(limits: &Limits) -> ConnectionSlots {
        ConnectionSlots {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            unlisted: Arc::new(Semaphore::new(
                limits.max_connections - limits.reserved_connections,
            )),
            per_address: Arc::new(PerAddress::new(limits.max_connections_per_address)),
        }
    }

    /// A slot for a connection from `address` (none for a trusted
    /// X-Forwarded-For proxy), waiting at most until `deadline` if listed.
    pub(crate) async fn acquire(
        &self,
        class: SlotClass,
        address: Option<IpAddr>,
        deadline: Instant,
    ) -> Result<Slot, NoSlot> {
        let address = match address {
            Some(addr) => Some(self.per_address.take(addr).ok_or(NoSlot::PerAddress)?),
            None => None,
        };
        match class {
            SlotClass::Other => {
                let unlisted = self
                    .unlisted
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| NoSlot::MaxConnections)?;
                let total = self
                    .total
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| NoSlot::MaxConnections)?;
                Ok(Slot {
                    _total: total,
                    _unlisted: Some(unlisted),
                    _address: address,
                })
            }
            SlotClass::Listed => {
                let total = match self.total.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => tokio::time::timeout_at(deadline, self.total.clone().acquire_owned())
                        .await
                        .map_err(|_| NoSlot::WaitTimeout)?
                        .expect("the semaphore is never closed"),
                };
                Ok(Slot {
                    _total: total,
                    _unlisted: None,
                    _address: address,
                })
            }
        }
    }
}

const SHARDS: usize = 16;

/// Connections per client address, in shards so that workers accepting at
/// once rarely wait for each other.
struct PerAddress {
    cap: usize,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

impl PerAddress {
    fn new(cap: usize) -> PerAddress {
        PerAddress {
            cap,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, addr: IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let low = match addr {
            IpAddr::V4(v4) => v4.octets()[3] ^ v4.octets()[2],
            IpAddr::V6(v6) => v6.octets()[15] ^ v6.octets()[7],
        };
        &self.shards[usize::from(low) % SHARDS]
    }

    fn take(self: &Arc<Self>, addr: IpAddr) -> Option<AddressGuard> {
        let mut shard = self.shard(addr).lock().expect("per-address lock");
        let count = shard.entry(addr).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressGuard {
            map: self.clone(),
            addr,
        })
    }
}

struct AddressGuard {
    map: Arc<PerAddress>,
    addr: IpAddr,
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut shard = self.map.shard(self.addr).lock().expect("per-address lock");
        if let Some(count) = shard.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: usize, reserved: usize, per_address: usize) -> Limits {
        Limits {
            max_connections: max,
            reserved_connections: reserved,
            max_connections_per_address: per_address,
            ..Limits::default()
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(20)
    }

    #[tokio::test]
    async fn others_never_take_the_reserved_slots() {
        let slots = ConnectionSlots::new(&limits(4, 2, 100));
        let a = slots
            .acquire(SlotClass::Other, ip(3), soon())
            .await
            .unwrap();
        let _b = slots
            .acquire(SlotClass::Other, ip(4), soon())
            .await
            .unwrap();
        assert_eq!(
            slots.acquire(SlotClass::Other, ip(5), soon()).await.err(),
            Some(NoSlot::MaxConnections)
        );
        let _listed = slots
            .acquire(SlotClass::Listed, ip(2), soon())
            .await
            .unwrap();
        let _listed2 = slots
            .acquire(SlotClass::Listed, ip(2), soon())
            .await
            .unwrap();
        // Full: a listed client waits, and times out at its deadline.
        assert_eq!(
            slots.acquire(SlotClass::Listed, ip(2), soon()).await.err(),
            Some(NoSlot::WaitTimeout)
        );
        drop(a);
        assert!(
            slots
                .acquire(SlotClass::Listed, ip(2), soon())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn per_address_cap_and_release() {
        let slots = ConnectionSlots::new(&limits(10, 0, 2));
        let a = slots
            .acquire(SlotClass::Other, ip(3), soon())
            .await
            .unwrap();
        let _b = slots
            .acquire(SlotClass::Listed, ip(3), soon())
            .await
            .unwrap();
        assert_eq!(
            slots.acquire(SlotClass::Other, ip(3), soon()).await.err(),
            Some(NoSlot::PerAddress)
        );
        // Another address, or none (a trusted proxy), is not affected.
        assert!(slots.acquire(SlotClass::Other, ip(4), soon()).await.is_ok());
        assert!(slots.acquire(SlotClass::Other, None, soon()).await.is_ok());
        drop(a);
        assert!(slots.acquire(SlotClass::Other, ip(3), soon()).await.is_ok());
        // Refused attempts held nothing: the map empties when all go.
        drop(_b);
        assert!(
            slots
                .per_address
                .shards
                .iter()
                .all(|s| s.lock().unwrap().is_empty())
        );
    }
}

//! nodesync: turns the list of Bitrix24 event-delivery servers into firewall
//! rules — nftables, ipset/iptables, nginx, plain or JSON — and optionally
//! loads them, safely enough to run from cron every minute.
//!
//! The binary is a thin shell over [`run::run`]; tests drive it directly.

pub mod apply;
pub mod cli;
pub mod emit;
pub mod run;
pub mod textfile;

/// The version with the git revision it was built from.
pub const VERSION: &str = env!("B24_VERSION");

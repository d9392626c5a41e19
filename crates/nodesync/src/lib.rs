//! nodesync: turns the list of Bitrix24 event-delivery servers into firewall
//! rules — nftables, ipset/iptables, nginx, plain or JSON — and optionally
//! loads them, safely enough to run from cron: it never loads a list that
//! opens the box to the world, never replaces what it did not create, and
//! never locks its admin out.
//!
//! The binary is a thin shell over [`run::run`]; tests drive it directly.

pub mod apply;
pub mod cli;
pub mod emit;
pub mod guard;
pub mod lock;
pub mod news;
pub mod nftupdate;
pub mod owner;
pub mod run;
pub mod state;
pub mod textfile;
pub mod tools;

/// The version with the git revision it was built from.
pub const VERSION: &str = env!("B24_VERSION");

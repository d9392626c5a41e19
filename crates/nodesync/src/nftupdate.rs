//! Bringing nodesync's nftables table up to date on a live host without a
//! moment that drops a listed client.
//!
//! Replacing the whole table in one transaction (delete it, define it
//! again — what the file for boot does) looks atomic but is not for the
//! packet path: the kernel makes the new rules visible when the commit
//! moves to the new generation, and only afterwards gives each new set its
//! lookup data (on 6.18, the binary-search array of an interval set is
//! published by the set's commit callback). For that moment the new
//! `ip saddr @nodes_v4 accept` matches nothing and a listed client's packet
//! falls through to the drop. A set that already exists keeps answering
//! from its current contents until the new ones replace them, so:
//!
//! 1. sets that are missing (a first run, a table from an earlier version)
//!    are created, already filled, in a transaction of their own that
//!    changes no rule — nothing looks them up yet;
//! 2. one transaction then refills every set in place (`flush set` +
//!    `add element`), replaces the rules of every chain (`flush chain` +
//!    `add rule`, whose new version the kernel prepares before the switch),
//!    recreates a chain whose hook or marker is not the current one, and
//!    removes what the layout no longer has.
//!
//! A client in both the old and the new list is admitted at every instant,
//! one in neither is never admitted. A table that cannot be changed this
//! way (a set of another type, maps or other objects nodesync never makes)
//! is replaced whole, once, with the boot script.

use std::fmt::Write;

use b24_nodes::NodeList;

use crate::emit::{self, MARKER, NFT_SETS, RuleOptions};
use crate::owner::NftTable;

/// How the live table is brought to the wanted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Create these sets (filled) first, if any, then update in place.
    InPlace { missing_sets: Vec<&'static str> },
    /// Replace the table in one transaction; the reason, for tests.
    Replace(String),
}

/// Decides how to update `live` (`None`: there is no table yet).
pub fn plan(live: Option<&NftTable>) -> Plan {
    let Some(live) = live else {
        return Plan::InPlace {
            missing_sets: NFT_SETS.iter().map(|(name, _)| *name).collect(),
        };
    };
    if let Some(other) = live.others.first() {
        return Plan::Replace(format!("the table holds {other:?}"));
    }
    // Names go into the script bare (nft takes no quoted name there).
    let names = live
        .chains
        .iter()
        .map(|c| &c.name)
        .chain(live.sets.iter().map(|s| &s.name));
    if let Some(odd) = names.into_iter().find(|n| !plain_name(n)) {
        return Plan::Replace(format!("the table holds {odd:?}"));
    }
    let mut missing_sets = Vec::new();
    for (name, kind) in NFT_SETS {
        match live.sets.iter().find(|s| s.name == name) {
            None => missing_sets.push(name),
            Some(set) => {
                let interval = set.flags.split(',').any(|f| f.trim() == "interval");
                if set.kind != kind || !interval {
                    return Plan::Replace(format!(
                        "set {name} is type {} flags {:?}",
                        set.kind, set.flags
                    ));
                }
            }
        }
    }
    Plan::InPlace { missing_sets }
}

/// Step 1: the sets `missing` of the table, created with their contents
/// (and the table, if it is not there). No rule is touched.
pub fn create_sets(list: &NodeList, options: &RuleOptions, missing: &[&str]) -> String {
    let table = &options.table;
    let mut out = String::new();
    let _ = writeln!(out, "table inet {table} {{\n\tcomment \"{MARKER}\"");
    for ((name, kind), nets) in NFT_SETS.iter().zip(emit::nft_set_contents(list, options)) {
        if missing.contains(name) {
            emit::set_declaration(&mut out, name, kind, &nets);
        }
    }
    out.push_str("}\n");
    out
}

/// Step 2: one transaction that leaves the table (which has every set of
/// [`NFT_SETS`] by now) exactly as the boot script would define it. The
/// sets step 1 has just created (`filled`) already hold their contents and
/// are not loaded a second time: at boot, with a long list, that would
/// double the time `nft` takes.
pub fn update(
    list: &NodeList,
    options: &RuleOptions,
    live: Option<&NftTable>,
    filled: &[&str],
) -> String {
    let table = &options.table;
    let wanted = emit::nft_chains(options);
    let empty = NftTable::default();
    let live = live.unwrap_or(&empty);
    let mut out = String::new();
    let _ = writeln!(out, "table inet {table} {{\n\tcomment \"{MARKER}\"\n}}");
    // Every rule goes first, so that nothing refers to a chain or set
    // that is deleted below.
    for chain in &live.chains {
        let _ = writeln!(out, "flush chain inet {table} {}", chain.name);
    }
    for chain in &live.chains {
        let keep = wanted.iter().any(|w| {
            w.name == chain.name && w.hook == chain.hook && chain.comment.as_deref() == Some(MARKER)
        });
        if !keep {
            let _ = writeln!(out, "delete chain inet {table} {}", chain.name);
        }
    }
    for set in &live.sets {
        if !NFT_SETS.iter().any(|(name, _)| *name == set.name) {
            let _ = writeln!(out, "delete set inet {table} {}", set.name);
        }
    }
    // Declaring what exists changes nothing; what was deleted above (or
    // never was) is created.
    let _ = writeln!(out, "table inet {table} {{");
    for (name, kind) in NFT_SETS {
        emit::set_declaration(&mut out, name, kind, &[]);
    }
    for chain in &wanted {
        emit::nft_chain_declaration(&mut out, chain, &[]);
    }
    out.push_str("}\n");
    for ((name, _), nets) in NFT_SETS.iter().zip(emit::nft_set_contents(list, options)) {
        if !filled.contains(name) {
            emit::refill_set(&mut out, table, name, &nets);
        }
    }
    for chain in &wanted {
        for rule in &chain.rules {
            let _ = writeln!(out, "add rule inet {table} {} {rule}", chain.name);
        }
    }
    out
}

/// A name that can stand bare in a script: what nodesync ever named a
/// chain or set (a leftover of any other name means a whole replacement).
fn plain_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{NftChain, NftSet};

    fn list() -> NodeList {
        NodeList::parse(
            br#"{"nodes": ["195.208.184.200", "2a02:6b8:c00::/48"]}"#,
            &b24_nodes::Limits::allowing_special(),
        )
        .unwrap()
    }

    fn set(name: &str, kind: &str) -> NftSet {
        NftSet {
            name: name.into(),
            kind: kind.into(),
            flags: "interval".into(),
            comment: Some(MARKER.into()),
        }
    }

    fn chain(name: &str, hook: Option<&str>) -> NftChain {
        NftChain {
            name: name.into(),
            comment: Some(MARKER.into()),
            hook: hook.map(String::from),
        }
    }

    /// What the boot script (and every update) leaves, as listed.
    fn current(options: &RuleOptions) -> NftTable {
        NftTable {
            comment: Some(MARKER.into()),
            sets: NFT_SETS.iter().map(|(n, k)| set(n, k)).collect(),
            chains: emit::nft_chains(options)
                .iter()
                .map(|c| chain(c.name, c.hook.as_deref()))
                .collect(),
            others: Vec::new(),
        }
    }

    #[test]
    fn a_current_table_is_updated_in_place_without_creating_anything() {
        let options = RuleOptions::default();
        let live = current(&options);
        assert_eq!(
            plan(Some(&live)),
            Plan::InPlace {
                missing_sets: vec![]
            }
        );
        let script = update(&list(), &options, Some(&live), &[]);
        assert!(!script.contains("delete"), "{script}");
        assert!(script.contains("flush set inet bitrix24 nodes_v4\nadd element inet bitrix24 nodes_v4 {\n\t195.208.184.200,\n}\n"));
        assert!(script.contains("flush chain inet bitrix24 protected\n"));
        assert!(script.contains("add rule inet bitrix24 input tcp dport 443 jump protected\n"));
        // Every rule is flushed before any is added.
        assert!(script.rfind("flush chain").unwrap() < script.find("add rule").unwrap());
    }

    #[test]
    fn a_first_run_creates_the_filled_sets_before_any_rule() {
        let options = RuleOptions {
            extra: vec!["192.168.0.0/16".parse().unwrap()],
            ..RuleOptions::default()
        };
        let Plan::InPlace { missing_sets } = plan(None) else {
            panic!()
        };
        assert_eq!(missing_sets.len(), 4);
        let first = create_sets(&list(), &options, &missing_sets);
        assert!(
            !first.contains("chain") && !first.contains("rule"),
            "{first}"
        );
        assert!(first.contains("\t\t\t192.168.0.0/16,\n"), "{first}");
        assert!(first.contains("\t\t\t195.208.184.200,\n"), "{first}");
        let second = update(&list(), &options, None, &missing_sets);
        assert!(!second.contains("flush chain") && !second.contains("delete"));
        // The sets just created with their contents are not loaded again.
        assert!(
            !second.contains("flush set") && !second.contains("add element"),
            "{second}"
        );
        assert!(second.contains("add rule inet bitrix24 input tcp dport 443 jump protected\n"));
    }

    #[test]
    fn an_earlier_layout_is_brought_up_to_date() {
        // nodesync before named --extra sets: anonymous sets in its rules.
        let options = RuleOptions {
            forward: false,
            ..RuleOptions::default()
        };
        let mut live = current(&RuleOptions::default());
        live.sets.truncate(2);
        // nodesync 0.1: no markers on the chains; and a leftover set.
        live.chains[0].comment = None;
        live.sets.push(set("old", "ipv4_addr"));
        assert_eq!(
            plan(Some(&live)),
            Plan::InPlace {
                missing_sets: vec!["extra_v4", "extra_v6"]
            }
        );
        let script = update(&list(), &options, Some(&live), &["extra_v4", "extra_v6"]);
        assert!(
            script.contains("flush set inet bitrix24 nodes_v4\n"),
            "{script}"
        );
        assert!(
            !script.contains("flush set inet bitrix24 extra_v4"),
            "{script}"
        );
        for gone in [
            "delete chain inet bitrix24 input\n",
            "delete chain inet bitrix24 forward\n",
            "delete set inet bitrix24 old\n",
        ] {
            assert!(script.contains(gone), "{gone}: {script}");
        }
        assert!(!script.contains("delete chain inet bitrix24 protected"));
        assert!(!script.contains("add rule inet bitrix24 forward"));
        // A hook that differs (an older priority) means a new chain too.
        let mut live = current(&options);
        live.chains[0].hook = Some("filter hook input priority filter; policy accept;".into());
        assert!(
            update(&list(), &options, Some(&live), &[])
                .contains("delete chain inet bitrix24 input\n")
        );
    }

    #[test]
    fn what_cannot_change_in_place_is_replaced_whole() {
        let options = RuleOptions::default();
        let mut live = current(&options);
        live.sets[0].flags = String::new();
        assert!(matches!(plan(Some(&live)), Plan::Replace(_)));
        let mut live = current(&options);
        live.others.push("map m".into());
        assert!(matches!(plan(Some(&live)), Plan::Replace(_)));
        let mut live = current(&options);
        live.chains.push(chain("my chain", None));
        assert!(matches!(plan(Some(&live)), Plan::Replace(_)));
    }
}

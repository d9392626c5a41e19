//! Whose is it? Before replacing a table, flushing a chain or swapping a
//! set, nodesync checks that it created it: its tables, sets and chains
//! carry [`MARKER`](crate::emit::MARKER). A name that belongs to someone
//! else (`--table filter` without `--set-only`, `--table docker` in
//! iptables mode) is an error, not an overwrite.
//!
//! What nodesync 0.1 left behind (no marker yet) is recognised by its exact
//! shape, so an upgrade keeps working.

use crate::emit::MARKER;
use crate::tools::{ToolError, run_args, run_capture};

/// What is there under the name nodesync wants to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Absent,
    /// Created by nodesync (marked, or the unmarked layout of an earlier
    /// version).
    Ours,
    /// Something else; the text says what, for the error message.
    Foreign(String),
}

/// An nftables table, as `nft list chains` and `nft -t list sets` show it:
/// both are cheap whatever the sets hold, where listing the table itself
/// reads every set element (seconds at 100 000 entries).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftTable {
    /// The table's own comment, when the listing shows it.
    pub comment: Option<String>,
    pub sets: Vec<NftSet>,
    pub chains: Vec<NftChain>,
    /// Maps, flowtables, counters, quotas…: anything nodesync never makes.
    pub others: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub name: String,
    pub comment: Option<String>,
    /// A base chain's `type … hook … priority …; policy …;` line, without
    /// the leading `type `; `None` for a regular chain.
    pub hook: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub name: String,
    pub kind: String,
    pub flags: String,
    pub comment: Option<String>,
}

/// Parses listings of the ruleset (`nft list chains`, `nft -t list sets`,
/// or a terse listing of a table) into the inet table `name`, if it is
/// there. A table may appear in several listings; what each shows is merged.
pub fn parse_nft_table(listings: &[&str], name: &str) -> Option<NftTable> {
    let header = format!("table inet {name} {{");
    let mut found = false;
    let mut table = NftTable::default();
    for listing in listings {
        let mut inside = false;
        // The depth-1 block the lines below belong to: a set or a chain.
        let mut block: Option<Block> = None;
        for line in listing.lines() {
            let depth = line.len() - line.trim_start_matches('\t').len();
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if depth == 0 {
                inside = text == header;
                found |= inside;
                block = None;
                continue;
            }
            if !inside {
                continue;
            }
            match depth {
                1 => {
                    block = None;
                    if let Some(comment) = quoted_after(text, "comment") {
                        table.comment = Some(comment);
                    } else if let Some(set) = block_name(text, "set") {
                        block = Some(Block::Set(table.set_index(set)));
                    } else if let Some(chain) = block_name(text, "chain") {
                        block = Some(Block::Chain(table.chain_index(chain)));
                    } else if text != "}" && !text.is_empty() {
                        table.others.push(text.trim_end_matches(" {").to_string());
                    }
                }
                2 => match block {
                    Some(Block::Set(at)) => {
                        let set = &mut table.sets[at];
                        if let Some(kind) = text.strip_prefix("type ") {
                            set.kind = kind.to_string();
                        } else if let Some(flags) = text.strip_prefix("flags ") {
                            set.flags = flags.to_string();
                        } else if let Some(comment) = quoted_after(text, "comment") {
                            set.comment = Some(comment);
                        }
                    }
                    Some(Block::Chain(at)) => {
                        let chain = &mut table.chains[at];
                        if let Some(comment) = quoted_after(text, "comment") {
                            chain.comment = Some(comment);
                        } else if let Some(hook) = text.strip_prefix("type ") {
                            chain.hook = Some(hook.to_string());
                        }
                    }
                    None => {}
                },
                _ => {}
            }
        }
    }
    found.then_some(table)
}

#[derive(Clone, Copy)]
enum Block {
    Set(usize),
    Chain(usize),
}

impl NftTable {
    fn set_index(&mut self, name: String) -> usize {
        if let Some(at) = self.sets.iter().position(|s| s.name == name) {
            return at;
        }
        self.sets.push(NftSet {
            name,
            ..NftSet::default()
        });
        self.sets.len() - 1
    }

    fn chain_index(&mut self, name: String) -> usize {
        if let Some(at) = self.chains.iter().position(|c| c.name == name) {
            return at;
        }
        self.chains.push(NftChain {
            name,
            ..NftChain::default()
        });
        self.chains.len() - 1
    }
}

fn block_name(text: &str, keyword: &str) -> Option<String> {
    let rest = text.strip_prefix(keyword)?.strip_prefix(' ')?;
    let name = rest.strip_suffix(" {")?;
    Some(name.trim_matches('"').to_string())
}

fn quoted_after(text: &str, keyword: &str) -> Option<String> {
    let rest = text.strip_prefix(keyword)?.trim_start();
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\\\"", "\""))
}

fn marked(comment: &Option<String>) -> bool {
    comment.as_deref() == Some(MARKER)
}

/// Whether nodesync may replace the whole table (full mode): every chain
/// of it carries the marker (nodesync's tables always have chains).
pub fn judge_full_table(name: &str, table: &NftTable) -> Found {
    let chains_marked = !table.chains.is_empty() && table.chains.iter().all(|c| marked(&c.comment));
    if chains_marked || (marked(&table.comment) && !table.chains.is_empty()) {
        return Found::Ours;
    }
    let set_names: Vec<&str> = table.sets.iter().map(|s| s.name.as_str()).collect();
    let chain_names: Vec<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
    // nodesync 0.1: the two sets, input and protected, no comments; an
    // update may have added the marked --extra sets before it replaced
    // the chains ([`crate::nftupdate`]).
    let legacy_set = |s: &NftSet| {
        ["nodes_v4", "nodes_v6"].contains(&s.name.as_str())
            || (["extra_v4", "extra_v6"].contains(&s.name.as_str()) && marked(&s.comment))
    };
    let legacy = table.comment.is_none()
        && table.others.is_empty()
        && table.chains.iter().all(|c| c.comment.is_none())
        && table.sets.iter().all(legacy_set)
        && set_names.contains(&"nodes_v4")
        && set_names.contains(&"nodes_v6")
        && chain_names.contains(&"protected")
        && chain_names
            .iter()
            .all(|c| ["input", "forward", "protected"].contains(c));
    if legacy {
        return Found::Ours;
    }
    let what = match &table.comment {
        Some(comment) => format!("its comment is {comment:?}"),
        None => format!(
            "it has no nodesync marker; it holds chains [{}] and sets [{}]",
            chain_names.join(", "),
            set_names.join(", ")
        ),
    };
    Found::Foreign(format!(
        "table inet {name} exists and was not created by nodesync ({what})"
    ))
}

/// Whether nodesync may flush and refill the set `name` in `table`
/// (set-only mode): a set it created, or one the admin declared for it
/// (the declaration nodesync prints carries the marker; an unmarked set of
/// the right type and flags is accepted as declared for nodesync too).
pub fn judge_set(table: &str, table_state: Option<&NftTable>, name: &str, kind: &str) -> Found {
    let Some(set) = table_state.and_then(|t| t.sets.iter().find(|s| s.name == name)) else {
        return Found::Absent;
    };
    let right_shape = set.kind == kind && set.flags.split(',').any(|f| f.trim() == "interval");
    match (&set.comment, right_shape) {
        (Some(comment), true) if comment == MARKER => Found::Ours,
        (None, true) => Found::Ours,
        (Some(comment), _) => Found::Foreign(format!(
            "set {name} in table inet {table} is not nodesync's (its comment is {comment:?})"
        )),
        (None, false) => Found::Foreign(format!(
            "set {name} in table inet {table} is not nodesync's (type {}, flags {:?}; nodesync's is type {kind}, flags interval)",
            set.kind, set.flags
        )),
    }
}

/// The table `name` of family inet, if it exists (every table shows in
/// `nft list chains`, even one without chains).
pub fn nft_table(name: &str) -> Result<Option<NftTable>, ToolError> {
    let chains = run_capture("nft", &["list", "chains"])?;
    if parse_nft_table(&[&chains], name).is_none() {
        return Ok(None);
    }
    let sets = run_capture("nft", &["-t", "list", "sets"])?;
    Ok(parse_nft_table(&[&chains, &sets], name))
}

/// What `iptables -S` (the filter table) says about a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesListing {
    pub lines: Vec<String>,
}

impl IptablesListing {
    pub fn read(tool: &str) -> Result<IptablesListing, ToolError> {
        let text = run_capture(tool, &["-w", "-S"])?;
        Ok(IptablesListing {
            lines: text.lines().map(|l| l.trim().to_string()).collect(),
        })
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        let declared = format!("-N {chain}");
        self.lines.contains(&declared)
    }

    /// The rules of `chain`, without the `-A CHAIN ` prefix.
    pub fn rules(&self, chain: &str) -> Vec<&str> {
        let prefix = format!("-A {chain} ");
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// Whether nodesync may flush and refill `chain`.
    pub fn judge_chain(&self, chain: &str, sets: &[String]) -> Found {
        if !self.has_chain(chain) {
            return Found::Absent;
        }
        let rules = self.rules(chain);
        let marker = format!("-m comment --comment \"{MARKER}\"");
        if rules.first() == Some(&marker.as_str()) {
            return Found::Ours;
        }
        // nodesync 0.1: established, the set, extra networks, drop.
        let legacy = !rules.is_empty()
            && rules.last() == Some(&"-j DROP")
            && rules.iter().all(|rule| {
                *rule == "-j DROP"
                    || *rule == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
                    || sets
                        .iter()
                        .any(|set| *rule == format!("-m set --match-set {set} src -j RETURN"))
                    || (rule.starts_with("-s ") && rule.ends_with(" -j RETURN"))
            });
        if legacy {
            return Found::Ours;
        }
        Found::Foreign(format!(
            "chain {chain} exists and was not created by nodesync (its first rule is {:?}, not the nodesync marker)",
            rules.first().copied().unwrap_or("(none)")
        ))
    }
}

/// Whether nodesync may swap new content into the ipset set `name`.
pub fn judge_ipset(name: &str) -> Result<Found, ToolError> {
    let names = run_capture("ipset", &["list", "-n"])?;
    if !names.lines().any(|l| l.trim() == name) {
        return Ok(Found::Absent);
    }
    let listing = run_args("ipset", &["list".into(), "-t".into(), name.into()])?;
    Ok(judge_ipset_header(name, &listing))
}

/// Judges `ipset list -t` output: nodesync's sets are `hash:net` created
/// with the `comment` flag (its marker), or, from nodesync 0.1, with
/// exactly `hashsize 1024 maxelem 262144`.
pub fn judge_ipset_header(name: &str, listing: &str) -> Found {
    let field = |key: &str| {
        listing
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let kind = field("Type:");
    let header = field("Header:");
    let words: Vec<&str> = header.split_whitespace().collect();
    let is_hash_net = kind == "hash:net";
    let has_comment = words.contains(&"comment");
    // Newer kernels also show bucketsize and initval; nothing else.
    let mut plain = Vec::new();
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "bucketsize" | "initval" => i += 2,
            word => {
                plain.push(word);
                i += 1;
            }
        }
    }
    let legacy = plain.len() == 6
        && plain[0] == "family"
        && plain[2..] == ["hashsize", "1024", "maxelem", "262144"];
    if is_hash_net && (has_comment || legacy) {
        Found::Ours
    } else {
        Found::Foreign(format!(
            "ipset set {name} exists and was not created by nodesync (type {kind}, header {header:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAINS: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\ntable inet bitrix24 {\n\tchain input {\n\t\tcomment \"managed by nodesync; edits are overwritten\"\n\t\ttype filter hook input priority filter - 10; policy accept;\n\t}\n\tchain protected {\n\t\tcomment \"managed by nodesync; edits are overwritten\"\n\t}\n}\ntable inet empty {\n}\n";
    const SETS: &str = "table inet bitrix24 {\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tcomment \"managed by nodesync; edits are overwritten\"\n\t}\n}\n";

    fn table(listing: &str, name: &str) -> NftTable {
        parse_nft_table(&[listing], name).unwrap()
    }

    #[test]
    fn nft_listings_are_parsed_and_merged() {
        let t = parse_nft_table(&[CHAINS, SETS], "bitrix24").unwrap();
        assert_eq!(t.sets.len(), 1);
        assert_eq!(t.sets[0].kind, "ipv4_addr");
        assert_eq!(t.chains.len(), 2);
        assert_eq!(
            t.chains[0].hook.as_deref(),
            Some("filter hook input priority filter - 10; policy accept;")
        );
        assert_eq!(t.chains[1].hook, None);
        assert_eq!(judge_full_table("bitrix24", &t), Found::Ours);
        assert!(parse_nft_table(&[CHAINS], "nope").is_none());
        let empty = parse_nft_table(&[CHAINS], "empty").unwrap();
        assert!(matches!(
            judge_full_table("empty", &empty),
            Found::Foreign(_)
        ));
    }

    #[test]
    fn a_host_table_is_foreign_and_an_old_nodesync_table_is_ours() {
        let host = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tiif \"lo\" accept\n\t}\n\n\tchain forward {\n\t}\n\n\tchain output {\n\t}\n}\n";
        let t = table(host, "filter");
        let Found::Foreign(why) = judge_full_table("filter", &t) else {
            panic!()
        };
        assert!(why.contains("input, forward, output"), "{why}");
        let old = "table inet bitrix24 {\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n\tset nodes_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n\n\tchain input {\n\t}\n\n\tchain protected {\n\t}\n}\n";
        assert_eq!(
            judge_full_table("bitrix24", &table(old, "bitrix24")),
            Found::Ours
        );
        // Half way through an update: the marked --extra sets are there.
        let mut half = table(old, "bitrix24");
        half.sets.push(NftSet {
            name: "extra_v4".into(),
            kind: "ipv4_addr".into(),
            flags: "interval".into(),
            comment: Some(MARKER.into()),
        });
        assert_eq!(judge_full_table("bitrix24", &half), Found::Ours);
        half.sets[2].comment = None;
        assert!(matches!(
            judge_full_table("bitrix24", &half),
            Found::Foreign(_)
        ));
        assert_eq!(
            judge_set(
                "bitrix24",
                Some(&table(old, "bitrix24")),
                "nodes_v4",
                "ipv4_addr"
            ),
            Found::Ours
        );
        let odd = "table inet filter {\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tcomment \"blocklist\"\n\t}\n}\n";
        assert!(matches!(
            judge_set(
                "filter",
                Some(&table(odd, "filter")),
                "nodes_v4",
                "ipv4_addr"
            ),
            Found::Foreign(_)
        ));
    }

    #[test]
    fn ipset_headers() {
        let ours = "Name: bitrix24-v4\nType: hash:net\nRevision: 7\nHeader: family inet hashsize 1024 maxelem 262144 comment bucketsize 12 initval 0x1\n";
        assert_eq!(judge_ipset_header("bitrix24-v4", ours), Found::Ours);
        let old = "Name: bitrix24-v4\nType: hash:net\nHeader: family inet hashsize 1024 maxelem 262144 bucketsize 12 initval 0x26f6badb\n";
        assert_eq!(judge_ipset_header("bitrix24-v4", old), Found::Ours);
        let other = "Name: bitrix24-v4\nType: hash:ip\nHeader: family inet hashsize 4096 maxelem 65536 timeout 600\n";
        assert!(matches!(
            judge_ipset_header("bitrix24-v4", other),
            Found::Foreign(_)
        ));
    }

    #[test]
    fn iptables_chains() {
        let listing = IptablesListing {
            lines: [
                "-N BITRIX24",
                "-N DOCKER",
                "-A BITRIX24 -m comment --comment \"managed by nodesync; edits are overwritten\"",
                "-A BITRIX24 -j DROP",
                "-A DOCKER -d 172.17.0.2/32 -p tcp -m tcp --dport 8443 -j ACCEPT",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert_eq!(listing.judge_chain("BITRIX24", &[]), Found::Ours);
        assert!(matches!(
            listing.judge_chain("DOCKER", &[]),
            Found::Foreign(_)
        ));
        assert_eq!(listing.judge_chain("NOPE", &[]), Found::Absent);
    }
}

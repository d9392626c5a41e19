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

/// An nftables table, as `nft -t list table` shows it (set elements
/// omitted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftTable {
    pub comment: Option<String>,
    pub sets: Vec<NftSet>,
    pub chains: Vec<String>,
    /// Maps, flowtables, counters, quotas…: anything nodesync never makes.
    pub others: Vec<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub name: String,
    pub kind: String,
    pub flags: String,
    pub comment: Option<String>,
}

/// Parses the terse listing of one table.
pub fn parse_nft_table(listing: &str) -> NftTable {
    let mut table = NftTable::default();
    let mut current_set: Option<NftSet> = None;
    for line in listing.lines() {
        let depth = line.len() - line.trim_start_matches('\t').len();
        let text = line.trim();
        match depth {
            1 => {
                if let Some(set) = current_set.take() {
                    table.sets.push(set);
                }
                if let Some(comment) = quoted_after(text, "comment") {
                    table.comment = Some(comment);
                } else if let Some(name) = block_name(text, "set") {
                    current_set = Some(NftSet {
                        name,
                        ..NftSet::default()
                    });
                } else if let Some(name) = block_name(text, "chain") {
                    table.chains.push(name);
                } else if text != "}" && !text.is_empty() {
                    table.others.push(text.trim_end_matches(" {").to_string());
                }
            }
            2 => {
                if let Some(set) = current_set.as_mut() {
                    if let Some(kind) = text.strip_prefix("type ") {
                        set.kind = kind.to_string();
                    } else if let Some(flags) = text.strip_prefix("flags ") {
                        set.flags = flags.to_string();
                    } else if let Some(comment) = quoted_after(text, "comment") {
                        set.comment = Some(comment);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(set) = current_set.take() {
        table.sets.push(set);
    }
    table
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

/// Whether nodesync may replace the whole table (full mode).
pub fn judge_full_table(name: &str, table: &NftTable) -> Found {
    if marked(&table.comment) {
        return Found::Ours;
    }
    let set_names: Vec<&str> = table.sets.iter().map(|s| s.name.as_str()).collect();
    let legacy = table.comment.is_none()
        && table.others.is_empty()
        && set_names.len() == 2
        && set_names.contains(&"nodes_v4")
        && set_names.contains(&"nodes_v6")
        && table.chains.iter().any(|c| c == "protected")
        && table
            .chains
            .iter()
            .all(|c| ["input", "forward", "protected"].contains(&c.as_str()));
    if legacy {
        return Found::Ours;
    }
    let what = match &table.comment {
        Some(comment) => format!("its comment is {comment:?}"),
        None => format!(
            "it has no nodesync marker; it holds chains [{}] and sets [{}]",
            table.chains.join(", "),
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

/// The table `name` of family inet, if it exists.
pub fn nft_table(name: &str) -> Result<Option<NftTable>, ToolError> {
    let tables = run_capture("nft", &["list", "tables"])?;
    let wanted = format!("table inet {name}");
    if !tables.lines().any(|l| l.trim() == wanted) {
        return Ok(None);
    }
    let listing = run_capture("nft", &["-t", "list", "table", "inet", name])?;
    Ok(Some(parse_nft_table(&listing)))
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

    const OURS: &str = "table inet bitrix24 {\n\tcomment \"managed by nodesync; edits are overwritten\"\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tcomment \"managed by nodesync; edits are overwritten\"\n\t}\n\n\tchain input {\n\t\ttype filter hook input priority filter - 10; policy accept;\n\t}\n}\n";

    #[test]
    fn nft_listing_is_parsed() {
        let t = parse_nft_table(OURS);
        assert_eq!(t.comment.as_deref(), Some(MARKER));
        assert_eq!(t.sets.len(), 1);
        assert_eq!(t.sets[0].kind, "ipv4_addr");
        assert_eq!(t.chains, ["input"]);
        assert_eq!(judge_full_table("bitrix24", &t), Found::Ours);
    }

    #[test]
    fn a_host_table_is_foreign_and_an_old_nodesync_table_is_ours() {
        let host = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tiif \"lo\" accept\n\t}\n\n\tchain forward {\n\t}\n\n\tchain output {\n\t}\n}\n";
        let t = parse_nft_table(host);
        let Found::Foreign(why) = judge_full_table("filter", &t) else {
            panic!()
        };
        assert!(why.contains("input, forward, output"), "{why}");
        let old = "table inet bitrix24 {\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n\tset nodes_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n\n\tchain input {\n\t}\n\n\tchain protected {\n\t}\n}\n";
        assert_eq!(
            judge_full_table("bitrix24", &parse_nft_table(old)),
            Found::Ours
        );
        assert_eq!(
            judge_set(
                "bitrix24",
                Some(&parse_nft_table(old)),
                "nodes_v4",
                "ipv4_addr"
            ),
            Found::Ours
        );
        let odd = "table inet filter {\n\tset nodes_v4 {\n\t\ttype ipv4_addr\n\t\tcomment \"blocklist\"\n\t}\n}\n";
        assert!(matches!(
            judge_set(
                "filter",
                Some(&parse_nft_table(odd)),
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

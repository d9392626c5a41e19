//! Loading rendered rules into the kernel with the system's own tools,
//! after checking that it is safe to.
//!
//! First, nothing is changed while anything is checked: the tools exist,
//! `--iface` names an interface of this host, every table, chain and set
//! about to be replaced is nodesync's own ([`crate::owner`]), and the new
//! rules would not lock the admin out of SSH ([`crate::guard`]). Then each
//! format is loaded so that a failure leaves the previous rules in place,
//! and so that no packet of a listed client meets a half-loaded state:
//! nftables is updated in place ([`crate::nftupdate`]: new sets filled
//! before any rule uses them, then one transaction), `ipset restore` fills
//! a set aside and swaps it in (or stops before the swap),
//! `iptables-restore` commits a table at once.

use b24_nodes::NodeList;

use crate::cli::exit;
use crate::emit::{self, Family, Format, IpsetPlan, RuleOptions};
use crate::guard::{self, Host, Lockout};
use crate::nftupdate::{self, Plan};
use crate::owner::{self, Found, IptablesListing, NftTable};
pub use crate::tools::find_tool;
use crate::tools::{self, ToolError, run_args, run_capture, run_with_file, run_with_stdin};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "refused to apply: {0}; choose another --table (nodesync only ever replaces what it created); nothing was changed"
    )]
    NotOurs(String),
    #[error(
        "--iface {iface}: there is no such network interface here (interfaces: {known}); nothing was changed"
    )]
    NoInterface { iface: String, known: String },
    #[error(
        "refused to apply, nothing was changed: {}; keep the port out of --ports, add your address with --extra, filter only the WAN with --iface, or pass --allow-lockout if you have another way in (a console)",
        .0.iter().map(Lockout::to_string).collect::<Vec<_>>().join("; ")
    )]
    Lockout(Vec<Lockout>),
    #[error(
        "the host has IPv6 but ip6tables was not found: IPv6 clients would reach the protected ports unfiltered; install the iptables package (it has ip6tables); nothing was changed"
    )]
    NoIp6tables,
    #[error("--apply is not available for --emit {0}: it only writes a file")]
    Unsupported(String),
}

impl ApplyError {
    /// The exit code a run reports for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::Tool(_) | ApplyError::NoIp6tables => exit::APPLY_FAILED,
            ApplyError::NotOurs(_) => exit::NOT_OURS,
            ApplyError::Lockout(_) => exit::LOCKOUT,
            ApplyError::NoInterface { .. } | ApplyError::Unsupported(_) => exit::USAGE,
        }
    }
}

/// How to apply.
#[derive(Debug, Clone, Copy)]
pub struct Safety {
    /// Skip the lock-out guard (`--allow-lockout`).
    pub allow_lockout: bool,
}

/// What a successful apply has to say besides "loaded".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The other firewall mode's rules for this `--table` (left by an
    /// earlier `--apply` in that mode) could not all be removed: why. The
    /// rules asked for are in force either way.
    pub leftovers: Option<String>,
}

/// Checks, then loads the rules for `format` (`rendered` is what `render`
/// produced for it).
///
/// nftables (full table) and iptables are two ways of filtering the same
/// ports: once one is in force, what the other left for the same `--table`
/// is removed — never before, so the ports are never unguarded, and never
/// left, because no longer updated it would go on filtering with the list
/// it had (a server added to the list later would be refused). `--emit
/// ipset` and `--set-only` fill sets for the admin's own rules and remove
/// nothing.
pub fn apply(
    format: Format,
    rendered: &str,
    list: &NodeList,
    options: &RuleOptions,
    safety: Safety,
) -> Result<Applied, ApplyError> {
    match format {
        Format::Nftables => {
            tools::require("nft")?;
            check_interface(options)?;
            let live = check_nft_ownership(options)?;
            if options.set_only {
                // The sets are refilled in place: no moment without them.
                run_with_file("nft", &["-f"], rendered)?;
                return Ok(Applied::default());
            }
            check_lockout(list, options, safety)?;
            match nftupdate::plan(live.as_ref()) {
                Plan::InPlace { missing_sets } => {
                    if !missing_sets.is_empty() {
                        let create = nftupdate::create_sets(list, options, &missing_sets);
                        run_with_file("nft", &["-f"], &create)?;
                    }
                    let update = nftupdate::update(list, options, live.as_ref(), &missing_sets);
                    run_with_file("nft", &["-f"], &update)?;
                }
                Plan::Replace(_) => run_with_file("nft", &["-f"], rendered)?,
            }
            Ok(Applied {
                leftovers: remove_iptables_mode(options).err(),
            })
        }
        Format::Ipset => {
            tools::require("ipset")?;
            let plan = ipset_plan(options, &[false, true])?;
            load_ipset(list, options, Family::Both, &plan)?;
            Ok(Applied::default())
        }
        Format::Iptables | Format::Ip6tables => {
            let families: Vec<bool> = if format == Format::Ip6tables {
                vec![true]
            } else if ipv6_enabled() {
                vec![false, true]
            } else {
                vec![false]
            };
            tools::require("ipset")?;
            for &v6 in &families {
                let (tool, restore) = iptables_tools(v6);
                match (tools::require(tool), tools::require(restore)) {
                    (Ok(_), Ok(_)) => {}
                    _ if v6 && format == Format::Iptables => return Err(ApplyError::NoIp6tables),
                    (Err(e), _) | (_, Err(e)) => return Err(e.into()),
                }
            }
            check_interface(options)?;
            let plan = ipset_plan(options, &families)?;
            let mut listings = Vec::new();
            for &v6 in &families {
                let listing = IptablesListing::read(iptables_tools(v6).0)?;
                let chain = options.iptables_chain();
                if let Found::Foreign(why) = listing.judge_chain(&chain, &[options.ipset_name(v6)])
                {
                    return Err(ApplyError::NotOurs(why));
                }
                listings.push((v6, listing));
            }
            check_lockout(list, options, safety)?;
            let family = match families.as_slice() {
                [true] => Family::V6,
                [false] => Family::V4,
                _ => Family::Both,
            };
            // The rules name the sets, so the sets come first.
            load_ipset(list, options, family, &plan)?;
            for (v6, listing) in listings {
                let (tool, restore) = iptables_tools(v6);
                let rules = emit::render(
                    if v6 {
                        Format::Ip6tables
                    } else {
                        Format::Iptables
                    },
                    list,
                    options,
                );
                run_with_file(restore, &["-w", "--noflush"], &rules)?;
                ensure_jumps(tool, &listing, options)?;
            }
            // Only when every family of the host is filtered here now.
            let leftovers = (format == Format::Iptables)
                .then(|| remove_nftables_mode(options).err())
                .flatten();
            Ok(Applied { leftovers })
        }
        Format::Nginx | Format::Plain | Format::Json => {
            Err(ApplyError::Unsupported(format.name().to_string()))
        }
    }
}

/// With no list at all, rules that reference nodesync's ipset sets (saved
/// by netfilter-persistent, say) must still load at boot: the sets are
/// created empty if they do not exist, which admits nobody but `--extra`
/// on the protected ports (fail closed). Existing sets are left alone.
pub fn ensure_sets_exist(format: Format, options: &RuleOptions) -> Result<(), ApplyError> {
    let families: &[bool] = match format {
        Format::Ipset | Format::Iptables => &[false, true],
        Format::Ip6tables => &[true],
        _ => return Ok(()),
    };
    tools::require("ipset")?;
    let plan = ipset_plan(options, families)?;
    let mut script = String::new();
    for &v6 in families {
        if !plan.live_exist[usize::from(v6)] {
            let family = if v6 { "inet6" } else { "inet" };
            script.push_str(&format!(
                "create {} hash:net family {family} hashsize 1024 maxelem 262144 comment -exist\n",
                options.ipset_name(v6)
            ));
        }
    }
    if !script.is_empty() {
        run_with_stdin("ipset", &["restore"], &script)?;
    }
    Ok(())
}

fn iptables_tools(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6tables", "ip6tables-restore")
    } else {
        ("iptables", "iptables-restore")
    }
}

/// Whether this network namespace has IPv6 at all (else there is nothing
/// for ip6tables to filter).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

fn check_interface(options: &RuleOptions) -> Result<(), ApplyError> {
    let Some(iface) = &options.iface else {
        return Ok(());
    };
    let known = interfaces();
    if known.iter().any(|name| name == iface) {
        return Ok(());
    }
    Err(ApplyError::NoInterface {
        iface: iface.clone(),
        known: known.join(", "),
    })
}

/// This network namespace's interfaces, from /proc/net/dev (which follows
/// the namespace of the process reading it, unlike /sys outside `ip netns
/// exec`).
fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect()
}

/// Checks that the table (or, with `--set-only`, its two sets) may be
/// changed, and returns the live table as the check read it.
fn check_nft_ownership(options: &RuleOptions) -> Result<Option<NftTable>, ApplyError> {
    let table = owner::nft_table(&options.table)?;
    if options.set_only {
        for (name, kind) in [("nodes_v4", "ipv4_addr"), ("nodes_v6", "ipv6_addr")] {
            if let Found::Foreign(why) =
                owner::judge_set(&options.table, table.as_ref(), name, kind)
            {
                return Err(ApplyError::NotOurs(why));
            }
        }
        return Ok(table);
    }
    if let Some(live) = &table
        && let Found::Foreign(why) = owner::judge_full_table(&options.table, live)
    {
        return Err(ApplyError::NotOurs(format!(
            "{why} (to fill sets in a table of your own, use --set-only)"
        )));
    }
    Ok(table)
}

fn check_lockout(list: &NodeList, options: &RuleOptions, safety: Safety) -> Result<(), ApplyError> {
    if safety.allow_lockout {
        return Ok(());
    }
    let host = Host::read(&options.ports, options.iface.as_deref());
    let found = guard::lockouts(&host, list, options);
    if found.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Lockout(found))
    }
}

/// Checks the live sets of `families` and picks unique temporary names.
fn ipset_plan(options: &RuleOptions, families: &[bool]) -> Result<IpsetPlan, ApplyError> {
    let mut live_exist = [false, false];
    for &v6 in families {
        match owner::judge_ipset(&options.ipset_name(v6))? {
            Found::Absent => {}
            Found::Ours => live_exist[usize::from(v6)] = true,
            Found::Foreign(why) => return Err(ApplyError::NotOurs(why)),
        }
    }
    let tag: u32 = rand_tag();
    Ok(IpsetPlan {
        tmp_prefix: Some(format!("nodesync-{tag:08x}-")),
        live_exist,
    })
}

/// A tag no other run uses at the same time: the process id mixed with the
/// clock.
fn rand_tag() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id().rotate_left(16) ^ nanos
}

fn load_ipset(
    list: &NodeList,
    options: &RuleOptions,
    family: Family,
    plan: &IpsetPlan,
) -> Result<(), ApplyError> {
    let script = emit::ipset(list, options, family, plan);
    if let Err(e) = run_with_stdin("ipset", &["restore"], &script) {
        // A failed restore stops before the swap; its temporary sets would
        // linger.
        if let Some(prefix) = &plan.tmp_prefix {
            for digit in ['4', '6'] {
                let _ = run_capture("ipset", &["destroy", &format!("{prefix}{digit}")]);
            }
        }
        return Err(e.into());
    }
    Ok(())
}

/// Makes INPUT (and, for DNAT-ed traffic, DOCKER-USER when Docker made it,
/// else FORWARD) jump to our chain exactly as configured, at the top, and
/// removes jumps to it left by another configuration. Each jump carries a
/// comment naming its configuration, which is how it is recognised.
fn ensure_jumps(
    tool: &str,
    before: &IptablesListing,
    options: &RuleOptions,
) -> Result<(), ApplyError> {
    let chain = options.iptables_chain();
    let forward_parent = if before.has_chain("DOCKER-USER") {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    let mut wanted: Vec<(&str, Vec<String>)> = vec![("INPUT", emit::jump_rule(options))];
    if options.forward {
        for rule in emit::forward_rules(options) {
            wanted.push((forward_parent, rule));
        }
    }
    let listing = IptablesListing::read(tool)?;
    let target = format!("-j {chain}");
    let comment_of = |rule: &[String]| -> String {
        let at = rule
            .iter()
            .position(|w| w == "--comment")
            .expect("our rules carry a comment");
        format!("--comment \"{}\"", rule[at + 1])
    };
    // Insert what is missing first, so that the port is never unguarded.
    for (parent, rule) in wanted.iter().rev() {
        let present = listing
            .rules(parent)
            .iter()
            .any(|l| l.contains(&comment_of(rule)) && l.ends_with(&target));
        if !present {
            let mut args = vec![
                "-w".to_string(),
                "-I".into(),
                parent.to_string(),
                "1".into(),
            ];
            args.extend(rule.iter().cloned());
            run_args(tool, &args)?;
        }
    }
    for parent in ["INPUT", "FORWARD", "DOCKER-USER"] {
        for line in listing.rules(parent) {
            if !line.ends_with(&target) {
                continue;
            }
            let keep = wanted
                .iter()
                .any(|(p, rule)| *p == parent && line.contains(&comment_of(rule)));
            if !keep {
                let mut args = vec!["-w".to_string(), "-D".into(), parent.to_string()];
                args.extend(shell_words(line));
                run_args(tool, &args)?;
            }
        }
    }
    Ok(())
}

/// Removes what `--emit iptables --apply` left for this `--table`: the
/// jumps into its chain and the chain, in each family, when the chain is
/// nodesync's (the ipset sets stay: the admin's own rules may name them).
/// Called once the nftables rules are in force. A host without iptables
/// (no tool, or a listing the kernel cannot give) has nothing left.
fn remove_iptables_mode(options: &RuleOptions) -> Result<(), String> {
    let problems: Vec<String> = [false, true]
        .into_iter()
        .filter_map(|v6| remove_iptables_chain(iptables_tools(v6).0, options, v6).err())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn remove_iptables_chain(tool: &str, options: &RuleOptions, v6: bool) -> Result<(), String> {
    let chain = options.iptables_chain();
    let target = format!("-j {chain}");
    if find_tool(tool).is_none() {
        return Ok(());
    }
    let Ok(listing) = IptablesListing::read(tool) else {
        return Ok(());
    };
    if listing.judge_chain(&chain, &[options.ipset_name(v6)]) != Found::Ours {
        return Ok(());
    }
    let failed = |e: ToolError| {
        format!(
            "{tool} chain {chain} of an earlier --emit iptables --apply still filters, with the list it had: {e}"
        )
    };
    for parent in ["INPUT", "FORWARD", "DOCKER-USER"] {
        for line in listing.rules(parent) {
            if line.ends_with(&target) {
                let mut args = vec!["-w".to_string(), "-D".into(), parent.to_string()];
                args.extend(shell_words(line));
                run_args(tool, &args).map_err(failed)?;
            }
        }
    }
    let now = IptablesListing::read(tool).map_err(failed)?;
    if let Some(jump) = now
        .lines
        .iter()
        .find(|l| l.starts_with("-A ") && l.ends_with(&target))
    {
        return Err(format!(
            "{tool} chain {chain} of an earlier --emit iptables --apply is left in place, with the list it had: a rule of yours still jumps to it ({jump}); remove that rule, and the chain goes on the next run"
        ));
    }
    for action in ["-F", "-X"] {
        run_args(tool, &["-w".into(), action.into(), chain.clone()]).map_err(failed)?;
    }
    Ok(())
}

/// Removes the table that `--emit nftables --apply` left under this name,
/// when it is nodesync's whole table (not one `--set-only` fills). Called
/// once the iptables rules are in force for every family of the host.
fn remove_nftables_mode(options: &RuleOptions) -> Result<(), String> {
    if find_tool("nft").is_none() {
        return Ok(());
    }
    let Ok(Some(table)) = owner::nft_table(&options.table) else {
        return Ok(());
    };
    if owner::judge_full_table(&options.table, &table) != Found::Ours {
        return Ok(());
    }
    run_capture("nft", &["delete", "table", "inet", &options.table])
        .map(drop)
        .map_err(|e| {
            format!(
                "nftables table inet {} of an earlier --emit nftables --apply still filters, with the list it had: {e}",
                options.table
            )
        })
}

/// Splits an `iptables -S` rule into arguments, keeping quoted comments
/// whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut has_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has_word = true;
            }
            '\\' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            c if c.is_whitespace() && !quoted => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            shell_words(
                "-p tcp -m comment --comment \"nodesync: ports 443,80 on eth0\" -j BITRIX24"
            ),
            [
                "-p",
                "tcp",
                "-m",
                "comment",
                "--comment",
                "nodesync: ports 443,80 on eth0",
                "-j",
                "BITRIX24"
            ]
        );
    }
}

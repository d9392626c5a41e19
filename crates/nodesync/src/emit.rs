//! Rendering a nodes list as firewall input, one function per format.
//!
//! Every output is deterministic for a given list and options (sorted
//! networks, no timestamps), so "did the rules change?" is a byte compare and
//! golden tests are exact.
//!
//! What the firewall formats do, whatever the list: they only ever drop
//! (new connections to the protected ports from outside the list), never
//! accept on the host's behalf — an nftables `accept` in our chain ends only
//! our chain, and the iptables chain `RETURN`s — so the host's own rules
//! still decide everything else. Loopback (the box reaching itself, health
//! checks) and established connections are never dropped.

use std::fmt::Write;

use b24_nodes::{NodeList, display_network};
use ipnet::IpNet;

/// The output formats `--emit` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One `nft -f` script: a self-contained `table inet` with the sets and
    /// the chains, replaced in one transaction.
    Nftables,
    /// `ipset restore` input: both sets rebuilt aside and swapped in.
    Ipset,
    /// `iptables-restore --noflush` input (IPv4) using the ipset set; with
    /// `--apply`, IPv6 is loaded too (ip6tables).
    Iptables,
    /// `ip6tables-restore --noflush` input (IPv6) using the ipset set.
    Ip6tables,
    /// `allow …;` lines ending in `deny all;`, for an nginx `include`.
    Nginx,
    /// One network per line.
    Plain,
    /// The `app.json` format (a file source for b24-edge).
    Json,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Nftables => "nftables",
            Format::Ipset => "ipset",
            Format::Iptables => "iptables",
            Format::Ip6tables => "ip6tables",
            Format::Nginx => "nginx",
            Format::Plain => "plain",
            Format::Json => "json",
        }
    }
}

/// What the firewall formats protect and let through besides the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOptions {
    /// Protected TCP ports; other ports are not touched.
    pub ports: Vec<u16>,
    /// Only traffic arriving on this interface is filtered (the WAN side).
    pub iface: Option<String>,
    /// nftables table name; also the prefix of ipset set names and the
    /// iptables chain name.
    pub table: String,
    /// nftables: emit only the two sets, for admins who keep their own chains.
    pub set_only: bool,
    /// Always-allowed networks (office, VPN), outside the replaced sets.
    pub extra: Vec<IpNet>,
    /// Also filter connections DNAT-ed to the protected ports (Docker's
    /// `-p 443:8443`, Kubernetes hostPort), which go through the forward
    /// hook and never reach input.
    pub forward: bool,
}

/// The comment that marks a table, chain or set nodesync created: it only
/// ever replaces or flushes what carries it.
pub const MARKER: &str = "managed by nodesync; edits are overwritten";

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            ports: vec![443],
            iface: None,
            table: "bitrix24".into(),
            set_only: false,
            extra: Vec::new(),
            forward: true,
        }
    }
}

impl RuleOptions {
    /// ipset set name for a family ("bitrix24-v4"); ipset names are at most
    /// 31 characters, which option validation guarantees.
    pub fn ipset_name(&self, v6: bool) -> String {
        format!("{}-{}", self.table, if v6 { "v6" } else { "v4" })
    }

    /// The iptables chain that holds the admission rules.
    pub fn iptables_chain(&self) -> String {
        self.table.to_ascii_uppercase()
    }

    /// The comment on nodesync's jumps into its chain: it says what the
    /// jump is for, so a jump left by another configuration is recognised
    /// and removed.
    pub fn jump_comment(&self, what: &str) -> String {
        let iface = self
            .iface
            .as_ref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default();
        format!("nodesync: {what}{iface}")
    }

    fn port_list(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        ports.join(", ")
    }

    fn extra_of(&self, v6: bool) -> Vec<&IpNet> {
        self.extra
            .iter()
            .filter(|net| matches!(net, IpNet::V6(_)) == v6)
            .collect()
    }
}

/// Renders `list` in `format`.
pub fn render(format: Format, list: &NodeList, options: &RuleOptions) -> String {
    match format {
        Format::Nftables if options.set_only => nftables_sets_only(list, options),
        Format::Nftables => nftables(list, options),
        Format::Ipset => ipset(list, options, Family::Both, &IpsetPlan::standalone()),
        Format::Iptables => iptables(list, options, false),
        Format::Ip6tables => iptables(list, options, true),
        Format::Nginx => nginx(list, options),
        Format::Plain => plain(list),
        Format::Json => list.to_json(),
    }
}

fn header(out: &mut String, what: &str) {
    let _ = writeln!(out, "# Bitrix24 event-delivery servers: {what}.");
    let _ = writeln!(
        out,
        "# Generated by nodesync; edits are overwritten on the next run."
    );
}

/// A set's declaration inside a `table` block, with its elements.
pub fn set_declaration(out: &mut String, name: &str, kind: &str, nets: &[String]) {
    let _ = write!(
        out,
        "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n\t\tcomment \"{MARKER}\"\n"
    );
    if !nets.is_empty() {
        out.push_str("\t\telements = {\n");
        for chunk in nets.chunks(8) {
            let _ = writeln!(out, "\t\t\t{},", chunk.join(", "));
        }
        out.push_str("\t\t}\n");
    }
    out.push_str("\t}\n");
}

fn nets_v4(list: &NodeList) -> Vec<String> {
    list.v4()
        .iter()
        .map(|n| display_network(&IpNet::V4(*n)))
        .collect()
}

fn nets_v6(list: &NodeList) -> Vec<String> {
    list.v6()
        .iter()
        .map(|n| display_network(&IpNet::V6(*n)))
        .collect()
}

/// The named sets of nodesync's table and their types: the list's two
/// families, then `--extra`'s. `--extra` lives in sets of its own, filled
/// in place like the list's, so that replacing the rules never creates a
/// set the new rules look up (see [`crate::nftupdate`]).
pub const NFT_SETS: [(&str, &str); 4] = [
    ("nodes_v4", "ipv4_addr"),
    ("nodes_v6", "ipv6_addr"),
    ("extra_v4", "ipv4_addr"),
    ("extra_v6", "ipv6_addr"),
];

/// One chain of nodesync's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChainSpec {
    pub name: &'static str,
    /// For a base chain, what follows `type`, exactly as `nft list chains`
    /// shows it (so that a live chain can be compared with it).
    pub hook: Option<String>,
    pub rules: Vec<String>,
}

/// The chains of nodesync's table, jump targets last. A protected port is
/// one rule of its own rather than an anonymous set: nothing in a rule is
/// created along with it, whatever set type the kernel would pick.
pub fn nft_chains(options: &RuleOptions) -> Vec<NftChainSpec> {
    let iface = options
        .iface
        .as_ref()
        .map(|i| format!("iifname \"{i}\" "))
        .unwrap_or_default();
    let mut chains = vec![NftChainSpec {
        name: "input",
        hook: Some("filter hook input priority filter - 10; policy accept;".into()),
        rules: options
            .ports
            .iter()
            .map(|port| format!("{iface}tcp dport {port} jump protected"))
            .collect(),
    }];
    if options.forward {
        // A published container port is DNAT-ed before routing: the packet
        // is forwarded with the container's port, and only conntrack still
        // knows the port the client asked for.
        chains.push(NftChainSpec {
            name: "forward",
            hook: Some("filter hook forward priority filter - 10; policy accept;".into()),
            rules: options
                .ports
                .iter()
                .map(|port| {
                    format!(
                        "{iface}ct status dnat ct direction original meta l4proto tcp ct original proto-dst {port} jump protected"
                    )
                })
                .collect(),
        });
    }
    chains.push(NftChainSpec {
        name: "protected",
        hook: None,
        rules: [
            "iif \"lo\" accept",
            "ct state established,related accept",
            "ip saddr @nodes_v4 accept",
            "ip6 saddr @nodes_v6 accept",
            "ip saddr @extra_v4 accept",
            "ip6 saddr @extra_v6 accept",
            "counter drop",
        ]
        .map(String::from)
        .to_vec(),
    });
    chains
}

/// What each of [`NFT_SETS`] holds, in the same order.
pub fn nft_set_contents(list: &NodeList, options: &RuleOptions) -> [Vec<String>; 4] {
    let extra = |v6| {
        options
            .extra_of(v6)
            .into_iter()
            .map(display_network)
            .collect()
    };
    [nets_v4(list), nets_v6(list), extra(false), extra(true)]
}

/// A chain's declaration inside a `table` block: its comment, its hook if
/// it is a base chain, and `rules` (none when they are added separately).
pub fn nft_chain_declaration(out: &mut String, chain: &NftChainSpec, rules: &[String]) {
    let _ = write!(out, "\tchain {} {{\n\t\tcomment \"{MARKER}\"\n", chain.name);
    if let Some(hook) = &chain.hook {
        let _ = writeln!(out, "\t\ttype {hook}");
    }
    for rule in rules {
        let _ = writeln!(out, "\t\t{rule}");
    }
    out.push_str("\t}\n");
}

/// The full nftables script, for a file loaded at boot (`--output`, a glob
/// include) or by hand. It declares the table (so that the delete never
/// fails on a first run), deletes it, and defines it again with its sets
/// and chains, as one `nft -f` transaction: whatever an earlier version or
/// configuration left in the table is gone. `--apply` does not load this
/// on a live table — sets created in the same transaction as the rules
/// that look them up match nothing for a moment on current kernels (see
/// [`crate::nftupdate`]) — but reaches the same table. The table carries
/// [`MARKER`]; `--apply` replaces only a table that does.
fn nftables(list: &NodeList, options: &RuleOptions) -> String {
    let table = &options.table;
    let mut out = String::new();
    header(&mut out, "nftables ruleset for `nft -f`");
    let _ = write!(
        out,
        "# Protected TCP ports: {}{}. Other ports and other traffic are not touched.\n\n",
        options.port_list(),
        if options.forward {
            " (also when DNAT-ed to a container)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "table inet {table} {{\n\tcomment \"{MARKER}\"\n}}");
    let _ = writeln!(out, "delete table inet {table}");
    let _ = writeln!(out, "table inet {table} {{\n\tcomment \"{MARKER}\"");
    for ((name, kind), nets) in NFT_SETS.iter().zip(nft_set_contents(list, options)) {
        set_declaration(&mut out, name, kind, &nets);
    }
    // Each chain carries the marker too: `nft list chains` shows chain
    // comments cheaply, where the table's needs a listing of every element.
    for chain in nft_chains(options) {
        out.push('\n');
        nft_chain_declaration(&mut out, &chain, &chain.rules);
    }
    out.push_str("}\n");
    out
}

/// Only the two sets, flushed and refilled in one transaction, in a table
/// that may hold the admin's own chains: the table itself is never flushed
/// or replaced, only the two sets (which carry [`MARKER`]).
fn nftables_sets_only(list: &NodeList, options: &RuleOptions) -> String {
    let table = &options.table;
    let mut out = String::new();
    header(&mut out, "nftables sets for `nft -f` (sets only)");
    let _ = write!(
        out,
        "# Reference them from your own rules: ip saddr @nodes_v4, ip6 saddr @nodes_v6.\n\
         # To have them at boot before your rules use them, declare them in your\n\
         # ruleset exactly as below (the comment tells nodesync they are its own).\n\n"
    );
    let _ = writeln!(out, "table inet {table} {{");
    set_declaration(&mut out, "nodes_v4", "ipv4_addr", &[]);
    set_declaration(&mut out, "nodes_v6", "ipv6_addr", &[]);
    out.push_str("}\n");
    for (name, nets) in [("nodes_v4", nets_v4(list)), ("nodes_v6", nets_v6(list))] {
        refill_set(&mut out, table, name, &nets);
    }
    out
}

/// Replaces a live set's contents within the script's transaction: the set
/// keeps answering from its old contents until the commit.
pub fn refill_set(out: &mut String, table: &str, name: &str, nets: &[String]) {
    let _ = writeln!(out, "flush set inet {table} {name}");
    if !nets.is_empty() {
        let _ = writeln!(out, "add element inet {table} {name} {{");
        for chunk in nets.chunks(8) {
            let _ = writeln!(out, "\t{},", chunk.join(", "));
        }
        out.push_str("}\n");
    }
}

/// Which families an ipset script covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    Both,
}

/// How an ipset script names its temporary sets and whether it creates the
/// live ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsetPlan {
    /// The temporary set of a family is `tmp_prefix` + `4` or `6`.
    pub tmp_prefix: Option<String>,
    /// Whether the live sets already exist (then they are not created: a
    /// set an earlier version made without the `comment` flag could not be
    /// "created" again with it, but swaps fine).
    pub live_exist: [bool; 2],
}

impl IpsetPlan {
    /// For a file: deterministic temporary names (`<set>-new`), live sets
    /// created if missing.
    pub fn standalone() -> IpsetPlan {
        IpsetPlan {
            tmp_prefix: None,
            live_exist: [false, false],
        }
    }
}

/// The `create` options of nodesync's sets; `comment` is the marker that
/// tells nodesync's sets from others.
const IPSET_OPTIONS: &str = "hashsize 1024 maxelem 262144 comment";

/// `ipset restore` input. Each set is filled under a temporary name and
/// swapped with the live one, so the live set is never empty or partial; if
/// any line fails, `ipset restore` stops before the swap and the live set
/// keeps its old content.
pub fn ipset(list: &NodeList, options: &RuleOptions, family: Family, plan: &IpsetPlan) -> String {
    let mut out = String::new();
    header(&mut out, "ipset sets for `ipset restore`");
    let families: &[bool] = match family {
        Family::V4 => &[false],
        Family::V6 => &[true],
        Family::Both => &[false, true],
    };
    for &v6 in families {
        let name = options.ipset_name(v6);
        let tmp = match &plan.tmp_prefix {
            Some(prefix) => format!("{prefix}{}", if v6 { 6 } else { 4 }),
            None => format!("{name}-new"),
        };
        let inet = if v6 { "inet6" } else { "inet" };
        let nets = if v6 { nets_v6(list) } else { nets_v4(list) };
        let create = format!("hash:net family {inet} {IPSET_OPTIONS}");
        if !plan.live_exist[usize::from(v6)] {
            let _ = writeln!(out, "create {name} {create} -exist");
        }
        let _ = writeln!(out, "create {tmp} {create} -exist");
        let _ = writeln!(out, "flush {tmp}");
        for net in nets {
            let _ = writeln!(out, "add {tmp} {net}");
        }
        let _ = writeln!(out, "swap {tmp} {name}");
        let _ = writeln!(out, "destroy {tmp}");
    }
    out
}

/// `iptables-restore --noflush` input: a chain of our own, flushed and
/// refilled (declaring a user chain under `--noflush` flushes it), whose
/// first rule is the [`MARKER`] comment. Traffic that passes returns to the
/// calling chain, so the admin's later rules still apply.
fn iptables(list: &NodeList, options: &RuleOptions, v6: bool) -> String {
    let chain = options.iptables_chain();
    let set = options.ipset_name(v6);
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let mut out = String::new();
    header(
        &mut out,
        &format!("{tool} rules for `{tool}-restore --noflush`"),
    );
    let _ = writeln!(
        out,
        "# Needs the ipset set {set} (nodesync --emit ipset) and jumps into {chain}:"
    );
    let _ = writeln!(
        out,
        "#   {tool} -I INPUT 1 {}",
        shell_line(&jump_rule(options))
    );
    if options.forward {
        for rule in forward_rules(options) {
            let _ = writeln!(out, "#   {tool} -I DOCKER-USER 1 {}", shell_line(&rule));
        }
    }
    let other = if v6 { list.v4().len() } else { list.v6().len() };
    if other > 0 {
        let (family, format) = if v6 {
            ("IPv4", "iptables")
        } else {
            ("IPv6", "ip6tables")
        };
        let _ = writeln!(
            out,
            "# The list also has {other} {family} networks, which these rules do not cover:\n\
             # use --emit {format} for them too (nodesync --apply loads both)."
        );
    }
    out.push_str("*filter\n");
    let _ = writeln!(out, ":{chain} - [0:0]");
    let _ = writeln!(out, "-A {chain} -m comment --comment \"{MARKER}\"");
    let _ = writeln!(out, "-A {chain} -i lo -j RETURN");
    let _ = writeln!(
        out,
        "-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    );
    let _ = writeln!(out, "-A {chain} -m set --match-set {set} src -j RETURN");
    for net in options.extra_of(v6) {
        let _ = writeln!(out, "-A {chain} -s {} -j RETURN", display_network(net));
    }
    let _ = writeln!(out, "-A {chain} -j DROP");
    out.push_str("COMMIT\n");
    out
}

/// The INPUT rule that sends the protected ports to our chain (without the
/// leading `-I INPUT`), for `iptables -C` / `-I`.
pub fn jump_rule(options: &RuleOptions) -> Vec<String> {
    let ports: Vec<String> = options.ports.iter().map(u16::to_string).collect();
    let mut rule = iface_match(options);
    rule.extend(words("-p tcp -m multiport --dports"));
    rule.push(ports.join(","));
    rule.extend(words("-m comment --comment"));
    rule.push(options.jump_comment(&format!("ports {}", ports.join(","))));
    rule.extend(["-j".to_string(), options.iptables_chain()]);
    rule
}

/// The DOCKER-USER (or FORWARD) rules that send connections DNAT-ed from a
/// protected port to our chain: one per port, since conntrack matches one
/// original port (or range) at a time.
pub fn forward_rules(options: &RuleOptions) -> Vec<Vec<String>> {
    options
        .ports
        .iter()
        .map(|port| {
            let mut rule = iface_match(options);
            rule.extend(words(
                "-p tcp -m conntrack --ctstate DNAT --ctdir ORIGINAL --ctorigdstport",
            ));
            rule.push(port.to_string());
            rule.extend(words("-m comment --comment"));
            rule.push(options.jump_comment(&format!("forwarded port {port}")));
            rule.extend(["-j".to_string(), options.iptables_chain()]);
            rule
        })
        .collect()
}

/// Arguments as a shell would need them (the comment quoted).
fn shell_line(args: &[String]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect();
    quoted.join(" ")
}

fn iface_match(options: &RuleOptions) -> Vec<String> {
    match &options.iface {
        Some(iface) => vec!["-i".to_string(), iface.clone()],
        None => Vec::new(),
    }
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace().map(str::to_string)
}

fn nginx(list: &NodeList, options: &RuleOptions) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "nginx access rules; `include` them in a server or location block",
    );
    for net in list.networks().chain(options.extra.iter().copied()) {
        let _ = writeln!(out, "allow {};", display_network(&net));
    }
    out.push_str("deny all;\n");
    out
}

fn plain(list: &NodeList) -> String {
    let mut out = String::new();
    for net in list.networks() {
        out.push_str(&display_network(&net));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NodeList {
        NodeList::parse(
            br#"{"nodes": ["195.208.184.200", "10.1.0.0/16", "2a02:6b8::/32"]}"#,
            &b24_nodes::Limits {
                allow_broad: true,
                ..b24_nodes::Limits::allowing_special()
            },
        )
        .unwrap()
    }

    #[test]
    fn nftables_protects_only_the_listed_ports() {
        let options = RuleOptions {
            ports: vec![443, 80],
            iface: Some("eth0".into()),
            ..RuleOptions::default()
        };
        let script = render(Format::Nftables, &list(), &options);
        for port in [443, 80] {
            assert!(script.contains(&format!("iifname \"eth0\" tcp dport {port} jump protected")));
            assert!(script.contains(&format!("ct original proto-dst {port} jump protected")));
        }
        // No anonymous set anywhere: the rules create nothing they look up.
        let chains = &script[script.find("chain input").unwrap()..];
        assert!(!chains.contains(" { "), "{chains}");
        assert!(script.contains("delete table inet bitrix24\ntable inet bitrix24 {\n\tcomment"));
        assert!(script.contains("10.1.0.0/16, 195.208.184.200,"));
        let protected = &script[script.find("chain protected").unwrap()..];
        assert!(
            protected.find("iif \"lo\" accept").unwrap() < protected.find("counter drop").unwrap()
        );
    }

    #[test]
    fn set_only_never_touches_the_table() {
        let options = RuleOptions {
            set_only: true,
            table: "filter".into(),
            ..RuleOptions::default()
        };
        let script = render(Format::Nftables, &list(), &options);
        assert!(!script.contains("flush table") && !script.contains("delete"));
        assert!(script.contains("flush set inet filter nodes_v4"));
        assert_eq!(script.matches(MARKER).count(), 2);
    }

    #[test]
    fn no_forward_chain_when_asked_not_to() {
        let options = RuleOptions {
            forward: false,
            ..RuleOptions::default()
        };
        assert!(!render(Format::Nftables, &list(), &options).contains("hook forward"));
        assert!(!render(Format::Iptables, &list(), &options).contains("DOCKER-USER"));
    }

    #[test]
    fn an_empty_family_has_no_elements_clause() {
        let v4_only = NodeList::parse(
            br#"{"nodes": ["192.0.2.1"]}"#,
            &b24_nodes::Limits::allowing_special(),
        )
        .unwrap();
        let script = render(Format::Nftables, &v4_only, &RuleOptions::default());
        let v6_set = &script[script.find("set nodes_v6").unwrap()..];
        assert!(!v6_set[..v6_set.find('}').unwrap()].contains("elements"));
    }

    #[test]
    fn ipset_temporary_names_and_existing_sets() {
        let plan = IpsetPlan {
            tmp_prefix: Some("nodesync-1a2b3c4d-".into()),
            live_exist: [true, false],
        };
        let script = ipset(&list(), &RuleOptions::default(), Family::Both, &plan);
        assert!(!script.contains("create bitrix24-v4 "));
        assert!(script.contains("create bitrix24-v6 hash:net family inet6"));
        assert!(script.contains("swap nodesync-1a2b3c4d-4 bitrix24-v4\n"));
        assert!(
            script
                .lines()
                .all(|l| l.split_whitespace().nth(1).is_none_or(|n| n.len() <= 31))
        );
    }

    #[test]
    fn iptables_says_what_it_does_not_cover() {
        let script = render(Format::Iptables, &list(), &RuleOptions::default());
        assert!(script.contains("1 IPv6 networks"), "{script}");
        assert!(script.contains("-A BITRIX24 -i lo -j RETURN"));
    }

    #[test]
    fn extra_networks_are_allowed_but_kept_out_of_the_sets() {
        let options = RuleOptions {
            extra: vec![
                "192.168.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..RuleOptions::default()
        };
        let script = render(Format::Nftables, &list(), &options);
        let extra_v4 = &script[script.find("set extra_v4").unwrap()..];
        assert!(extra_v4[..extra_v4.find("\t}").unwrap()].contains("192.168.0.0/16,"));
        let extra_v6 = &script[script.find("set extra_v6").unwrap()..];
        assert!(extra_v6[..extra_v6.find("\t}").unwrap()].contains("fd00::/8,"));
        let nodes_v4 = &script[script.find("set nodes_v4").unwrap()..];
        assert!(!nodes_v4[..nodes_v4.find("\t}").unwrap()].contains("192.168."));
        assert!(script.contains("ip saddr @extra_v4 accept\n"));
        let ipset = render(Format::Ipset, &list(), &options);
        assert!(!ipset.contains("192.168."));
        assert!(
            render(Format::Iptables, &list(), &options)
                .contains("-A BITRIX24 -s 192.168.0.0/16 -j RETURN")
        );
        let nginx = render(Format::Nginx, &list(), &options);
        assert!(
            nginx.contains("allow 192.168.0.0/16;\n")
                && nginx.ends_with("allow fd00::/8;\ndeny all;\n")
        );
        assert!(!render(Format::Json, &list(), &options).contains("192.168."));
    }
}

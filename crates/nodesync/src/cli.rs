//! Command-line options and their validation.

use std::path::PathBuf;
use std::time::Duration;

use b24_nodes::{DEFAULT_SOURCE, Limits, Source};
use clap::Parser;
use ipnet::IpNet;

use crate::emit::{Format, RuleOptions};

/// Exit codes, as documented in `--help` and the README.
pub mod exit {
    /// The list was fetched (or the cache was fresh) and everything asked for was done.
    pub const OK: u8 = 0;
    /// Nothing usable: the fetch failed and there is no cached list.
    pub const NO_LIST: u8 = 1;
    /// Usage or configuration error (also an `--iface` this host lacks).
    pub const USAGE: u8 = 2;
    /// A source failed or its list was refused for shrinking; the last good list was used.
    pub const STALE: u8 = 3;
    /// `--apply` failed; the rules that were loaded before stay in place.
    pub const APPLY_FAILED: u8 = 4;
    /// A source served a list with an entry that is too broad or a
    /// special-purpose address; it was refused whole and the last good list
    /// (if any) was used.
    pub const UNSAFE_LIST: u8 = 5;
    /// `--apply` was refused: the rules would lock the admin out of SSH.
    pub const LOCKOUT: u8 = 6;
    /// `--apply` was refused: the table, chain or set to replace is not
    /// nodesync's.
    pub const NOT_OURS: u8 = 7;
    /// Another run held the lock for longer than `--lock-wait`.
    pub const BUSY: u8 = 8;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success (the list was fetched, confirmed, or fresh in the cache)
  1  nothing usable: the fetch failed and there is no cached list
  2  usage or configuration error (also an --iface this host does not have)
  3  a source failed or its list shrank too much; the last good list was used
  4  --apply failed; the rules loaded before stay in place
  5  a source's list was refused as unsafe (an entry broader than /24 or /48,
     or a loopback, private, link-local, multicast, documentation,
     benchmarking or otherwise reserved address); the last good list was used
  6  --apply refused: the rules would stop new SSH connections from an
     address connected now (or leave SSH reachable from the list only)
  7  --apply refused: the table, chain or set of that name is not nodesync's
  8  another nodesync run held the lock longer than --lock-wait; nothing done

Safe from cron: one run at a time (a lock next to the cache), each source is
asked at most once per 60 s (the time of the last request is kept in its
cache file), a failed fetch falls back to the last good list, an empty list
is never emitted, and a list that drops more than --max-shrink percent of the
current networks, or of the largest list of the last 24 h, is refused unless
--force. A problem is printed when it begins, changes or ends, and a change
of the list as one line per network: cron mails only news.

Examples:
  nodesync --emit nftables --apply --ports 443 --iface eth0 --extra 192.168.0.0/16
  nodesync --restore                       # at boot: the last applied rules, from the cache
  nodesync --emit json --output /var/lib/nodesync/app.json   # a file source for b24-edge
  nodesync --emit nginx --output /etc/nginx/bitrix24-allow.conf";

/// Turns the list of Bitrix24 event-delivery servers into firewall rules.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "nodesync",
    version = crate::VERSION,
    about = "Turns the Bitrix24 event-delivery servers list (app.json) into firewall rules",
    after_long_help = AFTER_HELP
)]
pub struct Args {
    /// Output format.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        required_unless_present = "restore"
    )]
    pub emit: Option<Format>,

    /// Where the list comes from: an http(s) URL or a file in app.json format.
    /// Repeat it for several sources (e.g. app.json and app-world.json): each
    /// is fetched and cached on its own, and their union is admitted.
    #[arg(long = "source", value_name = "URL|PATH", default_values_t = [DEFAULT_SOURCE.to_string()])]
    pub sources: Vec<String>,

    /// Cache file: the last good list and the time of the last request
    /// (with several sources, one file per source next to it). The lock
    /// and the run state live next to it too.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/nodesync/cache.json"
    )]
    pub cache: PathBuf,

    /// Write the output to this file (atomically, only when it changed)
    /// instead of standard output. With --apply it is written only once the
    /// rules loaded, so it always holds rules the kernel accepted.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Load the rules: `nft -f` for nftables, `ipset restore` for ipset, and
    /// ipset + `iptables-restore --noflush` + the jumps for iptables (IPv4
    /// and, when the host has IPv6, ip6tables too).
    #[arg(long)]
    pub apply: bool,

    /// Load again, from the cache and without the network, the rules the
    /// last successful --apply loaded (with the same options): what a boot
    /// needs before the network is up.
    #[arg(long, conflicts_with_all = ["emit", "apply", "output", "sources"])]
    pub restore: bool,

    /// Protected TCP ports, comma-separated; other ports are not touched.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',', default_value = "443",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Filter only traffic arriving on this interface (the WAN side), so the
    /// LAN keeps reaching the portal. With --apply it must exist.
    #[arg(long, value_name = "WAN_IF")]
    pub iface: Option<String>,

    /// nftables table name (also the ipset set prefix and the iptables chain).
    #[arg(long, value_name = "NAME", default_value = "bitrix24")]
    pub table: String,

    /// nftables: only fill the sets nodes_v4 / nodes_v6 in the table (yours),
    /// for your own chains; the table itself is never flushed.
    #[arg(long)]
    pub set_only: bool,

    /// A network that is always allowed (office, VPN); repeatable.
    #[arg(long = "extra", value_name = "CIDR")]
    pub extra: Vec<String>,

    /// Do not filter connections DNAT-ed to the protected ports (Docker's
    /// published ports); by default they are filtered like direct ones.
    #[arg(long)]
    pub no_forward: bool,

    /// Refuse a new list that no longer covers more than this percentage of
    /// the current networks, or has fewer networks than this percentage
    /// below the largest list of the last 24 hours.
    #[arg(long, value_name = "PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_shrink: u8,

    /// Accept a new list even if it shrinks by more than --max-shrink.
    #[arg(long)]
    pub force: bool,

    /// Accept list entries broader than /24 (IPv4) or /48 (IPv6). Bitrix24
    /// publishes single addresses; without this a list with such an entry is
    /// refused whole (exit 5).
    #[arg(long)]
    pub allow_broad: bool,

    /// Accept loopback, private, link-local, multicast, documentation,
    /// benchmarking (198.18.0.0/15) and other reserved addresses in the list
    /// (tests and labs); without this such a list is refused whole (exit 5).
    #[arg(long)]
    pub allow_special: bool,

    /// Apply even if the rules would stop new SSH connections from an
    /// address connected now (you have a console).
    #[arg(long)]
    pub allow_lockout: bool,

    /// How long to wait for another run to finish before giving up (exit 8).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub lock_wait: u64,

    /// Do not contact the source; use the cached list.
    #[arg(long)]
    pub offline: bool,

    /// Write node_exporter textfile-collector metrics to this file (.prom);
    /// its directory must exist (node_exporter's). Not written unless asked.
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,

    /// Also report runs where nothing changed, and every problem every time.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Options after validation, ready for a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` for `--restore` (the format comes from the run state).
    pub format: Option<Format>,
    pub sources: Vec<Source>,
    /// Document bounds and entry rules (`--allow-broad`, `--allow-special`).
    pub limits: Limits,
    pub cache: PathBuf,
    pub output: Option<PathBuf>,
    pub apply: bool,
    pub restore: bool,
    pub rules: RuleOptions,
    pub max_shrink: u8,
    pub force: bool,
    pub allow_lockout: bool,
    pub lock_wait: Duration,
    pub offline: bool,
    pub textfile: Option<PathBuf>,
    pub verbose: bool,
    /// The arguments as given (without the program name), kept after a
    /// successful `--apply` for `--restore`.
    pub args: Vec<String>,
}

/// Names that are iptables' own chains or targets: a chain of ours by
/// that name would replace theirs.
const RESERVED_CHAINS: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "QUEUE",
    "LOG",
    "DOCKER",
    "DOCKER-USER",
];

impl Args {
    /// Parses `args` (program name first), as the binary does.
    pub fn parse_args(args: &[String]) -> Result<Settings, String> {
        let parsed = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        parsed.validate_with_args(args.iter().skip(1).cloned().collect())
    }

    /// Checks what clap cannot: names the kernel tools accept, CIDRs, and
    /// combinations that make no sense.
    pub fn validate(self) -> Result<Settings, String> {
        self.validate_with_args(Vec::new())
    }

    fn validate_with_args(self, args: Vec<String>) -> Result<Settings, String> {
        let mut sources: Vec<Source> = Vec::with_capacity(self.sources.len());
        for text in &self.sources {
            let source: Source = text.parse().map_err(|e| format!("--source: {e}"))?;
            if sources.contains(&source) {
                return Err(format!("--source {source} is given twice"));
            }
            sources.push(source);
        }
        let table_ok = !self.table.is_empty()
            && self.table.len() <= 24
            && self.table.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !table_ok {
            return Err(format!(
                "--table {:?}: use 1 to 24 letters, digits or '_', starting with a letter",
                self.table
            ));
        }
        let iptables_mode = matches!(self.emit, Some(Format::Iptables | Format::Ip6tables));
        if iptables_mode && RESERVED_CHAINS.contains(&self.table.to_ascii_uppercase().as_str()) {
            return Err(format!(
                "--table {:?}: the iptables chain would be {}, which is iptables' or Docker's own; choose another name",
                self.table,
                self.table.to_ascii_uppercase()
            ));
        }
        if let Some(iface) = &self.iface {
            let ok = !iface.is_empty()
                && iface.len() <= 15
                && iface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
            if !ok {
                return Err(format!("--iface {iface:?} is not a valid interface name"));
            }
        }
        let mut extra = Vec::new();
        for text in &self.extra {
            let net = b24_nodes::parse_network(text)
                .ok_or_else(|| format!("--extra {text:?} is not an IP address or CIDR network"))?;
            extra.push(net);
        }
        if self.set_only && self.emit != Some(Format::Nftables) {
            return Err("--set-only applies to --emit nftables only".into());
        }
        if let Some(format) = self.emit
            && self.apply
            && matches!(format, Format::Nginx | Format::Plain | Format::Json)
        {
            return Err(format!(
                "--apply loads firewall rules; --emit {} only writes a file (use --output)",
                format.name()
            ));
        }
        let mut ports = self.ports.clone();
        ports.sort_unstable();
        ports.dedup();
        Ok(Settings {
            format: self.emit,
            sources,
            limits: Limits {
                allow_broad: self.allow_broad,
                allow_special: self.allow_special,
                ..Limits::default()
            },
            cache: self.cache,
            output: self.output,
            apply: self.apply,
            restore: self.restore,
            rules: RuleOptions {
                ports,
                iface: self.iface,
                table: self.table,
                set_only: self.set_only,
                extra: extra_sorted(extra),
                forward: !self.no_forward,
            },
            max_shrink: self.max_shrink,
            force: self.force,
            allow_lockout: self.allow_lockout,
            lock_wait: Duration::from_secs(self.lock_wait),
            offline: self.offline || self.restore,
            textfile: self.textfile,
            verbose: self.verbose,
            args,
        })
    }
}

fn extra_sorted(mut extra: Vec<IpNet>) -> Vec<IpNet> {
    extra.sort();
    extra.dedup();
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut full = vec!["nodesync".to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        Args::parse_args(&full)
    }

    #[test]
    fn defaults_and_lists() {
        let s = parse(&[
            "--emit",
            "nftables",
            "--ports",
            "443,80,443",
            "--extra",
            "10.0.0.0/8",
            "--extra",
            "fd00::/8",
        ])
        .unwrap();
        assert_eq!(s.rules.ports, [80, 443]);
        assert_eq!(s.rules.extra.len(), 2);
        assert!(s.rules.forward);
        assert_eq!(s.max_shrink, 50);
        assert_eq!(s.sources.len(), 1);
        assert_eq!(s.sources[0].to_string(), DEFAULT_SOURCE);
        assert!(!s.limits.allow_broad && !s.limits.allow_special);
        assert_eq!(s.lock_wait, Duration::from_secs(60));
        assert_eq!(s.args[..2], ["--emit", "nftables"]);
    }

    #[test]
    fn bad_values_are_named() {
        for (args, says) in [
            (
                &["--emit", "nftables", "--table", "bad name"][..],
                "--table",
            ),
            (
                &["--emit", "nftables", "--extra", "10.0.0.0/33"][..],
                "--extra",
            ),
            (
                &["--emit", "nftables", "--iface", "eth0\"; drop"][..],
                "--iface",
            ),
            (&["--emit", "plain", "--apply"][..], "--apply"),
            (&["--emit", "ipset", "--set-only"][..], "--set-only"),
            (
                &["--emit", "nftables", "--source", "ftp://x/y"][..],
                "--source",
            ),
            (&["--emit", "iptables", "--table", "docker"][..], "Docker"),
            (&["--emit", "iptables", "--table", "input"][..], "INPUT"),
            (&["--restore", "--emit", "nftables"][..], "--emit"),
            (&["--ports", "443"][..], "--emit"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        assert!(parse(&["--emit", "nftables", "--ports", "0"]).is_err());
        assert!(parse(&["--emit", "nftables", "--max-shrink", "101"]).is_err());
        // nftables may use any table name: a foreign one is refused at apply.
        assert!(parse(&["--emit", "nftables", "--table", "filter"]).is_ok());
    }

    #[test]
    fn restore_needs_no_format_and_is_offline() {
        let s = parse(&["--restore", "--cache", "/tmp/x.json"]).unwrap();
        assert!(s.restore && s.offline && s.format.is_none());
    }
}

//! Command-line options and their validation.

use std::path::PathBuf;

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
    /// Usage or configuration error.
    pub const USAGE: u8 = 2;
    /// The source failed or its list was rejected; the last good list was used.
    pub const STALE: u8 = 3;
    /// `--apply` failed; the rules that were loaded before stay in place.
    pub const APPLY_FAILED: u8 = 4;
    /// A source served a list with an entry that is too broad or a
    /// special-purpose address; it was refused whole and the last good list
    /// (if any) was used.
    pub const UNSAFE_LIST: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success (the list was fetched, confirmed, or fresh in the cache)
  1  nothing usable: the fetch failed and there is no cached list
  2  usage or configuration error
  3  the source failed or its list was rejected; the last good list was used
  4  --apply failed; the rules loaded before stay in place
  5  a source's list was refused as unsafe (an entry broader than /24 or /48,
     or a loopback, private, link-local, multicast, documentation,
     benchmarking or otherwise reserved address); the last good list was used

Safe from cron every minute: the source is asked at most once per 60 s (the
time of the last request is kept in the cache file), a failed fetch falls back
to the last good list, an empty list is never emitted, and a list that would
drop more than --max-shrink percent of the current networks is refused unless
--force. Nothing is printed unless something changed or failed.

Examples:
  nodesync --emit nftables --apply --ports 443 --iface eth0 --extra 192.168.0.0/16
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
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub emit: Format,

    /// Where the list comes from: an http(s) URL or a file in app.json format.
    /// Repeat it for several sources (e.g. app.json and app-world.json): each
    /// is fetched and cached on its own, and their union is admitted.
    #[arg(long = "source", value_name = "URL|PATH", default_values_t = [DEFAULT_SOURCE.to_string()])]
    pub sources: Vec<String>,

    /// Cache file: the last good list and the time of the last request.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/nodesync/cache.json"
    )]
    pub cache: PathBuf,

    /// Write the output to this file (atomically, only when it changed)
    /// instead of standard output.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Load the rules: `nft -f` for nftables, `ipset restore` for ipset, and
    /// ipset + `iptables-restore --noflush` + the INPUT jump for iptables.
    #[arg(long)]
    pub apply: bool,

    /// Protected TCP ports, comma-separated; other ports are not touched.
    #[arg(long, value_name = "PORT,...", value_delimiter = ',', default_value = "443",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Filter only traffic arriving on this interface (the WAN side), so the
    /// LAN keeps reaching the portal.
    #[arg(long, value_name = "WAN_IF")]
    pub iface: Option<String>,

    /// nftables table name (also the ipset set prefix and the iptables chain).
    #[arg(long, value_name = "NAME", default_value = "bitrix24")]
    pub table: String,

    /// nftables: emit only the sets nodes_v4 / nodes_v6, for your own chains.
    #[arg(long)]
    pub set_only: bool,

    /// A network that is always allowed (office, VPN); repeatable.
    #[arg(long = "extra", value_name = "CIDR")]
    pub extra: Vec<String>,

    /// Refuse a new list that no longer covers more than this percentage of
    /// the current networks.
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

    /// Do not contact the source; use the cached list.
    #[arg(long)]
    pub offline: bool,

    /// Write node_exporter textfile-collector metrics to this file (.prom).
    #[arg(long, value_name = "PATH")]
    pub textfile: Option<PathBuf>,

    /// Also report runs where nothing changed.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Options after validation, ready for a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: Format,
    pub sources: Vec<Source>,
    /// Document bounds and entry rules (`--allow-broad`, `--allow-special`).
    pub limits: Limits,
    pub cache: PathBuf,
    pub output: Option<PathBuf>,
    pub apply: bool,
    pub rules: RuleOptions,
    pub max_shrink: u8,
    pub force: bool,
    pub offline: bool,
    pub textfile: Option<PathBuf>,
    pub verbose: bool,
    /// Things worth telling the admin that do not stop the run.
    pub warnings: Vec<String>,
}

impl Args {
    /// Checks what clap cannot: names the kernel tools accept, CIDRs, and
    /// combinations that make no sense.
    pub fn validate(self) -> Result<Settings, String> {
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
        if self.set_only && self.emit != Format::Nftables {
            return Err("--set-only applies to --emit nftables only".into());
        }
        if self.apply && matches!(self.emit, Format::Nginx | Format::Plain | Format::Json) {
            return Err(format!(
                "--apply loads firewall rules; --emit {} only writes a file (use --output)",
                format!("{:?}", self.emit).to_lowercase()
            ));
        }
        let mut ports = self.ports.clone();
        ports.dedup();
        let mut warnings = Vec::new();
        if ports.contains(&22) && extra.is_empty() && self.iface.is_none() {
            warnings.push(
                "--ports includes 22 (SSH) with no --extra network and no --iface: \
                 only Bitrix24's servers will reach SSH on this host"
                    .to_string(),
            );
        }
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
            rules: RuleOptions {
                ports,
                iface: self.iface,
                table: self.table,
                set_only: self.set_only,
                extra: extra_sorted(extra),
            },
            max_shrink: self.max_shrink,
            force: self.force,
            offline: self.offline,
            textfile: self.textfile,
            verbose: self.verbose,
            warnings,
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
        let mut full = vec!["nodesync"];
        full.extend_from_slice(args);
        Args::try_parse_from(full)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_and_lists() {
        let s = parse(&[
            "--emit",
            "nftables",
            "--ports",
            "443,80",
            "--extra",
            "10.0.0.0/8",
            "--extra",
            "fd00::/8",
        ])
        .unwrap();
        assert_eq!(s.rules.ports, [443, 80]);
        assert_eq!(s.rules.extra.len(), 2);
        assert_eq!(s.max_shrink, 50);
        assert_eq!(s.sources.len(), 1);
        assert_eq!(s.sources[0].to_string(), DEFAULT_SOURCE);
        assert!(!s.limits.allow_broad && !s.limits.allow_special);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            parse(&["--emit", "nftables", "--table", "bad name"])
                .unwrap_err()
                .contains("--table")
        );
        assert!(
            parse(&["--emit", "nftables", "--extra", "10.0.0.0/33"])
                .unwrap_err()
                .contains("--extra")
        );
        assert!(
            parse(&["--emit", "nftables", "--iface", "eth0\"; drop"])
                .unwrap_err()
                .contains("--iface")
        );
        assert!(
            parse(&["--emit", "plain", "--apply"])
                .unwrap_err()
                .contains("--apply")
        );
        assert!(
            parse(&["--emit", "ipset", "--set-only"])
                .unwrap_err()
                .contains("--set-only")
        );
        assert!(parse(&["--emit", "nftables", "--ports", "0"]).is_err());
        assert!(parse(&["--emit", "nftables", "--max-shrink", "101"]).is_err());
        assert!(
            parse(&["--emit", "nftables", "--source", "ftp://x/y"])
                .unwrap_err()
                .contains("--source")
        );
    }

    #[test]
    fn protecting_ssh_without_a_way_in_is_warned() {
        let s = parse(&["--emit", "nftables", "--ports", "22,443"]).unwrap();
        assert_eq!(s.warnings.len(), 1);
        let s = parse(&[
            "--emit",
            "nftables",
            "--ports",
            "22,443",
            "--extra",
            "192.168.1.0/24",
        ])
        .unwrap();
        assert!(s.warnings.is_empty());
    }
}

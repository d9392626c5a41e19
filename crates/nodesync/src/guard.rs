//! The lock-out guard: before rules are loaded, would they stop the admin
//! from opening a new SSH connection?
//!
//! SSH ports are those where sshd (or dropbear) listens, port 22 whenever
//! something listens on it, the `Port` lines of sshd_config, and the local
//! port of every connection the current session came through (the sockets
//! held by this process's ancestors, and `SSH_CONNECTION`). For each such
//! port among the protected ones, every address connected to it now must
//! still be admitted by the new rules (loopback, the list, `--extra`, or
//! arriving on another interface than `--iface`); established connections
//! survive any reload, so the danger is the next login, not this one. A
//! protected SSH port with nobody connected is refused too unless
//! `--extra` or `--iface` leaves a way in.
//!
//! Everything is read from /proc of the network namespace nodesync runs
//! in, which is the one the rules are loaded into.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use b24_nodes::NodeList;

use crate::emit::RuleOptions;

/// Why a port counts as an SSH port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SshReason {
    Daemon(String),
    Port22,
    SshdConfig,
    Session,
}

impl fmt::Display for SshReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SshReason::Daemon(name) => write!(f, "{name} listens there"),
            SshReason::Port22 => write!(f, "it is the SSH port"),
            SshReason::SshdConfig => write!(f, "sshd_config names it"),
            SshReason::Session => write!(f, "your current session came in through it"),
        }
    }
}

/// One way the new rules would lock someone out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub port: u16,
    pub reason: SshReason,
    /// The address that could not connect again; `None` when nobody is
    /// connected and nothing but the list would be admitted.
    pub client: Option<IpAddr>,
}

impl fmt::Display for Lockout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.client {
            Some(client) => write!(
                f,
                "port {} is an SSH port ({}), and {client}, connected to it now, could not open a new connection under these rules",
                self.port, self.reason
            ),
            None => write!(
                f,
                "port {} is an SSH port ({}), and only the Bitrix24 list could reach it under these rules (no --extra network, no --iface)",
                self.port, self.reason
            ),
        }
    }
}

/// A TCP socket of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub local_port: u16,
    pub remote: IpAddr,
    pub listening: bool,
    pub established: bool,
    pub inode: u64,
}

/// Parses /proc/net/tcp or /proc/net/tcp6.
pub fn parse_proc_tcp(text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
                fields.get(9)?,
            );
            let (_, local_port) = parse_endpoint(local)?;
            let (remote, _) = parse_endpoint(remote)?;
            let state = u8::from_str_radix(state, 16).ok()?;
            Some(Socket {
                local_port,
                remote,
                listening: state == 0x0A,
                established: state == 0x01,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let addr = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.swap_bytes(),
        )),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((addr, port))
}

/// What the guard looks at; [`Host::read`] fills it from /proc, tests fill
/// it by hand.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub sockets: Vec<Socket>,
    /// Socket inode → names of the processes holding it (only for the
    /// listening sockets on protected ports).
    pub owners: BTreeMap<u64, BTreeSet<String>>,
    /// Ports named by `Port` in sshd_config.
    pub sshd_config_ports: BTreeSet<u16>,
    /// (local port, client) of each connection the session came through.
    pub session: Vec<(u16, IpAddr)>,
    /// Addresses that reach this box on another interface than `--iface`.
    pub not_on_iface: BTreeSet<IpAddr>,
}

const SSH_DAEMONS: &[&str] = &["sshd", "sshd-session", "dropbear"];

impl Host {
    /// Reads the sockets of this network namespace, the processes holding
    /// the listening ones on `protected` ports, sshd_config, the current
    /// session's connections, and how each connected client is routed.
    pub fn read(protected: &[u16], iface: Option<&str>) -> Host {
        let mut sockets = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                sockets.extend(parse_proc_tcp(&text));
            }
        }
        let wanted: BTreeSet<u64> = sockets
            .iter()
            .filter(|s| s.listening && protected.contains(&s.local_port))
            .map(|s| s.inode)
            .collect();
        let owners = if wanted.is_empty() {
            BTreeMap::new()
        } else {
            socket_owners(&wanted)
        };
        let mut session = session_sockets(&sockets);
        if let Some((client, port)) = ssh_connection_env() {
            session.push((port, client));
        }
        let mut host = Host {
            sockets,
            owners,
            sshd_config_ports: sshd_config_ports(),
            session,
            not_on_iface: BTreeSet::new(),
        };
        if let Some(iface) = iface {
            let clients: BTreeSet<IpAddr> = host
                .sockets
                .iter()
                .filter(|s| s.established && protected.contains(&s.local_port))
                .map(|s| s.remote)
                .chain(host.session.iter().map(|(_, c)| *c))
                .collect();
            host.not_on_iface = clients
                .into_iter()
                .filter(|c| route_device(*c).is_some_and(|dev| dev != iface))
                .collect();
        }
        host
    }

    /// The SSH ports among `protected`, with why.
    pub fn ssh_ports(&self, protected: &[u16]) -> BTreeMap<u16, SshReason> {
        let mut ports = BTreeMap::new();
        for socket in self.sockets.iter().filter(|s| s.listening) {
            if !protected.contains(&socket.local_port) {
                continue;
            }
            let daemon = self.owners.get(&socket.inode).and_then(|names| {
                names
                    .iter()
                    .find(|n| SSH_DAEMONS.contains(&n.as_str()))
                    .cloned()
            });
            let reason = match daemon {
                Some(name) => Some(SshReason::Daemon(name)),
                None if socket.local_port == 22 => Some(SshReason::Port22),
                None if self.sshd_config_ports.contains(&socket.local_port) => {
                    Some(SshReason::SshdConfig)
                }
                None => None,
            };
            if let Some(reason) = reason {
                let entry = ports.entry(socket.local_port).or_insert(reason.clone());
                if reason < *entry {
                    *entry = reason;
                }
            }
        }
        for (port, _) in &self.session {
            if protected.contains(port) {
                ports.insert(*port, SshReason::Session);
            }
        }
        ports
    }
}

/// The lock-outs the new rules would cause; empty when it is safe.
pub fn lockouts(host: &Host, list: &NodeList, options: &RuleOptions) -> Vec<Lockout> {
    let mut found = Vec::new();
    for (port, reason) in host.ssh_ports(&options.ports) {
        let clients: BTreeSet<IpAddr> = host
            .sockets
            .iter()
            .filter(|s| s.established && s.local_port == port)
            .map(|s| s.remote)
            .chain(
                host.session
                    .iter()
                    .filter(|(p, _)| *p == port)
                    .map(|(_, c)| *c),
            )
            .collect();
        let mut locked = false;
        for client in &clients {
            if !admitted(*client, host, list, options) {
                locked = true;
                found.push(Lockout {
                    port,
                    reason: reason.clone(),
                    client: Some(*client),
                });
            }
        }
        let no_way_in = options.extra.is_empty() && options.iface.is_none();
        let someone_admitted = clients.iter().any(|c| !c.is_loopback());
        if !locked && no_way_in && !someone_admitted {
            found.push(Lockout {
                port,
                reason,
                client: None,
            });
        }
    }
    found
}

fn admitted(client: IpAddr, host: &Host, list: &NodeList, options: &RuleOptions) -> bool {
    client.is_loopback()
        || list.contains(client)
        || options.extra.iter().any(|net| net.contains(&client))
        || (options.iface.is_some() && host.not_on_iface.contains(&client))
}

/// Which processes hold the sockets `inodes`: a scan of /proc/*/fd (only
/// the processes this one may inspect; as root under systemd without
/// CAP_SYS_PTRACE, non-dumpable daemons are skipped, and the port-22 and
/// sshd_config rules still apply).
fn socket_owners(inodes: &BTreeSet<u64>) -> BTreeMap<u64, BTreeSet<String>> {
    let mut owners: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        for inode in process_sockets(pid) {
            if inodes.contains(&inode) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                owners.entry(inode).or_default().insert(comm);
            }
        }
    }
    owners
}

fn process_sockets(pid: &str) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let text = target.to_string_lossy().into_owned();
            text.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The established connections held by this process's ancestors: the
/// session sshd (or whatever the admin came in through) holds its client's
/// socket, whether or not sudo kept SSH_CONNECTION.
fn session_sockets(sockets: &[Socket]) -> Vec<(u16, IpAddr)> {
    let mut found = Vec::new();
    let mut pid = parent_of("self");
    let mut hops = 0;
    while let Some(current) = pid.filter(|p| *p > 1) {
        hops += 1;
        if hops > 64 {
            break;
        }
        let inodes = process_sockets(&current.to_string());
        for socket in sockets.iter().filter(|s| s.established) {
            if inodes.contains(&socket.inode) && !socket.remote.is_loopback() {
                found.push((socket.local_port, socket.remote));
            }
        }
        pid = parent_of(&current.to_string());
    }
    found
}

fn parent_of(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `SSH_CONNECTION="client client_port server server_port"`.
fn ssh_connection_env() -> Option<(IpAddr, u16)> {
    let value = std::env::var("SSH_CONNECTION").ok()?;
    let parts: Vec<&str> = value.split_whitespace().collect();
    let client: IpAddr = parts.first()?.parse().ok()?;
    let port: u16 = parts.get(3)?.parse().ok()?;
    Some((client, port))
}

fn sshd_config_ports() -> BTreeSet<u16> {
    let mut files = vec![std::path::PathBuf::from("/etc/ssh/sshd_config")];
    if let Ok(dir) = std::fs::read_dir("/etc/ssh/sshd_config.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let key = words.next()?;
                    key.eq_ignore_ascii_case("port")
                        .then(|| words.next()?.parse().ok())
                        .flatten()
                })
                .collect::<Vec<u16>>()
        })
        .collect()
}

/// The interface traffic to `addr` leaves by (`ip route get`), which is the
/// one its packets arrive on.
fn route_device(addr: IpAddr) -> Option<String> {
    let out = crate::tools::run_args(
        "ip",
        &["-o".into(), "route".into(), "get".into(), addr.to_string()],
    )
    .ok()?;
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "dev" {
            return words.next().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0\n\
   1: 010012C6:0016 040012C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1\n\
   2: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0\n";

    fn list(entries: &[&str]) -> NodeList {
        NodeList::from_networks(entries.iter().map(|e| b24_nodes::parse_network(e).unwrap()))
    }

    fn options(ports: &[u16]) -> RuleOptions {
        RuleOptions {
            ports: ports.to_vec(),
            ..RuleOptions::default()
        }
    }

    #[test]
    fn proc_net_tcp_is_parsed() {
        let sockets = parse_proc_tcp(TCP);
        assert_eq!(sockets.len(), 3);
        assert!(sockets[0].listening && sockets[0].local_port == 22);
        assert!(sockets[1].established);
        assert_eq!(sockets[1].remote, "198.18.0.4".parse::<IpAddr>().unwrap());
        let v6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000001000000:0016 0000000000000000FFFF0000040012C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 7 1\n";
        let s = parse_proc_tcp(v6);
        assert_eq!(s[0].remote, "198.18.0.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_connected_admin_outside_the_new_rules_is_a_lockout() {
        let host = Host {
            sockets: parse_proc_tcp(TCP),
            ..Host::default()
        };
        let found = lockouts(&host, &list(&["195.208.184.200"]), &options(&[22, 443]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].client, Some("198.18.0.4".parse().unwrap()));
        assert!(found[0].to_string().contains("port 22"));
        // Port 22 not protected: nothing to fear.
        assert!(lockouts(&host, &list(&["195.208.184.200"]), &options(&[443])).is_empty());
        // An --extra network that holds the admin: fine; one that does not: not.
        let mut with_extra = options(&[22]);
        with_extra.extra = vec!["198.18.0.0/24".parse().unwrap()];
        assert!(lockouts(&host, &list(&["195.208.184.200"]), &with_extra).is_empty());
        with_extra.extra = vec!["192.168.0.0/16".parse().unwrap()];
        assert_eq!(
            lockouts(&host, &list(&["195.208.184.200"]), &with_extra).len(),
            1
        );
        // --iface that the admin does not come through: fine.
        let mut on_wan = options(&[22]);
        on_wan.iface = Some("wan0".into());
        let mut via_lan = host.clone();
        via_lan.not_on_iface.insert("198.18.0.4".parse().unwrap());
        assert!(lockouts(&via_lan, &list(&["195.208.184.200"]), &on_wan).is_empty());
        assert_eq!(
            lockouts(&host, &list(&["195.208.184.200"]), &on_wan).len(),
            1
        );
    }

    #[test]
    fn nobody_connected_still_needs_a_way_in() {
        let mut sockets = parse_proc_tcp(TCP);
        sockets.retain(|s| !s.established);
        let host = Host {
            sockets,
            ..Host::default()
        };
        let found = lockouts(&host, &list(&["195.208.184.200"]), &options(&[22]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].client, None);
    }

    #[test]
    fn a_session_port_and_a_daemon_on_another_port_count() {
        let mut host = Host {
            sockets: parse_proc_tcp(TCP),
            ..Host::default()
        };
        // Something unnamed listens on 443: not SSH.
        assert!(host.ssh_ports(&[443]).is_empty());
        host.owners.insert(1003, ["dropbear".to_string()].into());
        assert_eq!(
            host.ssh_ports(&[443]).get(&443),
            Some(&SshReason::Daemon("dropbear".into()))
        );
        host.session.push((2222, "203.0.113.9".parse().unwrap()));
        assert_eq!(
            host.ssh_ports(&[2222]).get(&2222),
            Some(&SshReason::Session)
        );
        let found = lockouts(&host, &list(&["195.208.184.200"]), &options(&[2222]));
        assert_eq!(found[0].client, Some("203.0.113.9".parse().unwrap()));
    }
}

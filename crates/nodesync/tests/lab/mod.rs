//! A small network for nodesync's firewall tests, in namespaces the test
//! creates (never the host's): a server box, a client network and a
//! "container", with addresses from the benchmarking ranges 198.18.0.0/15
//! and 2001:2::/48.
//!
//! ```text
//!  client ns                       server ns                      container ns
//!  198.18.0.2 listed     ──veth──  198.18.0.1, 2001:2::1  ──veth──  198.19.1.2:8443
//!  198.18.0.3 unlisted              :22   sshd (named so)           (published by a
//!  198.18.0.4 admin                 :443  web server                 Docker-style DNAT
//!  2001:2::2 listed                 :8080 unprotected                from :9443)
//!  2001:2::3 unlisted               :2222 a "session" server
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

pub const SERVER: &str = "198.18.0.1";
pub const LISTED: &str = "198.18.0.2";
pub const UNLISTED: &str = "198.18.0.3";
pub const ADMIN: &str = "198.18.0.4";
pub const SERVER6: &str = "2001:2::1";
pub const LISTED6: &str = "2001:2::2";
pub const UNLISTED6: &str = "2001:2::3";
pub const CONTAINER: &str = "198.19.1.2";
pub const SSH: u16 = 22;
pub const WEB: u16 = 443;
pub const OPEN: u16 = 8080;
pub const PUBLISHED: u16 = 9443;
pub const SESSION: u16 = 2222;

/// The tools the lab needs.
pub const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "ipset",
    "iptables",
    "iptables-restore",
    "iptables-save",
    "ip6tables",
    "ip6tables-restore",
    "ip6tables-save",
    "python3",
];

pub struct Lab {
    pub server: String,
    pub client: String,
    pub container: String,
    /// The server's interface towards the client network (its "WAN").
    pub wan: String,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

/// What one nodesync run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn said(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp_probe.py")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

impl Lab {
    /// Creates the namespaces, links and servers. `name` keeps names
    /// distinct between tests running at once.
    pub fn new(name: &str) -> Lab {
        let id = format!("{name}{}", std::process::id() % 100_000);
        let mut lab = Lab {
            server: format!("nss-{id}"),
            client: format!("nsc-{id}"),
            container: format!("nsk-{id}"),
            wan: format!("vs{id}"),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in [&lab.server, &lab.client, &lab.container] {
            ip(&["netns", "add", ns]);
        }
        let (vs, vc, vk, vd) = (
            format!("vs{id}"),
            format!("vc{id}"),
            format!("vk{id}"),
            format!("vd{id}"),
        );
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vc]);
        ip(&["link", "add", &vd, "type", "veth", "peer", "name", &vk]);
        ip(&["link", "set", &vs, "netns", &lab.server]);
        ip(&["link", "set", &vd, "netns", &lab.server]);
        ip(&["link", "set", &vc, "netns", &lab.client]);
        ip(&["link", "set", &vk, "netns", &lab.container]);
        let addresses: [(&str, &str, &[&str]); 4] = [
            (&lab.server, &vs, &["198.18.0.1/24", "2001:2::1/64"]),
            (&lab.server, &vd, &["198.19.1.1/24"]),
            (
                &lab.client,
                &vc,
                &[
                    "198.18.0.2/24",
                    "198.18.0.3/24",
                    "198.18.0.4/24",
                    "2001:2::2/64",
                    "2001:2::3/64",
                ],
            ),
            (&lab.container, &vk, &["198.19.1.2/24"]),
        ];
        for (ns, dev, addrs) in addresses {
            for addr in addrs {
                let mut args = vec!["-n", ns, "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &lab.container,
            "route",
            "add",
            "default",
            "via",
            "198.19.1.1",
        ]);
        lab.sh(&lab.server.clone(), "sysctl -qw net.ipv4.ip_forward=1");
        let (server, container) = (lab.server.clone(), lab.container.clone());
        lab.spawn_server(&server, &["serve", "::", "443", "8080"]);
        lab.spawn_server(&server, &["sshd", "22"]);
        lab.spawn_server(&server, &["session", "2222"]);
        lab.spawn_server(&container, &["serve", CONTAINER, "8443"]);
        lab
    }

    fn spawn_server(&mut self, ns: &str, args: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(probe())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "{args:?}");
        self.children.push(child);
    }

    /// Runs a shell script in a namespace; panics if it fails.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        let out = self.try_sh(ns, script);
        assert!(
            out.status.success(),
            "in {ns}: {script}\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn try_sh(&self, ns: &str, script: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", script])
            .output()
            .unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the list nodesync reads (a file source).
    pub fn write_list(&self, entries: &[&str]) {
        let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
        let doc = format!("{{\"nodes\": [{}]}}", quoted.join(", "));
        b24_nodes::write_atomically(&self.path("app.json"), doc.as_bytes()).unwrap();
    }

    /// The arguments every run in the lab shares: the list file, the cache,
    /// and --allow-special (the lab's addresses are benchmarking ones).
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "--source".into(),
            self.path("app.json").display().to_string(),
            "--cache".into(),
            self.path("cache.json").display().to_string(),
            "--allow-special".into(),
        ]
    }

    /// Runs nodesync in the server namespace with `args` after the base
    /// ones; `path_prefix` puts fake tools first on PATH.
    pub fn nodesync_with(&self, args: &[&str], path_prefix: Option<&Path>) -> Run {
        let mut all = self.base_args();
        all.extend(args.iter().map(|a| a.to_string()));
        self.run_nodesync(&all, path_prefix)
    }

    pub fn nodesync(&self, args: &[&str]) -> Run {
        self.nodesync_with(args, None)
    }

    /// Runs nodesync in the server namespace without the base arguments.
    pub fn nodesync_raw(&self, args: &[&str]) -> Run {
        let all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.run_nodesync(&all, None)
    }

    fn run_nodesync(&self, args: &[String], path_prefix: Option<&Path>) -> Run {
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(prefix) = path_prefix {
            path = format!("{}:{path}", prefix.display());
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server,
                env!("CARGO_BIN_EXE_nodesync"),
            ])
            .args(args)
            .env("PATH", path)
            .env_remove("SSH_CONNECTION")
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
        }
    }

    /// Runs nodesync from inside an "SSH session": the admin connects from
    /// ADMIN to the session server on port 2222, which runs nodesync as its
    /// child while holding the admin's connection.
    pub fn nodesync_in_session(&self, args: &[&str]) -> Run {
        let mut argv = vec![env!("CARGO_BIN_EXE_nodesync").to_string()];
        argv.extend(self.base_args());
        argv.extend(args.iter().map(|a| a.to_string()));
        let request = serde_json_line(&argv);
        let script = format!(
            "import socket,sys\nc=socket.create_connection(('{SERVER}',{SESSION}),source_address=('{ADMIN}',0))\n\
             c.sendall(sys.stdin.buffer.read())\nout=b''\nwhile True:\n d=c.recv(65536)\n if not d: break\n out+=d\nsys.stdout.buffer.write(out)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.client, "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let reply = text(&out.stdout);
        let (code, said) = reply.split_once('\n').unwrap_or(("-1", ""));
        Run {
            code: code.trim().parse().unwrap_or(-1),
            stdout: String::new(),
            stderr: said.to_string(),
        }
    }

    /// Which of the connections succeed, tried in parallel. A source of
    /// 127.0.0.1, ::1 or the server's own addresses connects from inside
    /// the server (the box reaching itself); others from the client network.
    pub fn reach(&self, cases: &[(&str, &str, u16)]) -> Vec<bool> {
        let local = |src: &str| ["127.0.0.1", "::1", SERVER, SERVER6].contains(&src);
        let mut results = vec![false; cases.len()];
        for in_server in [false, true] {
            let picked: Vec<usize> = (0..cases.len())
                .filter(|&i| local(cases[i].0) == in_server)
                .collect();
            if picked.is_empty() {
                continue;
            }
            let ns = if in_server {
                &self.server
            } else {
                &self.client
            };
            let items: Vec<String> = picked
                .iter()
                .map(|&i| {
                    let (src, dst, port) = cases[i];
                    if dst.contains(':') {
                        format!("{src}>[{dst}]:{port}")
                    } else {
                        format!("{src}>{dst}:{port}")
                    }
                })
                .collect();
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "python3"])
                .arg(probe())
                .args(["check", "0.7"])
                .args(&items)
                .output()
                .unwrap();
            let lines: Vec<bool> = text(&out.stdout).lines().map(|l| l == "1").collect();
            assert_eq!(lines.len(), picked.len(), "{}", text(&out.stderr));
            for (&i, ok) in picked.iter().zip(lines) {
                results[i] = ok;
            }
        }
        results
    }

    /// Asserts who reaches what: `(from, to, port, reaches)`.
    pub fn expect(&self, what: &str, cases: &[(&str, &str, u16, bool)]) {
        let tried: Vec<(&str, &str, u16)> = cases.iter().map(|c| (c.0, c.1, c.2)).collect();
        let got = self.reach(&tried);
        let wrong: Vec<String> = cases
            .iter()
            .zip(&got)
            .filter(|(c, got)| c.3 != **got)
            .map(|(c, got)| {
                format!(
                    "{} → {}:{} {} (expected {})",
                    c.0,
                    c.1,
                    c.2,
                    if *got { "reached" } else { "refused" },
                    if c.3 { "reach" } else { "refuse" }
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{what}:\n  {}", wrong.join("\n  "));
    }

    /// Opens a connection from `src` to the sshd and keeps it until
    /// [`Held::alive`] is asked.
    pub fn hold_ssh(&self, src: &str) -> Held {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.client, "python3"])
            .arg(probe())
            .args(["hold", src, SERVER, "22"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "held");
        Held {
            stdin: child.stdin.take(),
            reader,
            child,
        }
    }

    /// Starts connecting from `src` to `port`, three connections at a
    /// time, for `secs`; [`counted`] reads the outcome.
    pub fn count(&self, secs: f64, src: &str, port: u16) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.client, "python3"])
            .arg(probe())
            .args(["count", &secs.to_string(), src, SERVER, &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A host firewall as a careful admin writes it: input policy drop,
    /// established and loopback first, SSH, web, the published port and
    /// ICMP open.
    pub fn host_nft_ruleset(&self) -> PathBuf {
        let path = self.path("host.nft");
        std::fs::write(&path, HOST_NFT).unwrap();
        self.sh(&self.server, &format!("nft -f {}", path.display()));
        path
    }

    /// The same host firewall in iptables and ip6tables.
    pub fn host_iptables_ruleset(&self) {
        for tool in ["iptables", "ip6tables"] {
            let icmp = if tool == "iptables" {
                "icmp"
            } else {
                "ipv6-icmp"
            };
            self.sh(
                &self.server,
                &format!(
                    "{tool} -w -P INPUT DROP && {tool} -w -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT \
                     && {tool} -w -A INPUT -i lo -j ACCEPT && {tool} -w -A INPUT -p {icmp} -j ACCEPT \
                     && {tool} -w -A INPUT -p tcp -m multiport --dports 22,443,8080,2222 -j ACCEPT"
                ),
            );
        }
    }

    /// What Docker sets up for `docker run -p 9443:8443`: the nat DOCKER
    /// chain with the DNAT, FORWARD policy drop, DOCKER-USER first, and the
    /// accept for the container port.
    pub fn docker_rules(&self) {
        self.sh(
            &self.server,
            &format!(
                "iptables -w -t nat -N DOCKER && iptables -w -t nat -A PREROUTING -d {SERVER} -j DOCKER \
                 && iptables -w -t nat -A DOCKER -p tcp --dport 9443 -j DNAT --to-destination {CONTAINER}:8443 \
                 && iptables -w -N DOCKER && iptables -w -N DOCKER-USER && iptables -w -A DOCKER-USER -j RETURN \
                 && iptables -w -P FORWARD DROP && iptables -w -A FORWARD -j DOCKER-USER \
                 && iptables -w -A FORWARD -d {CONTAINER} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT \
                 && iptables -w -A FORWARD -d {CONTAINER} -j DOCKER && iptables -w -A FORWARD -s {CONTAINER} -j ACCEPT \
                 && iptables -w -A DOCKER -d {CONTAINER}/32 -p tcp --dport 8443 -j ACCEPT"
            ),
        );
    }

    /// A directory holding a `tool` wrapper that, when it is given a script
    /// to load (`nft -f FILE`, `ipset restore`), corrupts it the way
    /// `sed_expr` says, then runs the real tool: a real rejection by the real
    /// tool. Every other call goes to the real tool untouched.
    pub fn broken_tool(&self, tool: &str, sed_expr: &str) -> PathBuf {
        let dir = self.path(&format!("fake-{tool}"));
        std::fs::create_dir_all(&dir).unwrap();
        let real = nodesync::apply::find_tool(tool).unwrap();
        let real = real.display();
        let script = match tool {
            "nft" => format!(
                "#!/bin/sh\nif [ \"$1\" = -f ]; then sed -e '{sed_expr}' \"$2\" > \"$2.bad\"; exec {real} -f \"$2.bad\"; fi\nexec {real} \"$@\"\n"
            ),
            _ => format!(
                "#!/bin/sh\nif [ \"$1\" = restore ]; then sed -e '{sed_expr}' | {real} \"$@\"; exit $?; fi\nexec {real} \"$@\"\n"
            ),
        };
        let path = dir.join(tool);
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.server, &self.client, &self.container] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A connection held open to the lab's sshd.
pub struct Held {
    stdin: Option<ChildStdin>,
    reader: BufReader<std::process::ChildStdout>,
    child: Child,
}

impl Held {
    /// Closes the holder's stdin; it then checks the connection still
    /// echoes.
    pub fn alive(mut self) -> bool {
        drop(self.stdin.take());
        let mut line = String::new();
        let _ = self.reader.read_line(&mut line);
        let _ = self.child.wait();
        line.trim() == "alive"
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a counter started by [`Lab::count`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Connected at the first try.
    pub clean: u32,
    /// Connected, but only after a packet was sent again: one was dropped.
    pub retried: u32,
    /// Not connected.
    pub failed: u32,
}

impl Counted {
    pub fn connected(&self) -> u32 {
        self.clean + self.retried
    }

    /// Attempts that met a dropped packet or were refused.
    pub fn hindered(&self) -> u32 {
        self.retried + self.failed
    }
}

pub fn counted(child: Child) -> Counted {
    let out = child.wait_with_output().unwrap();
    let line = text(&out.stdout);
    let words: Vec<u32> = line
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(words.len(), 3, "{line:?}");
    Counted {
        clean: words[0],
        retried: words[1],
        failed: words[2],
    }
}

fn serde_json_line(argv: &[String]) -> String {
    let env: Vec<String> = ["PATH"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{:?}: {:?}", k, v)))
        .collect();
    let args: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "{{\"argv\": [{}], \"env\": {{{}}}}}\n",
        args.join(", "),
        env.join(", ")
    )
}

const HOST_NFT: &str = "flush ruleset
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiif \"lo\" accept
\t\tmeta l4proto { icmp, ipv6-icmp } accept
\t\ttcp dport { 22, 443, 8080, 2222 } accept
\t}
}
";

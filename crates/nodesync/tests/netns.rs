//! The real thing: rules applied by `nodesync --apply` inside network
//! namespaces this test creates (addresses from 198.18.0.0/15, the
//! benchmarking range), with a server host and a client host joined by a
//! veth pair. Needs root, `ip`, `nft`, `ipset`, `iptables` and python3; CI
//! runs it, elsewhere it skips with a message.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SERVER: &str = "198.18.0.1";
const LISTED: &str = "198.18.0.2";
const UNLISTED: &str = "198.18.0.3";
const PROTECTED: &str = "443";
const OPEN: &str = "8080";

/// Two namespaces and a listener; everything is removed on drop.
struct Lab {
    server_ns: String,
    client_ns: String,
    listener: Option<Child>,
    dir: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let status = Command::new(nodesync::apply::find_tool("ip").unwrap())
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Lab {
    fn new(name: &str) -> Lab {
        let id = format!("{}{}", name, std::process::id() % 100_000);
        let (server_ns, client_ns) = (format!("nss-{id}"), format!("nsc-{id}"));
        let (veth_s, veth_c) = (format!("vs{id}"), format!("vc{id}"));
        ip(&["netns", "add", &server_ns]);
        let mut lab = Lab {
            server_ns,
            client_ns,
            listener: None,
            dir: tempfile::tempdir().unwrap(),
        };
        ip(&["netns", "add", &lab.client_ns]);
        ip(&[
            "link", "add", &veth_s, "type", "veth", "peer", "name", &veth_c,
        ]);
        ip(&["link", "set", &veth_s, "netns", &lab.server_ns]);
        ip(&["link", "set", &veth_c, "netns", &lab.client_ns]);
        for (ns, dev, addrs) in [
            (&lab.server_ns, &veth_s, vec![SERVER]),
            (&lab.client_ns, &veth_c, vec![LISTED, UNLISTED]),
        ] {
            for addr in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let mut listener = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                "python3",
                probe().to_str().unwrap(),
                "serve",
                SERVER,
                PROTECTED,
                OPEN,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(listener.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        lab.listener = Some(listener);
        lab
    }

    fn connects(&self, from: &str, port: &str) -> bool {
        // A dropped SYN is retried until the timeout: 1.5 s is plenty on a veth.
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client_ns,
                "python3",
                probe().to_str().unwrap(),
                "connect",
                from,
                SERVER,
                port,
                "1.5",
            ])
            .status()
            .unwrap()
            .success()
    }

    fn assert_admission(&self, allowed: &str, denied: &str) {
        assert!(
            self.connects(allowed, PROTECTED),
            "{allowed} should reach the protected port"
        );
        assert!(
            !self.connects(denied, PROTECTED),
            "{denied} should be dropped on the protected port"
        );
        assert!(
            self.connects(allowed, OPEN) && self.connects(denied, OPEN),
            "unprotected ports stay open to both"
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_list(&self, entries: &[&str]) {
        let doc = format!(
            "{{\"nodes\": [{}]}}",
            entries
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        b24_nodes::write_atomically(&self.path("app.json"), doc.as_bytes()).unwrap();
    }

    /// Runs nodesync inside the server namespace; `path_prefix` puts fake
    /// tools first on PATH.
    fn nodesync(&self, emit: &str, path_prefix: Option<&Path>) -> (u8, String) {
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(prefix) = path_prefix {
            path = format!("{}:{path}", prefix.display());
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server_ns,
                env!("CARGO_BIN_EXE_nodesync"),
            ])
            .args(["--emit", emit, "--apply", "--ports", PROTECTED])
            // The namespaces use 198.18.0.0/15 and 192.0.2.0/24.
            .arg("--allow-special")
            .arg("--source")
            .arg(self.path("app.json"))
            .arg("--cache")
            .arg(self.path("cache.json"))
            .env("PATH", path)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(255) as u8,
            common::text(&out.stderr) + &common::text(&out.stdout),
        )
    }

    /// A directory holding a `tool` wrapper that corrupts its input the way
    /// `sed_expr` says, then runs the real tool: a real rejection by the real
    /// tool, of a script that nodesync handed over.
    fn broken_tool(&self, tool: &str, sed_expr: &str, file_arg: bool) -> PathBuf {
        let dir = self.path(&format!("fake-{tool}"));
        std::fs::create_dir_all(&dir).unwrap();
        let real = nodesync::apply::find_tool(tool).unwrap();
        let script = if file_arg {
            // nft -f FILE
            format!(
                "#!/bin/sh\nsed -e '{sed_expr}' \"$2\" > \"$2.bad\"\nexec {} -f \"$2.bad\"\n",
                real.display()
            )
        } else {
            format!(
                "#!/bin/sh\nsed -e '{sed_expr}' | exec {} \"$@\"\n",
                real.display()
            )
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
        if let Some(mut l) = self.listener.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tcp_probe.py")
}

const TOOLS: &[&str] = &[
    "ip",
    "nft",
    "ipset",
    "iptables",
    "iptables-restore",
    "python3",
];

// The two documentation addresses keep each switch under the default 50 %
// shrink limit, as a real list change would be.
const LIST_A: &[&str] = &[LISTED, "192.0.2.1", "192.0.2.3"];
const LIST_B: &[&str] = &[UNLISTED, "192.0.2.1", "192.0.2.3"];

#[test]
fn nftables_rules_admit_only_the_list_and_follow_it() {
    if !common::can_run_as_root("nftables_rules_admit_only_the_list_and_follow_it", TOOLS) {
        return;
    }
    let lab = Lab::new("n");
    lab.write_list(LIST_A);
    let (code, said) = lab.nodesync("nftables", None);
    assert_eq!(code, 0, "{said}");
    lab.assert_admission(LISTED, UNLISTED);

    lab.write_list(LIST_B);
    let (code, said) = lab.nodesync("nftables", None);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!("added {UNLISTED}")) && said.contains(&format!("removed {LISTED}")),
        "{said}"
    );
    lab.assert_admission(UNLISTED, LISTED);

    // nft rejects the script (one bad line appended): exit 4, nft's own
    // message, and the rules loaded before keep working.
    lab.write_list(LIST_A);
    let fake = lab.broken_tool("nft", "$a this is not nftables syntax", true);
    let (code, said) = lab.nodesync("nftables", Some(&fake));
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("--apply failed") && said.contains("syntax error"),
        "{said}"
    );
    lab.assert_admission(UNLISTED, LISTED);

    // Once the tool works again, the next run catches up.
    let (code, said) = lab.nodesync("nftables", None);
    assert_eq!(code, 0, "{said}");
    lab.assert_admission(LISTED, UNLISTED);
}

#[test]
fn ipset_and_iptables_rules_admit_only_the_list_and_follow_it() {
    if !common::can_run_as_root(
        "ipset_and_iptables_rules_admit_only_the_list_and_follow_it",
        TOOLS,
    ) {
        return;
    }
    let lab = Lab::new("i");
    lab.write_list(LIST_A);
    let (code, said) = lab.nodesync("iptables", None);
    assert_eq!(code, 0, "{said}");
    lab.assert_admission(LISTED, UNLISTED);
    // Running again does not stack a second jump from INPUT.
    let (code, said) = lab.nodesync("iptables", None);
    assert_eq!(code, 0, "{said}");
    let rules = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "iptables", "-S", "INPUT"])
        .output()
        .unwrap();
    assert_eq!(
        common::text(&rules.stdout).matches("-j BITRIX24").count(),
        1
    );

    // A new list swaps the set's content.
    lab.write_list(LIST_B);
    let (code, said) = lab.nodesync("ipset", None);
    assert_eq!(code, 0, "{said}");
    lab.assert_admission(UNLISTED, LISTED);

    // ipset rejects a line before the swap: exit 4, and the live set keeps
    // its content.
    lab.write_list(LIST_A);
    let fake = lab.broken_tool(
        "ipset",
        "0,/^swap /s//add bitrix24-v4-new 198.18.999.1\\nswap /",
        false,
    );
    let (code, said) = lab.nodesync("ipset", Some(&fake));
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("--apply failed") && said.contains("ipset"),
        "{said}"
    );
    lab.assert_admission(UNLISTED, LISTED);
}

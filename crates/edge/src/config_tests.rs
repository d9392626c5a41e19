//! Tests of the configuration: defaults, every error naming its key, and
//! the example file staying valid.
use super::*;

const MINIMAL: &str = r#"
    [server]
    listen = "127.0.0.1:8443"
    tls_cert = "/c.pem"
    tls_key = "/k.pem"

    [[route]]
    prefix = "/"
    upstream = "http://127.0.0.1:8080"
    allow = ["nodes"]
"#;

fn error_of(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(
        config.server.listen,
        vec![Listener {
            addr: "127.0.0.1:8443".parse().unwrap(),
            client_ip: ClientIpMode::Peer,
        }]
    );
    assert!(config.server.refuse_before_tls);
    assert_eq!(config.server.limits, Limits::default());
    assert_eq!(config.nodes.sources, [Source::default()]);
    assert_eq!(config.nodes.refresh, Duration::from_secs(300));
    assert_eq!(config.routes[0].allow, vec![Allow::Nodes]);
    assert!(config.uses_nodes());
}

#[test]
fn full_config() {
    let text = r#"
        [server]
        listen = ["127.0.0.1:8443", "[::1]:8443"]
        tls_cert = "/c.pem"
        tls_key = "/k.pem"
        metrics_listen = "127.0.0.1:9901"
        max_body = "1MiB"
        header_timeout = "2s"
        upstream_timeout = "500ms"
        max_connections = 5

        [nodes]
        source = "/var/lib/nodesync/app.json"
        refresh = "10m"
        extra = ["10.1.2.3", "192.168.0.0/16"]

        [client_ip]
        mode = "proxy_protocol"
        trusted_proxies = ["10.0.0.0/8"]

        [[route]]
        prefix = "/rest/"
        upstream = "https://portal.internal:443"
        ca_file = "/ca.pem"
        allow = ["nodes", "10.0.0.0/8", "any"]
    "#;
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.server.listen.len(), 2);
    assert_eq!(config.server.limits.max_body, 1 << 20);
    assert_eq!(
        config.server.limits.upstream_timeout,
        Duration::from_millis(500)
    );
    assert_eq!(config.server.limits.max_connections, 5);
    assert!(matches!(config.nodes.sources[..], [Source::File(_)]));
    assert_eq!(config.nodes.extra.len(), 2);
    assert_eq!(config.client_ip.mode, ClientIpMode::ProxyProtocol);
    assert!(
        config
            .server
            .listen
            .iter()
            .all(|l| l.client_ip == ClientIpMode::ProxyProtocol)
    );
    assert_eq!(
        config.routes[0].allow,
        vec![
            Allow::Nodes,
            Allow::Network("10.0.0.0/8".parse().unwrap()),
            Allow::Any
        ]
    );
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (
            MINIMAL.replace("127.0.0.1:8443", "nowhere"),
            "server.listen",
        ),
        (
            MINIMAL.replace("allow = [\"nodes\"]", "allow = [\"nodez\"]"),
            "route[0].allow",
        ),
        (
            MINIMAL.replace("http://127.0.0.1:8080", "ftp://x"),
            "route[0].upstream",
        ),
        (
            MINIMAL.replace("http://127.0.0.1:8080", "http://h/base"),
            "route[0].upstream",
        ),
        (
            MINIMAL.replace("prefix = \"/\"", "prefix = \"api\""),
            "route[0].prefix",
        ),
        (
            format!("{MINIMAL}\n[nodes]\nrefresh = \"30s\"\n"),
            "nodes.refresh",
        ),
        (
            format!("{MINIMAL}\n[nodes]\nrefresh = \"soon\"\n"),
            "nodes.refresh",
        ),
        (
            format!("{MINIMAL}\n[nodes]\nextra = [\"1.2.3\"]\n"),
            "nodes.extra",
        ),
        (
            format!("{MINIMAL}\n[client_ip]\nproxy_protocol = true\n"),
            "client_ip.proxy_protocol",
        ),
        (
            format!("{MINIMAL}\n[client_ip]\nmode = \"proxy_protocol\"\n"),
            "client_ip.trusted_proxies",
        ),
        (
            format!(
                "{MINIMAL}\n[client_ip]\nmode = \"x-forwarded-for\"\ntrusted_proxies = [\"10.0.0.1\"]\n"
            ),
            "client_ip.mode",
        ),
        (
            format!("{MINIMAL}\n[client_ip]\ntrusted_proxies = [\"10.0.0.1\"]\n"),
            "client_ip.mode",
        ),
        (
            MINIMAL.replace(
                "listen = \"127.0.0.1:8443\"",
                "listen = [{ address = \"127.0.0.1:8443\", client_ip = \"proxy\" }]",
            ) + "\n[client_ip]\ntrusted_proxies = [\"10.0.0.1\"]\n",
            "server.listen.client_ip",
        ),
        (
            MINIMAL.replace(
                "listen = \"127.0.0.1:8443\"",
                "listen = [\"127.0.0.1:8443\", \"127.0.0.1:8443\"]",
            ),
            "server.listen",
        ),
        (
            MINIMAL.replace(
                "[server]",
                "[server]\nmax_connections = 10\nreserved_connections = 10",
            ),
            "server.reserved_connections",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nmax_connections_per_address = 0"),
            "server.max_connections_per_address",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nidle_timeout = \"never\""),
            "server.idle_timeout",
        ),
        (
            MINIMAL.replace("prefix = \"/\"", "prefix = \"/hook%2F\""),
            "route[0].prefix",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nmax_body = \"lots\""),
            "server.max_body",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nupstream_timeout = \"0s\""),
            "server.upstream_timeout",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nlisten_typo = 1"),
            "listen_typo",
        ),
        (
            format!("{MINIMAL}\n[[route]]\nprefix = \"/\"\nupstream = \"http://h\"\n"),
            "route[1].prefix",
        ),
        // Two spellings of one path are one prefix.
        (
            format!("{MINIMAL}\n[[route]]\nprefix = \"//./\"\nupstream = \"http://h\"\n"),
            "route[1].prefix",
        ),
    ];
    for (text, key) in cases {
        let message = error_of(&text);
        assert!(message.contains(key), "{key}: {message}");
    }
    assert!(error_of(&MINIMAL.replace("[[route]]", "[[nothing]]")).contains("nothing"));
}

#[test]
fn secrets_in_urls_stay_out_of_errors() {
    let text = format!("{MINIMAL}\n[nodes]\nsource = \"ftp://user:s3cret@host/x?token=t0ken\"\n");
    let message = error_of(&text);
    assert!(message.contains("nodes.source"), "{message}");
    assert!(
        !message.contains("s3cret") && !message.contains("t0ken"),
        "{message}"
    );
    let text = MINIMAL.replace("http://127.0.0.1:8080", "http://user:s3cret@127.0.0.1:8080");
    let message = error_of(&text);
    assert!(!message.contains("s3cret"), "{message}");
    // A syntax error near a secret does not quote the line.
    let text = format!("{MINIMAL}\n[nodes]\nsource = \"https://h/app.json?token=t0ken\" junk\n");
    let message = error_of(&text);
    assert!(!message.contains("t0ken"), "{message}");
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    let text = include_str!("../../../deploy/config/edge.example.toml");
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.server.limits, Limits::default());
    assert_eq!(config.server.tls_reload_poll, Duration::from_secs(5));
    assert_eq!(config.nodes.sources, [Source::default()]);
    assert_eq!(config.nodes.refresh, Duration::from_secs(300));
    assert_eq!(config.nodes.file_poll, Duration::from_secs(1));
    assert_eq!(config.client_ip.mode, ClientIpMode::Peer);
    assert!(config.server.refuse_before_tls);
    assert_eq!(config.routes.len(), 1);
}

#[test]
fn listeners_each_have_one_client_address_mode() {
    let text = MINIMAL.replace(
        "listen = \"127.0.0.1:8443\"",
        "listen = [\"0.0.0.0:443\", { address = \"10.0.0.2:8443\", client_ip = \"proxy_protocol\" }]",
    ) + "\n[client_ip]\ntrusted_proxies = [\"10.0.0.1\"]\n";
    let config = Config::from_toml(&text).unwrap();
    let modes: Vec<_> = config.server.listen.iter().map(|l| l.client_ip).collect();
    assert_eq!(modes, [ClientIpMode::Peer, ClientIpMode::ProxyProtocol]);
}

#[test]
fn prefixes_are_kept_in_normal_form_with_their_label() {
    let text = MINIMAL.replace("prefix = \"/\"", "prefix = \"/%68ook//хук/\"");
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(config.routes[0].prefix, "/hook/%D1%85%D1%83%D0%BA/");
    assert_eq!(config.routes[0].label, "/%68ook//хук/");
}

#[test]
fn limits_defaults_follow_max_connections() {
    let text = MINIMAL.replace(
        "[server]",
        "[server]\nmax_connections = 50\nmax_body = \"64KiB\"",
    );
    let limits = Config::from_toml(&text).unwrap().server.limits;
    assert_eq!(limits.reserved_connections, 5);
    // The buffer is never larger than the largest body.
    assert_eq!(limits.body_buffer, 64 * 1024);
}

#[test]
fn sizes() {
    assert_eq!(parse_size("1024"), Some(1024));
    assert_eq!(parse_size("10MiB"), Some(10 << 20));
    assert_eq!(parse_size("2 kb"), Some(2000));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_size("5 parsecs"), None);
}

#[test]
fn nodes_sources_list_and_escape_hatches() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert!(!config.nodes.allow_broad && !config.nodes.allow_special);
    let text = format!(
        "{MINIMAL}\n[nodes]\nsource = [\"https://dl.bitrix24.com/webhook/app-world.json\", \"https://repos.1c-bitrix.ru/webhook/app.json\"]\nallow_broad = true\nallow_special = true\n"
    );
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(config.nodes.sources.len(), 2);
    assert!(config.nodes.allow_broad && config.nodes.allow_special);
    for (nodes, says) in [
        ("source = []", "empty"),
        ("source = [\"/a.json\", \"/a.json\"]", "twice"),
        ("source = [\"/a.json\", \"ftp://x/y\"]", "scheme"),
        ("allow_special = \"yes\"", "boolean"),
    ] {
        let message = error_of(&format!("{MINIMAL}\n[nodes]\n{nodes}\n"));
        assert!(message.contains(says), "{nodes}: {message}");
    }
}

use super::*;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Server {
    #[serde(deserialize_with = "socket_addr")]
    listen: SocketAddr,
    #[serde(default, deserialize_with = "optional_socket_addr")]
    metrics_listen: Option<SocketAddr>,
    workers: Option<u32>,
    webhook: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct File {
    server: Server,
    #[serde(default)]
    route: Vec<toml::Value>,
}

fn error_of(text: &str) -> ConfigError {
    parse::<File>(text).unwrap_err()
}

#[test]
fn a_type_error_is_at_its_line_and_column_with_the_line_shown() {
    let text = "# comment\n[server]\nlisten = \"127.0.0.1:1\"\nworkers = \"many\"\n";
    let error = error_of(text);
    assert_eq!(
        error.location(),
        Some(Location {
            line: 4,
            column: 11
        })
    );
    assert_eq!(error.key(), Some("server.workers"));
    let shown = error.in_file(Path::new("edge.toml")).to_string();
    assert_eq!(
        shown,
        "edge.toml:4:11: server.workers: invalid type: string \"many\", expected u32\n   \
         4 | workers = \"many\"\n     |           ^^^^^^"
    );
}

#[test]
fn the_first_line_and_the_last_line_are_numbered_right() {
    // Off-by-one traps: an error on line 1, and one on a last line with no
    // newline after it.
    let error = error_of("[server\n");
    assert_eq!(error.location().unwrap().line, 1);
    let text = "[server]\nlisten = \"127.0.0.1:1\"\nworkers = -1";
    let error = error_of(text);
    assert_eq!(
        error.location(),
        Some(Location {
            line: 3,
            column: 11
        })
    );
    // A key at the very start of a line after a blank one.
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n\nbogus = 1\n";
    let error = error_of(text);
    assert_eq!(error.location().unwrap().line, 4, "{error}");
    assert!(
        error.to_string().contains("unknown field `bogus`"),
        "{error}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text =
        "[server]\n# Сервер\nlisten = \"127.0.0.1:1\"\nworkers = 1\nwebhook = 5 # «вебхук»\n";
    let error = error_of(text);
    assert_eq!(
        error.location(),
        Some(Location {
            line: 5,
            column: 11
        })
    );
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n\"ключ\" = 5\n";
    let error = error_of(text);
    assert_eq!(error.location(), Some(Location { line: 3, column: 1 }));
    assert!(error.to_string().contains("^^^^^^"), "{error}");
}

#[test]
fn a_host_name_for_a_listen_address_says_what_to_write() {
    let error = error_of("[server]\nlisten = \"localhost:25080\"\n");
    let shown = error.to_string();
    assert!(
        shown.starts_with("line 2, column 10: server.listen: "),
        "{shown}"
    );
    assert!(
        shown.contains("write 127.0.0.1:25080 (or [::1]:25080)"),
        "{shown}"
    );
    assert!(
        parse_socket_addr("0.0.0.0")
            .unwrap_err()
            .contains("add the port: 0.0.0.0:PORT")
    );
    assert!(parse_socket_addr("::1").unwrap_err().contains("[::1]:PORT"));
    assert!(
        parse_socket_addr("edge.example.com:443")
            .unwrap_err()
            .contains("0.0.0.0:443")
    );
    assert_eq!(
        parse_socket_addr(" [::]:443 ").unwrap(),
        "[::]:443".parse::<SocketAddr>().unwrap()
    );
    let error = error_of("[server]\nlisten = \"127.0.0.1:1\"\nmetrics_listen = \"9901\"\n");
    assert_eq!(error.key(), Some("server.metrics_listen"));
}

#[test]
fn a_semantic_error_is_located_by_its_key() {
    let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[[route]]\nprefix = \"/a\"\n\n[[route]]\nprefix = \"b\"\n";
    let error = ConfigError::invalid("route[1].prefix", "\"b\" must start with '/'").locate(text);
    assert_eq!(
        error.location(),
        Some(Location {
            line: 8,
            column: 10
        })
    );
    assert!(
        error.to_string().contains("\n   8 | prefix = \"b\"\n"),
        "{error}"
    );
    // A missing key points at its table's header; an unknown path is left
    // unlocated.
    let error = ConfigError::invalid("route[0].upstream", "is required").locate(text);
    assert_eq!(error.location().map(|l| l.line), Some(4));
    let error = ConfigError::invalid("nothing.here", "x").locate(text);
    assert_eq!(error.location(), None);
    assert_eq!(error.to_string(), "nothing.here: x");
    // Inline tables and arrays inside a table.
    let text = "[[route]]\nname = \"a\"\nwhen = { stages = [\"C2:NEW\"] }\ntarget = { stages = { \"C2:WON\" = \"C3:WON\" } }\n";
    let error = ConfigError::invalid("route[0].target.stages", "x").locate(text);
    assert_eq!(
        error.location(),
        Some(Location {
            line: 4,
            column: 21
        })
    );
}

#[test]
fn secrets_are_never_echoed() {
    let cases = [
        "[server]\nlisten = \"127.0.0.1:1\"\nwebhook = \"https://p.bitrix24.ru/rest/1/s3cr3t/\" junk\n",
        "[server]\nlisten = \"127.0.0.1:1\"\nworkers = \"https://p.bitrix24.ru/rest/1/s3cr3t/\"\n",
        "[server]\nlisten = \"https://user:s3cr3t@host/\"\n",
        "[server]\nlisten = \"127.0.0.1:1\"\nworkers = \"x?token=s3cr3t\"\n",
        "[server]\nlisten = \"127.0.0.1:1\"\nwebhook = \"unterminated s3cr3t\n",
    ];
    for text in cases {
        let shown = error_of(text).to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
    // Our own messages never quote a secret: they are shown as written.
    let error = ConfigError::invalid("portal.p.webhook", "write { file = \"/path\" }")
        .locate("[portal.p]\nwebhook = \"https://h/rest/1/s3cr3t/\"\n");
    assert!(!error.to_string().contains("s3cr3t"), "{error}");
    assert!(
        error.to_string().contains("write { file = \"/path\" }"),
        "{error}"
    );
}

#[test]
fn a_file_is_named_once_and_a_read_error_once() {
    let error = read(Path::new("/nonexistent/b24.toml")).unwrap_err();
    let shown = error
        .clone()
        .in_file(Path::new("/nonexistent/b24.toml"))
        .to_string();
    assert_eq!(
        shown.matches("No such file or directory").count(),
        1,
        "{shown}"
    );
    assert!(
        shown.starts_with("cannot read /nonexistent/b24.toml: "),
        "{shown}"
    );
    assert!(std::error::Error::source(&error).is_none());
    let error = ConfigError::message("listen and metrics_listen are both 127.0.0.1:1")
        .in_file(Path::new("relay.toml"));
    assert_eq!(
        error.to_string(),
        "relay.toml: listen and metrics_listen are both 127.0.0.1:1"
    );
}

#[test]
fn key_paths_parse() {
    use Step::*;
    assert_eq!(
        key_path("route[2].allow"),
        Some(vec![("route", vec![Index(2)]), ("allow", vec![])])
    );
    assert_eq!(
        key_path("a[1][2]"),
        Some(vec![("a", vec![Index(1), Index(2)])])
    );
    assert_eq!(
        key_path("route `p.2e`.when.stages"),
        Some(vec![
            ("route", vec![Named("p.2e")]),
            ("when", vec![]),
            ("stages", vec![])
        ])
    );
    assert_eq!(key_path("route `x"), None);
    assert_eq!(key_path("a[x]"), None);
    assert_eq!(key_path("workers and max_attempts"), None);
    assert_eq!(key_path("a."), None);
}

#[test]
fn a_keyed_message_is_located_by_a_named_element() {
    let text =
        "[[route]]\nname = \"a\"\n\n[[route]]\nname = \"b.c\"\nwhen = { stages = [\"C2:NEW\"] }\n";
    let error =
        ConfigError::keyed("route `b.c`.when.stages: `C2:NEW` is not in pipeline 3").locate(text);
    assert_eq!(error.key(), Some("route `b.c`.when.stages"));
    assert_eq!(
        error.location(),
        Some(Location {
            line: 6,
            column: 19
        })
    );
    let error = ConfigError::keyed("workers and max_attempts must be at least 1").locate(text);
    assert_eq!((error.key(), error.location()), (None, None));
    assert_eq!(
        error.to_string(),
        "workers and max_attempts must be at least 1"
    );
}

#[test]
fn hiding_keeps_the_shape() {
    assert_eq!(
        hide_quoted(r#"webhook = "a\"b" # 'c'"#),
        r#"webhook = "<hidden>" # '<hidden>'"#
    );
    assert_eq!(hide_quoted("x = \"open"), "x = \"<hidden>");
}

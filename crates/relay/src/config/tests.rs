use std::io::Write;

use super::*;

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    path.display().to_string()
}

fn sample(dir: &tempfile::TempDir) -> String {
    let partner = secret_file(dir, "p.webhook", "https://partner.test/rest/1/s3cr3tA/\n");
    let esb = secret_file(dir, "e.webhook", "https://esb.test/rest/7/s3cr3tB/");
    let token = secret_file(dir, "p.token", "app-t0ken");
    format!(
        r#"
listen = "127.0.0.1:8080"
store = "sqlite://{db}"

[portal.partner]
webhook = {{ file = "{partner}" }}
application_token = {{ file = "{token}" }}
rate = {{ burst = 50, per_second = 2 }}

[portal.esb]
webhook = {{ file = "{esb}" }}

[[route]]
name = "p2e"
from = "partner"
to = "esb"
when = {{ category = 2, stages = ["C2:PREPARATION"] }}
target = {{ category = 3, stage = "C3:NEW" }}
fields = {{ title = "title", ufCrm_123 = "ufCrm_456", ufCrm_7 = "ufCrm_8" }}
values.ufCrm_456 = {{ match = "label" }}
values.ufCrm_8 = {{ "45" = "101", "46" = 102 }}
constants = {{ sourceId = "PARTNER" }}
contact = "match"
writeback = {{ comment = true, field = "ufCrm_ESB" }}
"#,
        db = dir.path().join("relay.db").display()
    )
}

#[test]
fn parses_a_full_config_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(&sample(&dir)).unwrap();
    assert_eq!(config.workers, 16);
    assert_eq!(config.portals["partner"].rate.burst, 50);
    assert_eq!(config.portals["esb"].public_url, "https://esb.test");
    let route = config.route("p2e").unwrap();
    assert_eq!(route.values["ufCrm_456"], ValueRule::Label);
    let ValueRule::Table(table) = &route.values["ufCrm_8"] else {
        panic!("table expected")
    };
    assert_eq!(table["46"], "102");
    assert!(route.contact && !route.company);
    assert_eq!(route.constants["sourceId"], "PARTNER");
    let shown = format!("{config:?}");
    for secret in ["s3cr3tA", "s3cr3tB", "app-t0ken"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[test]
fn errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample(&dir);
    let cases = [
        (
            good.replace("to = \"esb\"", "to = \"nowhere\""),
            "route `p2e`.to",
        ),
        (
            good.replace("values.ufCrm_456", "values.ufCrm_999"),
            "values.ufCrm_999",
        ),
        (
            good.replace("contact = \"match\"", "contact = \"maybe\""),
            "contact",
        ),
        (good.replace("sqlite://", "mysql://"), "store"),
        (
            good.replace(
                "webhook = { file",
                "webhook = { env = \"NOPE_B24_UNSET\", file",
            ),
            "portal.esb.webhook",
        ),
    ];
    for (text, expected) in cases {
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(!error.contains("s3cr3t"), "{error}");
    }
}

#[test]
fn inline_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = sample(&dir).replace(
        &format!(
            "webhook = {{ file = \"{}\" }}",
            dir.path().join("e.webhook").display()
        ),
        "webhook = \"https://esb.test/rest/7/s3cr3tB/\"",
    );
    let error = Config::parse(&text).unwrap_err().to_string();
    assert!(!error.contains("s3cr3tB"), "{error}");
}

/// The documented example parses, with its secret files and variables supplied.
#[test]
fn the_example_config_is_valid() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/config/relay.example.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = example.clone();
    for name in [
        "partner.webhook",
        "partner.token",
        "partner.rule-secret",
        "partner.client-secret",
    ] {
        let value = if name.ends_with("webhook") {
            "https://partner.bitrix24.ru/rest/1/s3cr3t/"
        } else {
            "s3cr3t-token"
        };
        let path = secret_file(&dir, name, value);
        text = text.replace(&format!("/etc/b24-relay/{name}"), &path);
    }
    // The example reads this webhook from the environment; a test cannot
    // set variables safely (tests share the process), so it uses a file.
    let esb = secret_file(&dir, "esb.webhook", "https://esb.example/rest/9/s3cr3t2/");
    text = text.replace(
        "{ env = \"B24_ESB_WEBHOOK\" }",
        &format!("{{ file = \"{esb}\" }}"),
    );
    let config = Config::parse(&text).unwrap();
    let route = config.route("partner-to-esb").unwrap();
    assert_eq!(route.stage_table["C2:WON"], "C3:WON");
    assert_eq!(route.files, ["ufCrm_DOCS"]);
    assert_eq!(config.portals["esb"].rate.burst, 250);
    assert_eq!(config.lease, Duration::from_secs(120));
    assert!(config.metrics_listen.is_some());
    let app = config.portals["partner"].app.as_ref().unwrap();
    assert_eq!(app.client_id, "local.65a1b2c3d4e5f6.12345678");
    assert!(config.portals["esb"].app.is_none());
    assert_eq!(
        config.app.public_url.as_deref(),
        Some("https://relay.example.com")
    );
    assert_eq!(config.app.token_server, None);
    assert_eq!(
        config
            .app
            .token_server_for(Some("https://oauth.bitrix24.tech/rest/")),
        "https://oauth.bitrix24.tech/oauth/token/"
    );
}

#[test]
fn the_token_server_follows_the_portals_region_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Config::parse(&sample(&dir)).unwrap();
    let server = |endpoint| plain.app.token_server_for(endpoint);
    assert_eq!(
        server(Some("https://oauth.bitrix24.tech/rest/")),
        "https://oauth.bitrix24.tech/oauth/token/"
    );
    assert_eq!(
        server(Some("https://oauth.bitrix.info/rest/")),
        "https://oauth.bitrix.info/oauth/token/"
    );
    assert_eq!(server(None), b24_client::DEFAULT_TOKEN_SERVER);
    // Tokens go to Bitrix24's own servers only.
    assert_eq!(
        server(Some("https://evil.test/rest/")),
        b24_client::DEFAULT_TOKEN_SERVER
    );
    assert_eq!(
        server(Some("http://oauth.bitrix24.tech/rest/")),
        b24_client::DEFAULT_TOKEN_SERVER
    );
    let configured = Config::parse(&format!(
        "{}\n[app]\ntoken_server = \"http://127.0.0.1:9/oauth/token\"\n",
        sample(&dir)
    ))
    .unwrap();
    assert_eq!(
        configured
            .app
            .token_server_for(Some("https://oauth.bitrix24.tech/rest/")),
        "http://127.0.0.1:9/oauth/token/"
    );
}

#[test]
fn application_mode_keys_are_read_and_the_client_secret_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Config::parse(&sample(&dir)).unwrap();
    assert_eq!(plain.app.token_server, None);
    assert_eq!(plain.app.robot_code, DEFAULT_ROBOT_CODE);
    assert_eq!(plain.app.public_url, None);
    assert!(plain.portals["partner"].app.is_none());

    let secret = secret_file(&dir, "p.client_secret", "Cl1entS3cretValue\n");
    let text = format!(
        "{}\n[portal.partner.app]\nclient_id = \"local.abc.1\"\nclient_secret = {{ file = \"{secret}\" }}\n\n[app]\npublic_url = \"https://relay.example.com/\"\ntoken_server = \"http://127.0.0.1:9/oauth/token\"\nrobot_code = \"transfer_deal\"\n",
        sample(&dir)
    );
    let config = Config::parse(&text).unwrap();
    let app = config.portals["partner"].app.as_ref().unwrap();
    assert_eq!(app.client_id, "local.abc.1");
    assert_eq!(app.client_secret.expose(), "Cl1entS3cretValue");
    assert_eq!(
        config.app.public_url.as_deref(),
        Some("https://relay.example.com")
    );
    assert_eq!(
        config.app.token_server.as_deref(),
        Some("http://127.0.0.1:9/oauth/token/")
    );
    assert_eq!(config.app.robot_code, "transfer_deal");
    let shown = format!("{config:?}");
    assert!(!shown.contains("Cl1entS3cretValue"), "{shown}");
    assert!(shown.contains("local.abc.1"));

    let inline = text.replace(
        &format!("{{ file = \"{secret}\" }}"),
        "\"Cl1entS3cretValue\"",
    );
    let error = Config::parse(&inline).unwrap_err().to_string();
    assert!(
        error.contains("portal.partner.app.client_secret"),
        "{error}"
    );
    assert!(!error.contains("Cl1entS3cretValue"), "{error}");

    let bad_code = text.replace(
        "robot_code = \"transfer_deal\"",
        "robot_code = \"no spaces\"",
    );
    assert!(
        Config::parse(&bad_code)
            .unwrap_err()
            .to_string()
            .contains("app.robot_code")
    );
    let bad_server = text.replace("http://127.0.0.1:9/oauth/token", "oauth.bitrix.info");
    assert!(
        Config::parse(&bad_server)
            .unwrap_err()
            .to_string()
            .contains("app.token_server")
    );
}

#[test]
fn the_relays_own_fields_are_refused_as_mapping_targets_with_the_key_to_use() {
    let dir = tempfile::tempdir().unwrap();
    let text = sample(&dir);
    for (target, hint) in [
        ("categoryId", "target = { category"),
        ("stageId", "stages"),
        ("originId", "never creates one twice"),
        ("ORIGINATOR_ID", "never creates one twice"),
        ("contactIds", "contact = \\\"match\\\""),
        ("companyId", "company = \\\"match\\\""),
        ("assignedById", "responsible"),
        ("leadId", "leads are not transferred"),
        ("isManualOpportunity", "opportunity"),
    ] {
        let bad = text.replace(
            "ufCrm_7 = \"ufCrm_8\" }",
            &format!("ufCrm_7 = \"ufCrm_8\", ufCrm_9 = \"{target}\" }}"),
        );
        let error = Config::parse(&bad).unwrap_err().to_string();
        assert!(
            error.contains(&format!("fields.ufCrm_9: `{target}`")),
            "{error}"
        );
        assert!(
            error.contains(hint.replace("\\\"", "\"").as_str()),
            "{target}: {error}"
        );
    }
    let constant = text.replace("sourceId = \"PARTNER\"", "categoryId = 5");
    let error = Config::parse(&constant).unwrap_err().to_string();
    assert!(error.contains("constants.categoryId"), "{error}");
    let twice = text.replace(
        "ufCrm_7 = \"ufCrm_8\" }",
        "ufCrm_7 = \"ufCrm_8\", ufCrm_9 = \"title\" }",
    );
    let error = Config::parse(&twice).unwrap_err().to_string();
    assert!(
        error.contains("`title` is the target of more than one"),
        "{error}"
    );
}

#[test]
fn notify_and_language_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = sample(&dir);
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.routes[0].notify, Notify::Failure);
    assert_eq!(
        config.portals["partner"].language,
        crate::messages::Language::En
    );
    let always = text.replace(
        "contact = \"match\"",
        "contact = \"match\"\nnotify = \"always\"",
    );
    assert_eq!(
        Config::parse(&always).unwrap().routes[0].notify,
        Notify::Always
    );
    let wrong = text.replace(
        "contact = \"match\"",
        "contact = \"match\"\nnotify = \"sometimes\"",
    );
    assert!(
        Config::parse(&wrong)
            .unwrap_err()
            .to_string()
            .contains("notify")
    );
    let russian = text.replace("[portal.esb]", "[portal.esb]\nlanguage = \"ru\"");
    assert_eq!(
        Config::parse(&russian).unwrap().portals["esb"].language,
        crate::messages::Language::Ru
    );
    let unknown = text.replace("[portal.esb]", "[portal.esb]\nlanguage = \"de\"");
    assert!(
        Config::parse(&unknown)
            .unwrap_err()
            .to_string()
            .contains("portal.esb.language")
    );
}

#[test]
fn a_secret_is_read_from_the_environment() {
    // cargo sets CARGO_MANIFEST_DIR for the tests it runs.
    let dir = tempfile::tempdir().unwrap();
    let text = sample(&dir).replacen(
        "[portal.partner]",
        "[portal.partner]\nrule_secret = { env = \"CARGO_MANIFEST_DIR\" }",
        1,
    );
    let config = Config::parse(&text).unwrap();
    let secret = config.portals["partner"].rule_secret.as_ref().unwrap();
    assert_eq!(secret.expose(), env!("CARGO_MANIFEST_DIR"));
}

#[test]
fn stages_that_can_never_match_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = sample(&dir);
    let cases = [
        (
            "target = { category = 3, stage = \"C3:NEW\" }",
            "target = { category = 3, stage = \"C3:NEW\", stages = { \"C2:WON\" = \"C3:WON\" } }",
            "route `p2e`.target.stages: source stage `C2:WON` is not in when.stages",
        ),
        (
            "stages = [\"C2:PREPARATION\"]",
            "stages = [\"PREPARATION\"]",
            "route `p2e`.when.stages: `PREPARATION` is a stage of pipeline 0, not of when.category = 2; its stages look like \"C2:NAME\"",
        ),
        (
            "stage = \"C3:NEW\"",
            "stage = \"C5:NEW\"",
            "route `p2e`.target.stage: `C5:NEW` is a stage of pipeline 5, not of target.category = 3",
        ),
    ];
    for (from, to, expected) in cases {
        let text = base.replace(from, to);
        let error = Config::parse(&text).unwrap_err();
        let shown = error.to_string();
        assert!(shown.contains(expected), "{shown}");
        // Located on the line that was changed, which is shown.
        let line = text.lines().position(|l| l.contains(to)).map(|i| i + 1);
        assert_eq!(error.location().map(|l| l.line), line, "{shown}");
    }
    // Mapped stages that the route does take are fine.
    let text = base.replace(
        "stages = [\"C2:PREPARATION\"] }",
        "stages = [\"C2:PREPARATION\", \"C2:WON\"] }",
    );
    let text = text.replace(
        "target = { category = 3, stage = \"C3:NEW\" }",
        "target = { category = 3, stage = \"C3:NEW\", stages = { \"C2:WON\" = \"C3:WON\" } }",
    );
    assert!(Config::parse(&text).is_ok());
}

#[test]
fn listen_addresses_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let base = sample(&dir);
    let text = base.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"localhost:25080\"",
    );
    let shown = Config::parse(&text).unwrap_err().to_string();
    assert!(
        shown.starts_with("line 2, column 10: listen: \"localhost:25080\" is not an IP address and port; write 127.0.0.1:25080"),
        "{shown}"
    );
    let text = base.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nmetrics_listen = \"127.0.0.1:8080\"",
    );
    let shown = Config::parse(&text).unwrap_err().to_string();
    assert!(
        shown.contains("metrics_listen: 127.0.0.1:8080 is also `listen`"),
        "{shown}"
    );
}

#[test]
fn a_syntax_error_names_the_right_line_and_a_missing_file_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = sample(&dir).replace(
        "[portal.esb]",
        "[portal.esb]\nrate = { burst = \"many\", per_second = 2 }",
    );
    let line = text.lines().position(|l| l.contains("\"many\"")).unwrap() + 1;
    let error = Config::parse(&text).unwrap_err();
    assert_eq!(error.location().map(|l| l.line), Some(line), "{error}");
    let missing = dir.path().join("nope.toml");
    let shown = Config::load(&missing).unwrap_err().to_string();
    assert_eq!(
        shown.matches("No such file or directory").count(),
        1,
        "{shown}"
    );
}

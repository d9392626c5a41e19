//! The help conventions of CONTRIBUTING.md, checked on every binary and
//! subcommand as a user sees them: `-h` is a summary and `--help` the
//! manual (examples; exit codes at the top level; signals and endpoints for
//! services), every option and argument is described, and the example
//! configuration is named where it is installed, not in the source tree.

use b24_e2e::process::run;

/// Every command a user can ask for help on.
const COMMANDS: &[&[&str]] = &[
    &["b24-edge"],
    &["b24-relay"],
    &["b24-relay", "serve"],
    &["b24-relay", "check"],
    &["b24-relay", "transfer"],
    &["b24-relay", "fields"],
    &["b24-relay", "jobs"],
    &["b24-relay", "jobs", "list"],
    &["b24-relay", "jobs", "show"],
    &["b24-relay", "jobs", "replay"],
    &["b24-relay", "app"],
    &["b24-relay", "app", "register"],
    &["b24-relay", "app", "unregister"],
    &["b24-relay", "app", "status"],
    &["b24-relay", "store"],
    &["b24-relay", "store", "migrate"],
    &["b24-relay", "store", "status"],
    &["b24-relay", "store", "copy"],
    &["b24-relay", "links"],
    &["b24-relay", "links", "rebuild"],
    &["b24-relay", "backfill"],
    &["nodesync"],
    &["b24-emulator"],
    &["b24-demo"],
];

fn help(command: &[&str], flag: &str) -> String {
    let mut args: Vec<&str> = command[1..].to_vec();
    args.push(flag);
    let (code, text) = run(command[0], &args);
    assert_eq!(code, 0, "{} {flag}: {text}", command.join(" "));
    text
}

/// Option and argument lines of a help text without a description:
/// `  -c, --config <PATH>` alone on its line.
fn undescribed(text: &str) -> Vec<String> {
    let mut section = "";
    let mut lines = text.lines().peekable();
    let mut missing = Vec::new();
    while let Some(line) = lines.next() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        if !matches!(section, "Options:" | "Arguments:" | "Commands:") {
            continue;
        }
        let entry = line.trim_start();
        let is_entry = line.starts_with("  ") && !line.starts_with("        ") && !entry.is_empty();
        if !is_entry {
            continue;
        }
        // "NAME  description" on one line, or the description indented on
        // the next (long help).
        let described = entry.contains("  ")
            || lines
                .peek()
                .is_some_and(|next| next.starts_with("          ") && !next.trim().is_empty());
        if !described {
            missing.push(line.to_owned());
        }
    }
    missing
}

#[test]
fn an_undescribed_option_is_found() {
    let text = "Usage: x\n\nOptions:\n  -c, --config <PATH>\n      --limit <N>  At most N\n\nExamples:\n  x --y\n";
    assert_eq!(undescribed(text), ["  -c, --config <PATH>"]);
}

#[test]
fn every_option_and_argument_is_described_in_short_and_long_help() {
    for command in COMMANDS {
        for flag in ["-h", "--help"] {
            let text = help(command, flag);
            let missing = undescribed(&text);
            assert!(
                missing.is_empty(),
                "{} {flag}: no description for {missing:?}\n{text}",
                command.join(" ")
            );
        }
    }
}

#[test]
fn short_help_is_a_summary_and_long_help_has_examples() {
    for command in COMMANDS {
        let short = help(command, "-h");
        let long = help(command, "--help");
        let name = command.join(" ");
        assert!(
            short.lines().count() < long.lines().count(),
            "{name}: -h is as long as --help"
        );
        assert!(!short.contains("Example"), "{name} -h shows the examples");
        assert!(
            long.contains("Example"),
            "{name} --help has no examples:\n{long}"
        );
    }
}

#[test]
fn programs_document_exit_codes_and_services_their_signals_and_endpoints() {
    for program in [
        "b24-edge",
        "b24-relay",
        "nodesync",
        "b24-emulator",
        "b24-demo",
    ] {
        let long = help(&[program], "--help");
        assert!(long.contains("Exit codes:"), "{program}:\n{long}");
    }
    for service in [
        &["b24-edge"][..],
        &["b24-relay", "serve"],
        &["b24-emulator"],
    ] {
        let long = help(service, "--help");
        assert!(
            long.contains("Signals:") || long.contains("SIGTERM"),
            "{service:?}:\n{long}"
        );
        assert!(long.contains("Endpoints"), "{service:?}:\n{long}");
    }
}

#[test]
fn help_names_the_installed_example_configuration_and_the_config_variables() {
    for (program, variable) in [
        ("b24-edge", "B24_EDGE_CONFIG"),
        ("b24-relay", "B24_RELAY_CONFIG"),
    ] {
        let long = help(&[program], "--help");
        assert!(
            long.contains("/usr/share/doc/b24-connect/examples/"),
            "{program}: the installed example is not named:\n{long}"
        );
        assert!(long.contains(variable), "{program}: {variable}");
        assert!(long.contains("--log-format"), "{program}: --log-format");
    }
}

/// The text with every run of white space as one space (clap wraps lines).
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn closed_sets_of_values_are_listed() {
    let jobs = flat(&help(&["b24-relay", "jobs", "list"], "-h"));
    assert!(
        jobs.contains("[possible values: pending, running, done, skipped, failed]"),
        "{jobs}"
    );
    let edge = flat(&help(&["b24-edge"], "-h"));
    assert!(edge.contains("[possible values: text, json]"), "{edge}");
    let nodesync = flat(&help(&["nodesync"], "-h"));
    assert!(nodesync.contains("possible values: nftables"), "{nodesync}");
}

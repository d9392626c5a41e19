//! nodesync as cron runs it: separate processes against a real HTTP source
//! on loopback, sharing a cache file.

mod common;

use std::path::Path;

use b24_nodes::CacheRecord;
use b24_testkit::{NodesServer, Reply};
use common::{nodesync, text};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = nodesync(args);
    Run {
        code: out.status.code().unwrap(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// Runs nodesync in a blocking thread so the async test server keeps serving.
async fn run_async(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .unwrap()
}

fn args(list: &[&str], dir: &Path, url: &str) -> Vec<String> {
    let mut all: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    all.extend([
        "--source".into(),
        url.into(),
        "--cache".into(),
        dir.join("cache.json").display().to_string(),
    ]);
    all
}

/// Pretends the last request was `secs` seconds earlier than recorded, as if
/// time had passed (the 60 s rule lives in the cache file).
fn age_cache(dir: &Path, secs: u64) {
    let path = dir.join("cache.json");
    let mut record = CacheRecord::load(&path).unwrap().unwrap();
    record.attempted_at = record.attempted_at.map(|t| t - secs);
    record.store(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_runs_ask_once_a_minute_and_print_only_news() {
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200", "89.208.230.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bitrix24.nft");
    let prom = dir.path().join("nodesync.prom");
    let base = [
        "--emit",
        "nftables",
        "--output",
        out.to_str().unwrap(),
        "--textfile",
        prom.to_str().unwrap(),
    ];

    let first = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stdout.contains("added 195.208.184.200") && first.stdout.contains("updated"),
        "{}",
        first.stdout
    );
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("89.208.230.2")
    );
    assert_eq!(server.hits(), 1);

    // A second process within 60 s does not touch the network and says nothing.
    let second = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(
        (second.code, second.stdout.as_str(), second.stderr.as_str()),
        (0, "", "")
    );
    assert_eq!(server.hits(), 1);

    // After a minute it asks again, with the ETag, and gets a 304: still quiet.
    age_cache(dir.path(), 61);
    let third = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(
        (third.code, third.stdout.as_str(), third.stderr.as_str()),
        (0, "", "")
    );
    assert_eq!((server.hits(), server.not_modified()), (2, 1));

    // A change is news: one line per network.
    server.set(Reply::nodes(&["195.208.184.200", "89.208.230.3"]));
    age_cache(dir.path(), 61);
    let fourth = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(
        fourth.stdout,
        format!(
            "nodesync: added 89.208.230.3\nnodesync: removed 89.208.230.2\nnodesync: updated {}\n",
            out.display()
        )
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("nodesync_nodes{family=\"ipv4\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nodesync_consecutive_failures 0\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_source_falls_back_to_the_last_good_list() {
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("allow.conf");
    let prom = dir.path().join("nodesync.prom");
    let base = [
        "--emit",
        "nginx",
        "--output",
        out.to_str().unwrap(),
        "--textfile",
        prom.to_str().unwrap(),
    ];
    assert_eq!(
        run_async(args(&base, dir.path(), &server.url())).await.code,
        0
    );
    let good = std::fs::read_to_string(&out).unwrap();

    for (reply, says) in [
        (Reply::Status(500, "oops".into()), "HTTP 500"),
        (
            Reply::raw(
                "<html><body>down for maintenance</body></html>",
                "text/html",
            ),
            "HTML page",
        ),
        (Reply::raw(r#"{"nodes": []}"#, "application/json"), "empty"),
    ] {
        server.set(reply);
        age_cache(dir.path(), 61);
        let r = run_async(args(&base, dir.path(), &server.url())).await;
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert!(
            r.stderr.contains(says) && r.stderr.contains("using the last good list"),
            "{}",
            r.stderr
        );
        assert_eq!(
            r.stdout, "",
            "the output did not change, so nothing else is said"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), good);
    }
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("nodesync_consecutive_failures 3\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_usable_is_exit_1_and_nothing_is_emitted() {
    let server = NodesServer::start(Reply::Status(503, "busy".into())).await;
    let dir = tempfile::tempdir().unwrap();
    let r = run_async(args(&["--emit", "plain"], dir.path(), &server.url())).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("no cached list"), "{}", r.stderr);
    // Offline with no cache: same.
    let offline = run_async(args(
        &["--emit", "plain", "--offline"],
        dir.path(),
        &server.url(),
    ))
    .await;
    assert_eq!(offline.code, 1, "{}", offline.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_shrink_is_refused_unless_forced() {
    let server =
        NodesServer::start(Reply::nodes(&["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("list.txt");
    let base = ["--emit", "plain", "--output", out.to_str().unwrap()];
    assert_eq!(
        run_async(args(&base, dir.path(), &server.url())).await.code,
        0
    );

    server.set(Reply::nodes(&["1.1.1.1"]));
    age_cache(dir.path(), 61);
    let refused = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("75%") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4);

    age_cache(dir.path(), 61);
    let mut forced = base.to_vec();
    forced.push("--force");
    let accepted = run_async(args(&forced, dir.path(), &server.url())).await;
    assert_eq!(accepted.code, 0, "{}", accepted.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "1.1.1.1\n");
}

#[test]
fn offline_uses_the_cache_and_usage_errors_are_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let example = dir.path().join("app.json");
    std::fs::copy(common::workspace_file("deploy/examples/app.json"), &example).unwrap();
    let cache = dir.path().join("cache.json");
    let with = |extra: &[&str]| {
        let mut a = vec![
            "--source",
            example.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let json = with(&["--emit", "json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    assert!(json.stdout.contains("\"195.208.184.200\""));
    // The file source is gone; --offline still has the list.
    std::fs::remove_file(&example).unwrap();
    let offline = with(&["--emit", "plain", "--offline"]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    assert!(offline.stdout.contains("195.208.184.200\n"));
    // That cache is this source's: pointed at another source, it is not
    // used (a trial list must not become another source's last good list).
    let other = run(&[
        "--source",
        "/nonexistent/app.json",
        "--cache",
        cache.to_str().unwrap(),
        "--emit",
        "plain",
        "--offline",
    ]);
    assert_eq!(other.code, 1, "{}", other.stderr);
    assert_eq!(other.stdout, "");

    let bad = with(&["--emit", "nftables", "--extra", "not-a-network"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--extra"), "{}", bad.stderr);
    assert_eq!(with(&["--emit", "yaml"]).code, 2);
    let version = run(&["--version"]);
    let revision = version
        .stdout
        .trim()
        .strip_prefix("nodesync 0.1.0 (")
        .and_then(|r| r.strip_suffix(')'));
    assert!(
        revision.is_some_and(|r| !r.is_empty()),
        "{}",
        version.stdout
    );
    let help = run(&["--help"]);
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("--max-shrink"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_that_opens_the_world_is_refused_with_exit_5_and_one_line() {
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200", "89.208.230.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("list.txt");
    let base = ["--emit", "plain", "--output", out.to_str().unwrap()];
    assert_eq!(
        run_async(args(&base, dir.path(), &server.url())).await.code,
        0
    );

    for (entries, named, hatch) in [
        (
            &["195.208.184.200", "0.0.0.0/0"][..],
            "0.0.0.0/0",
            "--allow-broad",
        ),
        (
            &["0.0.0.0/1", "128.0.0.0/1"][..],
            "0.0.0.0/1",
            "--allow-broad",
        ),
        (&["195.208.184.200", "::/0"][..], "::/0", "--allow-broad"),
        (
            &["195.208.184.200", "10.0.0.0/24"][..],
            "10.0.0.0/24",
            "--allow-special",
        ),
        (
            &["195.208.184.200", "127.0.0.1"][..],
            "127.0.0.1",
            "--allow-special",
        ),
    ] {
        server.set(Reply::nodes(entries));
        age_cache(dir.path(), 61);
        let r = run_async(args(&base, dir.path(), &server.url())).await;
        assert_eq!(r.code, 5, "{entries:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "one clear line: {}", r.stderr);
        assert!(
            r.stderr.contains(named)
                && r.stderr.contains(hatch)
                && r.stderr.contains("using the last good list (2 networks"),
            "{}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "no 'removed' lines: nothing changed");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "89.208.230.2\n195.208.184.200\n"
        );
    }

    // The escape hatch, named explicitly, takes the same list.
    server.set(Reply::nodes(&["195.208.184.200", "127.0.0.1"]));
    age_cache(dir.path(), 61);
    let mut lax = base.to_vec();
    lax.push("--allow-special");
    let r = run_async(args(&lax, dir.path(), &server.url())).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read_to_string(&out).unwrap().contains("127.0.0.1"));

    // With no last good list at all, still exit 5 and nothing emitted.
    let fresh = tempfile::tempdir().unwrap();
    server.set(Reply::nodes(&["0.0.0.0/0"]));
    let r = run_async(args(&["--emit", "plain"], fresh.path(), &server.url())).await;
    assert_eq!((r.code, r.stdout.as_str()), (5, ""), "{}", r.stderr);
    assert!(
        r.stderr.contains("no cached list to fall back on"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_sources_are_admitted_as_a_union_and_a_failing_one_keeps_its_part() {
    let world = NodesServer::start(Reply::nodes(&["195.208.184.200"])).await;
    let russia = NodesServer::start(Reply::nodes(&["89.208.230.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let both = |extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "--emit".into(),
            "plain".into(),
            "--source".into(),
            world.url(),
            "--source".into(),
            russia.url(),
            "--cache".into(),
            cache.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let r = run_async(both(&[])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "89.208.230.2\n195.208.184.200\n");

    // Within the minute neither is asked again.
    let r = run_async(both(&[])).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!((world.hits(), russia.hits()), (1, 1));

    // One source breaks (and one serves a bad list): their last good parts
    // stay, the union is unchanged, and each problem is one line.
    russia.set(Reply::Status(500, "oops".into()));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("cache.127.0.0.1-") {
            continue; // the lock and the run state
        }
        let mut record = CacheRecord::load(&path).unwrap().unwrap();
        record.attempted_at = record.attempted_at.map(|t| t - 61);
        record.store(&path).unwrap();
    }
    let r = run_async(both(&[])).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "89.208.230.2\n195.208.184.200\n");
    assert!(
        r.stderr.contains("HTTP 500") && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );

    // Given twice, a source is a usage error.
    let mut twice = both(&[]);
    twice.extend(["--source".into(), world.url()]);
    assert_eq!(run_async(twice).await.code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_mailed_when_it_begins_and_when_it_ends() {
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200", "89.208.230.2"])).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("list.txt");
    let base = ["--emit", "plain", "--output", out.to_str().unwrap()];
    assert_eq!(
        run_async(args(&base, dir.path(), &server.url())).await.code,
        0
    );

    server.set(Reply::Status(503, "busy".into()));
    age_cache(dir.path(), 61);
    let began = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(began.code, 3);
    assert!(
        began.stderr.contains("HTTP 503") && began.stderr.lines().count() == 1,
        "{}",
        began.stderr
    );
    // While it lasts: exit 3 every run, nothing for cron to mail.
    for _ in 0..3 {
        age_cache(dir.path(), 61);
        let during = run_async(args(&base, dir.path(), &server.url())).await;
        assert_eq!(
            (during.code, during.stdout.as_str(), during.stderr.as_str()),
            (3, "", "")
        );
    }
    // Throttled runs in between still say the source is failing (exit 3).
    let throttled = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!((throttled.code, throttled.stderr.as_str()), (3, ""));
    // Its nature changes: news.
    server.set(Reply::raw("<html>maintenance</html>", "text/html"));
    age_cache(dir.path(), 61);
    let changed = run_async(args(&base, dir.path(), &server.url())).await;
    assert!(changed.stderr.contains("HTML page"), "{}", changed.stderr);
    // It ends: one line.
    server.set(Reply::nodes(&["195.208.184.200", "89.208.230.2"]));
    age_cache(dir.path(), 61);
    let ended = run_async(args(&base, dir.path(), &server.url())).await;
    assert_eq!(ended.code, 0, "{}", ended.stderr);
    assert!(
        ended.stdout.contains("works again after 5 failed attempts"),
        "{}",
        ended.stdout
    );
    assert_eq!(ended.stdout.lines().count(), 1, "{}", ended.stdout);
    assert_eq!(ended.stderr, "");
}

#[test]
fn a_fresh_box_gets_its_directories_and_quiet_optional_metrics() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("app.json");
    std::fs::copy(common::workspace_file("deploy/examples/app.json"), &source).unwrap();
    let cache = dir.path().join("var/lib/nodesync/cache.json");
    let output = dir.path().join("var/lib/nodesync/nft/bitrix24.nft");
    let metrics_dir = dir.path().join("node-exporter");
    let textfile = metrics_dir.join("nodesync.prom");
    let go = || {
        run(&[
            "--emit",
            "nftables",
            "--source",
            source.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--textfile",
            textfile.to_str().unwrap(),
        ])
    };
    let first = go();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let mode = std::fs::metadata(cache.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(output.exists() && cache.exists());
    // node_exporter is not installed: said once, then quiet.
    assert!(
        first.stderr.contains("does not exist") && first.stderr.lines().count() == 1,
        "{}",
        first.stderr
    );
    let second = go();
    assert_eq!(
        (second.code, second.stdout.as_str(), second.stderr.as_str()),
        (0, "", "")
    );
    // It gets installed: the metrics appear.
    std::fs::create_dir(&metrics_dir).unwrap();
    let third = go();
    assert_eq!(third.code, 0);
    assert!(third.stdout.contains("resolved"), "{}", third.stdout);
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("nodesync_exit_code 0\n") && metrics.contains("nodesync_list_refused 0\n"),
        "{metrics}"
    );
    // Without --textfile nothing is said about metrics at all.
    let plain = run(&[
        "--emit",
        "plain",
        "--source",
        source.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!((plain.code, plain.stderr.as_str()), (0, ""));
    // Nothing to restore yet: quiet success.
    let restore = run(&["--restore", "--cache", cache.to_str().unwrap()]);
    assert_eq!(
        (
            restore.code,
            restore.stdout.as_str(),
            restore.stderr.as_str()
        ),
        (0, "", "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_at_once_still_ask_the_source_once_a_minute() {
    let server = NodesServer::start(Reply::nodes(&["195.208.184.200"])).await;
    let dir = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let a = args(&["--emit", "plain"], dir.path(), &server.url());
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                run(&a)
            })
        })
        .collect();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout, "195.208.184.200\n");
    }
    assert_eq!(server.hits(), 1, "six runs at once, one request");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_cannot_be_walked_down_run_by_run() {
    let all: Vec<String> = (0..40).map(|i| format!("89.208.0.{}", 1 + i * 2)).collect();
    let entries = |n: usize| all[..n].iter().map(String::as_str).collect::<Vec<_>>();
    let server = NodesServer::start(Reply::nodes(&entries(40))).await;
    let dir = tempfile::tempdir().unwrap();
    let base = ["--emit", "plain"];
    assert_eq!(
        run_async(args(&base, dir.path(), &server.url())).await.code,
        0
    );
    let mut accepted = vec![40];
    for n in [20, 10, 5, 3, 2] {
        server.set(Reply::nodes(&entries(n)));
        age_cache(dir.path(), 61);
        let r = run_async(args(&base, dir.path(), &server.url())).await;
        if r.code == 0 {
            accepted.push(n);
        } else {
            assert_eq!(r.code, 3, "{}", r.stderr);
        }
    }
    assert_eq!(accepted, [40, 20]);
}

#[test]
fn the_readme_documents_every_exit_code_the_binary_has() {
    let help = run(&["--help"]).stdout;
    let readme = std::fs::read_to_string(common::workspace_file("README.md")).unwrap();
    let section = &readme[readme.find("## nodesync").unwrap()..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    for code in 0..=8 {
        assert!(
            help.contains(&format!("\n  {code}  ")),
            "--help lacks exit code {code}"
        );
        assert!(
            section.contains(&format!("| {code} |")),
            "README lacks exit code {code}"
        );
    }
    for flag in [
        "--allow-broad",
        "--allow-special",
        "--allow-lockout",
        "--restore",
        "--lock-wait",
        "--no-forward",
        "--set-only",
        "--source",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
        assert!(
            section.contains(flag),
            "README's nodesync section lacks {flag}"
        );
    }
}

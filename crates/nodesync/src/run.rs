//! One nodesync run: get the list, render it, write and apply it, report.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use b24_nodes::{
    Diff, FetchOptions, Fetcher, NodeList, Outcome, age_of, display_network, write_atomically,
};

use crate::apply::apply;
use crate::cli::{Settings, exit};
use crate::emit::{Format, render};
use crate::textfile::{self, Metrics};

/// At most this many added/removed networks are listed one per line; a
/// larger change is summarised so a cron mail stays readable.
const MAX_CHANGE_LINES: usize = 50;

/// Where a run writes. Tests pass buffers; the binary passes stdout/stderr.
pub struct Streams<'a> {
    /// The rendered rules, when no `--output` or `--apply` takes them.
    pub out: &'a mut dyn Write,
    /// Everything said to the admin.
    pub err: &'a mut dyn Write,
}

/// Runs nodesync once and returns its exit code.
pub async fn run(settings: &Settings, streams: Streams<'_>) -> u8 {
    let Streams { out, err } = streams;
    let rules_to_stdout = settings.output.is_none() && !settings.apply;
    // News goes where it does not mix with rules on standard output.
    let mut news = String::new();
    let mut problems = String::new();
    for warning in &settings.warnings {
        let _ = writeln!(problems, "nodesync: warning: {warning}");
    }

    let code = run_inner(settings, &mut news, &mut problems, out).await;

    let news_stream: &mut dyn Write = if rules_to_stdout {
        &mut *err
    } else {
        &mut *out
    };
    let _ = news_stream.write_all(news.as_bytes());
    let _ = err.write_all(problems.as_bytes());
    let _ = out.flush();
    let _ = err.flush();
    code
}

async fn run_inner(
    settings: &Settings,
    news: &mut String,
    problems: &mut String,
    out: &mut dyn Write,
) -> u8 {
    let mut fetcher = match Fetcher::new(
        settings.source.clone(),
        Some(settings.cache.clone()),
        FetchOptions::default(),
    ) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(problems, "nodesync: error: {e}");
            return exit::USAGE;
        }
    };
    if let Some(e) = fetcher.cache_error() {
        let _ = writeln!(problems, "nodesync: warning: {e}");
    }

    let outcome = if settings.offline {
        Outcome::Throttled {
            list: fetcher.current().cloned(),
            retry_in: Default::default(),
        }
    } else {
        let (max_shrink, force) = (settings.max_shrink, settings.force);
        let guard =
            move |old: Option<&NodeList>, new: &NodeList| shrink_guard(old, new, max_shrink, force);
        fetcher.refresh_with(&guard).await
    };
    if let Some(e) = fetcher.cache_error() {
        let _ = writeln!(
            problems,
            "nodesync: warning: {e}; without it the 60 s request limit cannot be kept across runs"
        );
    }

    let mut code = exit::OK;
    match &outcome {
        Outcome::Changed { list, diff } => describe_change(news, list, diff),
        Outcome::Unchanged { list } if settings.verbose => {
            let _ = writeln!(
                news,
                "nodesync: unchanged: {} networks from {}",
                list.len(),
                settings.source
            );
        }
        Outcome::Throttled {
            list: Some(list),
            retry_in,
        } if settings.verbose => {
            let why = if settings.offline {
                "offline".to_string()
            } else {
                format!(
                    "source asked recently, next request allowed in {} s",
                    retry_in.as_secs()
                )
            };
            let _ = writeln!(
                news,
                "nodesync: using the cached list ({} networks; {why})",
                list.len()
            );
        }
        Outcome::Failed { error, list } => {
            let _ = write!(problems, "nodesync: error: {error}");
            match list {
                Some(list) => {
                    let age = fetcher.record().fetched_at.map(age_of);
                    let when = age.map_or("at an unknown time".into(), |a| {
                        format!("{} min ago", a.as_secs() / 60)
                    });
                    let _ = writeln!(
                        problems,
                        "; using the last good list ({} networks, confirmed {when})",
                        list.len()
                    );
                    code = exit::STALE;
                }
                None => {
                    let _ = writeln!(problems, "; there is no cached list to fall back on");
                }
            }
        }
        _ => {}
    }

    let Some(list) = outcome.list().cloned() else {
        if !matches!(outcome, Outcome::Failed { .. }) {
            let _ = writeln!(
                problems,
                "nodesync: error: no cached list in {} and the source was not asked{}",
                settings.cache.display(),
                if settings.offline {
                    " (--offline)"
                } else {
                    " (asked less than 60 s ago)"
                }
            );
        }
        write_metrics(settings, &fetcher, None, false, problems);
        return exit::NO_LIST;
    };

    let rendered = render(settings.format, &list, &settings.rules);
    if let Some(path) = &settings.output {
        match write_if_changed(path, &rendered) {
            Ok(true) => {
                let _ = writeln!(news, "nodesync: updated {}", path.display());
            }
            Ok(false) => {}
            Err(e) => {
                let _ = writeln!(
                    problems,
                    "nodesync: error: cannot write {}: {e}",
                    path.display()
                );
                return exit::USAGE;
            }
        }
    } else if !settings.apply {
        let _ = out.write_all(rendered.as_bytes());
    }

    let mut apply_failed = false;
    if settings.apply {
        // Applied on every run, not only on change: the rules are replaced
        // atomically, and a ruleset flushed by someone else comes back.
        match apply(settings.format, &rendered, &list, &settings.rules) {
            Ok(()) => {
                if settings.verbose {
                    let _ = writeln!(
                        news,
                        "nodesync: applied {} rules",
                        format_name(settings.format)
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(
                    problems,
                    "nodesync: error: --apply failed; the rules loaded before stay in place: {e}"
                );
                apply_failed = true;
                code = exit::APPLY_FAILED;
            }
        }
    }
    write_metrics(settings, &fetcher, Some(&list), apply_failed, problems);
    code
}

/// Refuses a list that would drop a large share of the current one: a
/// publishing mistake upstream must not cut Bitrix24 off in one cron tick.
fn shrink_guard(
    old: Option<&NodeList>,
    new: &NodeList,
    max_shrink: u8,
    force: bool,
) -> Result<(), String> {
    let Some(old) = old else { return Ok(()) };
    if force {
        return Ok(());
    }
    let lost = old.lost_share(new) * 100.0;
    if lost > f64::from(max_shrink) {
        return Err(format!(
            "it no longer covers {lost:.0}% of the current {} networks (--max-shrink is {max_shrink}%); \
             check the source, then run once with --force to accept it",
            old.len()
        ));
    }
    Ok(())
}

fn describe_change(news: &mut String, list: &NodeList, diff: &Diff) {
    if diff.removed.is_empty()
        && diff.added.len() == list.len()
        && diff.added.len() > MAX_CHANGE_LINES
    {
        let _ = writeln!(news, "nodesync: new list: {} networks", list.len());
        return;
    }
    let lines = diff
        .added
        .iter()
        .map(|n| ('+', n))
        .chain(diff.removed.iter().map(|n| ('-', n)));
    for (sign, net) in lines.clone().take(MAX_CHANGE_LINES) {
        let verb = if sign == '+' { "added" } else { "removed" };
        let _ = writeln!(news, "nodesync: {verb} {}", display_network(net));
    }
    let total = diff.added.len() + diff.removed.len();
    if total > MAX_CHANGE_LINES {
        let _ = writeln!(
            news,
            "nodesync: … and {} more changes ({} added, {} removed in all; {} networks now)",
            total - MAX_CHANGE_LINES,
            diff.added.len(),
            diff.removed.len(),
            list.len()
        );
    }
}

/// Writes `content` unless the file already holds exactly that; returns
/// whether it wrote.
fn write_if_changed(path: &Path, content: &str) -> std::io::Result<bool> {
    match std::fs::read(path) {
        Ok(existing) if existing == content.as_bytes() => return Ok(false),
        _ => {}
    }
    write_atomically(path, content.as_bytes())?;
    Ok(true)
}

fn write_metrics(
    settings: &Settings,
    fetcher: &Fetcher,
    list: Option<&NodeList>,
    apply_failed: bool,
    problems: &mut String,
) {
    let Some(path) = &settings.textfile else {
        return;
    };
    let record = fetcher.record();
    let metrics = Metrics {
        v4: list.map_or(0, |l| l.v4().len()),
        v6: list.map_or(0, |l| l.v6().len()),
        last_success: record.fetched_at,
        last_change: record.changed_at,
        consecutive_failures: record.consecutive_failures,
        apply_failed: settings.apply.then_some(apply_failed),
    };
    if let Err(e) = write_atomically(path, textfile::render(&metrics).as_bytes()) {
        let _ = writeln!(
            problems,
            "nodesync: warning: cannot write metrics to {}: {e}",
            path.display()
        );
    }
}

fn format_name(format: Format) -> String {
    format!("{format:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> NodeList {
        let doc = serde_json_like(entries);
        NodeList::parse(doc.as_bytes(), &Default::default()).unwrap()
    }

    fn serde_json_like(entries: &[&str]) -> String {
        let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
        format!("{{\"nodes\": [{}]}}", quoted.join(","))
    }

    #[test]
    fn shrink_guard_refuses_large_losses_unless_forced() {
        let old = list(&["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]);
        let half = list(&["1.1.1.1", "2.2.2.2"]);
        let quarter = list(&["1.1.1.1"]);
        assert!(shrink_guard(Some(&old), &half, 50, false).is_ok());
        let refusal = shrink_guard(Some(&old), &quarter, 50, false).unwrap_err();
        assert!(
            refusal.contains("75%") && refusal.contains("--force"),
            "{refusal}"
        );
        assert!(shrink_guard(Some(&old), &quarter, 50, true).is_ok());
        assert!(shrink_guard(None, &quarter, 0, false).is_ok());
    }

    #[test]
    fn big_changes_are_summarised() {
        let many: Vec<String> = (0..200).map(|i| format!("10.{i}.0.1")).collect();
        let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let new = list(&many_refs);
        let mut news = String::new();
        describe_change(&mut news, &new, &NodeList::from_networks([]).diff(&new));
        assert_eq!(news.lines().count(), 1, "{news}");
        let old = list(&["192.0.2.1"]);
        let mut news = String::new();
        describe_change(&mut news, &new, &old.diff(&new));
        assert_eq!(news.lines().count(), MAX_CHANGE_LINES + 1);
    }
}

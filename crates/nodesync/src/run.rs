//! One nodesync run: get the list, render it, write and apply it, report.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use b24_nodes::{
    Baseline, Diff, FetchOptions, Fetcher, FetcherSet, NodeList, Outcome, age_of, display_network,
    write_atomically,
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
    let options = FetchOptions {
        limits: settings.limits,
        ..FetchOptions::default()
    };
    let mut set = match FetcherSet::new(&settings.sources, Some(&settings.cache), options) {
        Ok(set) => set,
        Err(e) => {
            let _ = writeln!(problems, "nodesync: error: {e}");
            return exit::USAGE;
        }
    };
    for fetcher in set.fetchers() {
        if let Some(e) = fetcher.cache_error() {
            let _ = writeln!(problems, "nodesync: warning: {e}");
        }
    }
    let before = set.union();

    let (max_shrink, force) = (settings.max_shrink, settings.force);
    let guard = move |baseline: &Baseline<'_>, new: &NodeList| {
        shrink_guard(baseline, new, max_shrink, force)
    };
    let mut code = exit::OK;
    let mut asked_none = true;
    for fetcher in set.fetchers_mut() {
        let outcome = if settings.offline {
            Outcome::Throttled {
                list: fetcher.current().cloned(),
                retry_in: Default::default(),
            }
        } else {
            fetcher.refresh_with(&guard).await
        };
        if let Some(e) = fetcher.cache_error() {
            let _ = writeln!(
                problems,
                "nodesync: warning: {e}; without it the 60 s request limit cannot be kept across runs"
            );
        }
        asked_none &= matches!(outcome, Outcome::Throttled { .. });
        code = code.max(report_source(settings, fetcher, &outcome, news, problems));
    }

    let union = set.union();
    match (&before, &union) {
        (Some(old), Some(new)) if old != new => describe_change(news, new, &old.diff(new)),
        (None, Some(new)) => describe_change(news, new, &NodeList::from_networks([]).diff(new)),
        _ => {}
    }
    let Some(list) = union else {
        if asked_none {
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
        write_metrics(settings, &set, None, false, problems);
        return if code == exit::UNSAFE_LIST {
            exit::UNSAFE_LIST
        } else {
            exit::NO_LIST
        };
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
    write_metrics(settings, &set, Some(&list), apply_failed, problems);
    code
}

/// Says what happened to one source and returns the exit code it calls
/// for: 0, 3 (failed or refused for shrinking; its last good part used) or 5
/// (refused as unsafe).
fn report_source(
    settings: &Settings,
    fetcher: &Fetcher,
    outcome: &Outcome,
    news: &mut String,
    problems: &mut String,
) -> u8 {
    let source = fetcher.source();
    match outcome {
        Outcome::Unchanged { list } if settings.verbose => {
            let _ = writeln!(
                news,
                "nodesync: unchanged: {} networks from {source}",
                list.len(),
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
                "nodesync: using the cached list of {source} ({} networks; {why})",
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
                }
                None => {
                    let _ = writeln!(problems, "; there is no cached list to fall back on");
                }
            }
            return if error.is_unsafe_list() {
                exit::UNSAFE_LIST
            } else {
                exit::STALE
            };
        }
        _ => {}
    }
    exit::OK
}

/// Refuses a list that would drop a large share of the current one: a
/// publishing mistake upstream must not cut Bitrix24 off in one cron tick.
///
/// Two comparisons: with the current list (the share of its networks the new
/// one no longer covers), and with the largest list this source had within
/// the baseline window (a day), so that a list cannot be walked down a
/// little on each run.
fn shrink_guard(
    baseline: &Baseline<'_>,
    new: &NodeList,
    max_shrink: u8,
    force: bool,
) -> Result<(), String> {
    if force {
        return Ok(());
    }
    if let Some(old) = baseline.previous {
        let lost = old.lost_share(new) * 100.0;
        if lost > f64::from(max_shrink) {
            return Err(format!(
                "it no longer covers {lost:.0}% of the current {} networks (--max-shrink is {max_shrink}%); \
                 check the source, then run once with --force to accept it",
                old.len()
            ));
        }
    }
    if let Some(peak) = baseline.peak {
        let floor = peak as f64 * (100.0 - f64::from(max_shrink)) / 100.0;
        if (new.len() as f64) < floor {
            return Err(format!(
                "it has {} networks, fewer than {}% of the {peak} the source listed within the last \
                 24 h (--max-shrink is {max_shrink}%); check the source, then run once with --force to accept it",
                new.len(),
                100 - u32::from(max_shrink)
            ));
        }
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
    set: &FetcherSet,
    list: Option<&NodeList>,
    apply_failed: bool,
    problems: &mut String,
) {
    let Some(path) = &settings.textfile else {
        return;
    };
    let records: Vec<_> = set.fetchers().iter().map(|f| f.record()).collect();
    // Several sources: the oldest confirmation and the longest failure
    // streak are what an alert must see.
    let metrics = Metrics {
        v4: list.map_or(0, |l| l.v4().len()),
        v6: list.map_or(0, |l| l.v6().len()),
        last_success: records.iter().map(|r| r.fetched_at).min().flatten(),
        last_change: records.iter().filter_map(|r| r.changed_at).max(),
        consecutive_failures: records
            .iter()
            .map(|r| r.consecutive_failures)
            .max()
            .unwrap_or(0),
        refused_sources: records.iter().filter(|r| r.last_error_unsafe).count(),
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
        NodeList::parse(doc.as_bytes(), &b24_nodes::Limits::allowing_special()).unwrap()
    }

    fn serde_json_like(entries: &[&str]) -> String {
        let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
        format!("{{\"nodes\": [{}]}}", quoted.join(","))
    }

    fn after(previous: Option<&NodeList>, peak: Option<usize>) -> Baseline<'_> {
        Baseline { previous, peak }
    }

    #[test]
    fn shrink_guard_refuses_large_losses_unless_forced() {
        let old = list(&["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]);
        let half = list(&["1.1.1.1", "2.2.2.2"]);
        let quarter = list(&["1.1.1.1"]);
        assert!(shrink_guard(&after(Some(&old), None), &half, 50, false).is_ok());
        let refusal = shrink_guard(&after(Some(&old), None), &quarter, 50, false).unwrap_err();
        assert!(
            refusal.contains("75%") && refusal.contains("--force"),
            "{refusal}"
        );
        assert!(shrink_guard(&after(Some(&old), None), &quarter, 50, true).is_ok());
        assert!(shrink_guard(&after(None, None), &quarter, 0, false).is_ok());
    }

    #[test]
    fn shrink_guard_compares_with_the_peak_of_the_window() {
        let half = list(&["1.1.1.1", "2.2.2.2"]);
        let quarter = list(&["1.1.1.1"]);
        // Against the last list alone, 2 → 1 is within 50 %; against a
        // peak of 4 it is not.
        assert!(shrink_guard(&after(Some(&half), None), &quarter, 50, false).is_ok());
        let refusal = shrink_guard(&after(Some(&half), Some(4)), &quarter, 50, false).unwrap_err();
        assert!(
            refusal.contains("of the 4") && refusal.contains("24 h"),
            "{refusal}"
        );
        assert!(shrink_guard(&after(Some(&half), Some(4)), &half, 50, false).is_ok());
        assert!(shrink_guard(&after(Some(&half), Some(4)), &quarter, 50, true).is_ok());
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

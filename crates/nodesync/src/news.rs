//! What a run says: one line per network when the list changes, and each
//! problem when it begins, changes or ends — so cron mails only news — plus
//! the shrink guard that refuses a list which lost too much.

use std::fmt::Write as _;

use b24_nodes::{Baseline, Diff, Fetcher, NodeList, Outcome, age_of, display_network};

use crate::cli::exit;

/// At most this many added/removed networks are listed one per line; a
/// larger change is summarised so a cron mail stays readable.
pub const MAX_CHANGE_LINES: usize = 50;

/// Refuses a list that would drop a large share of the current one: a
/// publishing mistake upstream must not cut Bitrix24 off in one cron tick.
///
/// Two comparisons: with the current list (the share of its networks the new
/// one no longer covers), and with the largest list this source had within
/// the baseline window (a day), so that a list cannot be walked down a
/// little on each run.
pub fn shrink_guard(
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

/// One line per added and removed network (a summary past
/// [`MAX_CHANGE_LINES`]).
pub fn describe_change(news: &mut String, list: &NodeList, diff: &Diff) {
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

/// What a source's cache said before this run's refresh.
#[derive(Debug, Clone, Default)]
pub struct Before {
    pub last_error: Option<String>,
    pub failures: u32,
}

impl Before {
    pub fn of(fetcher: &Fetcher) -> Before {
        Before {
            last_error: fetcher.record().last_error.clone(),
            failures: fetcher.record().consecutive_failures,
        }
    }
}

/// Says what happened to one source — a failure only when it is new or
/// different from the last run's (or with `verbose`), a recovery once — and
/// returns the exit code its state calls for: 0, 3 (failing, or its list
/// shrank too much; its last good part used) or 5 (its list was refused as
/// unsafe). A source not asked this run (the 60 s rule, `--offline`) keeps
/// the code of its last attempt.
pub fn report_source(
    fetcher: &Fetcher,
    outcome: &Outcome,
    before: &Before,
    verbose: bool,
    offline: bool,
    news: &mut String,
    problems: &mut String,
) -> u8 {
    let source = fetcher.source();
    let record = fetcher.record();
    match outcome {
        Outcome::Changed { .. } | Outcome::Unchanged { .. } => {
            if let Some(old) = &before.last_error {
                let _ = writeln!(
                    news,
                    "nodesync: {source} works again after {} failed attempts (the last: {old})",
                    before.failures
                );
            } else if verbose && let Outcome::Unchanged { list } = outcome {
                let _ = writeln!(
                    news,
                    "nodesync: unchanged: {} networks from {source}",
                    list.len()
                );
            }
            exit::OK
        }
        Outcome::Throttled { list, retry_in } => {
            if verbose && let Some(list) = list {
                let why = if offline {
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
            match (&record.last_error, record.last_error_unsafe) {
                (None, _) => exit::OK,
                (Some(_), true) => exit::UNSAFE_LIST,
                (Some(_), false) => exit::STALE,
            }
        }
        Outcome::Failed { error, list } => {
            let text = error.to_string();
            if verbose || before.last_error.as_deref() != Some(text.as_str()) {
                let _ = write!(problems, "nodesync: error: {text}");
                match list {
                    Some(list) => {
                        let age = record.fetched_at.map(age_of);
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
            }
            if error.is_unsafe_list() {
                exit::UNSAFE_LIST
            } else {
                exit::STALE
            }
        }
    }
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

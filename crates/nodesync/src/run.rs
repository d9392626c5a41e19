//! One nodesync run: take the lock, get the list from every source, render
//! it, check and apply it, write the files, report what is news.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use b24_nodes::{Baseline, FetchOptions, FetcherSet, NodeList, Outcome, write_atomically};

use crate::apply::{ApplyError, Safety, apply, ensure_sets_exist};
use crate::cli::{Args, Settings, exit};
use crate::emit::{Format, render};
use crate::lock::RunLock;
use crate::news::{Before, describe_change, report_source, shrink_guard};
use crate::state::{Note, RunState, sibling};
use crate::textfile::{self, Metrics};

/// Where a run writes. Tests pass buffers; the binary passes stdout/stderr.
pub struct Streams<'a> {
    /// The rendered rules, when no `--output` or `--apply` takes them.
    pub out: &'a mut dyn Write,
    /// Everything said to the admin.
    pub err: &'a mut dyn Write,
}

/// What a run has to say, kept apart until the end so that news never
/// mixes with rules on standard output.
#[derive(Default)]
struct Said {
    news: String,
    problems: String,
}

impl Said {
    /// Reports a problem of `area` when it is news (begins, changes, ends).
    fn note(&mut self, state: &mut RunState, area: &str, problem: Option<String>, verbose: bool) {
        let shown = problem.clone();
        match state.note(area, problem) {
            Note::New(text) => {
                let _ = writeln!(self.problems, "nodesync: {text}");
            }
            Note::Ended(old) => {
                let _ = writeln!(self.news, "nodesync: resolved: {old}");
            }
            Note::Quiet => {
                if verbose && let Some(text) = shown {
                    let _ = writeln!(self.problems, "nodesync: {text}");
                }
            }
        }
    }
}

/// Runs nodesync once and returns its exit code.
pub async fn run(settings: &Settings, streams: Streams<'_>) -> u8 {
    let Streams { out, err } = streams;
    let mut said = Said::default();
    let mut rules_to_stdout = settings.output.is_none() && !settings.apply && !settings.restore;

    let code = 'run: {
        if let Err(e) = create_parent(&settings.cache, 0o755) {
            let _ = writeln!(
                said.problems,
                "nodesync: error: cannot create the directory of {}: {e}",
                settings.cache.display()
            );
            break 'run exit::USAGE;
        }
        let _lock = match RunLock::acquire(&sibling(&settings.cache, "lock"), settings.lock_wait) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = writeln!(said.problems, "nodesync: error: {e}");
                break 'run match e {
                    crate::lock::LockError::Busy { .. } => exit::BUSY,
                    crate::lock::LockError::Open { .. } => exit::USAGE,
                };
            }
        };
        let state_path = sibling(&settings.cache, "state.json");
        let mut state = RunState::load(&state_path);
        let code = if settings.restore {
            match restored_settings(settings, &state) {
                Ok(Some(restored)) => {
                    rules_to_stdout = false;
                    pipeline(&restored, &mut state, &mut said, out).await
                }
                Ok(None) => {
                    if settings.verbose {
                        let _ = writeln!(
                            said.news,
                            "nodesync: nothing to restore: no --apply has succeeded with {}",
                            settings.cache.display()
                        );
                    }
                    exit::OK
                }
                Err(e) => {
                    let _ = writeln!(said.problems, "nodesync: error: {e}");
                    exit::USAGE
                }
            }
        } else {
            pipeline(settings, &mut state, &mut said, out).await
        };
        if let Err(e) = state.store(&state_path) {
            let _ = writeln!(
                said.problems,
                "nodesync: warning: cannot write {}: {e}",
                state_path.display()
            );
        }
        code
    };

    let news_stream: &mut dyn Write = if rules_to_stdout {
        &mut *err
    } else {
        &mut *out
    };
    let _ = news_stream.write_all(said.news.as_bytes());
    let _ = err.write_all(said.problems.as_bytes());
    let _ = out.flush();
    let _ = err.flush();
    code
}

/// The settings of the last successful `--apply`, to run again offline.
fn restored_settings(settings: &Settings, state: &RunState) -> Result<Option<Settings>, String> {
    let Some(args) = &state.applied_args else {
        return Ok(None);
    };
    let mut full = vec!["nodesync".to_string()];
    full.extend(args.iter().cloned());
    let mut restored = Args::parse_args(&full)
        .map_err(|e| format!("the options kept from the last --apply no longer parse: {e}"))?;
    restored.offline = true;
    restored.restore = true;
    restored.cache = settings.cache.clone();
    restored.verbose |= settings.verbose;
    restored.args = args.clone();
    Ok(Some(restored))
}

/// Fetch, render, apply, write: everything but the lock and the state file.
async fn pipeline(
    settings: &Settings,
    state: &mut RunState,
    said: &mut Said,
    out: &mut dyn Write,
) -> u8 {
    let Some(format) = settings.format else {
        return exit::USAGE;
    };
    let options = FetchOptions {
        limits: settings.limits,
        ..FetchOptions::default()
    };
    let mut set = match FetcherSet::new(&settings.sources, Some(&settings.cache), options) {
        Ok(set) => set,
        Err(e) => {
            let _ = writeln!(said.problems, "nodesync: error: {e}");
            return exit::USAGE;
        }
    };
    for fetcher in set.fetchers() {
        if let Some(e) = fetcher.cache_error() {
            let _ = writeln!(said.problems, "nodesync: warning: {e}");
        }
    }
    let before_union = set.union();

    let (max_shrink, force) = (settings.max_shrink, settings.force);
    let guard = move |baseline: &Baseline<'_>, new: &NodeList| {
        shrink_guard(baseline, new, max_shrink, force)
    };
    let mut fetch_code = exit::OK;
    let mut asked_none = true;
    for fetcher in set.fetchers_mut() {
        let before = Before::of(fetcher);
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
                said.problems,
                "nodesync: warning: {e}; without it the 60 s request limit cannot be kept across runs"
            );
        }
        asked_none &= matches!(outcome, Outcome::Throttled { .. });
        let code = report_source(
            fetcher,
            &outcome,
            &before,
            settings.verbose,
            settings.offline,
            &mut said.news,
            &mut said.problems,
        );
        fetch_code = worst(fetch_code, code);
    }

    let union = set.union();
    match (&before_union, &union) {
        (Some(old), Some(new)) if old != new => {
            describe_change(&mut said.news, new, &old.diff(new))
        }
        (None, Some(new)) => {
            describe_change(&mut said.news, new, &NodeList::from_networks([]).diff(new))
        }
        _ => {}
    }
    let Some(list) = union else {
        if asked_none {
            let _ = writeln!(
                said.problems,
                "nodesync: error: no cached list in {} and the source was not asked{}",
                settings.cache.display(),
                if settings.offline {
                    " (--offline)"
                } else {
                    " (asked less than 60 s ago)"
                }
            );
        }
        if settings.apply || settings.restore {
            // Rules saved elsewhere (netfilter-persistent) may name the sets:
            // they must exist for those rules to load, even empty.
            if let Err(e) = ensure_sets_exist(format, &settings.rules) {
                let _ = writeln!(said.problems, "nodesync: error: {e}");
            }
        }
        let code = if fetch_code == exit::UNSAFE_LIST {
            exit::UNSAFE_LIST
        } else {
            exit::NO_LIST
        };
        write_metrics(settings, &set, None, None, code, state, said);
        return code;
    };

    let rendered = render(format, &list, &settings.rules);
    let coverage = (format == Format::Iptables && !settings.apply && !list.v6().is_empty()).then(|| {
        format!(
            "warning: the list has {} IPv6 networks, which --emit iptables does not cover: also write --emit ip6tables (or use --apply, which loads both)",
            list.v6().len()
        )
    });
    said.note(state, "coverage", coverage, settings.verbose);

    let mut code = fetch_code;
    let applying = settings.apply || settings.restore;
    let mut apply_failed = None;
    if applying {
        // Applied on every run, not only on change: the rules are replaced
        // atomically, and a ruleset flushed by someone else comes back.
        let safety = Safety {
            // At boot the options were accepted (or forced) when they were
            // applied live; restoring them beats leaving the port open.
            allow_lockout: settings.allow_lockout || settings.restore,
        };
        let result = apply(format, &rendered, &list, &settings.rules, safety);
        let problem = result.as_ref().err().map(|e| match e {
            ApplyError::Tool(_) | ApplyError::NoIp6tables => {
                format!("error: --apply failed; the rules loaded before stay in place: {e}")
            }
            _ => format!("error: {e}"),
        });
        said.note(state, "apply", problem, settings.verbose);
        match result {
            Ok(applied) => {
                let leftovers = applied.leftovers.map(|why| format!("warning: {why}"));
                said.note(state, "leftovers", leftovers, settings.verbose);
                apply_failed = Some(false);
                if settings.verbose {
                    let _ = writeln!(said.news, "nodesync: applied {} rules", format.name());
                }
                if !settings.restore {
                    state.applied_args = Some(settings.args.clone());
                    state.applied_at = Some(unix_now());
                }
            }
            Err(e) => {
                apply_failed = Some(true);
                code = worst(code, e.exit_code());
            }
        }
    }

    // With --apply the file is written only once the kernel took the rules,
    // so a boot that includes it loads rules known to load.
    if let Some(path) = &settings.output {
        if apply_failed != Some(true) {
            match write_if_changed(path, &rendered) {
                Ok(true) => {
                    let _ = writeln!(said.news, "nodesync: updated {}", path.display());
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = writeln!(
                        said.problems,
                        "nodesync: error: cannot write {}: {e}",
                        path.display()
                    );
                    code = worst(code, exit::USAGE);
                }
            }
        }
    } else if !applying {
        let _ = out.write_all(rendered.as_bytes());
    }
    write_metrics(settings, &set, Some(&list), apply_failed, code, state, said);
    code
}

/// The more serious of two exit codes: a refused or failed apply first
/// (the firewall is not what the admin asked for), then an unsafe list,
/// then no list, then a stale one.
fn worst(a: u8, b: u8) -> u8 {
    let rank = |code: u8| match code {
        exit::BUSY => 9,
        exit::USAGE => 8,
        exit::NOT_OURS => 7,
        exit::LOCKOUT => 6,
        exit::APPLY_FAILED => 5,
        exit::UNSAFE_LIST => 4,
        exit::NO_LIST => 3,
        exit::STALE => 2,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Writes `content` unless the file already holds exactly that; returns
/// whether it wrote. A missing directory is created (mode 0755).
fn write_if_changed(path: &Path, content: &str) -> std::io::Result<bool> {
    match std::fs::read(path) {
        Ok(existing) if existing == content.as_bytes() => return Ok(false),
        _ => {}
    }
    create_parent(path, 0o755)?;
    write_atomically(path, content.as_bytes())?;
    Ok(true)
}

fn create_parent(path: &Path, mode: u32) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir),
        _ => Ok(()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_metrics(
    settings: &Settings,
    set: &FetcherSet,
    list: Option<&NodeList>,
    apply_failed: Option<bool>,
    code: u8,
    state: &mut RunState,
    said: &mut Said,
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
        apply_failed,
        exit_code: code,
    };
    // The directory is node_exporter's: without it there is no collector
    // to read the file, which is said once, not every run.
    let problem = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Some(format!(
            "warning: --textfile: {} does not exist (is node_exporter's textfile collector set up?); metrics are not written",
            dir.display()
        )),
        _ => write_atomically(path, textfile::render(&metrics).as_bytes())
            .err()
            .map(|e| format!("warning: cannot write metrics to {}: {e}", path.display())),
    };
    said.note(state, "metrics", problem, settings.verbose);
}

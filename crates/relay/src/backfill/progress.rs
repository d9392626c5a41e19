//! The backfill's progress on stderr: a live one-line bar (`\r`) on a
//! terminal, one plain line every few seconds otherwise (logs, CI), and
//! the rate and time left from the jobs that ended during this run.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What a backfill did during this run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deals queued (or, with `--dry-run`, that would be).
    pub enqueued: u64,
    /// Skipped: the target already holds them.
    pub already: u64,
    /// Jobs that ended done.
    pub transferred: u64,
    /// Jobs that ended failed (see `b24-relay jobs list --state failed`).
    pub failed: u64,
    /// Jobs that ended skipped (the deal left the route's stages meanwhile).
    pub skipped: u64,
}

impl Counts {
    fn ended(&self) -> u64 {
        self.transferred + self.failed + self.skipped
    }
}

pub struct Progress {
    route: String,
    total: u64,
    tty: bool,
    every: Duration,
    started: Instant,
    shown: Option<Instant>,
    /// A bar is on the terminal's current line.
    bar_open: bool,
    last: Option<String>,
}

impl Progress {
    pub fn new(route: &str, total: u64, every: Duration) -> Self {
        Self {
            route: route.to_owned(),
            total,
            tty: std::io::stderr().is_terminal(),
            every,
            started: Instant::now(),
            shown: None,
            bar_open: false,
            last: None,
        }
    }

    /// The progress line: handled/total, what happened, rate and ETA.
    pub fn line(&self, counts: &Counts, handled: u64, waiting: usize) -> String {
        let total = self.total.max(handled);
        let percent = (handled * 100).checked_div(total).unwrap_or(100);
        let minutes = self.started.elapsed().as_secs_f64() / 60.0;
        let rate = if minutes > 0.0 {
            counts.ended() as f64 / minutes
        } else {
            0.0
        };
        let left = total.saturating_sub(handled);
        let eta = if left == 0 {
            "0s".to_owned()
        } else if rate >= 0.1 {
            human(Duration::from_secs_f64(left as f64 / rate * 60.0))
        } else {
            "?".to_owned()
        };
        let bar = if self.tty {
            let width = 20usize;
            let full = (percent as usize * width / 100).min(width);
            format!("[{}{}] ", "#".repeat(full), " ".repeat(width - full))
        } else {
            String::new()
        };
        format!(
            "backfill {}: {bar}{handled}/{total} ({percent}%): {} transferred, {} already there, {} failed, {} skipped, {waiting} in queue; {rate:.0}/min, ETA {eta}",
            self.route, counts.transferred, counts.already, counts.failed, counts.skipped
        )
    }

    /// Shows the line if it is time (a terminal: every 250 ms).
    pub fn maybe_show(&mut self, counts: &Counts, handled: u64, waiting: usize) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            self.every
        };
        let due = self.shown.is_none_or(|at| at.elapsed() >= every);
        if !due {
            return;
        }
        let line = self.line(counts, handled, waiting);
        self.shown = Some(Instant::now());
        self.show(line);
    }

    fn show(&mut self, line: String) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            self.bar_open = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last = Some(line);
    }

    /// A message on its own line (the bar is redrawn after it).
    pub fn note(&mut self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.bar_open {
            let _ = writeln!(err);
            self.bar_open = false;
        }
        let _ = writeln!(err, "backfill {}: {message}", self.route);
    }

    /// Ends the bar's line (the last state stays on screen).
    pub fn finish_line(&mut self) {
        if self.bar_open {
            eprintln!();
            self.bar_open = false;
        }
    }

    /// The last state, shown whatever the interval, and the line ended.
    pub fn show_last(&mut self, counts: &Counts, handled: u64, waiting: usize) {
        let line = self.line(counts, handled, waiting);
        if self.last.as_deref() != Some(line.as_str()) {
            self.show(line);
        }
        self.finish_line();
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_rate_and_time_left() {
        let mut progress = Progress::new("r", 100, Duration::from_secs(10));
        progress.tty = false;
        let line = progress.line(&Counts::default(), 0, 0);
        assert!(line.contains("0/100 (0%)"), "{line}");
        assert!(line.contains("ETA ?"), "{line}");
        let counts = Counts {
            transferred: 40,
            already: 10,
            ..Counts::default()
        };
        let line = progress.line(&counts, 50, 5);
        assert!(line.contains("50/100 (50%)"), "{line}");
        assert!(line.contains("40 transferred, 10 already there"), "{line}");
        assert!(line.contains("5 in queue"), "{line}");
        assert_eq!(human(Duration::from_secs(3725)), "1h02m");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }
}

//! A running backfill: it scans, queues within its window, watches its
//! jobs end, keeps its lease and cursor, and says when nothing moves.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use b24_client::IdScan;

use super::stop::{StopFlag, Stopped, nap, stop_signal, wait_for_stop};
use super::{Counts, LEASE, POLL, Progress, Request, already_linked, transfer_error};
use crate::config::Route;
use crate::portals::id_of;
use crate::store::{BackfillCursor, JobState, Store};

/// A running backfill: its cursor, its jobs in the queue, its counts.
pub(super) struct Runner<'a> {
    pub(super) store: &'a Store,
    pub(super) route: &'a Route,
    pub(super) holder: String,
    pub(super) cursor: BackfillCursor,
    /// Jobs this backfill queued (or found queued) that have not ended.
    pub(super) outstanding: BTreeSet<i64>,
    pub(super) counts: Counts,
    pub(super) progress: Progress,
    pub(super) last_finish: Instant,
    pub(super) last_save: Instant,
    pub(super) stall_after: Duration,
    pub(super) stall_said: bool,
}

impl Runner<'_> {
    /// Scans and queues until the list ends (`true`) or a stop (`false`).
    pub(super) async fn scan_and_queue(
        &mut self,
        reader: &b24_client::Client,
        scan: IdScan,
        request: &Request,
        stop: &StopFlag,
    ) -> anyhow::Result<bool> {
        let mut scan = scan.after(self.cursor.last_id);
        loop {
            if stop_signal(stop).is_some() {
                return Ok(false);
            }
            let records = tokio::select! {
                chunk = scan.next_chunk(reader) => chunk.map_err(|e| {
                    transfer_error(&format!("reading the deals of {}", self.route.from), e)
                })?,
                _ = wait_for_stop(stop) => return Ok(false),
            };
            let Some(records) = records else {
                return Ok(true);
            };
            for record in &records {
                let Some(id) = id_of(record.get("id").or_else(|| record.get("ID"))) else {
                    continue;
                };
                if self.cursor.last_id.is_some_and(|last| id <= last) {
                    continue;
                }
                while self.outstanding.len() >= request.window {
                    if stop_signal(stop).is_some() {
                        return Ok(false);
                    }
                    nap(POLL, stop).await;
                    self.poll().await?;
                }
                if stop_signal(stop).is_some() {
                    return Ok(false);
                }
                self.handle(id, request.update).await?;
                self.progress
                    .maybe_show(&self.counts, self.handled(), self.outstanding.len());
            }
            self.poll().await?;
            if scan.is_finished() {
                return Ok(true);
            }
        }
    }

    /// Queues one deal, or counts it as already on the target.
    async fn handle(&mut self, id: i64, update: bool) -> anyhow::Result<()> {
        let mut next = self.cursor;
        next.last_id = Some(id);
        if !update && already_linked(self.store, self.route, id).await? {
            next.already += 1;
            self.cursor = next;
            self.counts.already += 1;
            if self.last_save.elapsed() > Duration::from_secs(2) {
                self.save().await?;
            }
            return Ok(());
        }
        next.enqueued += 1;
        let queued = self
            .store
            .backfill_enqueue(
                &self.route.name,
                &self.holder,
                &self.route.from,
                id,
                next,
                LEASE,
            )
            .await?;
        let Some(queued) = queued else {
            return Err(self.lost());
        };
        self.cursor = next;
        self.last_save = Instant::now();
        self.counts.enqueued += 1;
        self.outstanding.insert(queued.job_id);
        Ok(())
    }

    fn lost(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the backfill of route `{}` was taken over by another process (this one's lease lapsed: was it paused?); this one stops, the other continues",
            self.route.name
        )
    }

    async fn save(&mut self) -> anyhow::Result<()> {
        if !self
            .store
            .save_backfill(&self.route.name, &self.holder, self.cursor, LEASE)
            .await?
        {
            return Err(self.lost());
        }
        self.last_save = Instant::now();
        Ok(())
    }

    /// Deals handled so far, over every run: skipped ones and jobs ended.
    pub(super) fn handled(&self) -> u64 {
        self.cursor.already
            + self
                .cursor
                .enqueued
                .saturating_sub(self.outstanding.len() as u64)
    }

    /// Looks at the outstanding jobs: counts the ended ones, renews the
    /// lease, says so when nothing moves.
    async fn poll(&mut self) -> anyhow::Result<()> {
        if !self.outstanding.is_empty() {
            let ids: Vec<i64> = self.outstanding.iter().copied().collect();
            let states = self.store.job_states(&ids).await?;
            let mut seen = BTreeSet::new();
            for (id, state) in states {
                seen.insert(id);
                let ended = match state {
                    JobState::Pending | JobState::Running => false,
                    JobState::Done => {
                        self.counts.transferred += 1;
                        true
                    }
                    JobState::Skipped => {
                        self.counts.skipped += 1;
                        true
                    }
                    JobState::Failed => {
                        self.counts.failed += 1;
                        true
                    }
                };
                if ended {
                    self.outstanding.remove(&id);
                    self.last_finish = Instant::now();
                    self.stall_said = false;
                }
            }
            // Jobs no longer in the store (a store restored meanwhile).
            self.outstanding.retain(|id| seen.contains(id));
        }
        if self.last_save.elapsed() > LEASE / 6 {
            self.save().await?;
        }
        if !self.outstanding.is_empty()
            && !self.stall_said
            && self.last_finish.elapsed() >= self.stall_after
        {
            self.progress.note(&format!(
                "no job finished for {} s: is `b24-relay serve` running on this store?",
                self.stall_after.as_secs()
            ));
            self.stall_said = true;
        }
        self.progress
            .maybe_show(&self.counts, self.handled(), self.outstanding.len());
        Ok(())
    }

    /// Waits for the queued jobs to end (or a stop).
    pub(super) async fn drain(&mut self, stop: &StopFlag) -> anyhow::Result<()> {
        while !self.outstanding.is_empty() && stop_signal(stop).is_none() {
            nap(POLL, stop).await;
            self.poll().await?;
        }
        Ok(())
    }

    pub(super) fn stopped(&self, signal: i32, request: &Request) -> Stopped {
        let name = if signal == 2 { "SIGINT" } else { "SIGTERM" };
        let mut command = format!("b24-relay backfill --route {}", request.route);
        for stage in &request.stages {
            command.push_str(&format!(" --stage {stage}"));
        }
        if let Some(since) = &request.since {
            command.push_str(&format!(" --since {since}"));
        }
        Stopped {
            signal,
            message: format!(
                "backfill {}: stopped by {name} after deal {} ({} queued, {} already on {}); the {} job(s) already queued stay and `serve` transfers them; to resume, run the same command again: {command} --config ...",
                request.route,
                self.cursor.last_id.unwrap_or(0),
                self.cursor.enqueued,
                self.cursor.already,
                self.route.to,
                self.outstanding.len()
            ),
        }
    }
}

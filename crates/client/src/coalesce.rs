//! Shared `batch` requests: batches that several callers (workers moving
//! different deals) send to one portal at the same time travel together, up
//! to [`MAX_BATCH_COMMANDS`] commands per request, so that the portal's
//! request budget (its leaky bucket) is spent on 50 commands at a time
//! instead of one caller's few.
//!
//! Nothing waits for company: a batch is merged only with those that queued
//! while an earlier shared request was waiting for the bucket or on the
//! wire. Whoever finds no request being prepared leads the next one: it
//! waits for the bucket, takes its own batch and as many queued ones as fit
//! (oldest first), sends them as one request and hands each caller its
//! answer. The commands keep their caller's names behind a per-caller prefix
//! (references between them too), so outcomes are read per caller exactly
//! as from a batch of its own.
//!
//! When a shared request fails, a caller whose batch surely did not run (or
//! only reads) sends its batch again on its own and gets its own error; a
//! caller whose writes may have run is told so
//! ([`Error::MayHaveExecuted`]), as after a batch of its own. Batches with
//! `halt_on_error` never travel with others: one caller's failure must not
//! stop another's commands.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::batch::{MAX_BATCH_COMMANDS, batch_body};
use crate::{Client, Error, Response};

/// The queue of one portal client's shared batch requests.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
    /// Woken when a leader is done, so that a queued caller can lead.
    lead_free: Notify,
}

#[derive(Default)]
struct State {
    leading: bool,
    next_id: u64,
    queue: VecDeque<Entry>,
}

struct Entry {
    id: u64,
    /// `(name on the wire, method?query)`.
    commands: Vec<(String, String)>,
    read_only: bool,
    answer: oneshot::Sender<Shared>,
}

/// What a leader tells a caller whose batch it took.
enum Shared {
    Answered(Arc<Response>),
    /// The shared request may have run; the error, as text.
    MayHaveRun(String),
    /// Not run (or only reads): send it again alone.
    SendAlone,
}

/// A ticket for one caller's batch: its prefix, and its place in the queue.
pub(crate) struct Ticket {
    pub(crate) prefix: String,
    id: u64,
}

impl Coalescer {
    /// A prefix for the names of a caller's commands; call before building
    /// its command lines.
    pub(crate) fn ticket(&self) -> Ticket {
        let mut state = lock(&self.state);
        state.next_id += 1;
        Ticket {
            prefix: format!("q{}_", state.next_id),
            id: state.next_id,
        }
    }

    /// Sends `commands` (named with the ticket's prefix) in the next shared
    /// request; the whole `batch` answer of that request, in which this
    /// caller's commands are found by their prefixed names.
    pub(crate) async fn send(
        self: &Arc<Self>,
        client: &Client,
        ticket: Ticket,
        commands: Vec<(String, String)>,
        read_only: bool,
    ) -> Result<Arc<Response>, Error> {
        let (answer, mut answered) = oneshot::channel();
        let alone = commands.clone();
        lock(&self.state).queue.push_back(Entry {
            id: ticket.id,
            commands,
            read_only,
            answer,
        });
        let _queued = Queued {
            coalescer: self,
            id: ticket.id,
        };
        loop {
            let lead_free = self.lead_free.notified();
            tokio::pin!(lead_free);
            lead_free.as_mut().enable();
            if self.try_lead() {
                let _leading = Leading(self);
                if let Some(result) = self.lead(client, ticket.id).await {
                    return result;
                }
                // Another leader took this batch meanwhile: wait for it.
                continue;
            }
            tokio::select! {
                biased;
                shared = &mut answered => {
                    return match shared {
                        Ok(Shared::Answered(response)) => Ok(response),
                        Ok(Shared::MayHaveRun(reason)) => Err(Error::MayHaveExecuted {
                            portal: client.portal().to_owned(),
                            method: "batch".into(),
                            reason,
                        }),
                        Ok(Shared::SendAlone) => send_alone(client, &alone, read_only).await,
                        // The leader was cancelled after taking this batch:
                        // it may be on the wire.
                        Err(_) if read_only => send_alone(client, &alone, read_only).await,
                        Err(_) => Err(Error::MayHaveExecuted {
                            portal: client.portal().to_owned(),
                            method: "batch".into(),
                            reason: "the shared request it travelled in was abandoned".into(),
                        }),
                    };
                }
                _ = &mut lead_free => {}
            }
        }
    }

    fn try_lead(&self) -> bool {
        let mut state = lock(&self.state);
        if state.leading {
            return false;
        }
        state.leading = true;
        true
    }

    /// One shared request with the caller's own batch in it; `None` if the
    /// batch is no longer queued (another leader took it).
    async fn lead(&self, client: &Client, own: u64) -> Option<Result<Arc<Response>, Error>> {
        if !lock(&self.state).queue.iter().any(|e| e.id == own) {
            return None;
        }
        if let Err(error) = client.wait_while_blocked("batch").await {
            lock(&self.state).queue.retain(|e| e.id != own);
            return Some(Err(error));
        }
        client.wait_for_bucket().await;
        let (mine, others) = {
            let mut state = lock(&self.state);
            let at = state.queue.iter().position(|e| e.id == own)?;
            let mine = state.queue.remove(at)?;
            let mut room = MAX_BATCH_COMMANDS.saturating_sub(mine.commands.len());
            let mut others = Vec::new();
            let mut index = 0;
            while index < state.queue.len() && room > 0 {
                if state.queue[index].commands.len() <= room {
                    let entry = state.queue.remove(index)?;
                    room -= entry.commands.len();
                    others.push(entry);
                } else {
                    index += 1;
                }
            }
            (mine, others)
        };
        let read_only = mine.read_only && others.iter().all(|e| e.read_only);
        let commands: Vec<&(String, String)> = mine
            .commands
            .iter()
            .chain(others.iter().flat_map(|e| e.commands.iter()))
            .collect();
        client
            .inner
            .observer
            .batch_sent(client.portal(), 1 + others.len(), commands.len());
        let body = batch_body(false, commands.iter().copied());
        match client.execute_prepaid("batch", &body, read_only).await {
            Ok(response) => {
                let response = Arc::new(response);
                for entry in others {
                    let _ = entry.answer.send(Shared::Answered(response.clone()));
                }
                Some(Ok(response))
            }
            Err(error) => {
                let may_have_run = error.may_have_executed();
                // Reads that travelled with writes are read again alone.
                if may_have_run && mine.read_only && !read_only {
                    let own = mine.commands.clone();
                    for entry in others {
                        let _ = entry.answer.send(if entry.read_only {
                            Shared::SendAlone
                        } else {
                            Shared::MayHaveRun(error.to_string())
                        });
                    }
                    return Some(send_alone(client, &own, true).await);
                }
                for entry in others {
                    let shared = if may_have_run && !entry.read_only {
                        Shared::MayHaveRun(error.to_string())
                    } else {
                        Shared::SendAlone
                    };
                    let _ = entry.answer.send(shared);
                }
                Some(Err(error))
            }
        }
    }
}

async fn send_alone(
    client: &Client,
    commands: &[(String, String)],
    read_only: bool,
) -> Result<Arc<Response>, Error> {
    client
        .execute("batch", &batch_body(false, commands), read_only)
        .await
        .map(Arc::new)
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a caller's batch out of the queue if it is still there when the
/// caller stops waiting (its future dropped): a transfer given up never
/// sends its writes later in someone else's request.
struct Queued<'a> {
    coalescer: &'a Coalescer,
    id: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        lock(&self.coalescer.state)
            .queue
            .retain(|entry| entry.id != self.id);
    }
}

/// Ends a leader's turn, also when its future is dropped mid-request.
struct Leading<'a>(&'a Coalescer);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).leading = false;
        self.0.lead_free.notify_waiters();
    }
}

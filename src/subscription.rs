//! A subscription: a cursor into the log plus a filter, moved forward by one loop.
//!
//! Catch-up and live delivery read the same log through the same cursor, so the hand-over
//! between them has no seam: the cursor only ever advances past what it has scanned, and waiting
//! at the head means waiting for the head to pass the cursor. Nothing is queued per subscriber
//! beyond one batch; a slow reader just reads the log later.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::watch,
    time::{Instant, Sleep},
};

use crate::{
    encoded::EncodedResponse,
    log::{EventLog, Filter, LogError},
    pb::{self, subscribe_response::Item},
};

/// How many matching events one read of the log takes: enough to amortise the lock, few enough
/// that a subscriber holds at most this many events it has not yet sent.
const READ_BATCH_EVENTS: usize = 256;
/// How many events one read may scan looking for matches, so that a sparse filter holds the read
/// lock briefly and yields between reads.
const READ_BATCH_SCAN: usize = 4_096;
/// How many items a subscription keeps room for once it has sent what it read: a reader that
/// caught up (a live page's, most of the time idle) holds this, not a whole batch's room (256
/// items, 8 KiB) for the rest of its life.
const IDLE_READY_ITEMS: usize = 8;
/// How many stories one page of a snapshot holds: a subscriber that stopped reading holds at
/// most this many (shared, not copied), whatever the number of stories.
const SNAPSHOT_PAGE_STORIES: usize = 16;
/// How many stories one snapshot page may look at for matches, so that a sparse filter holds the
/// read lock briefly.
const SNAPSHOT_PAGE_SCAN: usize = 1_024;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events appended after the subscription starts.
    Live,
    /// Every matching event from this sequence on.
    From(u64),
    /// Each matching story's current state, then every later event.
    Snapshot,
}

/// How a subscription ends other than by the client going away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    /// The cursor fell behind retention (or started outside the log).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The server is shutting down. A subscription sends every event up to the head first.
    #[error(
        "the server is shutting down; after it restarts, resume subscriptions from the next sequence and resend unanswered publishes with their event_ids"
    )]
    ShuttingDown,
}

/// One subscriber's position and what it still has to send.
pub struct Subscription {
    /// The log read from. Shared with the service and every other subscription.
    log: Arc<EventLog>,
    /// Which events and stories this subscriber wants.
    filter: Filter,
    /// The next sequence to scan. Everything before it has been sent or skipped by the filter.
    cursor: u64,
    /// Items read but not yet sent, at most one batch (or one snapshot page). Events are the log's
    /// shared bytes, not copies.
    ready: VecDeque<EncodedResponse>,
    /// Whether `caught_up` has been sent: it is sent once, on first reaching the head.
    caught_up_sent: bool,
    /// Wakes this subscription when the log's head moves. The sender is the log's.
    head: watch::Receiver<u64>,
    /// Becomes true when the server starts shutting down. The sender is the server's; it then
    /// wakes every subscription through the log ([`EventLog::wake_subscribers`]), so waiting
    /// needs only the head.
    shutdown: watch::Receiver<bool>,
    /// A checkpoint is sent when nothing else was sent for this long.
    heartbeat: Duration,
    /// Fires no earlier than the heartbeat is due; see [`Self::wait_at_head`].
    heartbeat_timer: Pin<Box<Sleep>>,
    /// When the last item was sent, for the heartbeat.
    last_sent: Instant,
    /// Set once the stream has ended, so that it yields nothing more.
    ended: bool,
    /// For a snapshot still being sent: the story id the next page starts after.
    snapshot_after: Option<String>,
    /// Stories a snapshot page sent as they stood after the head the subscription pinned (they
    /// changed while the snapshot was paged), with the last sequence their state covers: their
    /// events up to it are already in that state and are skipped, so nothing arrives twice.
    ahead: HashMap<Arc<str>, u64>,
}

impl Subscription {
    /// A subscription over `log` starting at `start`. The position must already be checked with
    /// [`EventLog::check_position`]; if it has since been evicted the first item says so.
    pub fn new(
        log: Arc<EventLog>,
        filter: Filter,
        start: Start,
        heartbeat: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut ready = VecDeque::new();
        let head = log.head();
        let (cursor, snapshot_after) = match start {
            Start::Live => (head + 1, None),
            Start::From(sequence) => (sequence, None),
            // The stories are sent page by page, then the events after the head pinned here.
            Start::Snapshot => (head + 1, Some(String::new())),
        };
        // The log_id goes first, so that a client losing the stream at any later point resumes
        // against the right log.
        ready.push_back(
            Item::Started(pb::Started {
                log_id: log.log_id().to_owned(),
                head_sequence: head,
            })
            .into(),
        );
        Self {
            head: log.watch_head(),
            log,
            filter,
            cursor,
            ready,
            caught_up_sent: false,
            shutdown,
            heartbeat,
            heartbeat_timer: Box::pin(tokio::time::sleep(heartbeat)),
            last_sent: Instant::now(),
            ended: false,
            snapshot_after,
            ahead: HashMap::new(),
        }
    }

    /// The next item to send, `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<EncodedResponse, End>> {
        loop {
            if let Some(ready) = self.ready.pop_front() {
                // Only the last item of a batch sets the time: the heartbeat is weighed only once
                // the queue is empty, and a catch-up then reads the clock once per batch, not
                // once per event.
                if self.ready.is_empty() {
                    self.last_sent = Instant::now();
                    // A catch-up's batch leaves room for a batch behind it; a live stream, or a
                    // live page's idle reader, needs room for a few.
                    if self.ready.capacity() > IDLE_READY_ITEMS {
                        self.ready.shrink_to(IDLE_READY_ITEMS);
                    }
                }
                return Some(Ok(ready));
            }
            if self.ended {
                return None;
            }
            if let Some(after) = self.snapshot_after.take() {
                self.next_snapshot_page(&after).await;
                continue;
            }
            if self.caught_up_sent {
                // Mark the head seen before looking at it and at the shutdown flag: anything that
                // happens after this line wakes the wait below. Neither look takes a lock: the
                // head is the log's atomic copy, and the shutdown flag's value is read only once
                // it has been sent (it is sent once, when shutdown begins).
                self.head.mark_unchanged();
                let head = self.log.head();
                let shutting_down =
                    self.shutdown.has_changed().unwrap_or(true) && *self.shutdown.borrow();
                if shutting_down && head < self.cursor {
                    return Some(Err(self.end(End::ShuttingDown)));
                }
                if head < self.cursor {
                    self.wait_at_head().await;
                    continue;
                }
            }
            // Delivery latency counts live hand-overs only: a catch-up's old events would say
            // how far back the subscriber asked to start, not how fast the server delivers.
            let live_since = self.caught_up_sent.then(std::time::Instant::now);
            let metrics = self.log.metrics();
            let (ahead, filter, ready) = (&self.ahead, &self.filter, &mut self.ready);
            // This runs under the log's read lock: it takes reference counts and records the
            // latency (atomics only); the clock was read before.
            let read = self.log.read_each(
                self.cursor,
                filter,
                READ_BATCH_EVENTS,
                READ_BATCH_SCAN,
                |entry| {
                    if ahead
                        .get(&entry.story_id)
                        .is_some_and(|&upto| entry.sequence <= upto)
                    {
                        return;
                    }
                    if let Some(entered) = &entry.entered
                        && filter.is_entered_by(entry)
                    {
                        ready.push_back(EncodedResponse::Encoded(entered.story.clone()));
                    }
                    ready.push_back(EncodedResponse::Encoded(entry.encoded.clone()));
                    if let (Some(now), Some(appended_at)) = (live_since, entry.appended_at) {
                        metrics.delivered(now.saturating_duration_since(appended_at));
                    }
                },
            );
            let batch = match read {
                Ok(batch) => batch,
                Err(error) => return Some(Err(self.end(error.into()))),
            };
            self.cursor = batch.next;
            if !self.ready.is_empty() {
                metrics.subscriber_lag(batch.head.saturating_sub(self.cursor - 1));
            }
            // Once the cursor is past every story the snapshot sent ahead, nothing is skipped.
            if self.ahead.values().all(|&upto| upto < self.cursor) {
                self.ahead.clear();
            }
            if !self.ready.is_empty() {
                continue;
            }
            let at_head = self.cursor > batch.head;
            if at_head && !self.caught_up_sent {
                self.caught_up_sent = true;
                self.ready.push_back(
                    Item::CaughtUp(pb::CaughtUp {
                        head_sequence: self.cursor - 1,
                        log_id: self.log.log_id().to_owned(),
                    })
                    .into(),
                );
            } else if !at_head {
                // A stretch the filter skipped entirely: keep scanning, but let others run, and
                // keep the heartbeat promise even while skipping.
                if self.last_sent.elapsed() >= self.heartbeat {
                    self.ready.push_back(self.checkpoint());
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// Waits until the log's head moves (or the server wakes every subscription to shut down),
    /// or the heartbeat is due, in which case it queues a checkpoint.
    ///
    /// The heartbeat timer is reset lazily: sending does not touch it; when it fires early (the
    /// stream was not idle), it is set to the real due time. So a busy subscription costs the
    /// timer wheel nothing per event.
    async fn wait_at_head(&mut self) {
        let heartbeat_fired = tokio::select! {
            // The head first: a busy stream is woken by it, and then neither polls the timer nor
            // draws the random number an unbiased select takes to pick a branch.
            biased;
            // An error would mean the log dropped its sender, which it never does while a
            // subscription holds the log.
            _ = self.head.changed() => false,
            () = &mut self.heartbeat_timer => true,
        };
        if heartbeat_fired {
            let due = self.last_sent + self.heartbeat;
            let now = Instant::now();
            if now >= due {
                self.ready.push_back(self.checkpoint());
                self.heartbeat_timer.as_mut().reset(now + self.heartbeat);
            } else {
                self.heartbeat_timer.as_mut().reset(due);
            }
        }
    }

    /// Queues the next page of a snapshot: the matching stories after `after`, each as it stands
    /// now (the log returns the page once readers may see everything in it).
    async fn next_snapshot_page(&mut self, after: &str) {
        let (page, next) = self
            .log
            .stories_page(
                &self.filter,
                after,
                SNAPSHOT_PAGE_STORIES,
                SNAPSHOT_PAGE_SCAN,
            )
            .await;
        let pinned = self.cursor - 1;
        for story in page {
            if story.last_sequence > pinned {
                self.ahead
                    .insert(story.id.as_str().into(), story.last_sequence);
            }
            self.ready.push_back(EncodedResponse::Story(story));
        }
        self.snapshot_after = next;
        if self.snapshot_after.is_some() {
            // A long snapshot lets other tasks run between pages.
            tokio::task::yield_now().await;
        }
    }

    fn checkpoint(&self) -> EncodedResponse {
        Item::Checkpoint(pb::Checkpoint {
            sequence: self.cursor - 1,
            log_id: self.log.log_id().to_owned(),
        })
        .into()
    }

    fn end(&mut self, end: End) -> End {
        self.ended = true;
        end
    }
}

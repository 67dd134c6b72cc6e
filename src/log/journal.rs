//! The journal seam: the one way an event the log accepted becomes durable, then visible.
//!
//! The log decides *what* is appended and at which sequence (the next one: retained events are
//! indexed by sequence without gaps): deduplication, `expected_version`, the story rules and the
//! event itself, atomically under its write lock. A [`Journal`] decides *when it is durable* and
//! *when readers may see it*: only a journal moves the [`Heads`]. Each journal is one file:
//!
//! - [`super::memory::Memory`]: nothing to keep, so an event is visible as soon as it is appended.
//! - [`super::write_ahead::WriteAhead`]: `serve --data-dir`, a thread that writes and fsyncs
//!   segments, and moves the heads as the fsync mode says.
//!
//! A replicated stream (NATS JetStream, `serve --nats`) orders events before the log sees them,
//! so it does not go through this trait: the seam a cluster node plugs into is the publisher
//! (`src/publisher/`), one level up. The node publishes beside [`super::EventLog::append`] and
//! applies what the stream delivers with [`super::EventLog::replicate`], at the stream's
//! sequences, over the memory journal (see [`super::replicated`] and `src/cluster/`).

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use pbjson_types::Timestamp;
use tokio::sync::watch;

use super::LoggedEvent;

/// An event the log has accepted and applied at its sequence, handed to the journal in sequence
/// order, under the log's write lock.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    /// The event as the log holds it.
    pub entry: &'a LoggedEvent,
    /// The request's `expected_version`, which a retry must match to be the same request.
    pub expected_version: Option<u64>,
    /// The request's `occurred_at` as given (the event's is defaulted when absent).
    pub occurred_at_given: Option<Timestamp>,
}

/// Where the log's accepted events become durable and visible. Implementations are `Send + Sync`:
/// the log calls them from any task, and some own a thread of their own.
pub trait Journal: Send + Sync + fmt::Debug {
    /// Takes one accepted event, in sequence order, under the log's write lock. Whatever it
    /// does here holds up every publisher, so it only takes note; the work follows in
    /// [`Self::flush`].
    fn record(&self, accepted: Accepted<'_>);

    /// Called once after each append (or burst of appends), outside the lock, with the newest
    /// sequence appended: from here on the journal makes the events up to it durable and then
    /// moves the [`Heads`], which answers their publishers and shows them to readers.
    fn flush(&self, newest: u64);

    /// Makes every recorded event durable and stops. Nothing is recorded afterwards.
    fn close(&self);
}

/// The two heads a journal moves, both only forward: the newest sequence whose publisher may be
/// answered, and the newest sequence readers may see. Readers can reach only the second.
///
/// Shared by the log (whose readers and publishers wait on them) and its journal (which moves
/// them). The senders live here for the log's whole life; receivers belong to subscriptions and
/// waiting callers.
#[derive(Debug)]
pub struct Heads {
    /// The newest sequence readers may see; subscriptions wait on it at the head.
    visible: watch::Sender<u64>,
    /// The same sequence, read without the watch's lock: every subscription reads the head each
    /// time it is woken, and the lock's word, written by every reader on every core, costs more
    /// than the read. It moves first; the watch follows (see [`Self::announce`]).
    visible_now: AtomicU64,
    /// The newest sequence whose publisher may be answered. Moved after `visible_now` when both
    /// move, so that no publisher is answered before readers can see its event.
    acknowledged: watch::Sender<u64>,
}

impl Heads {
    /// Heads that start at `head`: everything up to it is durable and visible.
    pub fn new(head: u64) -> Self {
        Self {
            visible: watch::Sender::new(head),
            visible_now: AtomicU64::new(head),
            acknowledged: watch::Sender::new(head),
        }
    }

    /// The newest sequence readers may see.
    pub fn visible(&self) -> u64 {
        self.visible_now.load(Ordering::Acquire)
    }

    /// Shows the events up to `sequence` to readers and answers their publishers, in that
    /// order: a publisher that reads right after its answer sees its own event.
    ///
    /// Reads look at `visible_now`, so the events are visible once it moves. The publishers are
    /// woken next and the subscriptions last: woken from the journal's thread, tasks run in the
    /// order they were woken, and a publisher woken after ten thousand subscriptions waited for
    /// a whole fan-out before its answer went out. A subscription that marks the watch seen and
    /// then reads `visible_now` either reads the new head or is woken when the watch moves.
    pub fn announce(&self, sequence: u64) {
        let moved = self.visible_now.fetch_max(sequence, Ordering::AcqRel) < sequence;
        self.acknowledge(sequence);
        if moved {
            self.visible
                .send_if_modified(|head| advance(head, sequence));
        }
    }

    /// Answers the publishers of events up to `sequence`, without showing the events yet.
    pub fn acknowledge(&self, sequence: u64) {
        self.acknowledged
            .send_if_modified(|newest| advance(newest, sequence));
    }

    /// Waits until readers may see `sequence`.
    pub async fn until_visible(&self, sequence: u64) {
        // The watch follows `visible_now` by a moment; a caller need not wait for it.
        if self.visible() < sequence {
            Self::until(&self.visible, sequence).await;
        }
    }

    /// Waits until the publisher of `sequence` may be answered.
    pub async fn until_acknowledged(&self, sequence: u64) {
        Self::until(&self.acknowledged, sequence).await;
    }

    async fn until(head: &watch::Sender<u64>, sequence: u64) {
        if *head.borrow() >= sequence {
            return;
        }
        // The sender lives as long as `self`, which the caller borrows.
        let _ = head.subscribe().wait_for(|head| *head >= sequence).await;
    }

    /// A receiver of the visible head, to wait for the log to move past a cursor.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// Wakes every receiver of the visible head without moving it.
    pub fn wake(&self) {
        self.visible.send_modify(|_| {});
    }

    /// How many receivers of the visible head are open (one per subscription).
    pub fn watchers(&self) -> usize {
        self.visible.receiver_count()
    }
}

/// Moves `head` forward to `sequence`; whether it moved. Journals may announce out of order
/// (appends race outside the lock), so a head never goes back.
fn advance(head: &mut u64, sequence: u64) -> bool {
    let moved = sequence > *head;
    *head = (*head).max(sequence);
    moved
}

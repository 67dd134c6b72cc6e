//! The event log: the one source of truth. Every accepted update is appended here; story state,
//! subscriptions and pages of events are all read from it.
//!
//! One `RwLock` guards the log and the projection together (`state`), so deduplication
//! (`dedupe`), the story rules, the event and its sequence are decided atomically for each
//! append. A [`Journal`] then makes the event durable and, only then, visible:
//! [`memory`] at once, [`write_ahead`] once on disk. Readers (`query`) see only the visible
//! head, and hold the lock only to clone `Arc`s.

use std::{
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{
    clock::Clock,
    encoded::decode_event,
    limits::StoryLimits,
    metrics::{Format, Metrics},
    pb,
    story::StoryError,
    wal::{WalConfig, WalError},
};

mod dedupe;
pub mod journal;
pub mod memory;
mod query;
pub mod replicated;
mod state;
pub mod write_ahead;

pub use journal::{Heads, Journal};
pub use query::{Batch, Filter, SCAN_PER_LOCK, Stretch};
use state::LogState;

/// How many events the log keeps when nobody says otherwise: about a gigabyte of typical updates,
/// and far more than a day of a busy newsroom.
pub const DEFAULT_RETAIN_EVENTS: usize = 1_000_000;

/// Why the log refused a request. The service maps each variant to one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The change breaks a story rule.
    #[error(transparent)]
    Story(#[from] StoryError),
    /// The event_id is in the log for a different request.
    #[error(
        "event_id {event_id} was already used for a different request (sequence {sequence}); use a new event_id for a new update"
    )]
    EventIdReused {
        /// The reused id.
        event_id: String,
        /// The sequence of the event that holds it.
        sequence: u64,
    },
    /// The event_id has the form of an id the server assigns (`<log_id>-<sequence>`) for a
    /// sequence the log has not reached: accepting it would give two events the same id once the
    /// server assigns that one.
    #[error(
        "event_id {event_id} has the form of an id this server assigns ({log_id}-<sequence>) for a sequence it has not reached; leave event_id empty to have one assigned, or choose another"
    )]
    ReservedEventId {
        /// The refused id.
        event_id: String,
        /// The log whose id it borrows.
        log_id: String,
    },
    /// `expected_version` did not match the story's version.
    #[error(
        "expected_version {expected} does not match story {story_id}, which is at version {current}"
    )]
    VersionMismatch {
        /// The story.
        story_id: String,
        /// The version the publisher expected.
        expected: u64,
        /// The story's version now.
        current: u64,
    },
    /// A read from a sequence that retention has evicted.
    #[error(
        "sequence {requested} is no longer retained; the first retained sequence is {first_retained}"
    )]
    NotRetained {
        /// The sequence asked for.
        requested: u64,
        /// The oldest sequence still in the log.
        first_retained: u64,
    },
    /// A read from beyond the next sequence to be assigned.
    #[error("sequence {requested} is beyond the head of the log ({head}); the next event will be {next}", next = head + 1)]
    BeyondHead {
        /// The sequence asked for.
        requested: u64,
        /// The newest sequence in the log.
        head: u64,
    },
    /// The client's log_id names another incarnation of the log.
    #[error(
        "log_id {given} does not match this server's log {actual}: the log was restarted, so sequences from {given} mean nothing here; start again without log_id"
    )]
    LogIdMismatch {
        /// The log_id the client sent.
        given: String,
        /// This log's id.
        actual: String,
    },
    /// `as_of_version` beyond the story's version.
    #[error("as_of_version {requested} is beyond story {story_id}, which is at version {current}")]
    VersionBeyondStory {
        /// The story.
        story_id: String,
        /// The version asked for.
        requested: u64,
        /// The story's version now.
        current: u64,
    },
    /// `as_of_version` of a story whose early events retention has evicted.
    #[error(
        "story {story_id} cannot be rebuilt as of version {requested}: its first events are no longer retained"
    )]
    HistoryNotRetained {
        /// The story.
        story_id: String,
        /// The version asked for.
        requested: u64,
    },
}

/// One event as the log holds it: encoded once, plus what filtering needs without decoding.
///
/// Shared by `Arc`, and its bytes by reference count: a thousand subscribers reading it make no
/// copy of the event.
#[derive(Debug)]
pub struct LoggedEvent {
    /// The event's position in the log.
    pub sequence: u64,
    /// The story it belongs to (shared with the story's record).
    pub story_id: Arc<str>,
    /// The tags subscribers filter this event by (see [`crate::story::Applied::tags`]).
    pub tags: Arc<[String]>,
    /// For a revision that added tags: what a subscriber the story thereby enters needs first.
    /// Boxed, since nearly every event has none.
    pub entered: Option<Box<Entered>>,
    /// The publisher's event_id, to drop it from the dedupe index on eviction; `None` when the
    /// server assigned the id, which it derives from the sequence instead of indexing it.
    pub(super) client_event_id: Option<Box<str>>,
    /// The event as the `SubscribeResponse` subscribers receive, encoded once at append.
    pub encoded: Bytes,
    /// When this process appended it, for the delivery latency; `None` for an event read back
    /// from disk or a snapshot, which nobody waited for.
    pub appended_at: Option<Instant>,
}

impl LoggedEvent {
    /// The event itself, decoded from the shared bytes (for the rarer readers: ListEvents,
    /// rebuilding a story's history, checking a duplicate).
    pub fn event(&self) -> pb::UpdateEvent {
        decode_event(&self.encoded)
    }
}

/// A story entering tag filters: a revision added `tags`, and a subscriber filtering on one of
/// them, to whom the story did not match before, receives `story` (its state right after the
/// revision) before the revision itself, instead of a bare revision of a story it never saw.
#[derive(Debug)]
pub struct Entered {
    /// The tags the revision added.
    pub tags: Box<[String]>,
    /// The `story` item, encoded once as a `SubscribeResponse`.
    pub story: Bytes,
}

/// The append-only, in-memory event log and the story projection derived from it.
pub struct EventLog {
    /// Names this incarnation of the log: random at start-up, so that sequences from a previous
    /// run are never mistaken for this one's.
    log_id: String,
    /// How many events stay readable; older ones are evicted (stories keep their state).
    retain_events: usize,
    /// Where `recorded_at` comes from.
    clock: Arc<dyn Clock>,
    /// The log itself. Held briefly: appends decide and store one event, reads clone `Arc`s.
    state: RwLock<LogState>,
    /// The acknowledged and visible heads, which only the journal moves. Readers wait on the
    /// visible one; publishers on the acknowledged one.
    heads: Arc<Heads>,
    /// Where accepted events become durable and visible.
    journal: Box<dyn Journal>,
    /// The thread that rebuilds stories as of a version, started by the first such read.
    rebuilder: std::sync::OnceLock<query::Rebuilder>,
    /// What the server measures. Here because everything that records into it holds the log:
    /// a new log, new counts (see [`crate::metrics`]).
    metrics: Metrics,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("log_id", &self.log_id)
            .field("retain_events", &self.retain_events)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// An empty log kept in memory, with a new random log_id, that keeps the newest
    /// `retain_events` events (at least 1).
    pub fn new(retain_events: usize, clock: Arc<dyn Clock>) -> Self {
        let heads = Arc::new(Heads::new(0));
        let journal = Box::new(memory::Memory::new(heads.clone()));
        Self::assemble(
            uuid::Uuid::new_v4().simple().to_string(),
            retain_events.max(1),
            clock,
            RwLock::new(LogState::empty()),
            heads,
            journal,
        )
    }

    /// The log kept in `config.dir` ([`write_ahead`]): recovers what is on disk (same log_id,
    /// sequences and story states) and starts the writer thread that makes every later event
    /// durable before it is acknowledged or seen.
    pub fn open(
        retain_events: usize,
        clock: Arc<dyn Clock>,
        config: &WalConfig,
    ) -> Result<Arc<Self>, WalError> {
        write_ahead::open(retain_events, clock, config)
    }

    /// A log from its parts, for the journals' constructors.
    fn assemble(
        log_id: String,
        retain_events: usize,
        clock: Arc<dyn Clock>,
        state: RwLock<LogState>,
        heads: Arc<Heads>,
        journal: Box<dyn Journal>,
    ) -> Self {
        Self {
            log_id,
            retain_events,
            clock,
            state,
            heads,
            journal,
            rebuilder: std::sync::OnceLock::new(),
            metrics: Metrics::new(),
        }
    }

    /// Makes every appended event durable and stops the journal. Appending afterwards is a bug.
    pub fn close(&self) {
        self.journal.close();
    }

    /// For a journal that compacts: every story as of the newest appended event, that event's
    /// sequence, the oldest retained sequence, and what `under_lock` returns, all under one write
    /// lock, so that nothing is appended in between. The stories are shared (copy-on-write), so
    /// the lock is held for reference counts only.
    fn stories_for_snapshot<R>(
        &self,
        under_lock: impl FnOnce() -> R,
    ) -> (Vec<Arc<pb::Story>>, u64, u64, R) {
        let state = self.write();
        let taken = under_lock();
        let stories = state.stories.iter().cloned().collect();
        (stories, state.appended, state.first_retained, taken)
    }

    /// Waits until the publisher of `sequence` may be answered: with a data directory, until it
    /// is written as the fsync mode says (see [`crate::wal::FsyncMode`]).
    pub async fn acknowledged(&self, sequence: u64) {
        self.heads.until_acknowledged(sequence).await;
    }

    fn read(&self) -> RwLockReadGuard<'_, LogState> {
        self.state.read().expect("log lock poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, LogState> {
        self.state.write().expect("log lock poisoned")
    }

    /// Holds every later append to `limits` (a log starts with their defaults).
    pub fn set_story_limits(&self, limits: StoryLimits) {
        self.write().story_limits = limits;
    }

    /// How many events the log keeps readable.
    pub fn retain_events(&self) -> usize {
        self.retain_events
    }

    /// This incarnation's id.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// Fails with [`LogError::LogIdMismatch`] when `given` is set and is not this log's id.
    pub fn check_log_id(&self, given: &str) -> Result<(), LogError> {
        if given.is_empty() || given == self.log_id {
            Ok(())
        } else {
            Err(LogError::LogIdMismatch {
                given: given.to_owned(),
                actual: self.log_id.clone(),
            })
        }
    }

    /// The newest sequence readers may see (0 when empty): with a data directory, the newest
    /// the fsync mode lets them see. The only head readers can reach.
    pub fn head(&self) -> u64 {
        self.heads.visible()
    }

    /// The oldest sequence still retained (`head + 1` when none is).
    pub fn first_retained(&self) -> u64 {
        self.read().first_retained
    }

    /// How many events are retained for reading.
    pub fn retained(&self) -> u64 {
        let state = self.read();
        (state.appended + 1).saturating_sub(state.first_retained)
    }

    /// What the server measures: every component that holds the log records into it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Everything the server measures as text in `format`, with the head and the retained
    /// events as they stand now.
    pub fn encode_metrics(&self, format: Format) -> String {
        self.metrics.encode(format, self.head(), self.retained())
    }

    /// How many subscriptions are open (each holds one head receiver).
    pub fn subscribers(&self) -> usize {
        self.heads.watchers()
    }

    /// A receiver of the visible head, to wait for the log to move past a cursor.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.heads.watch()
    }

    /// Appends one validated request, published by `published_by` (a token's name), as the next
    /// event, or explains why not.
    ///
    /// Under the write lock: a retained `event_id` answers with the original receipt (or
    /// `EventIdReused`), `expected_version` is checked, the story rules are applied, and only then
    /// does the event take the next sequence and go to the journal, so a rejected request leaves
    /// no trace. The event is visible once the journal says so; wait with [`Self::acknowledged`]
    /// before answering its publisher.
    pub fn append(
        &self,
        request: pb::PublishRequest,
        published_by: &str,
    ) -> Result<pb::PublishResponse, LogError> {
        self.append_all([request], published_by)
            .pop()
            .expect("one outcome for one request")
    }

    /// Appends validated requests in order under one lock and flushes the journal once, for a
    /// pipeline's burst. Each request succeeds or fails on its own, exactly as [`Self::append`].
    pub fn append_all(
        &self,
        requests: impl IntoIterator<Item = pb::PublishRequest>,
        published_by: &str,
    ) -> Vec<Result<pb::PublishResponse, LogError>> {
        let outcomes: Vec<_> = {
            let mut state = self.write();
            requests
                .into_iter()
                .map(|request| {
                    state.append(
                        &self.log_id,
                        &*self.clock,
                        &*self.journal,
                        request,
                        published_by,
                        self.retain_events,
                    )
                })
                .collect()
        };
        let appended = outcomes.iter().filter_map(|o| o.as_ref().ok());
        self.metrics
            .appended(appended.clone().filter(|r| !r.duplicate).count() as u64);
        let newest = appended.map(|r| r.sequence).max();
        if let Some(sequence) = newest {
            self.journal.flush(sequence);
        }
        outcomes
    }

    /// Wakes every waiting subscription without moving the head, so that each looks at its
    /// server's shutdown flag.
    pub fn wake_subscribers(&self) {
        self.heads.wake();
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // A journal's thread holds only a weak reference to the log: told to close, it syncs what
        // it wrote and ends. Records appended but never flushed were never acknowledged.
        self.journal.close();
    }
}

//! The event log: the one source of truth. Every accepted update is appended here with the next
//! sequence; story state, subscriptions and pages of events are all read from it.
//!
//! One `RwLock` guards the log and the projection together, so deduplication, the story rules and
//! the sequence number are decided atomically for each append, and a snapshot of stories and the
//! head sequence are read at the same instant. Readers hold the lock only to clone `Arc`s.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use bytes::Bytes;
use pbjson_types::Timestamp;
use prost::Message;
use tokio::sync::watch;

use crate::{
    clock::Clock,
    encoded::{decode_event, encode_event, encode_story, event_bytes, from_event_bytes},
    limits::StoryLimits,
    pb,
    story::{Stories, StoryError},
    wal::{self, FsyncMode, Journal, SegmentWriter, WalConfig, WalError, WriterSignal},
};

/// A record framed for the write-ahead log ([`wal::frame`]), with its sequence.
type Framed = (u64, Vec<u8>);

/// The most entries one read scans under one hold of the read lock: a fraction of a millisecond,
/// so a publisher waiting for the write lock behind a long, sparse read waits no longer than that.
pub const SCAN_PER_LOCK: usize = 4_096;

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
    client_event_id: Option<Box<str>>,
    /// The event as the `SubscribeResponse` subscribers receive, encoded once at append.
    pub encoded: Bytes,
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

/// The tags `event` adds to its story, which must not be applied yet: those of a revision's new
/// tag list that the story does not carry now.
fn added_tags(stories: &Stories, event: &pb::UpdateEvent) -> Vec<String> {
    let Some(pb::change::Kind::StoryRevised(pb::StoryRevised {
        tags: Some(list), ..
    })) = event
        .change
        .as_ref()
        .and_then(|change| change.kind.as_ref())
    else {
        return Vec::new();
    };
    let current = stories.tags(&event.story_id);
    list.tags
        .iter()
        .filter(|tag| !current.contains(tag))
        .cloned()
        .collect()
}

/// What a retained client event_id needs so that a retry can be recognised as the same request.
#[derive(Debug)]
struct Idempotency {
    /// The event that holds the id.
    sequence: u64,
    /// The request's `expected_version`.
    expected_version: Option<u64>,
    /// The request's `occurred_at` as given (the event's is defaulted when absent).
    occurred_at_given: Option<Timestamp>,
}

impl Idempotency {
    /// Whether `request` is the request that produced `event`.
    fn is_same_request(&self, event: &pb::UpdateEvent, request: &pb::PublishRequest) -> bool {
        event.story_id == request.story_id
            && event.headline == request.headline
            && event.change == request.change
            && self.expected_version == request.expected_version
            && self.occurred_at_given == request.occurred_at
    }
}

/// The response Publish gave (or gives again, for a duplicate) for `event`.
fn receipt(event: &pb::UpdateEvent, duplicate: bool) -> pb::PublishResponse {
    pb::PublishResponse {
        sequence: event.sequence,
        story_version: event.story_version,
        event_id: event.event_id.clone(),
        duplicate,
        recorded_at: event.recorded_at,
    }
}

/// Which events and stories a reader wants. Empty lists match everything; both lists set must
/// both match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only these stories, when not empty.
    story_ids: HashSet<String>,
    /// Only stories carrying one of these tags, when not empty.
    tags: HashSet<String>,
}

impl Filter {
    /// A filter on story ids and tags, as Subscribe and ListEvents take them.
    pub fn new(story_ids: &[String], tags: &[String]) -> Self {
        Self {
            story_ids: story_ids.iter().cloned().collect(),
            tags: tags.iter().cloned().collect(),
        }
    }

    fn matches_parts(&self, story_id: &str, tags: &[String]) -> bool {
        (self.story_ids.is_empty() || self.story_ids.contains(story_id))
            && (self.tags.is_empty() || tags.iter().any(|tag| self.tags.contains(tag)))
    }

    /// Whether a logged event passes the filter.
    pub fn matches(&self, entry: &LoggedEvent) -> bool {
        self.matches_parts(&entry.story_id, &entry.tags)
    }

    /// Whether `entry` brings its story into this filter: the entry matches only through tags it
    /// added, so the subscriber has not had the story before (see [`Entered`]).
    pub fn is_entered_by(&self, entry: &LoggedEvent) -> bool {
        let Some(entered) = &entry.entered else {
            return false;
        };
        // The tags before the event: the filter tags less those it added.
        let matched_before = entry
            .tags
            .iter()
            .filter(|tag| !entered.tags.contains(tag))
            .any(|tag| self.tags.contains(tag));
        !self.tags.is_empty() && self.matches(entry) && !matched_before
    }

    /// Whether a story, as it stands now, passes the filter.
    pub fn matches_story(&self, story: &pb::Story) -> bool {
        self.matches_parts(&story.id, &story.tags)
    }
}

/// A stretch of the log read by [`EventLog::read_from`].
#[derive(Debug)]
pub struct Batch {
    /// The matching events, in sequence order.
    pub events: Vec<Arc<LoggedEvent>>,
    /// One past the last sequence scanned: where the next read starts.
    pub next: u64,
    /// The log's head when the batch was read.
    pub head: u64,
    /// The oldest retained sequence when the batch was read.
    pub first_retained: u64,
}

/// What the lock guards: the retained events, the dedupe index and the projection.
#[derive(Debug)]
struct LogState {
    /// Retained events, oldest first; `entries[i]` has sequence `first_retained + i`.
    entries: VecDeque<Arc<LoggedEvent>>,
    /// The sequence of `entries[0]`, or `head + 1` when nothing is retained.
    first_retained: u64,
    /// The newest sequence assigned; 0 before the first event.
    head: u64,
    /// Retained events by the event_id their publisher gave, for idempotent publishing. Shrinks
    /// with retention. Server-assigned ids are not indexed: they name their sequence.
    by_client_event_id: HashMap<Box<str>, Idempotency>,
    /// Every story's current state. Kept whatever the retention.
    stories: Stories,
    /// With a data directory: framed records appended but not yet handed to the writer thread,
    /// in sequence order. `None` for a log kept only in memory.
    unwritten: Option<Vec<Framed>>,
    /// What one story may hold: appends are held to it, replayed events never are.
    story_limits: StoryLimits,
}

impl LogState {
    fn empty() -> Self {
        Self {
            entries: VecDeque::new(),
            first_retained: 1,
            head: 0,
            by_client_event_id: HashMap::new(),
            stories: Stories::default(),
            unwritten: None,
            story_limits: StoryLimits::default(),
        }
    }
    fn entry(&self, sequence: u64) -> Option<&Arc<LoggedEvent>> {
        let index = sequence.checked_sub(self.first_retained)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// The retained event a publisher's `event_id` names, with what a retry must match.
    fn find_event_id(&self, log_id: &str, event_id: &str) -> Option<(u64, Option<&Idempotency>)> {
        if let Some(idempotency) = self.by_client_event_id.get(event_id) {
            return Some((idempotency.sequence, Some(idempotency)));
        }
        let sequence = assigned_sequence(log_id, event_id)?;
        let entry = self.entry(sequence)?;
        entry.client_event_id.is_none().then_some((sequence, None))
    }

    /// Checks that `from` is retained and at most one past `visible`, the newest sequence
    /// readers may see.
    fn check_position(&self, from: u64, visible: u64) -> Result<(), LogError> {
        if from < self.first_retained {
            Err(LogError::NotRetained {
                requested: from,
                first_retained: self.first_retained,
            })
        } else if from > visible + 1 {
            Err(LogError::BeyondHead {
                requested: from,
                head: visible,
            })
        } else {
            Ok(())
        }
    }

    /// Appends one request as the next event (see [`EventLog::append`]); the caller holds the
    /// write lock and wakes subscribers afterwards.
    fn append(
        &mut self,
        log_id: &str,
        clock: &dyn Clock,
        request: pb::PublishRequest,
        retain: usize,
    ) -> Result<pb::PublishResponse, LogError> {
        if !request.event_id.is_empty()
            && let Some((sequence, idempotency)) = self.find_event_id(log_id, &request.event_id)
        {
            let original = self
                .entry(sequence)
                .expect("found events are retained")
                .event();
            let same = match idempotency {
                Some(idempotency) => idempotency.is_same_request(&original, &request),
                // A server-assigned id sent back: the same update if it says the same thing.
                // What the first request gave of expected_version is not kept, and its
                // occurred_at only as the event's.
                None => {
                    original.story_id == request.story_id
                        && original.headline == request.headline
                        && original.change == request.change
                        && request
                            .occurred_at
                            .is_none_or(|at| Some(at) == original.occurred_at)
                }
            };
            return if same {
                Ok(receipt(&original, true))
            } else {
                Err(LogError::EventIdReused {
                    event_id: request.event_id,
                    sequence,
                })
            };
        }

        if assigned_sequence(log_id, &request.event_id).is_some_and(|sequence| sequence > self.head)
        {
            return Err(LogError::ReservedEventId {
                event_id: request.event_id,
                log_id: log_id.to_owned(),
            });
        }

        let current = self.stories.version(&request.story_id);
        if let Some(expected) = request.expected_version
            && expected != current
        {
            return Err(LogError::VersionMismatch {
                story_id: request.story_id,
                expected,
                current,
            });
        }

        let sequence = self.head + 1;
        let recorded_at = clock.timestamp();
        let client_event_id = (!request.event_id.is_empty()).then_some(request.event_id);
        let event = pb::UpdateEvent {
            sequence,
            event_id: client_event_id
                .clone()
                .unwrap_or_else(|| assigned_event_id(log_id, sequence)),
            story_id: request.story_id,
            story_version: current + 1,
            headline: request.headline,
            occurred_at: Some(request.occurred_at.unwrap_or(recorded_at)),
            recorded_at: Some(recorded_at),
            change: request.change,
        };
        let added_tags = added_tags(&self.stories, &event);
        let applied = self.stories.apply_within(&event, &self.story_limits)?;
        let receipt = receipt(&event, false);
        let entered = (!added_tags.is_empty()).then(|| {
            let story = self
                .stories
                .get(&event.story_id)
                .expect("the story was just applied to")
                .clone();
            Box::new(Entered {
                tags: added_tags.into(),
                story: encode_story(story),
            })
        });

        let client_event_id = client_event_id.map(String::into_boxed_str);
        self.index_event_id(
            client_event_id.as_deref(),
            Idempotency {
                sequence,
                expected_version: request.expected_version,
                occurred_at_given: request.occurred_at,
            },
        );
        let encoded = encode_event(event);
        if let Some(unwritten) = &mut self.unwritten {
            let record = wal::Record {
                event: event_bytes(&encoded),
                expected_version: request.expected_version,
                occurred_at_given: request.occurred_at,
                filter_tags: applied.tags.to_vec(),
                entered_tags: entered
                    .as_ref()
                    .map(|e| e.tags.to_vec())
                    .unwrap_or_default(),
                entered_story: entered.as_ref().map(|e| e.story.clone()),
            };
            unwritten.push((sequence, wal::frame(&record)));
        }
        self.entries.push_back(Arc::new(LoggedEvent {
            sequence,
            story_id: applied.story_id,
            tags: applied.tags,
            entered,
            client_event_id,
            encoded,
        }));
        self.head = sequence;
        self.evict(retain);
        Ok(receipt)
    }

    /// The framed records appended since the writer thread last took them (none in memory).
    fn take_unwritten(&mut self) -> Vec<Framed> {
        self.unwritten
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Indexes a publisher's event_id for idempotent retries (server-assigned ids need none).
    fn index_event_id(&mut self, event_id: Option<&str>, idempotency: Idempotency) {
        if let Some(event_id) = event_id {
            self.by_client_event_id.insert(event_id.into(), idempotency);
        }
    }

    /// Puts back one record read from disk. Records up to `snapshot_head` are already folded into
    /// the stories (they came with the snapshot); later ones are applied again.
    fn restore(
        &mut self,
        log_id: &str,
        record: wal::Record,
        snapshot_head: u64,
    ) -> Result<(), String> {
        let event = pb::UpdateEvent::decode(record.event.clone()).map_err(|e| e.to_string())?;
        let sequence = event.sequence;
        if sequence != self.head + 1 {
            return Err(format!("sequence {sequence} follows {}", self.head));
        }
        if sequence > snapshot_head {
            self.stories
                .apply(&event)
                .map_err(|e| format!("sequence {sequence}: {e}"))?;
        } else {
            self.stories.note_retained(&event.story_id, sequence);
        }
        let story_id = self
            .stories
            .shared_id(&event.story_id)
            .ok_or_else(|| format!("sequence {sequence}: story {} is unknown", event.story_id))?;
        let client_event_id = (event.event_id != assigned_event_id(log_id, sequence))
            .then(|| event.event_id.clone().into_boxed_str());
        self.index_event_id(
            client_event_id.as_deref(),
            Idempotency {
                sequence,
                expected_version: record.expected_version,
                occurred_at_given: record.occurred_at_given,
            },
        );
        if self.entries.is_empty() {
            self.first_retained = sequence;
        }
        self.entries.push_back(Arc::new(LoggedEvent {
            sequence,
            story_id,
            tags: record.filter_tags.into(),
            entered: record.entered_story.map(|story| {
                Box::new(Entered {
                    tags: record.entered_tags.into(),
                    story,
                })
            }),
            client_event_id,
            encoded: from_event_bytes(&record.event),
        }));
        self.head = sequence;
        Ok(())
    }

    /// Drops the oldest events beyond `retain`, and their dedupe and history entries.
    fn evict(&mut self, retain: usize) {
        while self.entries.len() > retain {
            let oldest = self.entries.pop_front().expect("len > retain >= 0");
            self.first_retained += 1;
            // The id may have been used again for a later event (once evicted it is free), and
            // recovery replays both uses: only the entry for this sequence goes.
            if let Some(event_id) = &oldest.client_event_id
                && self
                    .by_client_event_id
                    .get(event_id)
                    .is_some_and(|held| held.sequence == oldest.sequence)
            {
                self.by_client_event_id.remove(event_id);
            }
            self.stories.forget_oldest(&oldest.story_id);
        }
    }
}

/// The event_id the server gives an event published without one: the log's id and the sequence,
/// unique across incarnations and derivable, so it needs no index of its own.
fn assigned_event_id(log_id: &str, sequence: u64) -> String {
    format!("{log_id}-{sequence}")
}

/// The sequence an id made by [`assigned_event_id`] names, if it is exactly such an id.
fn assigned_sequence(log_id: &str, event_id: &str) -> Option<u64> {
    let digits = event_id.strip_prefix(log_id)?.strip_prefix('-')?;
    let sequence: u64 = digits.parse().ok()?;
    (assigned_event_id(log_id, sequence) == event_id).then_some(sequence)
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
    /// The newest sequence readers may see, for waking subscribers that wait at the head. Only
    /// moves forward. With a data directory it moves only once an event is on disk, so nobody
    /// sees an event a crash could take back. Receivers belong to subscriptions and waiting
    /// publishers; the log keeps the sender for its whole life.
    head_tx: watch::Sender<u64>,
    /// The newest sequence whose publisher may be answered: the visible head, except with
    /// `--fsync batch`, where an event is acknowledged once written and made visible only once
    /// fsynced (so nobody sees a sequence a power loss could give to another event). Receivers
    /// belong to waiting publishers; the log keeps the sender.
    acknowledged_tx: watch::Sender<u64>,
    /// With a data directory: the writer thread and its wake-up. `None` in memory.
    journal: Option<Journal>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("log_id", &self.log_id)
            .field("retain_events", &self.retain_events)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// An empty log with a new random log_id that keeps the newest `retain_events` events
    /// (at least 1).
    pub fn new(retain_events: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            log_id: uuid::Uuid::new_v4().simple().to_string(),
            retain_events: retain_events.max(1),
            clock,
            state: RwLock::new(LogState::empty()),
            head_tx: watch::Sender::new(0),
            acknowledged_tx: watch::Sender::new(0),
            journal: None,
        }
    }

    /// The log kept in `config.dir`: recovers what is on disk (same log_id, sequences and story
    /// states) and starts the writer thread that makes every later event durable before it is
    /// acknowledged or seen.
    pub fn open(
        retain_events: usize,
        clock: Arc<dyn Clock>,
        config: &WalConfig,
    ) -> Result<Arc<Self>, WalError> {
        let recovery = wal::recover(config)?;
        let mut state = LogState::empty();
        let mut snapshot_head = 0;
        if let Some(snapshot) = recovery.snapshot {
            snapshot_head = snapshot.head;
            state.stories.restore(snapshot.stories);
            state.head = snapshot.head;
            state.first_retained = snapshot.head + 1;
        }
        if let Some(first) = recovery.sequences.first() {
            // Records the snapshot already covers are kept for reading, not applied again.
            state.head = first - 1;
            state.first_retained = *first;
        }
        for (record, sequence) in recovery.records.into_iter().zip(recovery.sequences) {
            state
                .restore(&recovery.log_id, record, snapshot_head)
                .map_err(|reason| WalError::Invalid {
                    path: config.dir.clone(),
                    reason: format!("replaying sequence {sequence}: {reason}"),
                })?;
        }
        let retain_events = retain_events.max(1);
        state.evict(retain_events);
        state.unwritten = Some(Vec::new());
        let head = state.head;
        tracing::info!(dir = %config.dir.display(), head, first_retained = state.first_retained,
            stories = state.stories.iter().count(), "recovered the log from disk");

        let signal = Arc::new(WriterSignal::default());
        let writer = recovery.writer;
        let fsync = config.fsync;
        let interval = config.batch_interval;
        Ok(Arc::new_cyclic(|log: &std::sync::Weak<Self>| {
            let log = log.clone();
            let thread_signal = signal.clone();
            let thread = std::thread::Builder::new()
                .name("storywire-wal".to_owned())
                .spawn(move || write_ahead(log, writer, thread_signal, fsync, interval))
                .expect("spawn the write-ahead thread");
            Self {
                log_id: recovery.log_id,
                retain_events,
                clock,
                state: RwLock::new(state),
                head_tx: watch::Sender::new(head),
                acknowledged_tx: watch::Sender::new(head),
                journal: Some(Journal {
                    signal,
                    thread: std::sync::Mutex::new(Some(thread)),
                }),
            }
        }))
    }

    /// Writes what is left to disk and stops the writer thread. Appending afterwards is a bug.
    /// A log kept in memory has nothing to do.
    pub fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.signal.close();
            let thread = journal.thread.lock().expect("journal lock poisoned").take();
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("the write-ahead thread panicked");
            }
        }
    }

    /// Hands the writer thread the framed records appended since it last looked, and the oldest
    /// retained sequence.
    fn take_unwritten(&self) -> (Vec<Framed>, u64) {
        let mut state = self.write();
        (state.take_unwritten(), state.first_retained)
    }

    /// Every story as of the newest appended event, encoded as a snapshot, and the records not
    /// yet written up to it: written and synced before the snapshot, they make it cover
    /// everything up to its head.
    ///
    /// The write lock is held only to take the stories' reference counts (copy-on-write), not to
    /// copy or encode them: publishers wait microseconds, not the time a large log takes to
    /// encode.
    fn snapshot_for_compaction(&self) -> (Vec<u8>, Vec<Framed>, u64) {
        let (stories, head, unwritten, first_retained) = {
            let mut state = self.write();
            let unwritten = state.take_unwritten();
            let stories: Vec<Arc<pb::Story>> = state.stories.iter().cloned().collect();
            (stories, state.head, unwritten, state.first_retained)
        };
        let snapshot = wal::encode_snapshot(&self.log_id, head, &stories);
        (snapshot, unwritten, first_retained)
    }

    /// Waits until readers may see `sequence`: with a data directory, until it is on disk.
    pub async fn visible(&self, sequence: u64) {
        if self.head() >= sequence {
            return;
        }
        let mut head = self.head_tx.subscribe();
        // The log owns the sender for as long as `self` lives.
        let _ = head.wait_for(|head| *head >= sequence).await;
    }

    /// Waits until the publisher of `sequence` may be answered: with a data directory, until it
    /// is written as the fsync mode says (see [`FsyncMode`]).
    pub async fn acknowledged(&self, sequence: u64) {
        if *self.acknowledged_tx.borrow() >= sequence {
            return;
        }
        let mut acknowledged = self.acknowledged_tx.subscribe();
        // The log owns the sender for as long as `self` lives.
        let _ = acknowledged.wait_for(|newest| *newest >= sequence).await;
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

    /// The newest sequence readers may see (0 when empty). With a data directory, the newest on
    /// disk.
    pub fn head(&self) -> u64 {
        *self.head_tx.borrow()
    }

    /// The oldest sequence still retained (`head + 1` when none is).
    pub fn first_retained(&self) -> u64 {
        self.read().first_retained
    }

    /// How many subscriptions are open (each holds one head receiver).
    pub fn subscribers(&self) -> usize {
        self.head_tx.receiver_count()
    }

    /// A receiver of the head sequence, to wait for the log to move past a cursor.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// Appends one validated request as the next event, or explains why not.
    ///
    /// Under the write lock: a retained `event_id` answers with the original receipt (or
    /// `EventIdReused`), `expected_version` is checked, the story rules are applied, and only then
    /// is a sequence assigned, so a rejected request leaves no trace.
    pub fn append(&self, request: pb::PublishRequest) -> Result<pb::PublishResponse, LogError> {
        let outcome = self
            .write()
            .append(&self.log_id, &*self.clock, request, self.retain_events);
        if let Ok(receipt) = &outcome {
            self.appended(receipt.sequence);
        }
        outcome
    }

    /// Appends validated requests in order under one lock and wakes subscribers once, for a
    /// pipeline's burst. Each request succeeds or fails on its own, exactly as [`Self::append`].
    pub fn append_all(
        &self,
        requests: impl IntoIterator<Item = pb::PublishRequest>,
    ) -> Vec<Result<pb::PublishResponse, LogError>> {
        let outcomes: Vec<_> = {
            let mut state = self.write();
            requests
                .into_iter()
                .map(|request| {
                    state.append(&self.log_id, &*self.clock, request, self.retain_events)
                })
                .collect()
        };
        let newest = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(|r| r.sequence)
            .max();
        if let Some(sequence) = newest {
            self.appended(sequence);
        }
        outcomes
    }

    /// After an append: in memory the event is visible at once; with a data directory the writer
    /// thread makes it visible once it is on disk.
    fn appended(&self, sequence: u64) {
        match &self.journal {
            Some(journal) => journal.signal.work(),
            None => self.announce(sequence),
        }
    }

    /// Wakes every waiting subscription without moving the head, so that each looks at its
    /// server's shutdown flag.
    pub fn wake_subscribers(&self) {
        self.head_tx.send_modify(|_| {});
    }

    /// Wakes subscribers waiting for the head to reach `sequence`. Called outside the lock, where
    /// appends can race, so the head only ever moves forward.
    fn announce(&self, sequence: u64) {
        self.acknowledge(sequence);
        self.head_tx.send_if_modified(|head| {
            let moved = sequence > *head;
            *head = (*head).max(sequence);
            moved
        });
    }

    /// Answers the publishers waiting for events up to `sequence`, without making them visible.
    fn acknowledge(&self, sequence: u64) {
        self.acknowledged_tx.send_if_modified(|newest| {
            let moved = sequence > *newest;
            *newest = (*newest).max(sequence);
            moved
        });
    }

    /// Reads up to `max_events` matching events starting at sequence `from`, scanning at most
    /// `max_scan` events, and taking the read lock afresh for every [`SCAN_PER_LOCK`] of them, so
    /// that a sparse filter over a long log never holds publishers up for long.
    ///
    /// `from` may be `head + 1` (nothing to read yet), or 0 for the oldest retained event (no event
    /// has sequence 0, so "every event from 0 on" is every retained one). Otherwise earlier than
    /// the first retained event is [`LogError::NotRetained`], later than `head + 1`
    /// [`LogError::BeyondHead`].
    pub fn read_from(
        &self,
        from: u64,
        filter: &Filter,
        max_events: usize,
        max_scan: usize,
    ) -> Result<Batch, LogError> {
        let visible = self.head();
        let (mut next, mut first_retained) = {
            let state = self.read();
            let from = if from == 0 {
                state.first_retained
            } else {
                from
            };
            state.check_position(from, visible)?;
            (from, state.first_retained)
        };
        let mut events = Vec::new();
        let mut left = max_scan;
        while left > 0 && next <= visible && events.len() < max_events {
            let state = self.read();
            first_retained = state.first_retained;
            // Evicted since the last chunk: what was read stands, and the next read says so.
            let Some(start) = next
                .checked_sub(state.first_retained)
                .and_then(|index| usize::try_from(index).ok())
            else {
                break;
            };
            let readable = usize::try_from(visible + 1 - next).unwrap_or(usize::MAX);
            let chunk = left.min(SCAN_PER_LOCK).min(readable);
            let chunk_start = next;
            for entry in state.entries.range(start..).take(chunk) {
                next += 1;
                left -= 1;
                if filter.matches(entry) {
                    events.push(entry.clone());
                    if events.len() == max_events {
                        break;
                    }
                }
            }
            if next == chunk_start {
                break;
            }
        }
        Ok(Batch {
            events,
            next,
            head: visible,
            first_retained,
        })
    }

    /// Checks that `from` is a readable position: retained (or 0, for the oldest retained), and at
    /// most `head + 1`.
    pub fn check_position(&self, from: u64) -> Result<(), LogError> {
        match from {
            0 => Ok(()),
            from => {
                let visible = self.head();
                self.read().check_position(from, visible)
            }
        }
    }

    /// Up to `limit` stories matching `filter` with ids after `after`, in id order, shared; and
    /// the id to continue after, `None` once every story has been looked at. At most `max_scan`
    /// stories are looked at, so that a sparse filter holds the read lock briefly.
    pub fn stories_page(
        &self,
        filter: &Filter,
        after: &str,
        limit: usize,
        max_scan: usize,
    ) -> (Vec<Arc<pb::Story>>, Option<String>) {
        let state = self.read();
        let mut page = Vec::new();
        let mut last = None;
        for story in state.stories.after(after).take(max_scan) {
            last = Some(story);
            if filter.matches_story(story) {
                page.push(story.clone());
                if page.len() == limit {
                    break;
                }
            }
        }
        let more = last.is_some_and(|last| state.stories.after(&last.id).next().is_some());
        (page, last.filter(|_| more).map(|last| last.id.clone()))
    }

    /// A story's current state, or with `as_of_version` its state right after that version,
    /// rebuilt by folding its retained events again.
    ///
    /// The lock is held only to find the events (reference counts); decoding and folding them,
    /// which for a long story takes a while, happens after it is released.
    pub fn story(&self, story_id: &str, as_of_version: Option<u64>) -> Result<pb::Story, LogError> {
        let history: Vec<Arc<LoggedEvent>> = {
            let state = self.read();
            let current = state
                .stories
                .get(story_id)
                .ok_or_else(|| StoryError::NotFound {
                    story_id: story_id.to_owned(),
                })?;
            let Some(version) = as_of_version else {
                return Ok(current.clone());
            };
            if version > current.version {
                return Err(LogError::VersionBeyondStory {
                    story_id: story_id.to_owned(),
                    requested: version,
                    current: current.version,
                });
            }
            let not_retained = || LogError::HistoryNotRetained {
                story_id: story_id.to_owned(),
                requested: version,
            };
            let sequences = state
                .stories
                .history(story_id, version)
                .ok_or_else(not_retained)?;
            sequences
                .into_iter()
                .map(|sequence| state.entry(sequence).cloned().ok_or_else(not_retained))
                .collect::<Result<_, _>>()?
        };
        let mut rebuilt = Stories::default();
        for entry in history {
            rebuilt
                .apply(&entry.event())
                .expect("an event that applied once applies again to the same history");
        }
        Ok(rebuilt
            .get(story_id)
            .expect("the history opens the story")
            .clone())
    }

    /// Up to `limit` stories with ids after `after` that carry `tag` (when set) and have `status`
    /// (when not UNSPECIFIED), and whether more such stories follow.
    pub fn list_stories(
        &self,
        after: &str,
        limit: usize,
        tag: &str,
        status: i32,
    ) -> (Vec<pb::Story>, bool) {
        let (page, more) = {
            let state = self.read();
            let mut matching = state.stories.after(after).filter(|story| {
                (tag.is_empty() || story.tags.iter().any(|t| t == tag))
                    && (status == 0 || story.status == status)
            });
            let page: Vec<Arc<pb::Story>> = matching.by_ref().take(limit).cloned().collect();
            (page, matching.next().is_some())
        };
        // Copied for the response after the lock is released.
        (page.iter().map(|story| (**story).clone()).collect(), more)
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // The writer thread holds only a weak reference: told to close, it syncs what it wrote
        // and ends. Records appended but never handed over were never acknowledged.
        if let Some(journal) = &self.journal {
            journal.signal.close();
        }
    }
}

/// The write-ahead thread: writes appended records in order, syncs as the fsync mode says, then
/// makes them visible (which acknowledges their publishers); deletes segments that retention
/// emptied once a snapshot covers them. A failing disk stops the process: no later event may be
/// acknowledged, and nothing acknowledged was lost.
fn write_ahead(
    log: std::sync::Weak<EventLog>,
    mut writer: SegmentWriter,
    signal: Arc<WriterSignal>,
    fsync: FsyncMode,
    interval: std::time::Duration,
) {
    let timeout = (fsync == FsyncMode::Batch).then_some(interval);
    let mut last_sync = std::time::Instant::now();
    // The newest sequence written, not yet necessarily synced.
    let mut last_written = 0;
    loop {
        let closing = signal.wait(timeout);
        let Some(log) = log.upgrade() else {
            if let Err(error) = writer.sync() {
                tracing::error!(%error, "write-ahead log: final sync failed");
            }
            return;
        };
        let round = write_round(
            &log,
            &mut writer,
            fsync,
            interval,
            &mut last_sync,
            &mut last_written,
        );
        if let Err(error) = round {
            tracing::error!(%error, "write-ahead log: the disk failed; stopping so that nothing unwritten is acknowledged");
            std::process::abort();
        }
        if closing {
            if let Err(error) = writer.sync() {
                tracing::error!(%error, "write-ahead log: final sync failed");
            }
            return;
        }
    }
}

/// One round of the write-ahead thread: write what was appended, sync as the fsync mode says,
/// and move the acknowledged and visible heads.
///
/// An event becomes visible only once it is where a crash the mode protects against cannot take
/// it back, so that a sequence a reader has seen never comes back as another event: `always`,
/// once synced (and acknowledged then too); `batch`, acknowledged once written but visible only
/// once synced; `never` (tests only), visible once written.
fn write_round(
    log: &EventLog,
    writer: &mut SegmentWriter,
    fsync: FsyncMode,
    interval: std::time::Duration,
    last_sync: &mut std::time::Instant,
    last_written: &mut u64,
) -> Result<(), WalError> {
    let (unwritten, first_retained) = log.take_unwritten();
    let written = write_records(writer, &unwritten)?;
    if let Some(sequence) = written {
        *last_written = sequence;
    }
    let sync_due = last_sync.elapsed() >= interval;
    match fsync {
        FsyncMode::Always => {
            writer.sync()?;
            log.announce(*last_written);
        }
        FsyncMode::Batch => {
            log.acknowledge(*last_written);
            if sync_due && writer.is_dirty() {
                writer.sync()?;
                *last_sync = std::time::Instant::now();
                log.announce(*last_written);
            }
        }
        FsyncMode::Never => log.announce(*last_written),
    }
    if writer.has_evicted_segments(first_retained) {
        let (snapshot, unwritten, first_retained) = log.snapshot_for_compaction();
        if let Some(sequence) = write_records(writer, &unwritten)? {
            *last_written = sequence;
        }
        writer.sync()?;
        *last_sync = std::time::Instant::now();
        log.announce(*last_written);
        writer.compact(&snapshot, first_retained)?;
    }
    Ok(())
}

/// Writes framed records; returns the last sequence written.
fn write_records(writer: &mut SegmentWriter, records: &[Framed]) -> Result<Option<u64>, WalError> {
    for (sequence, framed) in records {
        writer.write(*sequence, framed)?;
    }
    Ok(records.last().map(|(sequence, _)| *sequence))
}

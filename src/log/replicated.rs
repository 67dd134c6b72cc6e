//! The log as a replica of a stream that other nodes append to too (`serve --nats`,
//! `crate::cluster`).
//!
//! Here the stream orders events, not this log: a publish is decided against the replica
//! ([`EventLog::plan`]) and sent to the stream as a [`Proposal`]; every node then applies the
//! stream's messages in stream order ([`EventLog::replicate`]), each at the stream's sequence.
//! Applying is a pure function of the stream's prefix, so every node holds the same events at the
//! same sequences, with the same bytes.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use pbjson_types::Timestamp;
use prost::Message;

use super::{
    EventLog, LogError, LoggedEvent,
    journal::Heads,
    memory::Memory,
    state::LogState,
    state::{Stamp, new_event},
};
use crate::{
    clock::Clock,
    pb,
    wal::{self, Snapshot},
};

/// A publish as it travels through the stream: what a node decided against its replica, which
/// every node turns into the same event at the sequence the stream gives it.
#[derive(Clone, PartialEq, Message)]
pub struct Proposal {
    /// The request as the publisher sent it (its `event_id` empty when the server assigns one).
    #[prost(message, optional, tag = "1")]
    pub request: Option<pb::PublishRequest>,
    /// When the deciding node accepted it: the event's `recorded_at` on every node.
    #[prost(message, optional, tag = "2")]
    pub recorded_at: Option<Timestamp>,
    /// The story's version with this event. The stream's per-story sequence check makes it the
    /// story's version + 1 on every node; a node that started from a snapshot newer than the
    /// event takes it from here.
    #[prost(uint64, tag = "3")]
    pub story_version: u64,
    /// The tags subscribers filter the event by, for a node that keeps the event without
    /// applying it (it started from a snapshot newer than the event).
    #[prost(string, repeated, tag = "4")]
    pub filter_tags: Vec<String>,
    /// The name of the publisher's token, as the deciding node's service found it: the event's
    /// `published_by` on every node.
    #[prost(string, tag = "5")]
    pub published_by: String,
}

/// What a publish through the stream does, decided against the replica.
#[derive(Debug)]
pub enum Plan {
    /// The request repeats one the log holds: its original receipt.
    Duplicate(pb::PublishResponse),
    /// A new event: publish `proposal`, on the condition that the story's newest event in the
    /// stream is still at `expected_subject_sequence` (0: the story has none there).
    Publish {
        /// What to publish.
        proposal: Box<Proposal>,
        /// The stream sequence of the story's newest event, which JetStream must still find.
        expected_subject_sequence: u64,
    },
}

impl EventLog {
    /// A replica of a stream identified by `log_id`, keeping the newest `retain_events`, that
    /// starts from `snapshot` (if any) and holds no events yet: the first one it will take is
    /// `first`, the stream's oldest (at most one past the snapshot's head).
    pub fn replica(
        log_id: String,
        retain_events: usize,
        clock: Arc<dyn Clock>,
        snapshot: Option<Snapshot>,
        first: u64,
    ) -> Self {
        let mut state = LogState::empty();
        if let Some(snapshot) = snapshot {
            state.stories.restore(snapshot.stories);
        }
        state.appended = first.saturating_sub(1);
        state.first_retained = first.max(1);
        let heads = Arc::new(Heads::new(state.appended));
        let journal = Box::new(Memory::new(heads.clone()));
        Self::assemble(
            log_id,
            retain_events.max(1),
            clock,
            RwLock::new(state),
            heads,
            journal,
        )
    }

    /// Decides `request` (already validated) against the replica as [`Self::append`] would,
    /// without appending it: its original receipt if it repeats a retained request, or the
    /// proposal to publish. A refusal is the one `append` would give.
    pub fn plan(&self, request: pb::PublishRequest, published_by: &str) -> Result<Plan, LogError> {
        let recorded_at = self.clock.timestamp();
        let state = self.read();
        if let Some(original) = state.check(&self.log_id, &request)? {
            return Ok(Plan::Duplicate(original));
        }
        let story_version = state.stories.version(&request.story_id) + 1;
        let expected_subject_sequence = subject_sequence(&state, &request.story_id);
        let stamp = Stamp {
            published_by,
            recorded_at,
        };
        let event = new_event(&self.log_id, 0, story_version, request.clone(), stamp);
        let filter_tags = state
            .stories
            .check_within(&event, &state.story_limits)?
            .to_vec();
        drop(state);
        Ok(Plan::Publish {
            proposal: Box::new(Proposal {
                request: Some(request),
                recorded_at: Some(recorded_at),
                story_version,
                filter_tags,
                published_by: published_by.to_owned(),
            }),
            expected_subject_sequence,
        })
    }

    /// The stream sequence of the newest retained event of `story_id`: what JetStream must still
    /// find as the story's newest for a publish decided now (0 when the replica holds none).
    pub fn subject_sequence(&self, story_id: &str) -> u64 {
        subject_sequence(&self.read(), story_id)
    }

    /// Applies the stream's message at `sequence` (the next one), as every node does. Readers
    /// see it once [`Self::show`] is called. An error means the stream holds what no node can
    /// apply: the replica must stop rather than build a projection with a hole.
    pub fn replicate(&self, sequence: u64, proposal: Proposal) -> Result<(), String> {
        let (request, stamp) = parts(sequence, &proposal)?;
        let mut state = self.write();
        let version = state.stories.version(&request.story_id) + 1;
        if version != proposal.story_version {
            return Err(format!(
                "sequence {sequence}: story {} would be at version {version}, the message says {}",
                request.story_id, proposal.story_version
            ));
        }
        state
            .commit(
                &self.log_id,
                sequence,
                request,
                stamp,
                None,
                self.retain_events,
            )
            .map(drop)
            .map_err(|error| format!("sequence {sequence}: {error}"))
    }

    /// Keeps the stream's message at `sequence` (the next one) for reading, when the replica
    /// started from a snapshot that already folds it in (at or below `snapshot_head`).
    pub fn restore_replicated(
        &self,
        sequence: u64,
        proposal: Proposal,
        snapshot_head: u64,
    ) -> Result<(), String> {
        let (request, stamp) = parts(sequence, &proposal)?;
        let record = wal::Record {
            expected_version: request.expected_version,
            occurred_at_given: request.occurred_at,
            event: Bytes::from(
                new_event(
                    &self.log_id,
                    sequence,
                    proposal.story_version,
                    request,
                    stamp,
                )
                .encode_to_vec(),
            ),
            filter_tags: proposal.filter_tags,
            entered_tags: Vec::new(),
            entered_story: None,
        };
        let mut state = self.write();
        state.restore(&self.log_id, record, snapshot_head)?;
        state.evict(self.retain_events);
        Ok(())
    }

    /// Starts the replica again from `snapshot`, holding no events, the first it will take being
    /// `first`: the stream evicted the events between what it had applied and `first` while it
    /// could not follow. Subscriptions behind `first` end with OUT_OF_RANGE at their next read,
    /// as when retention overtakes them on a single server.
    pub fn rebuild(&self, snapshot: Snapshot, first: u64) {
        let mut state = self.write();
        let limits = state.story_limits.clone();
        *state = LogState::empty();
        state.story_limits = limits;
        state.stories.restore(snapshot.stories);
        state.appended = first - 1;
        state.first_retained = first;
    }

    /// Moves an empty replica's start to `first`, the stream's oldest message now: retention
    /// moved it while the replica was starting.
    pub fn start_at(&self, first: u64) {
        let mut state = self.write();
        assert!(
            state.entries.is_empty(),
            "only an empty replica moves its start"
        );
        state.appended = first - 1;
        state.first_retained = first;
    }

    /// Shows every event up to `sequence` to readers, and answers their publishers.
    pub fn show(&self, sequence: u64) {
        self.heads.announce(sequence);
    }

    /// The newest sequence applied or kept, which readers may not see yet.
    pub fn appended(&self) -> u64 {
        self.read().appended
    }

    /// Waits until readers may see `sequence`.
    pub async fn visible(&self, sequence: u64) {
        self.heads.until_visible(sequence).await;
    }

    /// The receipt of the event at `sequence`, which the stream said repeats `request`'s
    /// event_id: the original receipt if `request` is the same request, `EventIdReused` if not.
    /// `None` when retention has already evicted it.
    pub fn receipt_for_duplicate(
        &self,
        sequence: u64,
        request: &pb::PublishRequest,
    ) -> Option<Result<pb::PublishResponse, LogError>> {
        let state = self.read();
        state.entry(sequence)?;
        Some(match state.check(&self.log_id, request) {
            Ok(Some(original)) if original.sequence == sequence => Ok(original),
            Ok(_) => Err(LogError::EventIdReused {
                event_id: request.event_id.clone(),
                sequence,
            }),
            Err(error) => Err(error),
        })
    }

    /// The receipt of the event at `sequence`, if retained.
    pub fn receipt_at(&self, sequence: u64) -> Option<pb::PublishResponse> {
        let entry = self.read().entry(sequence)?.clone();
        Some(super::dedupe::receipt(&entry.event(), false))
    }

    /// Every story and the sequence they are as of, for a snapshot of the replica.
    pub fn snapshot(&self) -> (Vec<Arc<pb::Story>>, u64) {
        let (stories, appended, _, ()) = self.stories_for_snapshot(|| ());
        (stories, appended)
    }

    /// The event at `sequence`, if retained (for checks of a replica).
    pub fn entry(&self, sequence: u64) -> Option<Arc<LoggedEvent>> {
        self.read().entry(sequence).cloned()
    }
}

/// [`EventLog::subject_sequence`] under the caller's lock. The stream and the replica evict the
/// same events, so a story whose newest event the replica evicted has none in the stream either.
fn subject_sequence(state: &LogState, story_id: &str) -> u64 {
    state
        .stories
        .get(story_id)
        .map(|story| story.last_sequence)
        .filter(|last| *last >= state.first_retained)
        .unwrap_or(0)
}

/// The request and the stamp of a proposal, which every message must carry (`published_by`
/// is empty in messages from before it was recorded).
fn parts(sequence: u64, proposal: &Proposal) -> Result<(pb::PublishRequest, Stamp<'_>), String> {
    match (&proposal.request, proposal.recorded_at) {
        (Some(request), Some(recorded_at)) => Ok((
            request.clone(),
            Stamp {
                published_by: &proposal.published_by,
                recorded_at,
            },
        )),
        _ => Err(format!(
            "sequence {sequence}: the message lacks its request or recorded_at"
        )),
    }
}

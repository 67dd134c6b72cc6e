//! The in-memory log itself: the retained events, retention, the event_id index and the
//! projection, guarded together by the log's lock. Appending decides everything about an event
//! here, its sequence too; the journal ([`super::journal`]) makes it durable and visible.

use std::{collections::VecDeque, sync::Arc};

use pbjson_types::Timestamp;
use prost::Message;

use super::{
    Entered, LogError, LoggedEvent,
    dedupe::{EventIds, Idempotency, assigned_event_id, assigned_sequence, is_retry, receipt},
    journal::{Accepted, Journal},
};
use crate::{
    clock::Clock,
    encoded::{encode_event, encode_story, from_event_bytes},
    limits::StoryLimits,
    pb,
    story::{Applied, Stories},
    wal,
};

/// What the log's lock guards: the retained events, the event_id index and the projection.
#[derive(Debug)]
pub(super) struct LogState {
    /// Retained events, oldest first; `entries[i]` has sequence `first_retained + i`.
    pub(super) entries: VecDeque<Arc<LoggedEvent>>,
    /// The sequence of `entries[0]`, or `appended + 1` when nothing is retained.
    pub(super) first_retained: u64,
    /// The newest sequence appended, which readers may not see yet: they see only the visible
    /// head the journal moves ([`super::journal::Heads`]). 0 before the first event.
    pub(super) appended: u64,
    /// Retained events by the event_id their publisher gave, for idempotent publishing.
    ids: EventIds,
    /// Every story's current state, as of `appended`. Kept whatever the retention.
    pub(super) stories: Stories,
    /// What one story may hold: appends are held to it, replayed events never are.
    pub(super) story_limits: StoryLimits,
}

impl LogState {
    /// A log with nothing in it.
    pub(super) fn empty() -> Self {
        Self {
            entries: VecDeque::new(),
            first_retained: 1,
            appended: 0,
            ids: EventIds::default(),
            stories: Stories::default(),
            story_limits: StoryLimits::default(),
        }
    }

    /// The retained event at `sequence`.
    pub(super) fn entry(&self, sequence: u64) -> Option<&Arc<LoggedEvent>> {
        let index = sequence.checked_sub(self.first_retained)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// The retained event a publisher's `event_id` names, with what a retry must match.
    fn find_event_id(&self, log_id: &str, event_id: &str) -> Option<(u64, Option<&Idempotency>)> {
        if let Some(idempotency) = self.ids.get(event_id) {
            return Some((idempotency.sequence, Some(idempotency)));
        }
        let sequence = assigned_sequence(log_id, event_id)?;
        let entry = self.entry(sequence)?;
        entry.client_event_id.is_none().then_some((sequence, None))
    }

    /// Checks that `from` is retained and at most one past `visible`, the newest sequence
    /// readers may see.
    pub(super) fn check_position(&self, from: u64, visible: u64) -> Result<(), LogError> {
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

    /// Appends one request as the next event (see [`super::EventLog::append`]); the caller holds
    /// the write lock, and flushes the journal afterwards.
    pub(super) fn append(
        &mut self,
        log_id: &str,
        clock: &dyn Clock,
        journal: &dyn Journal,
        request: pb::PublishRequest,
        published_by: &str,
        retain: usize,
    ) -> Result<pb::PublishResponse, LogError> {
        if let Some(original) = self.check(log_id, &request)? {
            return Ok(original);
        }
        // The next sequence: retained events are indexed by sequence without gaps, and
        // sequences are what subscribers resume from.
        let sequence = self.appended + 1;
        let expected_version = request.expected_version;
        let occurred_at_given = request.occurred_at;
        let limits = self.story_limits.clone();
        let (receipt, entry) = self.commit(
            log_id,
            sequence,
            request,
            Stamp {
                published_by,
                recorded_at: clock.timestamp(),
            },
            Some(&limits),
            retain,
        )?;
        journal.record(Accepted {
            entry: &entry,
            expected_version,
            occurred_at_given,
        });
        Ok(receipt)
    }

    /// What must hold before `request` can become a new event, other than the story rules: a
    /// retained `event_id` answers with the original receipt (`Some`) or `EventIdReused`; an
    /// id of the server's form is refused; `expected_version` must match. `None`: a new event.
    pub(super) fn check(
        &self,
        log_id: &str,
        request: &pb::PublishRequest,
    ) -> Result<Option<pb::PublishResponse>, LogError> {
        if !request.event_id.is_empty()
            && let Some((sequence, idempotency)) = self.find_event_id(log_id, &request.event_id)
        {
            let original = self
                .entry(sequence)
                .expect("found events are retained")
                .event();
            return if is_retry(&original, idempotency, request) {
                Ok(Some(receipt(&original, true)))
            } else {
                Err(LogError::EventIdReused {
                    event_id: request.event_id.clone(),
                    sequence,
                })
            };
        }
        if assigned_sequence(log_id, &request.event_id)
            .is_some_and(|sequence| sequence > self.appended)
        {
            return Err(LogError::ReservedEventId {
                event_id: request.event_id.clone(),
                log_id: log_id.to_owned(),
            });
        }
        let current = self.stories.version(&request.story_id);
        if let Some(expected) = request.expected_version
            && expected != current
        {
            return Err(LogError::VersionMismatch {
                story_id: request.story_id.clone(),
                expected,
                current,
            });
        }
        Ok(None)
    }

    /// Makes `request`, stamped with `stamp`, the event at `sequence` (the next one): applies it
    /// to its story (held to
    /// `limits` for a new request; `None` for an event already ordered elsewhere, as replay
    /// does), indexes its event_id, keeps it and evicts beyond `retain`. On error nothing
    /// changes.
    pub(super) fn commit(
        &mut self,
        log_id: &str,
        sequence: u64,
        request: pb::PublishRequest,
        stamp: Stamp<'_>,
        limits: Option<&StoryLimits>,
        retain: usize,
    ) -> Result<(pb::PublishResponse, Arc<LoggedEvent>), LogError> {
        assert_eq!(
            sequence,
            self.appended + 1,
            "retained entries are indexed gaplessly"
        );
        let current = self.stories.version(&request.story_id);
        let expected_version = request.expected_version;
        let occurred_at_given = request.occurred_at;
        let client_event_id = (!request.event_id.is_empty()).then(|| request.event_id.clone());
        let event = new_event(log_id, sequence, current + 1, request, stamp);
        let (applied, entered) = apply(&mut self.stories, &event, limits)?;
        let receipt = receipt(&event, false);

        let client_event_id = client_event_id.map(String::into_boxed_str);
        self.ids.insert(
            client_event_id.as_deref(),
            Idempotency {
                sequence,
                expected_version,
                occurred_at_given,
            },
        );
        let entry = Arc::new(LoggedEvent {
            sequence,
            story_id: applied.story_id,
            tags: applied.tags,
            entered,
            client_event_id,
            encoded: encode_event(event),
            appended_at: Some(std::time::Instant::now()),
        });
        self.entries.push_back(entry.clone());
        self.appended = sequence;
        self.evict(retain);
        Ok((receipt, entry))
    }

    /// Puts back one record read from disk. Records up to `snapshot_head` are already folded into
    /// the stories (they came with the snapshot); later ones are applied again.
    pub(super) fn restore(
        &mut self,
        log_id: &str,
        record: wal::Record,
        snapshot_head: u64,
    ) -> Result<(), String> {
        let event = pb::UpdateEvent::decode(record.event.clone()).map_err(|e| e.to_string())?;
        let sequence = event.sequence;
        if sequence != self.appended + 1 {
            return Err(format!("sequence {sequence} follows {}", self.appended));
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
        self.ids.insert(
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
            appended_at: None,
        }));
        self.appended = sequence;
        Ok(())
    }

    /// Drops the oldest events beyond `retain`, and their dedupe and history entries.
    pub(super) fn evict(&mut self, retain: usize) {
        while self.entries.len() > retain {
            let oldest = self.entries.pop_front().expect("len > retain >= 0");
            self.first_retained += 1;
            if let Some(event_id) = &oldest.client_event_id {
                self.ids.forget(event_id, oldest.sequence);
            }
            self.stories.forget_oldest(&oldest.story_id);
        }
    }
}

/// What the server adds to a request that becomes an event: who published it and when.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp<'a> {
    /// The name of the publisher's token (or [`crate::auth::ANONYMOUS`]).
    pub(super) published_by: &'a str,
    /// When the server accepted it.
    pub(super) recorded_at: Timestamp,
}

/// The event `request` becomes at `sequence`, as version `story_version` of its story.
pub(super) fn new_event(
    log_id: &str,
    sequence: u64,
    story_version: u64,
    request: pb::PublishRequest,
    stamp: Stamp<'_>,
) -> pb::UpdateEvent {
    let Stamp {
        published_by,
        recorded_at,
    } = stamp;
    let event_id = if request.event_id.is_empty() {
        assigned_event_id(log_id, sequence)
    } else {
        request.event_id
    };
    pb::UpdateEvent {
        sequence,
        event_id,
        story_id: request.story_id,
        story_version,
        headline: request.headline,
        occurred_at: Some(request.occurred_at.unwrap_or(recorded_at)),
        recorded_at: Some(recorded_at),
        change: request.change,
        published_by: published_by.to_owned(),
    }
}

/// Applies `event` to `stories` (held to `limits` when given), and says what a subscriber the
/// story thereby enters needs: see [`Entered`].
pub(super) fn apply(
    stories: &mut Stories,
    event: &pb::UpdateEvent,
    limits: Option<&StoryLimits>,
) -> Result<(Applied, Option<Box<Entered>>), LogError> {
    let added_tags = added_tags(stories, event);
    let applied = match limits {
        Some(limits) => stories.apply_within(event, limits)?,
        None => stories.apply(event)?,
    };
    let entered = (!added_tags.is_empty()).then(|| {
        let story = stories
            .get(&event.story_id)
            .expect("the story was just applied to");
        Box::new(Entered {
            tags: added_tags.into(),
            story: encode_story(story),
        })
    });
    Ok((applied, entered))
}

/// The tags `event` adds to its story, which must not be applied yet: those of a revision's new
/// tag list that the story does not carry now.
fn added_tags(stories: &Stories, event: &pb::UpdateEvent) -> Vec<String> {
    let Some(pb::change::Kind::StoryRevised(pb::StoryRevised {
        tags: Some(list), ..
    })) = event.kind()
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

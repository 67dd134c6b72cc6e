//! The projection: each story's current state as the fold of its events, and the story rules a
//! change must obey before it is applied.
//!
//! [`Stories::apply`] checks first and mutates after, so a rejected change leaves every story as it
//! was. The log calls it under its write lock, which is what makes "check, then append" atomic.
//! New requests go through [`Stories::apply_within`], which also holds them to the
//! [`crate::limits::StoryLimits`] (`size.rs`); events already in the log go through `apply`
//! alone.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use prost::Message;

use crate::pb::{self, change::Kind};

mod error;
mod size;

pub use error::StoryError;

use size::{fact_entry_len, note_entry_len, status_history_len};

/// One story's state and what the log still holds of its history.
#[derive(Debug)]
struct StoryRecord {
    /// The story's id, shared with every logged event of the story.
    id: Arc<str>,
    /// The fold of every event applied so far. Shared, and copied on write: a reader (a
    /// snapshot page, compaction) takes a reference count under the log's lock and reads after
    /// releasing it, and the next change to the story copies it only if a reader still holds it.
    state: Arc<pb::Story>,
    /// The story's tags, shared with every logged event that needs them for filtering, so that
    /// logging an event costs a reference count rather than a copy of the tags.
    tags: Arc<[String]>,
    /// Log sequences of the story's events that retention has not evicted, oldest first. Equal in
    /// length to `state.version` while the whole history is retained.
    retained: VecDeque<u64>,
    /// The encoded size of `state.facts` and of `state.context` as a story carries them, kept up
    /// to date one fact or note at a time, so that the story's size is known without measuring
    /// it whole under the write lock (1.3 ms for a 3 MiB story in a debug build).
    facts_bytes: usize,
    /// See `facts_bytes`.
    context_bytes: usize,
    /// See `facts_bytes`: `state.status_history`.
    status_bytes: usize,
    /// `state`'s encoded size: everything but facts, context and status history (at most about
    /// 12 KiB, measured after each change), plus the three above.
    encoded_len: usize,
}

impl StoryRecord {
    /// A record for `state`, measuring it once.
    fn new(id: Arc<str>, state: pb::Story, retained: VecDeque<u64>) -> Self {
        let facts_bytes = state.facts.iter().map(fact_entry_len).sum();
        let context_bytes = state.context.iter().map(note_entry_len).sum();
        let status_bytes = state.status_history.iter().map(status_history_len).sum();
        let mut record = Self {
            id,
            tags: state.tags.clone().into(),
            state: Arc::new(state),
            retained,
            facts_bytes,
            context_bytes,
            status_bytes,
            encoded_len: 0,
        };
        record.measure();
        record
    }

    /// Brings `encoded_len` up to date after a change, from `facts_bytes`, `context_bytes` and
    /// `status_bytes`.
    fn measure(&mut self) {
        // Unique by now: the change being measured made it so, or the record is new.
        let story = Arc::make_mut(&mut self.state);
        let facts = std::mem::take(&mut story.facts);
        let context = std::mem::take(&mut story.context);
        let status_history = std::mem::take(&mut story.status_history);
        let rest = story.encoded_len();
        story.facts = facts;
        story.context = context;
        story.status_history = status_history;
        self.encoded_len = rest + self.facts_bytes + self.context_bytes + self.status_bytes;
    }
}

/// Every story's current state, in id order.
#[derive(Debug, Default)]
pub struct Stories {
    /// Stories by id. A `BTreeMap` so that listing pages through ids in order.
    by_id: BTreeMap<String, StoryRecord>,
}

/// What applying an event did, as far as the log needs to know.
#[derive(Debug)]
pub struct Applied {
    /// The story's id, shared rather than copied into the logged event.
    pub story_id: Arc<str>,
    /// The tags an event of this story is filtered by: the story's tags after the event, plus
    /// those before it when the event changed them (so a subscriber to a removed tag sees the
    /// removal).
    pub tags: Arc<[String]>,
}

impl Stories {
    /// The current state of a story, if it was ever opened.
    pub fn get(&self, story_id: &str) -> Option<&pb::Story> {
        self.by_id.get(story_id).map(|record| &*record.state)
    }

    /// The current state of a story, shared: cloning it costs a reference count.
    pub fn shared(&self, story_id: &str) -> Option<&Arc<pb::Story>> {
        self.by_id.get(story_id).map(|record| &record.state)
    }

    /// The story's version: how many of its events have been applied (0 for no story).
    pub fn version(&self, story_id: &str) -> u64 {
        self.get(story_id).map_or(0, |story| story.version)
    }

    /// The story's current tags (empty for no story).
    pub fn tags(&self, story_id: &str) -> &[String] {
        self.by_id.get(story_id).map_or(&[], |record| &record.tags)
    }

    /// Stories with an id greater than `after`, in id order, shared: cloning one costs a
    /// reference count.
    pub fn after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Arc<pb::Story>> + 'a {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = if after.is_empty() {
            Unbounded
        } else {
            Excluded(after.to_owned())
        };
        self.by_id
            .range((start, Unbounded))
            .map(|(_, record)| &record.state)
    }

    /// Every story, in id order, shared: cloning one costs a reference count.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<pb::Story>> {
        self.by_id.values().map(|record| &record.state)
    }

    /// The log sequences of a story's first `version` events, when all of them are still
    /// retained; `None` when retention has evicted part of that history.
    pub fn history(&self, story_id: &str, version: u64) -> Option<Vec<u64>> {
        let record = self.by_id.get(story_id)?;
        let evicted = record.state.version - record.retained.len() as u64;
        (evicted == 0).then(|| {
            let count = usize::try_from(version).unwrap_or(usize::MAX);
            record.retained.iter().take(count).copied().collect()
        })
    }

    /// The log sequences of a story's newest `max` events that retention has not evicted, oldest
    /// first.
    pub fn newest_retained(&self, story_id: &str, max: usize) -> Vec<u64> {
        self.by_id.get(story_id).map_or_else(Vec::new, |record| {
            let skip = record.retained.len().saturating_sub(max);
            record.retained.iter().skip(skip).copied().collect()
        })
    }

    /// The story's id as logged events share it.
    pub fn shared_id(&self, story_id: &str) -> Option<Arc<str>> {
        self.by_id.get(story_id).map(|record| record.id.clone())
    }

    /// Puts back stories from a snapshot, with no history retained yet (see
    /// [`Self::note_retained`]).
    pub fn restore(&mut self, stories: impl IntoIterator<Item = pb::Story>) {
        for state in stories {
            let record = StoryRecord::new(state.id.as_str().into(), state, VecDeque::new());
            self.by_id.insert(record.state.id.clone(), record);
        }
    }

    /// Notes that the log holds `sequence`, an event of `story_id` already folded into its state
    /// (it came with a snapshot).
    pub fn note_retained(&mut self, story_id: &str, sequence: u64) {
        if let Some(record) = self.by_id.get_mut(story_id) {
            record.retained.push_back(sequence);
        }
    }

    /// Forgets that the oldest retained event of `story_id` is in the log: retention evicted it.
    /// The story's state is kept.
    pub fn forget_oldest(&mut self, story_id: &str) {
        if let Some(record) = self.by_id.get_mut(story_id) {
            record.retained.pop_front();
        }
    }

    /// Checks `event` against the story rules and, when it passes, applies it. On error nothing
    /// changes. The caller has already set `event.sequence` and `event.story_version`.
    pub fn apply(&mut self, event: &pb::UpdateEvent) -> Result<Applied, StoryError> {
        let kind = event.kind().ok_or(StoryError::NoChange)?;
        let story_id = &event.story_id;

        if let Kind::StoryOpened(opened) = kind {
            if self.by_id.contains_key(story_id) {
                return Err(StoryError::AlreadyOpened {
                    story_id: story_id.clone(),
                });
            }
            let state = pb::Story {
                id: story_id.clone(),
                headline: opened.headline.clone(),
                summary: opened.summary.clone(),
                status: pb::StoryStatus::Developing.into(),
                tags: opened.tags.clone(),
                facts: Vec::new(),
                version: event.story_version,
                last_sequence: event.sequence,
                created_at: event.occurred_at,
                updated_at: event.occurred_at,
                context: Vec::new(),
                status_history: Vec::new(),
                language: opened.language.clone(),
            };
            let id: Arc<str> = story_id.as_str().into();
            let record = StoryRecord::new(id.clone(), state, VecDeque::from([event.sequence]));
            let tags = record.tags.clone();
            self.by_id.insert(story_id.clone(), record);
            return Ok(Applied { story_id: id, tags });
        }

        let record = self
            .by_id
            .get_mut(story_id)
            .ok_or_else(|| StoryError::NotFound {
                story_id: story_id.clone(),
            })?;
        check(&record.state, kind)?;

        let filter_tags = filter_tags(&record.tags, kind);
        let revision = revision(&record.state, kind, event);
        let story = Arc::make_mut(&mut record.state);
        match kind {
            Kind::StoryOpened(_) => unreachable!("handled above"),
            Kind::FactReported(reported) => {
                let fact = pb::Fact {
                    id: reported.fact_id.clone(),
                    statement: reported.statement.clone(),
                    status: pb::FactStatus::Reported.into(),
                    attributions: reported.attributions.clone(),
                    reported_at: event.occurred_at,
                    updated_at: event.occurred_at,
                    history: Vec::new(),
                };
                record.facts_bytes += fact_entry_len(&fact);
                story.facts.push(fact);
            }
            Kind::FactStatusChanged(changed) => {
                let fact = fact_mut(story, &changed.fact_id);
                let before = fact_entry_len(fact);
                fact.status = changed.status;
                fact.attributions
                    .extend(changed.attributions.iter().cloned());
                fact.history.extend(revision.and_then(Revision::of_fact));
                fact.updated_at = event.occurred_at;
                record.facts_bytes = record.facts_bytes - before + fact_entry_len(fact);
            }
            Kind::FactCorrected(corrected) => {
                let fact = fact_mut(story, &corrected.fact_id);
                let before = fact_entry_len(fact);
                fact.statement.clone_from(&corrected.statement);
                fact.history.extend(revision.and_then(Revision::of_fact));
                fact.updated_at = event.occurred_at;
                record.facts_bytes = record.facts_bytes - before + fact_entry_len(fact);
            }
            Kind::StoryRevised(revised) => {
                if let Some(headline) = &revised.headline {
                    story.headline.clone_from(headline);
                }
                if let Some(summary) = &revised.summary {
                    story.summary.clone_from(summary);
                }
                if let Some(list) = &revised.tags {
                    story.tags.clone_from(&list.tags);
                    record.tags = list.tags.clone().into();
                }
                if let Some(language) = &revised.language {
                    story.language.clone_from(language);
                }
            }
            Kind::StoryStatusChanged(changed) => {
                story.status = changed.status;
                if let Some(Revision::Story(revision)) = revision {
                    record.status_bytes += status_history_len(&revision);
                    story.status_history.push(revision);
                }
            }
            Kind::ContextAdded(added) => {
                let note = pb::ContextNote {
                    text: added.text.clone(),
                    attributions: added.attributions.clone(),
                    added_at: event.occurred_at,
                };
                record.context_bytes += note_entry_len(&note);
                story.context.push(note);
            }
        }
        story.version = event.story_version;
        story.last_sequence = event.sequence;
        story.updated_at = event.occurred_at;
        record.retained.push_back(event.sequence);
        record.measure();
        Ok(Applied {
            story_id: record.id.clone(),
            tags: filter_tags,
        })
    }
}

/// The tags a change to a story tagged `before` is filtered by: the story's tags after it, plus
/// those before it when it changes them (so a subscriber to a removed tag sees the removal).
fn filter_tags(before: &Arc<[String]>, kind: &Kind) -> Arc<[String]> {
    match kind {
        Kind::StoryRevised(pb::StoryRevised {
            tags: Some(list), ..
        }) => {
            let mut union: Vec<String> = list.tags.clone();
            union.extend(before.iter().filter(|t| !list.tags.contains(t)).cloned());
            union.into()
        }
        _ => before.clone(),
    }
}

/// What a change records in a story's history.
#[derive(Debug)]
enum Revision {
    /// A fact's status change or correction, kept in the fact.
    Fact(pb::FactRevision),
    /// A status change of the story, kept in the story.
    Story(pb::StoryStatusRevision),
}

impl Revision {
    fn of_fact(self) -> Option<pb::FactRevision> {
        match self {
            Self::Fact(revision) => Some(revision),
            Self::Story(_) => None,
        }
    }
}

/// The history entry `kind`, applied to `story` as `event`, leaves: for a fact's status change
/// or correction, and for a change of the story's status; `None` for every other change. The
/// change has passed [`check`].
fn revision(story: &pb::Story, kind: &Kind, event: &pb::UpdateEvent) -> Option<Revision> {
    use pb::fact_revision::Change;
    let fact_revision = |change, reason: &str| {
        Revision::Fact(pb::FactRevision {
            change: Some(change),
            reason: reason.to_owned(),
            sequence: event.sequence,
            occurred_at: event.occurred_at,
        })
    };
    match kind {
        Kind::FactStatusChanged(changed) => Some(fact_revision(
            Change::Status(pb::FactStatusRevision {
                from: fact(story, &changed.fact_id).status,
                to: changed.status,
            }),
            &changed.note,
        )),
        Kind::FactCorrected(corrected) => Some(fact_revision(
            Change::Statement(pb::FactStatementRevision {
                from: fact(story, &corrected.fact_id).statement.clone(),
                to: corrected.statement.clone(),
            }),
            &corrected.reason,
        )),
        Kind::StoryStatusChanged(changed) => Some(Revision::Story(pb::StoryStatusRevision {
            from: story.status,
            to: changed.status,
            reason: changed.reason.clone(),
            sequence: event.sequence,
            occurred_at: event.occurred_at,
        })),
        _ => None,
    }
}

/// The rules for a change to an existing story, checked before anything is mutated.
fn check(story: &pb::Story, kind: &Kind) -> Result<(), StoryError> {
    if story.status == i32::from(pb::StoryStatus::Withdrawn) {
        return Err(StoryError::Withdrawn {
            story_id: story.id.clone(),
        });
    }
    let has_fact = |fact_id: &str| story.facts.iter().any(|fact| fact.id == fact_id);
    let unknown = |fact_id: &str| StoryError::UnknownFact {
        story_id: story.id.clone(),
        fact_id: fact_id.to_owned(),
    };
    match kind {
        Kind::FactReported(reported) if has_fact(&reported.fact_id) => {
            Err(StoryError::FactAlreadyReported {
                story_id: story.id.clone(),
                fact_id: reported.fact_id.clone(),
            })
        }
        Kind::FactStatusChanged(changed) if !has_fact(&changed.fact_id) => {
            Err(unknown(&changed.fact_id))
        }
        Kind::FactCorrected(corrected) if !has_fact(&corrected.fact_id) => {
            Err(unknown(&corrected.fact_id))
        }
        _ => Ok(()),
    }
}

/// The fact with `fact_id`, which [`check`] has already proved exists.
fn fact<'a>(story: &'a pb::Story, fact_id: &str) -> &'a pb::Fact {
    story
        .facts
        .iter()
        .find(|fact| fact.id == fact_id)
        .expect("checked: the fact exists")
}

/// The fact with `fact_id`, which [`check`] has already proved exists.
fn fact_mut<'a>(story: &'a mut pb::Story, fact_id: &str) -> &'a mut pb::Fact {
    story
        .facts
        .iter_mut()
        .find(|fact| fact.id == fact_id)
        .expect("checked: the fact exists")
}

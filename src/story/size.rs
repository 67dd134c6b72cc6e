//! What one story may hold: each change is measured against the [`StoryLimits`] before it is
//! applied, from a size kept up to date one fact or note at a time, so that a large story is never
//! encoded whole under the log's write lock.

use prost::{Message, encoding};

use std::sync::Arc;

use super::{Applied, Revision, Stories, StoryError, check, fact, filter_tags, revision};
use crate::{
    limits::StoryLimits,
    pb::{self, change::Kind},
};

/// The field numbers of `Story.facts`, `Story.context`, `Story.status_history`,
/// `Fact.attributions` and `Fact.history` in story.proto: the bytes an entry of a repeated field
/// takes include its key. The unit tests below compare the tracked size with the encoded one, so a
/// renumbering cannot go unnoticed.
const FACTS_FIELD: u32 = 6;
const CONTEXT_FIELD: u32 = 11;
const STATUS_HISTORY_FIELD: u32 = 12;
const ATTRIBUTIONS_FIELD: u32 = 4;
const FACT_HISTORY_FIELD: u32 = 7;

/// The most an accepted change adds to a story besides the content it carries: a new fact's
/// status and two timestamps, a new entry's key and length, and the story's version, sequence and
/// `updated_at` (and a changed fact's `updated_at`) growing by a few bytes. About 70 bytes at
/// worst; the margin costs nothing.
const MAX_BOOKKEEPING_BYTES: usize = 128;

/// The bytes a fact takes in a story: its key, its length, itself.
pub(super) fn fact_entry_len(fact: &pb::Fact) -> usize {
    encoding::message::encoded_len(FACTS_FIELD, fact)
}

/// The bytes a context note takes in a story.
pub(super) fn note_entry_len(note: &pb::ContextNote) -> usize {
    encoding::message::encoded_len(CONTEXT_FIELD, note)
}

/// The bytes a story status change takes in a story's history.
pub(super) fn status_history_len(revision: &pb::StoryStatusRevision) -> usize {
    encoding::message::encoded_len(STATUS_HISTORY_FIELD, revision)
}

/// The bytes the history entry a change leaves takes in its story.
fn revision_len(revision: &Revision) -> usize {
    match revision {
        Revision::Fact(revision) => encoding::message::encoded_len(FACT_HISTORY_FIELD, revision),
        Revision::Story(revision) => status_history_len(revision),
    }
}

/// The history of corrections and status changes may take a story this far past
/// `--max-story-bytes`: a story full of facts can still be corrected, and its status changed,
/// for a while, and is still bounded.
pub fn with_history_reserve(max_story_bytes: usize) -> usize {
    max_story_bytes.saturating_add(max_story_bytes / 4)
}

/// The bytes a text takes as a field: its key, its length, itself. (Proto3 leaves an empty text
/// out; the two bytes that makes this overcount are within `MAX_BOOKKEEPING_BYTES`.)
fn text_len(text: &str) -> usize {
    1 + encoding::encoded_len_varint(text.len() as u64) + text.len()
}

impl Stories {
    /// Applies `event` as [`Self::apply`] does, after refusing a change that would take its story
    /// past `limits`. For new requests only: events already in the log (replayed at start-up,
    /// folded again for `as_of_version`) go through `apply`, so that lowering a limit never
    /// refuses what was once accepted.
    ///
    /// A change the story rules refuse is refused for that reason, not for a limit. The story's
    /// content (facts, attributions, notes, wording) is held to `limits.max_story_bytes`. The
    /// history a correction or status change leaves is held to the limit and a reserve of a
    /// quarter more (`with_history_reserve`), so that a story full of facts can still be
    /// corrected and concluded; a withdrawal, which happens once and ends the story, is never
    /// refused.
    pub fn apply_within(
        &mut self,
        event: &pb::UpdateEvent,
        limits: &StoryLimits,
    ) -> Result<Applied, StoryError> {
        self.check_limits(event, limits)?;
        self.apply(event)
    }

    /// Checks `event` as [`Self::apply_within`] would, without applying it (nor copying its
    /// story): the error it would give, or the tags it would be filtered by ([`Applied::tags`]).
    pub fn check_within(
        &self,
        event: &pb::UpdateEvent,
        limits: &StoryLimits,
    ) -> Result<Arc<[String]>, StoryError> {
        let kind = event.kind().ok_or(StoryError::NoChange)?;
        let story_id = &event.story_id;
        match (kind, self.by_id.get(story_id)) {
            (Kind::StoryOpened(_), Some(_)) => Err(StoryError::AlreadyOpened {
                story_id: story_id.clone(),
            }),
            (Kind::StoryOpened(opened), None) => {
                self.check_limits(event, limits)?;
                Ok(opened.tags.clone().into())
            }
            (_, None) => Err(StoryError::NotFound {
                story_id: story_id.clone(),
            }),
            (kind, Some(record)) => {
                check(&record.state, kind)?;
                self.check_limits(event, limits)?;
                Ok(filter_tags(&record.tags, kind))
            }
        }
    }

    /// Refuses `event` if it would take its story past `limits`; leaves everything else to `apply`.
    fn check_limits(
        &self,
        event: &pb::UpdateEvent,
        limits: &StoryLimits,
    ) -> Result<(), StoryError> {
        let Some(kind) = event.kind() else {
            return Ok(());
        };
        let story_id = &event.story_id;
        let (size, content, history) = match (kind, self.by_id.get(story_id)) {
            (Kind::StoryOpened(opened), None) => (0, opened.encoded_len(), 0),
            (Kind::StoryOpened(_), Some(_)) | (_, None) => return Ok(()),
            (_, Some(record)) => {
                if check(&record.state, kind).is_err() {
                    return Ok(());
                }
                check_counts(&record.state, kind, limits)?;
                let history = revision(&record.state, kind, event).map_or(0, |r| revision_len(&r));
                (
                    record.encoded_len,
                    added_content(&record.state, kind),
                    history,
                )
            }
        };
        let added = content + MAX_BOOKKEEPING_BYTES;
        if content > 0 && size + added > limits.max_story_bytes {
            return Err(StoryError::TooLarge {
                story_id: story_id.clone(),
                size,
                added,
                max: limits.max_story_bytes,
            });
        }
        let withdrawal = matches!(kind, Kind::StoryStatusChanged(changed)
            if changed.status == i32::from(pb::StoryStatus::Withdrawn));
        let added = added + history;
        let max = with_history_reserve(limits.max_story_bytes);
        if history > 0 && !withdrawal && size + added > max {
            return Err(StoryError::HistoryFull {
                story_id: story_id.clone(),
                size,
                added,
                max,
            });
        }
        Ok(())
    }
}

/// Refuses a change that would give `story` more facts or notes, or one of its facts more
/// attributions, than `limits` allow.
fn check_counts(story: &pb::Story, kind: &Kind, limits: &StoryLimits) -> Result<(), StoryError> {
    let too_many_attributions = |fact_id: &str, count: usize| StoryError::TooManyAttributions {
        story_id: story.id.clone(),
        fact_id: fact_id.to_owned(),
        count,
        max: limits.max_attributions_per_fact,
    };
    match kind {
        Kind::FactReported(_) if story.facts.len() >= limits.max_facts_per_story => {
            Err(StoryError::TooManyFacts {
                story_id: story.id.clone(),
                count: story.facts.len(),
                max: limits.max_facts_per_story,
            })
        }
        Kind::FactReported(reported)
            if reported.attributions.len() > limits.max_attributions_per_fact =>
        {
            Err(too_many_attributions(
                &reported.fact_id,
                reported.attributions.len(),
            ))
        }
        Kind::FactStatusChanged(changed) if !changed.attributions.is_empty() => {
            let fact = fact(story, &changed.fact_id);
            let count = fact.attributions.len() + changed.attributions.len();
            if count > limits.max_attributions_per_fact {
                Err(too_many_attributions(&changed.fact_id, count))
            } else {
                Ok(())
            }
        }
        Kind::ContextAdded(_) if story.context.len() >= limits.max_notes_per_story => {
            Err(StoryError::TooManyNotes {
                story_id: story.id.clone(),
                count: story.context.len(),
                max: limits.max_notes_per_story,
            })
        }
        _ => Ok(()),
    }
}

/// The most content `kind` adds to `story`, in encoded bytes, beyond what it replaces; 0 for a
/// change that adds none. What applying it adds besides is at most `MAX_BOOKKEEPING_BYTES`.
fn added_content(story: &pb::Story, kind: &Kind) -> usize {
    match kind {
        Kind::StoryOpened(opened) => opened.encoded_len(),
        // A fact carries what its report does: the id, the statement, the attributions.
        Kind::FactReported(reported) => reported.encoded_len(),
        Kind::FactStatusChanged(changed) => {
            encoding::message::encoded_len_repeated(ATTRIBUTIONS_FIELD, &changed.attributions)
        }
        Kind::FactCorrected(corrected) => text_len(&corrected.statement)
            .saturating_sub(text_len(&fact(story, &corrected.fact_id).statement)),
        Kind::StoryRevised(revised) => {
            let mut after = 0;
            let mut before = 0;
            if let Some(headline) = &revised.headline {
                after += text_len(headline);
                before += text_len(&story.headline);
            }
            if let Some(summary) = &revised.summary {
                after += text_len(summary);
                before += text_len(&story.summary);
            }
            if let Some(list) = &revised.tags {
                after += list.tags.iter().map(|tag| text_len(tag)).sum::<usize>();
                before += story.tags.iter().map(|tag| text_len(tag)).sum::<usize>();
            }
            after.saturating_sub(before)
        }
        Kind::StoryStatusChanged(_) => 0,
        // A note carries what its change does: the text and the attributions.
        Kind::ContextAdded(added) => added.encoded_len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of `story` at `version` (also its sequence) with `kind`, at a time whose encoding
    /// grows with the version, as timestamps do.
    fn event(version: u64, kind: Kind) -> pb::UpdateEvent {
        pb::UpdateEvent {
            sequence: version,
            story_id: "story".to_owned(),
            story_version: version,
            occurred_at: Some(pbjson_types::Timestamp {
                seconds: 1_546_502_400 + i64::try_from(version).expect("small"),
                nanos: i32::try_from(version * 999_999).expect("small"),
            }),
            change: Some(pb::Change { kind: Some(kind) }),
            ..Default::default()
        }
    }

    fn attribution(name: &str) -> pb::Attribution {
        pb::Attribution {
            source: Some(pb::Source {
                name: name.to_owned(),
                kind: pb::SourceKind::Person.into(),
                role: "spokesperson".to_owned(),
                url: "https://example.com/statement".to_owned(),
            }),
            stance: pb::Stance::Asserts.into(),
            quote: "x".repeat(300),
            ..Default::default()
        }
    }

    /// One change of every kind, with content of different sizes.
    fn every_kind_of_change() -> Vec<Kind> {
        vec![
            Kind::StoryOpened(pb::StoryOpened {
                headline: "Opened".to_owned(),
                summary: String::new(),
                tags: vec!["italy".to_owned()],
                language: "en".to_owned(),
            }),
            Kind::FactReported(pb::FactReported {
                fact_id: "fact".to_owned(),
                statement: "s".repeat(200),
                attributions: vec![attribution("a")],
            }),
            Kind::FactStatusChanged(pb::FactStatusChanged {
                fact_id: "fact".to_owned(),
                status: pb::FactStatus::Confirmed.into(),
                attributions: vec![attribution("b"), attribution("c")],
                note: "n".repeat(500),
            }),
            Kind::FactStatusChanged(pb::FactStatusChanged {
                fact_id: "fact".to_owned(),
                status: pb::FactStatus::Denied.into(),
                ..Default::default()
            }),
            Kind::FactCorrected(pb::FactCorrected {
                fact_id: "fact".to_owned(),
                statement: "t".repeat(1_000),
                reason: String::new(),
            }),
            Kind::FactCorrected(pb::FactCorrected {
                fact_id: "fact".to_owned(),
                statement: "short".to_owned(),
                reason: String::new(),
            }),
            Kind::StoryRevised(pb::StoryRevised {
                headline: Some("h".repeat(200)),
                summary: Some("m".repeat(2_000)),
                tags: Some(pb::TagList {
                    tags: vec!["italy".to_owned(), "north-korea".to_owned()],
                }),
                language: Some("en-GB".to_owned()),
            }),
            Kind::StoryRevised(pb::StoryRevised {
                summary: Some(String::new()),
                ..Default::default()
            }),
            Kind::ContextAdded(pb::ContextAdded {
                text: "c".repeat(700),
                attributions: vec![attribution("d")],
            }),
            Kind::StoryStatusChanged(pb::StoryStatusChanged {
                status: pb::StoryStatus::Concluded.into(),
                reason: String::new(),
            }),
        ]
    }

    #[test]
    fn the_tracked_size_is_the_encoded_size_after_every_kind_of_change() {
        let mut stories = Stories::default();
        for (n, kind) in every_kind_of_change().into_iter().enumerate() {
            stories.apply(&event(n as u64 + 1, kind)).expect("applies");
            let record = &stories.by_id["story"];
            assert_eq!(record.encoded_len, record.state.encoded_len(), "change {n}");
        }
        // Restored from a snapshot, a story is measured again.
        let mut restored = Stories::default();
        restored.restore(stories.iter().map(|story| (**story).clone()));
        let record = &restored.by_id["story"];
        assert_eq!(record.encoded_len, record.state.encoded_len());
    }

    #[test]
    fn no_change_grows_a_story_by_more_than_its_content_history_and_the_bookkeeping() {
        let mut stories = Stories::default();
        for (n, kind) in every_kind_of_change().into_iter().enumerate() {
            let event = event(n as u64 + 1, kind);
            let kind = event.kind().expect("a change");
            let before = stories.by_id.get("story").map_or(0, |r| r.encoded_len);
            let (content, history) = match stories.get("story") {
                Some(story) => (
                    added_content(story, kind),
                    revision(story, kind, &event).map_or(0, |r| revision_len(&r)),
                ),
                None => (added_content(&pb::Story::default(), kind), 0),
            };
            stories.apply(&event).expect("applies");
            let after = stories.by_id["story"].encoded_len;
            assert!(
                after <= before + content + history + MAX_BOOKKEEPING_BYTES,
                "change {n}: {before} + {content} + {history} -> {after}"
            );
        }
    }
}

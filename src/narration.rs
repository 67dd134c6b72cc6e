//! How updates and stories read for people, in the CLI and on the live page: one line per update, a
//! short block per story.
//!
//! [`Narrator`] remembers each fact's and story's status from what it has printed, so that a
//! status change reads as `REPORTED -> DENIED`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pbjson_types::Timestamp;

use crate::pb::{self, change::Kind, fact_revision::Change};

/// A timestamp as `2019-01-03 10:00:00Z`, or `-` when absent.
pub fn time(timestamp: Option<&Timestamp>) -> String {
    timestamp
        .and_then(|ts| DateTime::<Utc>::try_from(*ts).ok())
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
}

/// An enum value's name without its prefix: `FACT_STATUS_DENIED` reads `DENIED`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn fact_status(value: i32) -> String {
    pb::FactStatus::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "FACT_STATUS_"),
    )
}

fn story_status(value: i32) -> String {
    pb::StoryStatus::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "STORY_STATUS_"),
    )
}

fn stance(value: i32) -> String {
    pb::Stance::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| {
            short(s.as_str_name(), "STANCE_")
                .to_lowercase()
                .replace('_', " ")
        },
    )
}

/// `Enzo Moavero Milanesi, foreign minister of Italy`.
fn source(source: &pb::Source) -> String {
    match (source.name.as_str(), source.role.as_str()) {
        (name, "") => name.to_owned(),
        ("", role) => role.to_owned(),
        (name, role) => format!("{name}, {role}"),
    }
}

/// `reportedly: an unnamed NIS official via Kim Min-ki, South Korean lawmaker`.
fn attribution(attribution: &pb::Attribution) -> String {
    let mut text = attribution.source.as_ref().map(source).unwrap_or_default();
    for via in &attribution.via {
        text.push_str(" via ");
        text.push_str(&source(via));
    }
    if attribution.stance != i32::from(pb::Stance::Asserts) {
        text = format!("{text} {}", stance(attribution.stance));
    }
    if !attribution.hedge.is_empty() {
        text = format!("{}: {text}", attribution.hedge);
    }
    text
}

/// ` (a; b)`, or nothing without attributions.
fn attributions(attributions: &[pb::Attribution]) -> String {
    if attributions.is_empty() {
        return String::new();
    }
    let all: Vec<String> = attributions.iter().map(attribution).collect();
    format!(" ({})", all.join("; "))
}

/// Remembers statuses from what it has printed, to show changes as `OLD -> NEW`.
#[derive(Debug, Default)]
pub struct Narrator {
    /// The last status seen of each fact, by (story id, fact id).
    facts: HashMap<(String, String), i32>,
    /// The last status seen of each story.
    stories: HashMap<String, i32>,
}

impl Narrator {
    /// One line for an update: sequence, time, story, headline, what changed, and who
    /// published it.
    pub fn event(&mut self, event: &pb::UpdateEvent) -> String {
        let what = event
            .kind()
            .map(|kind| self.change(&event.story_id, kind))
            .unwrap_or_default();
        let by = if event.published_by.is_empty() {
            String::new()
        } else {
            format!("  by {}", event.published_by)
        };
        format!(
            "#{:<5} {}  {} v{}  {}  [{what}]{by}",
            event.sequence,
            time(event.occurred_at.as_ref()),
            event.story_id,
            event.story_version,
            event.headline,
        )
    }

    /// What a change did, in words (`fact x: REPORTED -> DENIED (...)`).
    pub fn change(&mut self, story_id: &str, kind: &Kind) -> String {
        match kind {
            Kind::StoryOpened(c) => {
                self.stories
                    .insert(story_id.to_owned(), pb::StoryStatus::Developing.into());
                format!(
                    "story opened: {:?}; tags: {}",
                    c.headline,
                    c.tags.join(", ")
                )
            }
            Kind::FactReported(c) => {
                let key = (story_id.to_owned(), c.fact_id.clone());
                self.facts.insert(key, pb::FactStatus::Reported.into());
                format!(
                    "fact {} reported: {:?}{}",
                    c.fact_id,
                    c.statement,
                    attributions(&c.attributions)
                )
            }
            Kind::FactStatusChanged(c) => {
                let key = (story_id.to_owned(), c.fact_id.clone());
                let before = self
                    .facts
                    .insert(key, c.status)
                    .map(|old| format!("{} -> ", fact_status(old)))
                    .unwrap_or_default();
                format!(
                    "fact {}: {before}{}{}",
                    c.fact_id,
                    fact_status(c.status),
                    attributions(&c.attributions)
                )
            }
            Kind::FactCorrected(c) => {
                let reason = reason(&c.reason);
                format!("fact {} corrected: {:?}{reason}", c.fact_id, c.statement)
            }
            Kind::StoryRevised(c) => {
                let mut parts = Vec::new();
                if let Some(headline) = &c.headline {
                    parts.push(format!("headline {headline:?}"));
                }
                if c.summary.is_some() {
                    parts.push("summary".to_owned());
                }
                if let Some(list) = &c.tags {
                    parts.push(format!("tags: {}", list.tags.join(", ")));
                }
                if let Some(language) = &c.language {
                    parts.push(format!("language {language:?}"));
                }
                format!("story revised: {}", parts.join("; "))
            }
            Kind::StoryStatusChanged(c) => {
                let before = self
                    .stories
                    .insert(story_id.to_owned(), c.status)
                    .map(|old| format!("{} -> ", story_status(old)))
                    .unwrap_or_default();
                let reason = reason(&c.reason);
                format!("story: {before}{}{reason}", story_status(c.status))
            }
            Kind::ContextAdded(c) => {
                format!("context: {:?}{}", c.text, attributions(&c.attributions))
            }
        }
    }

    /// A story as a short block, and its statuses remembered for the events that follow.
    pub fn story(&mut self, story: &pb::Story) -> String {
        self.stories.insert(story.id.clone(), story.status);
        for fact in &story.facts {
            let key = (story.id.clone(), fact.id.clone());
            self.facts.insert(key, fact.status);
        }
        story_block(story)
    }
}

/// A one-line summary of a story, as `stories` lists it.
pub fn story_line(story: &pb::Story) -> String {
    format!(
        "{}  v{}  {}  {}  [{}]",
        story.id,
        story.version,
        story_status(story.status),
        story.headline,
        story.tags.join(", ")
    )
}

/// ` (reason)`, or nothing without one.
fn reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

/// A story with its facts and context, as `story` shows it.
pub fn story_block(story: &pb::Story) -> String {
    let mut out = format!(
        "{}\n  updated {} (last sequence #{})\n",
        story_line(story),
        time(story.updated_at.as_ref()),
        story.last_sequence
    );
    if !story.summary.is_empty() {
        out.push_str(&format!("  {}\n", story.summary));
    }
    if !story.language.is_empty() {
        out.push_str(&format!("  language: {}\n", story.language));
    }
    for revision in &story.status_history {
        out.push_str(&format!(
            "  #{} story: {} -> {}{}\n",
            revision.sequence,
            story_status(revision.from),
            story_status(revision.to),
            reason(&revision.reason)
        ));
    }
    for fact in &story.facts {
        out.push_str(&format!(
            "  fact {} [{}]: {}{}\n",
            fact.id,
            fact_status(fact.status),
            fact.statement,
            attributions(&fact.attributions)
        ));
        for revision in &fact.history {
            let what = match &revision.change {
                Some(Change::Status(status)) => {
                    format!("{} -> {}", fact_status(status.from), fact_status(status.to))
                }
                Some(Change::Statement(statement)) => {
                    format!("corrected from {:?}", statement.from)
                }
                None => continue,
            };
            out.push_str(&format!(
                "    #{} {what}{}\n",
                revision.sequence,
                reason(&revision.reason)
            ));
        }
    }
    for note in &story.context {
        out.push_str(&format!(
            "  context: {}{}\n",
            note.text,
            attributions(&note.attributions)
        ));
    }
    out.pop();
    out
}

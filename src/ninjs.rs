//! A story as an IPTC ninjs 2.1 news item: what `storywire story ID --ninjs` prints, and what an
//! HTTP endpoint can serve by calling [`to_ninjs`].
//!
//! Why ninjs 2.1 and not 3.x: IPTC shaped the 2.x line so that it maps one to one onto Protocol
//! Buffers (it replaced 1.x's pattern-named properties with fixed names, and IPTC publishes a
//! `.proto` made from the 2.x schema), and storywire is a Protocol Buffers service, so a ninjs
//! message could one day cross the wire as one. 3.x is IPTC's line for new work, but it renames
//! every property to camelCase (`contactInfo`, `sizeInBytes`) and keeps changing; moving to it is
//! a rename of the keys below and of `schemas/ninjs-2.1.json`. docs/ninjs.md has the mapping.
//!
//! The export is a pure function of the story: nothing here reads the log or the clock, so the
//! same state always exports to the same item. The story's state keeps its corrections and status
//! changes, so the editorial note is whole whatever the log still retains.

use chrono::{DateTime, SecondsFormat, Utc};
use pbjson_types::Timestamp;
use serde_json::{Map, Value, json};

use crate::pb::{self, fact_revision::Change};

/// The ninjs version the export follows, as its `standard.version` says.
pub const NINJS_VERSION: &str = "2.1";

/// IPTC's JSON Schema for ninjs 2.1: the `$id` of `ninjs-schema_2.1.json`, given in every export's
/// `standard.schema` so a receiver knows what to validate against.
pub const NINJS_SCHEMA: &str = "http://www.iptc.org/std/ninjs/ninjs-schema_2.1.json";

/// The prefix of every story's `uri`: the story id after it makes the item's global identifier.
/// A URN because ninjs requires a URI and a story has no URL of its own; one story keeps one
/// `uri` through all its versions, as ninjs asks (the version is in `version`).
pub const URI_PREFIX: &str = "urn:storywire:story:";

/// The ninjs item for `story` (its current state, or a past version from GetStory's
/// `as_of_version`, whose history ends at that version).
pub fn to_ninjs(story: &pb::Story) -> Value {
    let mut item = Map::new();
    item.insert("uri".into(), json!(story_uri(&story.id)));
    item.insert("type".into(), json!("text"));
    item.insert("representationtype".into(), json!("full"));
    // ninjs 2.x types version as a string; storywire's version counts the story's events, so it
    // grows with every change.
    item.insert("version".into(), json!(story.version.to_string()));
    if let Some(created) = rfc3339(story.created_at.as_ref()) {
        item.insert("firstcreated".into(), json!(created));
    }
    if let Some(updated) = rfc3339(story.updated_at.as_ref()) {
        item.insert("versioncreated".into(), json!(updated));
    }
    item.insert("pubstatus".into(), json!(pubstatus(story)));
    if !story.language.is_empty() {
        item.insert("language".into(), json!(story.language));
    }
    item.insert(
        "headlines".into(),
        json!([{ "role": "main", "value": story.headline }]),
    );
    if !story.summary.is_empty() {
        item.insert(
            "descriptions".into(),
            json!([{ "role": "summary", "value": story.summary }]),
        );
    }
    item.insert(
        "bodies".into(),
        json!([{ "role": "main", "contenttype": "text/plain", "value": body(story) }]),
    );
    if !story.tags.is_empty() {
        let subjects: Vec<Value> = story
            .tags
            .iter()
            .map(|tag| json!({ "literal": tag }))
            .collect();
        item.insert("subjects".into(), Value::Array(subjects));
    }
    let sources = infosources(story);
    if !sources.is_empty() {
        item.insert("infosources".into(), Value::Array(sources));
    }
    let note = ednote(story);
    if !note.is_empty() {
        item.insert("ednote".into(), json!(note));
    }
    item.insert(
        "standard".into(),
        json!({ "name": "ninjs", "version": NINJS_VERSION, "schema": NINJS_SCHEMA }),
    );
    Value::Object(item)
}

/// The `uri` of the story with id `story_id`. Story ids are lowercase letters, digits and '-',
/// all allowed in a URN as they are.
pub fn story_uri(story_id: &str) -> String {
    format!("{URI_PREFIX}{story_id}")
}

/// "canceled" (ninjs spells it with one "l") for a withdrawn story, which must no longer be
/// used; "usable" otherwise, concluded stories included.
fn pubstatus(story: &pb::Story) -> &'static str {
    if story.status == i32::from(pb::StoryStatus::Withdrawn) {
        "canceled"
    } else {
        "usable"
    }
}

/// A timestamp as RFC 3339 in UTC, the `date-time` format ninjs uses; `None` when absent or out
/// of range, so that the property is left out rather than wrong.
fn rfc3339(timestamp: Option<&Timestamp>) -> Option<String> {
    let time = DateTime::<Utc>::try_from(*timestamp?).ok()?;
    Some(time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The body as plain text: one paragraph a fact, in the order reported, each with the desk's
/// status so a retracted or denied claim never reads as established; then the background notes.
fn body(story: &pb::Story) -> String {
    let facts = story
        .facts
        .iter()
        .map(|fact| format!("{} [{}]", fact.statement, fact_status(fact.status)));
    let context = story
        .context
        .iter()
        .map(|note| format!("Background: {}", note.text));
    facts.chain(context).collect::<Vec<_>>().join("\n\n")
}

/// The desk's status of a fact as a word for readers: "reported", "confirmed", ...
fn fact_status(status: i32) -> String {
    let status = pb::FactStatus::try_from(status).unwrap_or_default();
    status
        .as_str_name()
        .trim_start_matches("FACT_STATUS_")
        .to_lowercase()
}

/// Every source the story cites, by facts and background alike, with every source its statements
/// came through (`via`), each once, in the order first cited, with the first `url` it was cited
/// with as its `uri`.
fn infosources(story: &pb::Story) -> Vec<Value> {
    let attributions = story
        .facts
        .iter()
        .flat_map(|fact| &fact.attributions)
        .chain(story.context.iter().flat_map(|note| &note.attributions));
    let mut sources: Vec<(String, &str)> = Vec::new();
    for attribution in attributions {
        for source in attribution.source.iter().chain(&attribution.via) {
            let name = source_name(source);
            match sources.iter_mut().find(|(known, _)| *known == name) {
                Some((_, url)) if url.is_empty() => *url = &source.url,
                Some(_) => {}
                None => sources.push((name, &source.url)),
            }
        }
    }
    sources
        .into_iter()
        .map(|(name, url)| {
            if url.is_empty() {
                json!({ "name": name })
            } else {
                json!({ "name": name, "uri": url })
            }
        })
        .collect()
}

/// How a source is named in the item: its name, and its role after a comma when it has one
/// ("Enzo Moavero Milanesi, foreign minister of Italy"). ninjs's infosource `role` is the
/// source's relation to the content, not a job title, so the title goes in the name.
fn source_name(source: &pb::Source) -> String {
    if source.role.is_empty() {
        source.name.clone()
    } else {
        format!("{}, {}", source.name, source.role)
    }
}

/// The editorial note: every correction of a fact, and the withdrawal, one a line, oldest first,
/// each with its time and the log sequence of its event. Empty when there is nothing to note.
fn ednote(story: &pb::Story) -> String {
    let corrections = story.facts.iter().flat_map(|fact| {
        fact.history.iter().filter_map(move |revision| {
            let Some(Change::Statement(statement)) = &revision.change else {
                return None;
            };
            let what = format!(
                "fact {} corrected from \"{}\" to \"{}\"",
                fact.id, statement.from, statement.to
            );
            Some((
                revision.sequence,
                revision.occurred_at,
                what,
                &revision.reason,
            ))
        })
    });
    let withdrawal = story
        .status_history
        .iter()
        .filter(|revision| revision.to == i32::from(pb::StoryStatus::Withdrawn))
        .map(|revision| {
            let what = "story withdrawn".to_owned();
            (
                revision.sequence,
                revision.occurred_at,
                what,
                &revision.reason,
            )
        });
    let mut notes: Vec<_> = corrections.chain(withdrawal).collect();
    notes.sort_by_key(|(sequence, ..)| *sequence);
    notes
        .into_iter()
        .map(|(sequence, occurred_at, what, reason)| {
            let when = rfc3339(occurred_at.as_ref()).unwrap_or_default();
            let mut line = format!("{when} (sequence {sequence}): {what}.");
            if !reason.is_empty() {
                line.push_str(&format!(" Reason: {reason}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn story(version: u64, status: pb::StoryStatus) -> pb::Story {
        pb::Story {
            id: "nk-diplomat-italy".into(),
            headline: "Ambassador goes into hiding".into(),
            status: status.into(),
            version,
            created_at: at(1_546_502_400),
            updated_at: at(1_546_506_000),
            facts: vec![pb::Fact {
                id: "jo-in-hiding".into(),
                statement: "Jo went into hiding.".into(),
                status: pb::FactStatus::Denied.into(),
                attributions: vec![pb::Attribution {
                    source: Some(pb::Source {
                        name: "an unnamed official".into(),
                        kind: pb::SourceKind::Unnamed.into(),
                        role: "NIS".into(),
                        url: String::new(),
                    }),
                    via: vec![pb::Source {
                        name: "Kim Min-ki".into(),
                        kind: pb::SourceKind::Person.into(),
                        role: String::new(),
                        url: String::new(),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn uri_comes_from_the_story_id_and_stays_through_versions() {
        let first = to_ninjs(&story(1, pb::StoryStatus::Developing));
        let later = to_ninjs(&story(9, pb::StoryStatus::Concluded));
        assert_eq!(first["uri"], "urn:storywire:story:nk-diplomat-italy");
        assert_eq!(first["uri"], later["uri"]);
    }

    #[test]
    fn version_is_a_string_that_follows_the_story_version() {
        assert_eq!(
            to_ninjs(&story(3, pb::StoryStatus::Developing))["version"],
            json!("3")
        );
        assert_eq!(
            to_ninjs(&story(4, pb::StoryStatus::Developing))["version"],
            json!("4")
        );
    }

    #[test]
    fn withdrawn_is_canceled_and_every_other_status_usable() {
        let status = |s| to_ninjs(&story(2, s))["pubstatus"].clone();
        assert_eq!(status(pb::StoryStatus::Withdrawn), "canceled");
        assert_eq!(status(pb::StoryStatus::Developing), "usable");
        assert_eq!(status(pb::StoryStatus::Concluded), "usable");
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let item = to_ninjs(&story(2, pb::StoryStatus::Developing));
        assert_eq!(item["firstcreated"], "2019-01-03T08:00:00Z");
        assert_eq!(item["versioncreated"], "2019-01-03T09:00:00Z");
    }

    #[test]
    fn body_keeps_each_facts_status_and_sources_include_the_via_chain_once() {
        let mut twice = story(2, pb::StoryStatus::Developing);
        twice.facts.push(twice.facts[0].clone());
        twice.facts[1].id = "again".into();
        let item = to_ninjs(&twice);
        assert_eq!(
            item["bodies"][0]["value"],
            "Jo went into hiding. [denied]\n\nJo went into hiding. [denied]"
        );
        assert_eq!(
            item["infosources"],
            json!([{ "name": "an unnamed official, NIS" }, { "name": "Kim Min-ki" }])
        );
    }

    #[test]
    fn sources_carry_their_url_as_uri_and_the_language_is_kept() {
        let mut story = story(2, pb::StoryStatus::Developing);
        story.language = "en-GB".into();
        story.facts[0].attributions[0].via[0].url = "https://example.com/kim".into();
        let item = to_ninjs(&story);
        assert_eq!(item["language"], "en-GB");
        assert_eq!(
            item["infosources"],
            json!([
                { "name": "an unnamed official, NIS" },
                { "name": "Kim Min-ki", "uri": "https://example.com/kim" }
            ])
        );
        assert!(to_ninjs(&story_with_history())["language"].is_null());
    }

    /// The story at version 3: a fact corrected at sequence 5, then withdrawn at sequence 6.
    fn story_with_history() -> pb::Story {
        let mut story = story(3, pb::StoryStatus::Withdrawn);
        story.facts[0].history.push(pb::FactRevision {
            change: Some(Change::Statement(pb::FactStatementRevision {
                from: "Jo went into hiding.".into(),
                to: "Jo went into hiding in November.".into(),
            })),
            reason: "the month was missing".into(),
            sequence: 5,
            occurred_at: at(1_546_506_000),
        });
        // A status change is no correction: not noted.
        story.facts[0].history.push(pb::FactRevision {
            change: Some(Change::Status(pb::FactStatusRevision {
                from: pb::FactStatus::Reported.into(),
                to: pb::FactStatus::Denied.into(),
            })),
            sequence: 4,
            ..Default::default()
        });
        story.status_history.push(pb::StoryStatusRevision {
            from: pb::StoryStatus::Developing.into(),
            to: pb::StoryStatus::Withdrawn.into(),
            reason: String::new(),
            sequence: 6,
            occurred_at: at(1_546_509_600),
        });
        story
    }

    #[test]
    fn ednote_lists_corrections_and_the_withdrawal_from_the_story_s_history() {
        assert_eq!(
            to_ninjs(&story_with_history())["ednote"],
            "2019-01-03T09:00:00Z (sequence 5): fact jo-in-hiding corrected from \
             \"Jo went into hiding.\" to \"Jo went into hiding in November.\". \
             Reason: the month was missing\n\
             2019-01-03T10:00:00Z (sequence 6): story withdrawn."
        );
        assert!(to_ninjs(&story(1, pb::StoryStatus::Developing))["ednote"].is_null());
    }
}

//! Request validation: the shape rules every request must meet before it reaches the log.
//!
//! Each check returns a [`FieldError`] naming the offending field by its path in the request
//! (`change.fact_reported.attributions[0].stance`), so the client learns exactly what to fix. The
//! story rules that depend on state (does the fact exist?) live in the projection, not here.

use std::time::Duration;

use pbjson_types::Timestamp;

use crate::pb::{self, change::Kind};

/// Ids (stories, facts, events, tags) are at most this long: short enough to read in a log line,
/// long enough for a slug or a UUID.
pub const MAX_ID_LEN: usize = 64;
/// A headline is one line a person reads: the length of a long news headline.
pub const MAX_HEADLINE_CHARS: usize = 200;
/// A fact's statement, and every other free text (summary, note, reason, quote, context): a few
/// paragraphs at most; longer text belongs in the article, not in an update.
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Names, roles and hedges are short labels.
pub const MAX_LABEL_CHARS: usize = 200;
/// A source's URL: longer than any real link, short enough to keep a source small.
pub const MAX_URL_CHARS: usize = 2_000;
/// A language tag: BCP 47 allows long ones (with extensions); real ones are a few characters.
pub const MAX_LANGUAGE_LEN: usize = 64;
/// How many attributions one change may carry, how long a "via" chain may be, and how many tags a
/// story may have: generous for real copy, small enough that one request cannot be huge.
pub const MAX_LIST_LEN: usize = 50;
/// How many story ids or tags a Subscribe or ListEvents filter may name.
pub const MAX_FILTER_LEN: usize = 1_000;
/// The shortest heartbeat a subscriber may ask for: shorter would make checkpoints the traffic.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// The longest heartbeat a subscriber may ask for: beyond it a dead stream goes unnoticed too long.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3_600);
/// The heartbeat when the subscriber asks for none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// A request field that breaks a shape rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldError {
    /// The field's path in the request, e.g. `change.fact_reported.statement`.
    pub field: String,
    /// What is wrong with it and what would be right.
    pub description: String,
}

impl FieldError {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

type Checked = Result<(), FieldError>;

/// Whether `value` is a valid id: `^[a-z0-9][a-z0-9-]{0,63}$`.
pub fn is_id(value: &str) -> bool {
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && allowed(&bytes[0])
        && bytes.iter().all(|b| allowed(b) || *b == b'-')
}

/// Checks an id field.
pub fn id(field: &str, value: &str) -> Checked {
    if is_id(value) {
        Ok(())
    } else if value.is_empty() {
        Err(FieldError::new(field, "is required"))
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{value:?} is not a valid id: use 1 to {MAX_ID_LEN} lowercase letters, digits and '-', starting with a letter or digit"
            ),
        ))
    }
}

fn ids(field: &str, values: &[String], max: usize) -> Checked {
    if values.len() > max {
        return Err(FieldError::new(
            field,
            format!("has {} entries; at most {max} are allowed", values.len()),
        ));
    }
    values
        .iter()
        .enumerate()
        .try_for_each(|(i, value)| id(&format!("{field}[{i}]"), value))
}

fn text(field: &str, value: &str, max_chars: usize, required: bool) -> Checked {
    if required && value.trim().is_empty() {
        return Err(FieldError::new(field, "is required and must not be blank"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(FieldError::new(
            field,
            format!("is {chars} characters long; at most {max_chars} are allowed"),
        ));
    }
    Ok(())
}

fn list_len<T>(field: &str, values: &[T]) -> Checked {
    if values.len() > MAX_LIST_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "has {} entries; at most {MAX_LIST_LEN} are allowed",
                values.len()
            ),
        ));
    }
    Ok(())
}

/// Checks that an enum field holds a known value other than its `*_UNSPECIFIED` zero.
fn known_enum<E: TryFrom<i32>>(field: &str, value: i32, type_name: &str) -> Checked {
    match E::try_from(value) {
        Ok(_) if value != 0 => Ok(()),
        Ok(_) => Err(FieldError::new(
            field,
            format!("is required: {type_name}_UNSPECIFIED is not a valid value"),
        )),
        Err(_) => Err(FieldError::new(
            field,
            format!("{value} is not a known {type_name} value"),
        )),
    }
}

fn timestamp(field: &str, value: Option<&Timestamp>) -> Checked {
    // The range google.protobuf.Timestamp defines: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    match value {
        Some(ts)
            if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds)
                || !(0..1_000_000_000).contains(&ts.nanos) =>
        {
            Err(FieldError::new(
                field,
                "is outside the range of google.protobuf.Timestamp",
            ))
        }
        _ => Ok(()),
    }
}

fn source(field: &str, source: &pb::Source) -> Checked {
    text(
        &format!("{field}.name"),
        &source.name,
        MAX_LABEL_CHARS,
        false,
    )?;
    known_enum::<pb::SourceKind>(&format!("{field}.kind"), source.kind, "SOURCE_KIND")?;
    text(
        &format!("{field}.role"),
        &source.role,
        MAX_LABEL_CHARS,
        false,
    )?;
    if source.url.is_empty() {
        return Ok(());
    }
    let field = format!("{field}.url");
    text(&field, &source.url, MAX_URL_CHARS, false)?;
    match url::Url::parse(&source.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        Ok(url) => Err(FieldError::new(
            field,
            format!(
                "must be an http or https URL with a host; {:?} is a {} URL",
                source.url,
                url.scheme()
            ),
        )),
        Err(error) => Err(FieldError::new(
            field,
            format!("must be an absolute http or https URL: {error}"),
        )),
    }
}

/// A story's language: empty, or a well-formed BCP 47 tag.
fn language(field: &str, value: &str) -> Checked {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > MAX_LANGUAGE_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_LANGUAGE_LEN} characters"),
        ));
    }
    oxilangtag::LanguageTag::parse(value)
        .map(drop)
        .map_err(|error| {
            FieldError::new(
                field,
                format!("must be a BCP 47 language tag such as \"en\" or \"pt-BR\": {error}"),
            )
        })
}

fn attributions(field: &str, attributions: &[pb::Attribution]) -> Checked {
    list_len(field, attributions)?;
    for (i, attribution) in attributions.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match &attribution.source {
            Some(s) => source(&format!("{field}.source"), s)?,
            None => return Err(FieldError::new(format!("{field}.source"), "is required")),
        }
        known_enum::<pb::Stance>(&format!("{field}.stance"), attribution.stance, "STANCE")?;
        list_len(&format!("{field}.via"), &attribution.via)?;
        for (j, via) in attribution.via.iter().enumerate() {
            source(&format!("{field}.via[{j}]"), via)?;
        }
        let reason = &attribution.anonymity_reason;
        text(
            &format!("{field}.anonymity_reason"),
            reason,
            MAX_TEXT_CHARS,
            false,
        )?;
        text(
            &format!("{field}.hedge"),
            &attribution.hedge,
            MAX_LABEL_CHARS,
            false,
        )?;
        text(
            &format!("{field}.quote"),
            &attribution.quote,
            MAX_TEXT_CHARS,
            false,
        )?;
    }
    Ok(())
}

fn tags(field: &str, values: &[String]) -> Checked {
    ids(field, values, MAX_LIST_LEN)
}

/// Checks a change's shape. Whether it fits the story (the fact exists, the story is open) is the
/// projection's business.
pub fn change(change: Option<&pb::Change>) -> Checked {
    let Some(kind) = change.and_then(|c| c.kind.as_ref()) else {
        return Err(FieldError::new(
            "change",
            "is required: set exactly one of story_opened, fact_reported, fact_status_changed, fact_corrected, story_revised, story_status_changed, context_added",
        ));
    };
    match kind {
        Kind::StoryOpened(c) => {
            text(
                "change.story_opened.headline",
                &c.headline,
                MAX_HEADLINE_CHARS,
                true,
            )?;
            text(
                "change.story_opened.summary",
                &c.summary,
                MAX_TEXT_CHARS,
                false,
            )?;
            tags("change.story_opened.tags", &c.tags)?;
            language("change.story_opened.language", &c.language)
        }
        Kind::FactReported(c) => {
            id("change.fact_reported.fact_id", &c.fact_id)?;
            text(
                "change.fact_reported.statement",
                &c.statement,
                MAX_TEXT_CHARS,
                true,
            )?;
            attributions("change.fact_reported.attributions", &c.attributions)
        }
        Kind::FactStatusChanged(c) => {
            id("change.fact_status_changed.fact_id", &c.fact_id)?;
            let field = "change.fact_status_changed.status";
            known_enum::<pb::FactStatus>(field, c.status, "FACT_STATUS")?;
            attributions("change.fact_status_changed.attributions", &c.attributions)?;
            text(
                "change.fact_status_changed.note",
                &c.note,
                MAX_TEXT_CHARS,
                false,
            )
        }
        Kind::FactCorrected(c) => {
            id("change.fact_corrected.fact_id", &c.fact_id)?;
            text(
                "change.fact_corrected.statement",
                &c.statement,
                MAX_TEXT_CHARS,
                true,
            )?;
            text(
                "change.fact_corrected.reason",
                &c.reason,
                MAX_TEXT_CHARS,
                false,
            )
        }
        Kind::StoryRevised(c) => {
            if c.headline.is_none()
                && c.summary.is_none()
                && c.tags.is_none()
                && c.language.is_none()
            {
                return Err(FieldError::new(
                    "change.story_revised",
                    "changes nothing: set at least one of headline, summary, tags, language",
                ));
            }
            if let Some(value) = &c.language {
                language("change.story_revised.language", value)?;
            }
            if let Some(headline) = &c.headline {
                text(
                    "change.story_revised.headline",
                    headline,
                    MAX_HEADLINE_CHARS,
                    true,
                )?;
            }
            if let Some(summary) = &c.summary {
                text(
                    "change.story_revised.summary",
                    summary,
                    MAX_TEXT_CHARS,
                    false,
                )?;
            }
            match &c.tags {
                Some(list) => tags("change.story_revised.tags.tags", &list.tags),
                None => Ok(()),
            }
        }
        Kind::StoryStatusChanged(c) => {
            let field = "change.story_status_changed.status";
            known_enum::<pb::StoryStatus>(field, c.status, "STORY_STATUS")?;
            text(
                "change.story_status_changed.reason",
                &c.reason,
                MAX_TEXT_CHARS,
                false,
            )
        }
        Kind::ContextAdded(c) => {
            text("change.context_added.text", &c.text, MAX_TEXT_CHARS, true)?;
            attributions("change.context_added.attributions", &c.attributions)
        }
    }
}

/// Checks a PublishRequest. An empty `event_id` is allowed: the server assigns one.
pub fn publish(request: &pb::PublishRequest) -> Checked {
    id("story_id", &request.story_id)?;
    if !request.event_id.is_empty() {
        id("event_id", &request.event_id)?;
    }
    text("headline", &request.headline, MAX_HEADLINE_CHARS, true)?;
    timestamp("occurred_at", request.occurred_at.as_ref())?;
    change(request.change.as_ref())
}

/// Checks a story/tag filter as Subscribe and ListEvents take it.
pub fn filter(story_ids: &[String], tags: &[String]) -> Checked {
    ids("story_ids", story_ids, MAX_FILTER_LEN)?;
    ids("tags", tags, MAX_FILTER_LEN)
}

/// Checks a SubscribeRequest and returns its heartbeat interval.
pub fn subscribe(request: &pb::SubscribeRequest) -> Result<Duration, FieldError> {
    filter(&request.story_ids, &request.tags)?;
    if request.snapshot && request.from_sequence.is_some() {
        return Err(FieldError::new(
            "from_sequence",
            "cannot be combined with snapshot: a snapshot already starts from the current state",
        ));
    }
    heartbeat(request.heartbeat_interval.as_ref())
}

fn heartbeat(value: Option<&pbjson_types::Duration>) -> Result<Duration, FieldError> {
    let Some(value) = value else {
        return Ok(DEFAULT_HEARTBEAT);
    };
    let range = format!(
        "must be between {} ms and {} s",
        MIN_HEARTBEAT.as_millis(),
        MAX_HEARTBEAT.as_secs()
    );
    let interval = Duration::try_from(*value)
        .map_err(|_| FieldError::new("heartbeat_interval", range.clone()))?;
    if (MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&interval) {
        Ok(interval)
    } else {
        Err(FieldError::new("heartbeat_interval", range))
    }
}

/// Checks a GetStoryRequest.
pub fn get_story(request: &pb::GetStoryRequest) -> Checked {
    id("story_id", &request.story_id)?;
    if request.as_of_version == Some(0) {
        return Err(FieldError::new(
            "as_of_version",
            "must be at least 1 (version 1 is the state right after the story was opened)",
        ));
    }
    Ok(())
}

/// Checks a ListStoriesRequest.
pub fn list_stories(request: &pb::ListStoriesRequest) -> Checked {
    if !request.page_token.is_empty() && !is_id(&request.page_token) {
        return Err(FieldError::new(
            "page_token",
            "is not a token this server issued: pass next_page_token from the previous page",
        ));
    }
    if !request.tag.is_empty() {
        id("tag", &request.tag)?;
    }
    if pb::StoryStatus::try_from(request.status).is_err() {
        let status = request.status;
        return Err(FieldError::new(
            "status",
            format!("{status} is not a known STORY_STATUS value"),
        ));
    }
    Ok(())
}

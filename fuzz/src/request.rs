//! A small shape of a `PublishRequest` that `arbitrary` builds from fuzzer bytes.
//!
//! Ids come from pools of three or four, so that the interesting cases are a few bytes away rather
//! than astronomically rare: a story opened twice, a fact reported and then denied, an event_id
//! used again for a different request, an `expected_version` that matches. A few choices are
//! invalid on purpose (an id that is not an id, a blank or overlong headline, an unspecified
//! status, no change at all), so that validation refuses some requests too.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use pbjson_types::Timestamp;
use storywire::{
    pb::{self, change::Kind},
    validate::{MAX_HEADLINE_CHARS, MAX_TEXT_CHARS},
};

/// One publish, in the shape the fuzzer picks.
#[derive(Arbitrary, Debug, Clone)]
pub struct Publish {
    /// The story it changes.
    pub story: Story,
    /// Its idempotency key, or none for a server-assigned one.
    pub event_id: Option<EventId>,
    /// The version the publisher expects the story to be at (taken modulo 4, so that it matches
    /// now and then).
    pub expected_version: Option<u8>,
    /// Its headline.
    pub headline: Text,
    /// When it happened, if the publisher says.
    pub occurred_at: Option<Moment>,
    /// What it changes; `None` is a request without a change, which validation refuses.
    pub change: Option<Change>,
}

/// A story id from a small pool.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Story {
    /// `rome`.
    Rome,
    /// `seoul`.
    Seoul,
    /// `pyongyang`.
    Pyongyang,
    /// Not a valid id: validation refuses it.
    NotAnId,
}

impl Story {
    /// The story id on the wire.
    pub fn id(self) -> &'static str {
        match self {
            Self::Rome => "rome",
            Self::Seoul => "seoul",
            Self::Pyongyang => "pyongyang",
            Self::NotAnId => "Not An Id",
        }
    }
}

/// An event_id from a small pool.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventId {
    /// `e1`.
    E1,
    /// `e2`.
    E2,
    /// `e3`.
    E3,
    /// An id in the form the server assigns (`<log_id>-<sequence>`), naming a sequence this many
    /// past the head: a client that guesses the id the server is about to give another event.
    Assigned(u8),
}

/// A fact id from a small pool.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// `hiding`.
    Hiding,
    /// `asylum`.
    Asylum,
    /// Not a valid id: validation refuses it.
    NotAnId,
}

impl Fact {
    fn id(self) -> &'static str {
        match self {
            Self::Hiding => "hiding",
            Self::Asylum => "asylum",
            Self::NotAnId => "Not An Id",
        }
    }
}

/// A tag from a small pool.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `italy`.
    Italy,
    /// `korea`.
    Korea,
    /// Not a valid id: validation refuses it.
    NotAnId,
}

impl Tag {
    fn id(self) -> &'static str {
        match self {
            Self::Italy => "italy",
            Self::Korea => "korea",
            Self::NotAnId => "Not An Id",
        }
    }
}

/// A headline or free text.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// A line of text.
    Line,
    /// Another line, so that two requests can differ only in their text.
    OtherLine,
    /// Only whitespace: refused where text is required.
    Blank,
    /// One character longer than any text may be.
    TooLong,
}

impl Text {
    fn text(self) -> String {
        match self {
            Self::Line => "Italy denies asylum request".to_owned(),
            Self::OtherLine => "Jo asked Italy for protection".to_owned(),
            Self::Blank => "  ".to_owned(),
            Self::TooLong => "x".repeat(MAX_HEADLINE_CHARS.max(MAX_TEXT_CHARS) + 1),
        }
    }
}

/// An `occurred_at`.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// This many minutes after 2019-01-03T00:00:00Z.
    Minutes(u8),
    /// Beyond the range of google.protobuf.Timestamp: refused.
    OutOfRange,
}

impl Moment {
    fn timestamp(self) -> Timestamp {
        match self {
            Self::Minutes(minutes) => Timestamp {
                seconds: 1_546_473_600 + 60 * i64::from(minutes),
                nanos: 0,
            },
            Self::OutOfRange => Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        }
    }
}

/// A change, one per kind the API has.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `story_opened` with these tags.
    Open(Vec<Tag>),
    /// `fact_reported`.
    Report(Fact),
    /// `fact_status_changed` to this status (taken modulo 7: 0 is unspecified, 6 is unknown).
    SetFactStatus(Fact, u8),
    /// `fact_corrected`.
    Correct(Fact),
    /// `story_revised`; with neither set it changes nothing, which validation refuses.
    Revise(Option<Text>, Option<Vec<Tag>>),
    /// `story_status_changed` to this status (taken modulo 5: 0 is unspecified, 4 is unknown).
    SetStoryStatus(u8),
    /// `context_added`.
    Note(Text),
}

impl Change {
    fn kind(&self) -> Kind {
        let tags = |tags: &[Tag]| tags.iter().map(|t| t.id().to_owned()).collect::<Vec<_>>();
        match self {
            Self::Open(list) => Kind::StoryOpened(pb::StoryOpened {
                headline: Text::Line.text(),
                summary: String::new(),
                tags: tags(list),
                language: "en".to_owned(),
            }),
            Self::Report(fact) => Kind::FactReported(pb::FactReported {
                fact_id: fact.id().to_owned(),
                statement: "He is in hiding.".to_owned(),
                attributions: Vec::new(),
            }),
            Self::SetFactStatus(fact, status) => Kind::FactStatusChanged(pb::FactStatusChanged {
                fact_id: fact.id().to_owned(),
                status: i32::from(status % 7),
                attributions: Vec::new(),
                note: String::new(),
            }),
            Self::Correct(fact) => Kind::FactCorrected(pb::FactCorrected {
                fact_id: fact.id().to_owned(),
                statement: "He was in hiding.".to_owned(),
                reason: String::new(),
            }),
            Self::Revise(headline, list) => Kind::StoryRevised(pb::StoryRevised {
                headline: headline.map(Text::text),
                summary: None,
                tags: list.as_ref().map(|list| pb::TagList { tags: tags(list) }),
                language: None,
            }),
            Self::SetStoryStatus(status) => Kind::StoryStatusChanged(pb::StoryStatusChanged {
                status: i32::from(status % 5),
                reason: String::new(),
            }),
            Self::Note(text) => Kind::ContextAdded(pb::ContextAdded {
                text: text.text(),
                attributions: Vec::new(),
            }),
        }
    }
}

impl Publish {
    /// The request on the wire. `log_id` and `head` are the log's, for [`EventId::Assigned`].
    pub fn request(&self, log_id: &str, head: u64) -> pb::PublishRequest {
        let event_id = match self.event_id {
            None => String::new(),
            Some(EventId::E1) => "e1".to_owned(),
            Some(EventId::E2) => "e2".to_owned(),
            Some(EventId::E3) => "e3".to_owned(),
            Some(EventId::Assigned(ahead)) => {
                format!("{log_id}-{}", head + 1 + u64::from(ahead % 4))
            }
        };
        pb::PublishRequest {
            story_id: self.story.id().to_owned(),
            event_id,
            expected_version: self.expected_version.map(|v| u64::from(v % 4)),
            headline: self.headline.text(),
            occurred_at: self.occurred_at.map(Moment::timestamp),
            change: self.change.as_ref().map(|change| pb::Change {
                kind: Some(change.kind()),
            }),
        }
    }
}

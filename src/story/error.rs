//! The story rules and limits a change can break, one variant each, with the message the
//! publisher reads; the service maps each to its gRPC status code.

/// A change that breaks a story rule. The service maps each variant to one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoryError {
    /// `story_opened` for a story that already exists.
    #[error("story {story_id} already exists; it was opened at version 1")]
    AlreadyOpened {
        /// The story that exists.
        story_id: String,
    },
    /// Any other change to a story that was never opened.
    #[error("story {story_id} not found; a story must be opened with story_opened first")]
    NotFound {
        /// The story that does not exist.
        story_id: String,
    },
    /// A status change or correction naming a fact the story does not have.
    #[error("fact {fact_id} not found in story {story_id}; report it with fact_reported first")]
    UnknownFact {
        /// The story.
        story_id: String,
        /// The fact it does not have.
        fact_id: String,
    },
    /// `fact_reported` with an id the story already has.
    #[error(
        "fact {fact_id} is already reported in story {story_id}; use fact_status_changed or fact_corrected"
    )]
    FactAlreadyReported {
        /// The story.
        story_id: String,
        /// The fact it already has.
        fact_id: String,
    },
    /// Any change to a withdrawn story.
    #[error("story {story_id} is withdrawn and takes no more changes")]
    Withdrawn {
        /// The withdrawn story.
        story_id: String,
    },
    /// An event without a change. Requests are validated before they reach the projection, so
    /// this means a caller skipped validation.
    #[error("change: exactly one kind of change must be set")]
    NoChange,
    /// `fact_reported` to a story holding its limit of facts.
    #[error(
        "story {story_id} has {count} facts and may hold at most {max} (--max-facts-per-story); report new facts in a follow-up story"
    )]
    TooManyFacts {
        /// The story.
        story_id: String,
        /// The facts it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `context_added` to a story holding its limit of context notes.
    #[error(
        "story {story_id} has {count} context notes and may hold at most {max} (--max-notes-per-story)"
    )]
    TooManyNotes {
        /// The story.
        story_id: String,
        /// The notes it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A report or status change that would give a fact more attributions than its limit.
    #[error(
        "fact {fact_id} in story {story_id} would have {count} attributions; a fact may hold at most {max} (--max-attributions-per-fact)"
    )]
    TooManyAttributions {
        /// The story.
        story_id: String,
        /// The fact.
        fact_id: String,
        /// The attributions it would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A change that could take the story past its limit of encoded bytes.
    #[error(
        "story {story_id} is {size} bytes encoded and this change could add {added} more; a story may hold at most {max} bytes (--max-story-bytes)"
    )]
    TooLarge {
        /// The story.
        story_id: String,
        /// Its encoded size now.
        size: usize,
        /// The most the change could add.
        added: usize,
        /// The limit.
        max: usize,
    },
    /// A correction or status change that could take a story past its limit of encoded bytes and
    /// the reserve kept beyond it for the history such changes leave.
    #[error(
        "story {story_id} is {size} bytes encoded and this change could add {added} more to its history of corrections and status changes; with them a story may hold at most {max} bytes (--max-story-bytes and a quarter more); publish further corrections in a follow-up story"
    )]
    HistoryFull {
        /// The story.
        story_id: String,
        /// Its encoded size now.
        size: usize,
        /// The most the change could add.
        added: usize,
        /// The limit with its reserve.
        max: usize,
    },
}

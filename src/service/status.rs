//! The one mapping from domain errors to gRPC statuses: every failure a client can cause becomes
//! an [`Error`], and [`status`] gives it its code, its message and, for a bad field, the
//! `BadRequest` detail that names it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    consumers::ConsumerError, limits::LimitError, log::LogError, publisher::Refused,
    story::StoryError, subscription::End, validate::FieldError,
};

/// Every failure a client can cause, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The log refused the request.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A subscription ended.
    #[error(transparent)]
    End(#[from] End),
    /// A limit on what one client may take.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The publisher refused a publish, or a position to resume from, for a reason of its own
    /// (a cluster node's stream could not take it, or its replica did not reach it); the log's
    /// refusals are [`Error::Log`].
    #[error(transparent)]
    Refused(Refused),
    /// A named consumer's request was refused (see `consumers.rs` for the conversion).
    #[error(transparent)]
    Consumer(ConsumerError),
}

impl Error {
    /// The request field at fault and what is wrong with it, for the errors that are the
    /// request's own (INVALID_ARGUMENT): the BadRequest detail of Publish and the `field` of a
    /// PublishStream rejection both come from here.
    pub(super) fn violation(&self) -> Option<(String, String)> {
        match self {
            Self::Invalid(invalid) => Some((invalid.field.clone(), invalid.description.clone())),
            Self::Log(LogError::ReservedEventId { .. }) => {
                Some(("event_id".to_owned(), self.to_string()))
            }
            _ => None,
        }
    }
}

impl From<Refused> for Error {
    /// The log's refusals as the log's own, so that a refusal reads the same whichever the
    /// publisher: a request's own fault still names its field.
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Log(log) => Self::Log(log),
            other => Self::Refused(other),
        }
    }
}

impl From<StoryError> for Error {
    fn from(error: StoryError) -> Self {
        Self::Log(error.into())
    }
}

/// The one mapping from domain errors to gRPC status codes. The message is the error's own text,
/// which names the field, id or sequence at fault.
pub fn status(error: impl Into<Error>) -> Status {
    // A subscription that ends on a log error reports it like any other log error.
    let error = match error.into() {
        Error::End(End::Log(log)) | Error::Refused(Refused::Log(log)) => Error::Log(log),
        other => other,
    };
    let message = error.to_string();
    if let Some((field, description)) = error.violation() {
        let details = ErrorDetails::with_bad_request_violation(field, description);
        return Status::with_error_details(Code::InvalidArgument, message, details);
    }
    let code = match &error {
        Error::Invalid(_) | Error::Log(LogError::ReservedEventId { .. }) => {
            unreachable!("a violation, answered above")
        }
        Error::Log(LogError::Story(story)) => match story {
            StoryError::AlreadyOpened { .. } => Code::AlreadyExists,
            StoryError::NotFound { .. } => Code::NotFound,
            StoryError::UnknownFact { .. }
            | StoryError::FactAlreadyReported { .. }
            | StoryError::Withdrawn { .. } => Code::FailedPrecondition,
            // Not RESOURCE_EXHAUSTED: a full story stays full (facts, notes and attributions never
            // leave), so retrying cannot help until the story or the limit changes; and, like
            // the story rules above, it is a conflict with the story's state, which the wasted-
            // streams budget does not charge to the publisher's connection.
            StoryError::TooManyFacts { .. }
            | StoryError::TooManyNotes { .. }
            | StoryError::TooManyAttributions { .. }
            | StoryError::TooLarge { .. }
            | StoryError::HistoryFull { .. } => Code::FailedPrecondition,
            StoryError::NoChange => Code::InvalidArgument,
        },
        Error::Log(log) => match log {
            LogError::Story(_) | LogError::ReservedEventId { .. } => {
                unreachable!("matched above")
            }
            LogError::EventIdReused { .. } => Code::AlreadyExists,
            LogError::VersionMismatch { .. } => Code::Aborted,
            LogError::LogIdMismatch { .. } => Code::FailedPrecondition,
            LogError::NotRetained { .. }
            | LogError::BeyondHead { .. }
            | LogError::VersionBeyondStory { .. }
            | LogError::HistoryNotRetained { .. } => Code::OutOfRange,
        },
        Error::End(End::ShuttingDown) => Code::Unavailable,
        Error::Limit(_) => Code::ResourceExhausted,
        Error::Refused(Refused::Unavailable(_)) => Code::Unavailable,
        Error::Refused(Refused::Contended(_)) => Code::Aborted,
        // As tonic refuses a request over --max-request-bytes.
        Error::Refused(Refused::TooLarge(_)) => Code::OutOfRange,
        Error::End(End::Log(_)) | Error::Refused(Refused::Log(_)) => {
            unreachable!("flattened above")
        }
        Error::Consumer(consumer) => match consumer {
            ConsumerError::NotFound { .. } => Code::NotFound,
            ConsumerError::FilterTaken { .. } => Code::AlreadyExists,
            ConsumerError::OtherLog { .. } => Code::FailedPrecondition,
            ConsumerError::TooMany { .. } => Code::ResourceExhausted,
            ConsumerError::Storage(_) => Code::Unavailable,
            ConsumerError::Unsupported => Code::Unimplemented,
            ConsumerError::Invalid(_) | ConsumerError::Log(_) => {
                unreachable!("converted to Invalid and Log")
            }
        },
    };
    Status::new(code, message)
}

//! Why a consumer request was refused: one variant per gRPC status the service gives it.

use crate::{log::LogError, validate::FieldError};

/// Why a consumer request was refused. The service maps each variant to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No consumer has the name.
    #[error("consumer {name} does not exist; create it with CreateConsumer")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is taken by a consumer with another filter.
    #[error(
        "consumer {name} already exists with another filter (story_ids [{story_ids}], tags [{tags}]); choose another name, or delete it first"
    )]
    FilterTaken {
        /// The name.
        name: String,
        /// The existing consumer's stories.
        story_ids: String,
        /// The existing consumer's tags.
        tags: String,
    },
    /// The consumer's position belongs to another incarnation of the log.
    #[error(
        "consumer {name} belongs to log {log_id}, not this server's log {actual}: its position means nothing here; delete it and create it again"
    )]
    OtherLog {
        /// The consumer.
        name: String,
        /// The log it was created in.
        log_id: String,
        /// This server's log.
        actual: String,
    },
    /// The log refused a position (outside the retained log, or another log_id).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The table is full.
    #[error("this server keeps at most {max} consumers; delete one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The position could not be kept on disk; it may be delivered again.
    #[error("the consumer could not be kept on disk: {0}")]
    Storage(String),
    /// This server has nowhere to keep consumers: a cluster node's service built without the
    /// cluster's bucket ([`super::Consumers::shared`]), whose own memory would lose them with it.
    #[error(
        "this server keeps no named consumers; keep the position in the client and resume with SubscribeRequest.from_sequence and log_id"
    )]
    Unsupported,
}

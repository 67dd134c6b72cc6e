//! The publisher seam: the one place that knows where an update goes, and so what follows from
//! it: whether a subscriber's position is in reach, and whether the server may say SERVING.
//!
//! A server's log is the log of record ([`Local`]: appended under the log's write lock, made
//! durable by its [`crate::log::Journal`]), or it is one node's replica of a NATS JetStream
//! stream that other nodes append to too (`serve --nats`: [`crate::cluster::Node`], which
//! implements [`Publisher`] in `cluster/publish.rs`). The server decides which once, at start;
//! the gRPC face (Publish, PublishStream, Subscribe's resume check), the HTTP face (through the
//! same service) and health call the [`Publisher`] without knowing which it is.

use std::{fmt, sync::Arc};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::{
    log::{EventLog, LogError},
    pb,
};

mod local;

pub use local::Local;

/// Why a publish was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The log refused it, exactly as a single node would.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The log of record cannot be reached, or did not acknowledge: nothing is promised, and a
    /// retry with the same event_id is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Other nodes kept changing the story while this one decided the publish.
    #[error("{0}")]
    Contended(String),
    /// The update is larger than the log of record takes in one message.
    #[error("{0}")]
    TooLarge(String),
}

/// Where the server's updates go. Implementations are shared by every call (`Arc<dyn Publisher>`).
///
/// Each method promises the same on either side of the seam: an acknowledged publish is in the
/// log of record at its receipt's sequence and readable on this server right after; a refusal
/// other than [`Refused::Unavailable`] appended nothing.
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Publishes one validated request as `published_by`, and answers once it is acknowledged
    /// (with a data directory, written as the fsync mode says; on a cluster node, acknowledged
    /// by JetStream and applied to the replica). A request repeating a retained event_id is
    /// answered with the original receipt.
    fn publish<'a>(
        &'a self,
        request: pb::PublishRequest,
        published_by: &'a str,
    ) -> BoxFuture<'a, Result<pb::PublishResponse, Refused>> {
        // A burst of one: on either side that is exactly one request published on its own.
        Box::pin(async move {
            let mut outcomes = self.publish_all(vec![request], published_by).await;
            outcomes.pop().expect("one outcome for one request")
        })
    }

    /// Publishes a burst of validated requests from one client (a PublishStream's), each as
    /// [`Self::publish`] would on its own, sent in request order: requests to one story land in
    /// request order (requests to different stories may be re-decided, on a cluster node, and
    /// land later). Outcomes in request order, answered together.
    fn publish_all<'a>(
        &'a self,
        requests: Vec<pb::PublishRequest>,
        published_by: &'a str,
    ) -> BoxFuture<'a, Vec<Result<pb::PublishResponse, Refused>>>;

    /// Checks that a subscription may start at `from` (0: the oldest retained), as
    /// [`EventLog::check_position`] does; on a cluster node, a position beyond the replica's head
    /// that the stream holds is waited for. `named_log`: the client named the log (its log_id
    /// already checked), so the position is known to be the log of record's.
    fn reach(&self, from: u64, named_log: bool) -> BoxFuture<'_, Result<(), Refused>>;

    /// Whether the server may be called SERVING, as it changes; health follows it.
    fn serving(&self) -> watch::Receiver<bool>;

    /// The log this server reads from: every read, subscription and page is served from it.
    fn log(&self) -> &Arc<EventLog>;
}

//! The desk in the storm: one unary Publish every [`INTERVAL`], resent with the same event_id
//! until acknowledged, on a thread and a runtime of its own.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use storywire::pb::story_service_client::StoryServiceClient;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tonic::transport::Endpoint;

use super::{CALL_TIMEOUT, INTERVAL, PRELOAD_EVENTS, RETRY_INTERVAL};
use crate::{
    error::{Result, failed},
    load::{self, STORY},
};

/// One event the desk published and had acknowledged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acked {
    /// When it was due: its tick. Latency counts from here.
    pub(super) due: Instant,
    /// When it was first sent: later than `due` when the one before it was held up.
    pub(super) sent: Instant,
    /// When its acknowledgement arrived.
    pub(super) acked: Instant,
    /// Its sequence in the log.
    pub(super) sequence: u64,
    /// Times it was sent again, with the same event_id, after no answer or a failure.
    pub(super) resends: u32,
}

/// The desk: from bench event `first` on, one unary Publish every [`INTERVAL`], each with an
/// event_id of its own, until `stop` names an end: every event due before it is published,
/// however late, so that a desk held up keeps its backlog in the figures rather than dropping
/// it; dropping `stop`'s sender ends it at once. A publish that fails or goes unanswered for
/// [`CALL_TIMEOUT`] is sent again on a new connection after [`RETRY_INTERVAL`], with the same
/// event_id, so that the server either appends it or answers that it already has it.
pub(super) async fn desk(
    endpoint: Endpoint,
    first: u64,
    acked: Arc<AtomicU64>,
    stop: watch::Receiver<Option<Instant>>,
    deadline: Instant,
) -> Result<Vec<Acked>> {
    // Connected before the first tick, so that the quiet phase's latency holds no connect.
    let mut client = StoryServiceClient::new(endpoint.connect().await?);
    let mut ticks = tokio::time::interval(INTERVAL);
    let mut published = Vec::new();
    for n in first.. {
        // Ticks missed while a publish was held up come at once, each with its own due time.
        let due = ticks.tick().await;
        if stop.has_changed().is_err() {
            return failed!("the run ended under the desk");
        }
        if matches!(*stop.borrow(), Some(end) if due >= end) {
            break;
        }
        let mut request = load::revision(STORY.into(), n);
        request.event_id = format!("storm-{n}");
        let mut resends = 0;
        let sent = Instant::now();
        let answer = loop {
            match tokio::time::timeout(CALL_TIMEOUT, client.publish(request.clone())).await {
                Ok(Ok(answer)) => break answer.into_inner(),
                Ok(Err(_)) | Err(_) => {
                    if stop.has_changed().is_err() {
                        return failed!("the run ended under the desk");
                    }
                    if Instant::now() + RETRY_INTERVAL > deadline {
                        return failed!("event {n} unacknowledged at the deadline");
                    }
                    resends += 1;
                    tokio::time::sleep(RETRY_INTERVAL).await;
                    // A connection of its own again: the old one may be to the server that left.
                    client = StoryServiceClient::new(endpoint.connect_lazy());
                }
            }
        };
        acked.fetch_max(answer.sequence, Ordering::Release);
        let sequence = answer.sequence;
        let acked = Instant::now();
        published.push(Acked {
            due,
            sent,
            acked,
            sequence,
            resends,
        });
    }
    Ok(published)
}

/// Runs [`desk`] on a thread and a runtime of its own, so that its latency is the server's and
/// the wire's, not the wait behind thousands of subscriber tasks in the bench's runtime; they
/// still share the machine's cores.
pub(super) fn desk_apart(
    endpoint: Endpoint,
    acked: Arc<AtomicU64>,
    stop: watch::Receiver<Option<Instant>>,
    deadline: Instant,
) -> Result<oneshot::Receiver<Result<Vec<Acked>>>> {
    let (sender, receiver) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("storm-desk".into())
        .spawn(move || {
            let first = PRELOAD_EVENTS + 1;
            let _ = sender.send(runtime.block_on(desk(endpoint, first, acked, stop, deadline)));
        })?;
    Ok(receiver)
}

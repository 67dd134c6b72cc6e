//! Whether the node reaches a JetStream quorum and keeps up with it: a task that asks the stream's
//! leader for the stream's state every [`PROBE_INTERVAL`] and turns a watch false when no leader
//! with a quorum answers, or when the replica falls behind what the stream held a while ago.
//!
//! An open connection proves nothing under a partition: the server the node talks to may be cut
//! off from its peers while every TCP connection stays up, and a cut-off leader keeps answering as
//! leader until it notices, about ten seconds later. So the probe counts the peers the answering
//! leader has heard from lately, as the leader reports them.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::stream;
use tokio::sync::watch;

use crate::log::EventLog;

/// How often the stream's state is asked for. With [`PROBE_TIMEOUT`] and [`PEER_SILENCE`] this
/// bounds how long a cut-off node says SERVING: at most about four seconds.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe waits for the stream's leader. A leader on the node's side of a partition
/// answers in milliseconds; none answering within this means none is reachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long since a leader last heard from a peer before it no longer counts toward the quorum.
/// JetStream's Raft heartbeats every second, so three missed ones mean the link is gone; the
/// leader itself takes ten seconds to step down.
const PEER_SILENCE: Duration = Duration::from_secs(3);

/// How far behind the stream the replica may be before the node says NOT_SERVING: it has not
/// applied what the stream held this long ago. A replica that keeps up applies a message within
/// milliseconds of its acknowledgement.
const LAG_LIMIT: Duration = Duration::from_secs(5);

/// What a probe found.
enum Probe {
    /// A leader counting a quorum answered: the stream's last sequence.
    Quorum(u64),
    /// No leader with a quorum answered: why.
    Lost(String),
}

/// Follows whether the node reaches a quorum of the stream and its replica keeps up with it;
/// `reachable` turns false within about four seconds of losing the quorum (or [`LAG_LIMIT`] after
/// the replica stalled), and true again once the quorum answers and the replica has applied what
/// the stream held at the probe before: a target that moves with the stream, one probe behind,
/// so that a replica stalled since it turned false is not called SERVING for reaching an old
/// head. Ends when every receiver of `reachable` is gone.
pub async fn watch(mut stream: stream::Stream, log: Arc<EventLog>, reachable: watch::Sender<bool>) {
    // Stream last sequences probed and not yet applied by the replica, oldest first.
    let mut unapplied: VecDeque<(Instant, u64)> = VecDeque::new();
    // While not reachable: what the replica must hold to be SERVING again.
    let mut returning_to: Option<u64> = None;
    // The stream's last sequence at the previous probe that reached a quorum.
    let mut previous: Option<u64> = None;
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = reachable.closed() => return,
        }
        let head = log.head();
        let now = Instant::now();
        let verdict = match probe(&mut stream).await {
            Probe::Lost(reason) => {
                if *reachable.borrow() {
                    tracing::warn!(%reason, head, "NATS: no JetStream quorum reachable; NOT_SERVING");
                }
                unapplied.clear();
                returning_to = None;
                previous = None;
                false
            }
            Probe::Quorum(last) => {
                if !*reachable.borrow() {
                    returning_to = Some(previous.unwrap_or(last));
                }
                previous = Some(last);
                unapplied.push_back((now, last));
                while unapplied.front().is_some_and(|(_, last)| *last <= head) {
                    unapplied.pop_front();
                }
                let lagging = unapplied
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > LAG_LIMIT);
                if lagging && *reachable.borrow() {
                    tracing::warn!(
                        head,
                        last,
                        "replica: behind the stream for over {}s; NOT_SERVING",
                        LAG_LIMIT.as_secs()
                    );
                }
                if returning_to.is_some_and(|target| head >= target) {
                    tracing::info!(
                        head,
                        "NATS: a JetStream quorum answers and the replica has caught up"
                    );
                    returning_to = None;
                }
                returning_to.is_none() && !lagging
            }
        };
        reachable.send_if_modified(|now| std::mem::replace(now, verdict) != verdict);
    }
}

/// Asks the stream's leader for the stream's state, and counts the peers it has heard from lately.
async fn probe(stream: &mut stream::Stream) -> Probe {
    let info = match tokio::time::timeout(PROBE_TIMEOUT, stream.info()).await {
        Err(_) => return Probe::Lost(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(error)) => return Probe::Lost(error.to_string()),
        Ok(Ok(info)) => info.clone(),
    };
    let needed = info.config.num_replicas / 2 + 1;
    let Some(cluster) = info.cluster.filter(|cluster| cluster.leader.is_some()) else {
        // A server outside a cluster answers without naming a leader: it is the whole quorum.
        return if info.config.num_replicas <= 1 {
            Probe::Quorum(info.state.last_sequence)
        } else {
            Probe::Lost("the stream has no leader".to_owned())
        };
    };
    let heard = cluster
        .replicas
        .iter()
        .filter(|peer| !peer.offline && peer.active < PEER_SILENCE)
        .count();
    if 1 + heard >= needed {
        Probe::Quorum(info.state.last_sequence)
    } else {
        Probe::Lost(format!(
            "the leader {} has heard from {heard} of its {} peers within {}s",
            cluster.leader.unwrap_or_default(),
            cluster.replicas.len(),
            PEER_SILENCE.as_secs()
        ))
    }
}

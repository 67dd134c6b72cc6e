//! A node of a cluster: the log kept in a NATS JetStream stream that several storywire nodes
//! share (`serve --nats`). JetStream is the log of record, replicated by its own Raft; each node
//! keeps its in-memory log as a replica of the stream (`replica`) and serves its own
//! subscribers from it. A publish on any node is decided against that node's replica and
//! appended by JetStream on the condition that the story has not changed since: the node is
//! the cluster's [`crate::publisher::Publisher`] (`publish`). docs/cluster.md says what the
//! cluster promises.
//!
//! Here: starting a node, and whether it may be called SERVING. Beside it: `publish` (the
//! publisher seam's cluster side), `stream` (the stream's name, subjects, checks and `log_id`),
//! `replica` (the task following the stream), `snapshots` (the stories kept in the stream's
//! object store) and `quorum` (whether the node reaches a JetStream quorum).

use std::{path::PathBuf, sync::Arc};

use async_nats::jetstream;
use tokio::sync::watch;

use crate::{clock::Clock, log::EventLog};

mod publish;
mod quorum;
mod replica;
mod snapshots;
mod stream;

/// The stream's name when `--nats-stream` is not given.
pub const DEFAULT_STREAM: &str = "STORYWIRE";

/// How many JetStream servers keep a stream this node creates, when `--nats-replicas` is not
/// given: three, so that the log of record survives losing one server.
pub const DEFAULT_REPLICAS: u8 = 3;

/// How a node reaches its stream.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The NATS server URLs (any of them will do; the client finds the rest).
    pub servers: Vec<String>,
    /// The stream's name; its subjects are `<stream>.story.<story_id>`.
    pub stream: String,
    /// How many servers keep the stream, when this node creates it.
    pub replicas: u8,
    /// A credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A CA (PEM) to trust for the servers' TLS certificates.
    pub ca: Option<PathBuf>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A flag's value cannot work.
    #[error("{0}")]
    Config(String),
    /// NATS or JetStream did not answer.
    #[error("cannot reach NATS JetStream: {0}")]
    Unreachable(String),
    /// The stream, or its snapshots, cannot serve this log.
    #[error("{0}")]
    Stream(String),
}

/// A node of the cluster: its replica of the stream, and the way it publishes to the stream.
#[derive(Debug)]
pub struct Node {
    /// The replica, which every read is served from.
    log: Arc<EventLog>,
    /// JetStream, for publishing.
    context: jetstream::Context,
    /// The stream, for its last sequence after a conflict.
    stream: jetstream::stream::Stream,
    /// The stream's name, which prefixes every story's subject.
    stream_name: String,
    /// Whether the client is connected to NATS now.
    connected: watch::Receiver<bool>,
    /// Whether the replica has stopped for good.
    failed: watch::Receiver<bool>,
    /// Whether the node may be called SERVING: connected, caught up, and not failed.
    serving: watch::Receiver<bool>,
}

impl Node {
    /// Connects to the stream `config` names (creating it, with at most `retain` messages, if
    /// missing), loads the newest snapshot, and starts the replica. Returns once the node can
    /// serve reads; it is SERVING (`Publisher::serving`) once the replica has caught up with the
    /// stream's last sequence as of now.
    pub async fn start(
        config: &NatsConfig,
        retain: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ClusterError> {
        stream::check_name(&config.stream)?;
        let (connected_tx, connected) = watch::channel(false);
        let client = stream::connect(config, connected_tx).await?;
        let context = jetstream::new(client);
        let mut stream = stream::ensure(&context, config, retain).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::Unreachable(format!("JetStream stream info: {e}")))?
            .clone();
        stream::warn_about_fsync();
        let log_id = stream::log_id(&config.stream, &info);
        let flag = retain;
        let retain = usize::try_from(info.config.max_messages).unwrap_or(usize::MAX);
        if retain != flag {
            tracing::info!(
                max_messages = retain,
                retain_events = flag,
                "NATS: the stream keeps its own max_msgs, and this node's replica follows it"
            );
        }
        let replicas = info.config.num_replicas;
        let snapshots = snapshots::open(&context, &config.stream, replicas).await?;
        let snapshot = snapshots::load(&snapshots, &log_id).await?;
        let snapshot_head = snapshot.as_ref().map_or(0, |snapshot| snapshot.head);
        let first = info.state.first_sequence.max(1);
        if first > snapshot_head + 1 {
            return Err(ClusterError::Stream(format!(
                "stream {} starts at sequence {first}, but the newest snapshot of its stories is as of sequence {snapshot_head}: \
                 this node would hold a hole of {} events; it needs a snapshot written by a node that followed the stream (docs/cluster.md)",
                config.stream,
                first - snapshot_head - 1
            )));
        }
        let start_head = info.state.last_sequence;
        tracing::info!(stream = %config.stream, %log_id, first, last = start_head, snapshot_head,
            retain_events = retain, replicas, "NATS: following the stream");
        let log = Arc::new(EventLog::replica(log_id, retain, clock, snapshot, first));

        let (caught_up_tx, caught_up) = watch::channel(false);
        let (failed_tx, failed) = watch::channel(false);
        let follower = replica::Replica {
            log: log.clone(),
            stream: stream.clone(),
            snapshots,
            snapshot_head,
            next: first,
            consumer_replicas: replicas,
            start_head,
            snapshot_every: u64::try_from((retain / 4).max(1)).unwrap_or(u64::MAX),
            caught_up: caught_up_tx,
            failed: failed_tx,
            connected: connected.clone(),
            rebuild_attempts: 0,
            written: Arc::default(),
        };
        tokio::spawn(follower.run());
        let (reachable_tx, reachable) = watch::channel(true);
        tokio::spawn(quorum::watch(stream.clone(), log.clone(), reachable_tx));
        let serving = serving([connected.clone(), caught_up, reachable], failed.clone());
        Ok(Arc::new(Self {
            log,
            context,
            stream,
            stream_name: config.stream.clone(),
            connected,
            failed,
            serving,
        }))
    }

    /// JetStream, the stream's name and its number of replicas: for what a node keeps beside
    /// the stream (the named consumers' bucket).
    pub(crate) fn jetstream(&self) -> (&jetstream::Context, &str, usize) {
        let replicas = self.stream.cached_info().config.num_replicas;
        (&self.context, &self.stream_name, replicas)
    }
}

/// A watch of whether the node may be called SERVING, kept up to date by a task of its own: every
/// one of `all` is true (connected, caught up since start-up, reaching a quorum and keeping up
/// with it) and the replica has not `failed`.
fn serving(
    all: [watch::Receiver<bool>; 3],
    failed: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let [mut connected, mut caught_up, mut reachable] = all;
    let mut failed = failed;
    let now = |c: &watch::Receiver<bool>,
               u: &watch::Receiver<bool>,
               r: &watch::Receiver<bool>,
               f: &watch::Receiver<bool>| {
        *c.borrow() && *u.borrow() && *r.borrow() && !*f.borrow()
    };
    let (tx, rx) = watch::channel(now(&connected, &caught_up, &reachable, &failed));
    tokio::spawn(async move {
        loop {
            let serving = now(&connected, &caught_up, &reachable, &failed);
            tx.send_if_modified(|now| std::mem::replace(now, serving) != serving);
            let changed = tokio::select! {
                changed = connected.changed() => changed,
                changed = caught_up.changed() => changed,
                changed = reachable.changed() => changed,
                changed = failed.changed() => changed,
                () = tx.closed() => return,
            };
            if changed.is_err() {
                return;
            }
        }
    });
    rx
}

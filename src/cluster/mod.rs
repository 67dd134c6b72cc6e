//! A node of a cluster: the log kept in a NATS JetStream stream that several storywire nodes
//! share (`serve --nats`). JetStream is the log of record, replicated by its own Raft; each node
//! keeps its in-memory log as a replica of the stream (`replica`) and serves its own
//! subscribers from it. A publish on any node is decided against that node's replica and
//! appended by JetStream on the condition that the story has not changed since
//! ([`Node::publish`]). docs/cluster.md says what the cluster promises.

use std::{path::PathBuf, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use pbjson_types::Timestamp;
use prost::Message as _;
use tokio::sync::watch;

use crate::{
    clock::Clock,
    log::{
        EventLog, LogError,
        replicated::{Plan, Proposal},
    },
    pb,
};

mod quorum;
mod replica;
mod stream;

/// How many times a publish is decided again after another node changed its story first.
const MAX_CONFLICTS: usize = 8;

/// How long a publisher that lost a race waits for the winner's event to reach its replica.
const CONFLICT_WAIT: Duration = Duration::from_secs(2);

/// How long a publisher waits for its own replica to apply what JetStream acknowledged.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a subscriber resuming beyond this node's head waits for the replica to reach its
/// position, when its call has no shorter deadline: long enough for a node cut off from the
/// quorum to come back and catch up after a partition heals.
const RESUME_WAIT: Duration = Duration::from_secs(30);

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

/// Why a publish through the stream was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The log refused it, exactly as a single node would.
    #[error(transparent)]
    Log(#[from] LogError),
    /// JetStream cannot be reached, or did not acknowledge: nothing is promised, and a retry
    /// with the same event_id is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Other nodes kept changing the story while this one decided the publish.
    #[error("{0}")]
    Contended(String),
    /// The update is larger than the NATS servers take in one message.
    #[error("{0}")]
    TooLarge(String),
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
    /// serve reads; it is SERVING ([`Self::serving`]) once the replica has caught up with the
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
        let snapshots = replica::snapshots(&context, &config.stream, replicas).await?;
        let snapshot = replica::load_snapshot(&snapshots, &log_id).await?;
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

    /// The node's replica of the log.
    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    /// Whether the node may be called SERVING: connected to NATS, its replica caught up with
    /// the stream as of start-up, and following it.
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }

    /// Publishes one validated request through the stream: decided against the replica, then
    /// appended by JetStream only if the story's newest event in the stream is still the one
    /// the decision saw (otherwise decided again, a bounded number of times). Answers once
    /// JetStream has acknowledged it and this node's replica has applied it, so that a read on
    /// this node right after sees it.
    pub async fn publish(
        &self,
        request: pb::PublishRequest,
        published_by: &str,
    ) -> Result<pb::PublishResponse, Refused> {
        let begun = self.begin(&request, published_by).await;
        self.finish(request, published_by, begun).await
    }

    /// Publishes requests to distinct stories as [`Self::publish`] does each: decided and sent
    /// one after another, so that JetStream appends them in request order (one connection keeps
    /// its order), and acknowledged together. Outcomes in request order.
    pub async fn publish_in_order(
        &self,
        requests: Vec<pb::PublishRequest>,
        published_by: &str,
    ) -> Vec<Result<pb::PublishResponse, Refused>> {
        let mut begun = Vec::with_capacity(requests.len());
        for request in &requests {
            begun.push(self.begin(request, published_by).await);
        }
        let finishing = requests
            .into_iter()
            .zip(begun)
            .map(|(request, begun)| self.finish(request, published_by, begun));
        futures_util::future::join_all(finishing).await
    }

    /// Decides `request` against the replica and, unless it repeats a retained request, sends
    /// it to JetStream without waiting for the acknowledgement.
    async fn begin(
        &self,
        request: &pb::PublishRequest,
        published_by: &str,
    ) -> Result<Begun, Refused> {
        self.check_following()?;
        match self.log.plan(request.clone(), published_by)? {
            Plan::Duplicate(original) => Ok(Begun::Done(original)),
            Plan::Publish {
                proposal,
                expected_subject_sequence,
            } => {
                let ack = self
                    .send(request, &proposal, expected_subject_sequence)
                    .await;
                Ok(Begun::Sent(Box::new(Sent {
                    proposal: *proposal,
                    expected: expected_subject_sequence,
                    ack,
                })))
            }
        }
    }

    /// Waits for what [`Self::begin`] sent to be acknowledged and applied; after a conflict,
    /// catches up and begins again, at most [`MAX_CONFLICTS`] times.
    ///
    /// Every attempt's answer is awaited before the next is decided or a refusal is given: a
    /// refusal promises that nothing was appended, so it is only given once JetStream has refused
    /// every attempt (a conflict), and any other failure is UNAVAILABLE, "resend the same
    /// event_id". The attempts all carry the request's event_id; JetStream answering one of them
    /// as a duplicate of this call's own earlier attempt is not the client's resend, and the
    /// receipt says `duplicate: false` ([`own_attempt`]).
    async fn finish(
        &self,
        request: pb::PublishRequest,
        published_by: &str,
        begun: Result<Begun, Refused>,
    ) -> Result<pb::PublishResponse, Refused> {
        let mut begun = begun?;
        // When each proposal this call sent was recorded: the stamp its event carries if stored.
        let mut sent_at = Vec::new();
        let mut conflicts = 0;
        loop {
            let (proposal, expected, ack) = match begun {
                Begun::Done(original) => return Ok(own_attempt(original, &sent_at)),
                Begun::Sent(sent) => (sent.proposal, sent.expected, sent.ack),
            };
            sent_at.extend(proposal.recorded_at);
            let acknowledged = match ack {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match acknowledged {
                Ok(ack) => {
                    return self
                        .settle(ack, &request)
                        .await
                        .map(|receipt| own_attempt(receipt, &sent_at));
                }
                Err(error) if is_conflict(&error) && conflicts == MAX_CONFLICTS => {
                    // JetStream refused this attempt too, and every one before it: nothing of
                    // this call is in the stream.
                    return Err(Refused::Contended(format!(
                        "story {} kept changing on other nodes while this publish was decided ({} times); nothing was appended; retry",
                        request.story_id,
                        MAX_CONFLICTS + 1
                    )));
                }
                Err(error) if is_conflict(&error) => {
                    // Another node changed the story first: catch up, and decide again.
                    conflicts += 1;
                    self.catch_up(&request.story_id, expected).await?;
                    begun = self.begin(&request, published_by).await?;
                }
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(Refused::TooLarge(format!(
                        "the update is {} bytes encoded, more than the NATS servers take in one message (their max_payload); raise max_payload on every server, or send a smaller update",
                        proposal.encoded_len()
                    )));
                }
                Err(error) => {
                    return Err(Refused::Unavailable(format!(
                        "JetStream did not acknowledge the publish ({error}); it may or may not be in the log: retry with the same event_id"
                    )));
                }
            }
        }
    }

    /// Waits until the replica holds everything before `from`, a position beyond its head: a
    /// subscriber resuming here with what another node, further ahead, gave it. The position is
    /// the stream's when the client named the log (`named_log`, its log_id already checked), or
    /// when the stream's leader says it holds it; otherwise it is beyond the log, as on a single
    /// server. The wait is bounded by [`RESUME_WAIT`], and by the call's deadline.
    pub async fn reach(&self, from: u64, named_log: bool) -> Result<(), Refused> {
        if !named_log {
            let mut handle = self.stream.clone();
            let last = tokio::time::timeout(stream::API_TIMEOUT, handle.info())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|info| info.state.last_sequence);
            if let Some(last) = last.filter(|last| *last + 1 < from) {
                return Err(Refused::Log(LogError::BeyondHead {
                    requested: from,
                    head: last,
                }));
            }
        }
        let head = self.log.head();
        tokio::time::timeout(RESUME_WAIT, self.log.visible(from - 1))
            .await
            .map_err(|_| {
                Refused::Unavailable(format!(
                    "this node's replica is at sequence {head}, and has not reached {} within {}s; resume on another node, or later",
                    from - 1,
                    RESUME_WAIT.as_secs()
                ))
            })
    }

    /// Refuses to publish while the node cannot follow the stream.
    fn check_following(&self) -> Result<(), Refused> {
        if *self.failed.borrow() {
            return Err(Refused::Unavailable(
                "this node's replica has stopped (see its log); publish through another node"
                    .to_owned(),
            ));
        }
        if !*self.connected.borrow() {
            return Err(Refused::Unavailable(
                "this node is not connected to NATS JetStream; nothing was published".to_owned(),
            ));
        }
        Ok(())
    }

    /// Sends `proposal` to the story's subject with the conditions JetStream checks; the
    /// acknowledgement is awaited separately.
    async fn send(
        &self,
        request: &pb::PublishRequest,
        proposal: &Proposal,
        expected_subject_sequence: u64,
    ) -> Result<PublishAckFuture, jetstream::context::PublishError> {
        let mut message = PublishMessage::build()
            .payload(proposal.encode_to_vec().into())
            .expected_last_subject_sequence(expected_subject_sequence);
        if !request.event_id.is_empty() {
            message = message.message_id(&request.event_id);
        }
        let subject = stream::subject(&self.stream_name, &request.story_id);
        self.context.send_publish(subject, message).await
    }

    /// Waits until the replica has applied what JetStream acknowledged, and answers with the
    /// receipt: the event's, or for a duplicate the original's (or `EventIdReused`).
    async fn settle(
        &self,
        ack: jetstream::publish::PublishAck,
        request: &pb::PublishRequest,
    ) -> Result<pb::PublishResponse, Refused> {
        let sequence = ack.sequence;
        if tokio::time::timeout(APPLY_TIMEOUT, self.log.visible(sequence))
            .await
            .is_err()
        {
            return Err(Refused::Unavailable(format!(
                "JetStream acknowledged the publish at sequence {sequence}, but this node has not applied it within {}s; retry with the same event_id",
                APPLY_TIMEOUT.as_secs()
            )));
        }
        let receipt = if ack.duplicate {
            self.log.receipt_for_duplicate(sequence, request)
        } else {
            self.log.receipt_at(sequence).map(Ok)
        };
        // Only a retention far smaller than the publishers' traffic evicts it this fast.
        receipt
            .unwrap_or_else(|| {
                Err(LogError::NotRetained {
                    requested: sequence,
                    first_retained: self.log.first_retained(),
                })
            })
            .map_err(Refused::Log)
    }

    /// After a conflict on `story_id`: waits until the replica has applied everything the stream
    /// holds now and, if the story's newest event is still at `expected` there, until it moves.
    /// JetStream also refuses while the other node's event is still being replicated, before
    /// the stream's last sequence counts it; an event that never commits (its leader died)
    /// leaves the story where it was, and [`CONFLICT_WAIT`] bounds that wait.
    async fn catch_up(&self, story_id: &str, expected: u64) -> Result<(), Refused> {
        let mut stream = self.stream.clone();
        let last = stream
            .info()
            .await
            .map_err(|e| Refused::Unavailable(format!("JetStream stream info: {e}")))?
            .state
            .last_sequence;
        tokio::time::timeout(APPLY_TIMEOUT, self.log.visible(last))
            .await
            .map_err(|_| {
                Refused::Unavailable(format!(
                    "this node has not caught up with the stream's sequence {last} within {}s",
                    APPLY_TIMEOUT.as_secs()
                ))
            })?;
        let mut head = self.log.watch_head();
        let moved = async {
            while self.log.subject_sequence(story_id) == expected {
                if head.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CONFLICT_WAIT, moved).await;
        Ok(())
    }
}

/// `receipt` as the answer to this call: a receipt JetStream or the replica gave as a duplicate
/// is this call's own attempt, stored although its answer was lost or a conflict, when its event
/// carries the stamp of a proposal this call sent (`sent_at`, recorded per attempt); the client
/// sent it once, so it is no duplicate.
fn own_attempt(mut receipt: pb::PublishResponse, sent_at: &[Timestamp]) -> pb::PublishResponse {
    if receipt.duplicate && receipt.recorded_at.is_some_and(|at| sent_at.contains(&at)) {
        receipt.duplicate = false;
    }
    receipt
}

/// Whether JetStream refused a publish because the story's newest event in the stream is not the
/// one expected: another node got there first. async-nats names only the older of the two codes
/// servers give for it (10071, and 10164 since 2.12: "wrong last sequence" without the number).
fn is_conflict(error: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    error.kind() == PublishErrorKind::WrongLastSequence
        || error
            .source()
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|error| {
                error.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            })
}

/// A publish decided and, unless it repeated a retained request, sent.
enum Begun {
    /// It repeats a retained request: its original receipt.
    Done(pb::PublishResponse),
    /// Sent to JetStream; the acknowledgement (or the failure to send) is still to be read.
    /// Boxed: it is several times the size of a receipt.
    Sent(Box<Sent>),
}

/// A publish sent to JetStream, its acknowledgement still to be read.
struct Sent {
    /// What was sent.
    proposal: Proposal,
    /// The story's newest stream sequence it was decided against.
    expected: u64,
    /// The acknowledgement to wait for, or why the send failed.
    ack: Result<PublishAckFuture, jetstream::context::PublishError>,
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

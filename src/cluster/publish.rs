//! Publishing through the stream: a publish is decided against this node's replica and appended
//! by JetStream only if the story has not changed since; a PublishStream's burst is sent a run of
//! distinct stories at a time; a subscriber resuming ahead of the replica waits for it. This is
//! the cluster's side of the [`Publisher`] seam.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use futures_util::future::BoxFuture;
use pbjson_types::Timestamp;
use prost::Message as _;
use tokio::sync::watch;

use super::{Node, stream};
use crate::{
    log::{
        EventLog, LogError,
        replicated::{Plan, Proposal},
    },
    pb,
    publisher::{Publisher, Refused},
};

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

/// The cluster's side of the seam: the stream is the log of record, this node's log its replica.
impl Publisher for Node {
    /// Publishes a burst through the stream, each request decided against the replica, then
    /// appended by JetStream only if the story's newest event in the stream is still the one
    /// the decision saw (otherwise decided again, a bounded number of times), and answered once
    /// JetStream has acknowledged it and this node's replica has applied it, so that a read on
    /// this node right after sees it. Requests to different stories are sent in order and in
    /// flight together (each story's condition in the stream is independent of the others'); a
    /// request to a story already in flight waits for it, in the next run.
    fn publish_all<'a>(
        &'a self,
        requests: Vec<pb::PublishRequest>,
        published_by: &'a str,
    ) -> BoxFuture<'a, Vec<Result<pb::PublishResponse, Refused>>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(requests.len());
            let mut requests = requests.into_iter().peekable();
            while requests.peek().is_some() {
                let mut stories = HashSet::new();
                let mut run = Vec::new();
                while let Some(request) = requests.next_if(|r| !stories.contains(&r.story_id)) {
                    stories.insert(request.story_id.clone());
                    run.push(request);
                }
                outcomes.extend(self.publish_in_order(run, published_by).await);
            }
            outcomes
        })
    }

    /// A position beyond the replica's head may be the stream's already: a subscriber resuming
    /// here with what another node, further ahead, gave it; the node waits for its replica to
    /// reach it ([`Node::reach_on_stream`]).
    fn reach(&self, from: u64, named_log: bool) -> BoxFuture<'_, Result<(), Refused>> {
        Box::pin(async move {
            match self.log.check_position(from) {
                Err(LogError::BeyondHead { .. }) => self.reach_on_stream(from, named_log).await,
                checked => checked.map_err(Refused::from),
            }
        })
    }

    /// Whether the node may be called SERVING: connected to NATS, its replica caught up with
    /// the stream as of start-up, and following it.
    fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }

    /// The node's replica of the stream.
    fn log(&self) -> &Arc<EventLog> {
        &self.log
    }
}

impl Node {
    /// Publishes requests to distinct stories, each as [`Publisher::publish_all`] says: decided
    /// and sent one after another, so that JetStream appends them in request order (one connection
    /// keeps its order), and acknowledged together. Outcomes in request order.
    async fn publish_in_order(
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
    async fn reach_on_stream(&self, from: u64, named_log: bool) -> Result<(), Refused> {
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

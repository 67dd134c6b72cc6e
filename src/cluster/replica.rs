//! The node's replica of the stream: a task that reads the stream in order from where the replica
//! stands and applies each message to the in-memory log, reading from the stream's leader while
//! its consumer is silent, and starting again from a snapshot (`snapshots`) when retention
//! overtook it.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    object_store::ObjectStore,
};
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::watch;

use super::snapshots;
use crate::log::{EventLog, replicated::Proposal};

/// How many messages one pull asks for.
const PULL_BATCH: usize = 1_000;

/// How long one pull waits on the server for messages before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How many times a replica that fell behind reads the snapshot again, [`RETRY_DELAY`] apart,
/// before it gives up: the server it reaches may have been down, and be catching up itself.
const REBUILD_ATTEMPTS: u32 = 50;

/// When a pull's end is due: the server ends it at [`PULL_EXPIRES`] even with nothing to
/// deliver, so a pull still unended half a second later went to a consumer leader that is cut off
/// or paused (perhaps after delivering some of it), and the replica reads from the stream's leader
/// until the consumer answers.
const PULL_ANSWER: Duration = Duration::from_millis(1_500);

/// How many messages the replica asks the stream's leader for at once while the consumer is
/// silent: one at a time, a round trip each, falls behind a busy newsroom's publishers.
const DIRECT_BATCH: u64 = 64;

/// How often the replica reads from the stream's leader while the consumer is silent.
const DIRECT_POLL: Duration = Duration::from_millis(100);

/// How long the consumer may go without answering before it is created again: a consumer whose
/// leader was cut off has another within JetStream's election timeout (4 to 9 seconds), so this
/// is well past an election. Meanwhile the replica reads from the stream's leader.
const CONSUMER_PATIENCE: Duration = Duration::from_secs(20);

/// How long to wait before following the stream again after an error.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Whether a pull's error says the consumer no longer exists, rather than that no one answers
/// for it right now: the server's 404 or 409 "Consumer Deleted".
fn consumer_gone(error: &str) -> bool {
    error.contains("Consumer Deleted") || error.contains("404")
}

/// Why following the stream stopped.
#[derive(Debug)]
enum Stop {
    /// The connection or the server failed: follow again once NATS is back.
    Transient(String),
    /// The stream evicted events the replica had not applied yet; the oldest it holds now is
    /// this one: start again from the newest snapshot.
    Behind(u64),
    /// The stream holds what the replica cannot apply, or lost what it had not applied yet: the
    /// replica stops rather than build a projection with a hole.
    Fatal(String),
}

/// The task that keeps the log a replica of the stream.
pub struct Replica {
    /// The log the stream's messages are applied to.
    pub log: Arc<EventLog>,
    /// The stream.
    pub stream: jetstream::stream::Stream,
    /// Where snapshots go.
    pub snapshots: ObjectStore,
    /// Messages up to this sequence are folded into the snapshot the replica started from: they
    /// are kept for reading, not applied again.
    pub snapshot_head: u64,
    /// The next sequence to apply.
    pub next: u64,
    /// How many servers keep the consumer: as many as keep the stream.
    pub consumer_replicas: usize,
    /// The stream's last sequence when the replica started following it (at start-up, or again
    /// after a lost connection): it is caught up once it has applied it.
    pub start_head: u64,
    /// A snapshot is written each time the replica applies a multiple of this sequence.
    pub snapshot_every: u64,
    /// Turns true once the replica has caught up with `start_head`.
    pub caught_up: watch::Sender<bool>,
    /// Turns true when the replica has stopped for good (see [`Stop::Fatal`]).
    pub failed: watch::Sender<bool>,
    /// Whether the client is connected to NATS now.
    pub connected: watch::Receiver<bool>,
    /// How many times in a row a rebuild found no snapshot that reaches the stream's start.
    pub rebuild_attempts: u32,
    /// The head of the newest snapshot this node wrote, so that writes finishing out of order
    /// never replace a newer snapshot with an older one.
    pub written: Arc<tokio::sync::Mutex<u64>>,
}

impl Replica {
    /// Follows the stream until the log is dropped or the stream holds what cannot be applied.
    pub async fn run(mut self) {
        // Exposed from the start, before the first message.
        self.log.metrics().replica();
        if self.next > self.start_head {
            self.caught_up.send_replace(true);
        }
        loop {
            if self.connected.wait_for(|up| *up).await.is_err() {
                return;
            }
            match self.follow().await {
                Stop::Transient(reason) => {
                    tracing::warn!(%reason, next = self.next, "replica: following the stream again");
                    // Creating a consumer needs JetStream's meta leader, which may be the server
                    // that is cut off: meanwhile the stream's leader may still answer.
                    if let Err(Stop::Fatal(reason)) = self.read_directly().await {
                        tracing::error!(%reason, "replica: stopped; this node serves no more updates until restarted");
                        self.failed.send_replace(true);
                        return;
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Stop::Behind(first) => {
                    tracing::warn!(
                        next = self.next,
                        first,
                        "replica: fell behind the stream's retention; starting again from the newest snapshot"
                    );
                    match self.rebuild(first).await {
                        Ok(()) => {}
                        Err(Stop::Fatal(reason)) => {
                            tracing::error!(%reason, "replica: stopped; this node serves no more updates until restarted");
                            self.failed.send_replace(true);
                            return;
                        }
                        Err(other) => {
                            tracing::warn!(?other, "replica: cannot read the snapshot yet");
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
                Stop::Fatal(reason) => {
                    tracing::error!(%reason, next = self.next,
                        "replica: stopped; this node serves no more updates until restarted");
                    self.failed.send_replace(true);
                    return;
                }
            }
        }
    }

    /// Reads the stream from `next` and applies each message, until something stops it.
    ///
    /// The consumer has as many replicas as the stream, so that it has a Raft group of its own:
    /// when the server leading it is cut off, the servers on the majority side elect another
    /// leader and the pulls go on through it, with no new consumer to create (which would need
    /// JetStream's meta leader, itself perhaps on the cut-off side, and would be placed at random,
    /// perhaps on the cut-off server again). A pull that goes unanswered is sent again to the
    /// same consumer; only a consumer that is gone, or that skipped a sequence, is created again.
    async fn follow(&mut self) -> Stop {
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                num_replicas: self.consumer_replicas,
                memory_storage: true,
                ..Default::default()
            })
            .await;
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => return Stop::Transient(format!("creating a consumer: {error}")),
        };
        // Following again after a lost connection: until the replica has what the stream holds
        // now, it is catching up, and the node is not SERVING.
        match self.stream.info().await {
            Ok(info) if info.state.last_sequence >= self.next => {
                self.start_head = self.start_head.max(info.state.last_sequence);
                let behind = info.state.last_sequence + 1 - self.next;
                self.log.metrics().replica().behind(behind);
                if *self.caught_up.borrow() {
                    tracing::info!(
                        next = self.next,
                        last = self.start_head,
                        "replica: catching up again"
                    );
                    self.caught_up.send_replace(false);
                }
            }
            Ok(_) => {}
            Err(error) => return Stop::Transient(format!("stream info: {error}")),
        }
        // Whether the consumer has gone silent and the replica reads from the stream's leader.
        let mut direct = false;
        // Since when the consumer has not answered a pull.
        let mut silent_since: Option<std::time::Instant> = None;
        loop {
            let batch = consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => return Stop::Transient(format!("pulling: {error}")),
            };
            let mut answer_due = Some(Box::pin(tokio::time::sleep(PULL_ANSWER)));
            let mut answered = false;
            let mut polls = tokio::time::interval(DIRECT_POLL);
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    () = async { answer_due.as_mut().expect("armed").await }, if answer_due.is_some() => {
                        // Unended past its expiry, whether or not some messages came first: a
                        // consumer leader cut off mid-pull leaves it to the client's own timer,
                        // seconds later, and nothing would be read meanwhile.
                        answer_due = None;
                        if !direct {
                            tracing::warn!(next = self.next, answered, "replica: the consumer's pull has not ended; reading from the stream's leader meanwhile");
                            direct = true;
                        }
                        continue;
                    }
                    _ = polls.tick(), if direct => {
                        if let Err(stop) = self.read_directly().await {
                            return self.skipped_or(stop).await;
                        }
                        continue;
                    }
                };
                let message = match next {
                    None => break,
                    // Gone for good (deleted, or lost with every server that kept it): again.
                    Some(Err(error)) if consumer_gone(&error.to_string()) => {
                        return Stop::Transient(format!("pulling: {error}"));
                    }
                    // No one answers for the consumer now (its leader is cut off, or moved): the
                    // pull is void, the consumer lives on, and the stream's leader is read.
                    Some(Err(error)) => {
                        if !direct {
                            tracing::warn!(%error, next = self.next, "replica: the consumer does not answer; reading from the stream's leader meanwhile");
                            direct = true;
                        }
                        if let Err(stop) = self.read_directly().await {
                            return self.skipped_or(stop).await;
                        }
                        tokio::time::sleep(DIRECT_POLL).await;
                        answer_due = None;
                        break;
                    }
                    Some(Ok(message)) => message,
                };
                answered = true;
                direct = false;
                let (sequence, pending, published) = match message.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        info.pending,
                        info.published.unix_timestamp_nanos(),
                    ),
                    Err(error) => return Stop::Transient(format!("message info: {error}")),
                };
                if let Err(stop) = self.take(sequence, &message.payload) {
                    return self.skipped_or(stop).await;
                }
                self.note_applied(pending, published);
                // At once, not when the pull ends: a pull that finds fewer messages than it asked
                // for waits out its expiry first.
                self.note_caught_up();
            }
            // A pull the server answered ends at its expiry, before its answer is due; one that
            // went unanswered ends on the client's own timer, seconds later.
            if answer_due.is_some() {
                answered = true;
            }
            if answered {
                silent_since = None;
                if direct {
                    tracing::info!(next = self.next, "replica: the consumer answers again");
                    direct = false;
                }
            } else {
                let since = *silent_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > CONSUMER_PATIENCE {
                    return Stop::Transient(format!(
                        "the consumer has not answered for {}s",
                        CONSUMER_PATIENCE.as_secs()
                    ));
                }
            }
            self.note_caught_up();
        }
    }

    /// Reads what the stream holds past `next` from the stream's leader, [`DIRECT_BATCH`]
    /// messages at a time, asked for together: while the consumer is silent (its leader cut off,
    /// an election under way), the replica keeps up with the majority side this way. Messages the
    /// consumer delivers again later are skipped.
    async fn read_directly(&mut self) -> Result<(), Stop> {
        let info = tokio::time::timeout(super::stream::API_TIMEOUT, self.stream.info()).await;
        let last = match info {
            Ok(Ok(info)) => info.state.last_sequence,
            // No leader answers: nothing to read from, and the quorum watch says so.
            _ => return Ok(()),
        };
        while self.next <= last {
            let upto = last.min(self.next + DIRECT_BATCH - 1);
            let stream = &self.stream;
            let reads = (self.next..=upto).map(|sequence| {
                tokio::time::timeout(super::stream::API_TIMEOUT, stream.get_raw_message(sequence))
            });
            for read in futures_util::future::join_all(reads).await {
                match read {
                    Ok(Ok(message)) => self.take(message.sequence, &message.payload)?,
                    // Evicted, or the leader is gone: the consumer or the next poll goes on.
                    _ => return Ok(()),
                }
            }
            self.note_caught_up();
        }
        Ok(())
    }

    /// What to do when a message arrived past `next`: a consumer whose leadership moved may
    /// resume past messages its old leader sent that never arrived, and the stream still holds
    /// them, so a new consumer from `next` reads them; only when the stream itself starts past
    /// `next` did retention overtake the replica.
    async fn skipped_or(&mut self, stop: Stop) -> Stop {
        let Stop::Behind(_) = stop else {
            return stop;
        };
        match self.stream.info().await {
            Ok(info) if info.state.first_sequence <= self.next => Stop::Transient(format!(
                "the consumer skipped from {} to a later sequence; reading again from {}",
                self.next, self.next
            )),
            Ok(info) => Stop::Behind(info.state.first_sequence),
            Err(error) => Stop::Transient(format!("stream info: {error}")),
        }
    }

    /// Records in the metrics that the replica applied a message JetStream stored at
    /// `published` (nanoseconds since the Unix epoch, by the server's clock), with `pending`
    /// messages after it.
    fn note_applied(&self, pending: u64, published: i128) {
        let replica = self.log.metrics().replica();
        replica.behind(pending);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        // A server clock ahead of this node's reads as no delay rather than a negative one.
        let delay = i128::try_from(now).unwrap_or(i128::MAX) - published;
        replica.applied_after(std::time::Duration::from_nanos(
            u64::try_from(delay).unwrap_or(0),
        ));
    }

    /// Turns the replica caught up once it has applied `start_head`.
    fn note_caught_up(&self) {
        if self.next > self.start_head && !*self.caught_up.borrow() {
            tracing::info!(head = self.next - 1, "replica: caught up with the stream");
            self.caught_up.send_replace(true);
        }
    }

    /// Applies the message at `sequence` (or keeps it, when the snapshot folds it in already),
    /// and shows it to readers.
    fn take(&mut self, sequence: u64, payload: &[u8]) -> Result<(), Stop> {
        if sequence < self.next {
            // Delivered again after the consumer was recreated.
            return Ok(());
        }
        if sequence > self.next {
            let nothing_kept =
                self.log.appended() + 1 == self.next && self.log.first_retained() == self.next;
            if nothing_kept && sequence <= self.snapshot_head + 1 {
                // Retention moved the stream's start while this node was starting; the snapshot
                // still covers everything before it.
                self.log.start_at(sequence);
                self.next = sequence;
            } else {
                return Err(Stop::Behind(sequence));
            }
        }
        let proposal = Proposal::decode(payload)
            .map_err(|e| Stop::Fatal(format!("sequence {sequence} cannot be decoded: {e}")))?;
        let taken = if sequence <= self.snapshot_head {
            self.log
                .restore_replicated(sequence, proposal, self.snapshot_head)
        } else {
            self.log.replicate(sequence, proposal)
        };
        taken.map_err(Stop::Fatal)?;
        if sequence > self.snapshot_head {
            self.log.metrics().appended(1);
        }
        self.next = sequence + 1;
        self.log.show(sequence);
        if sequence.is_multiple_of(self.snapshot_every) && sequence > self.snapshot_head {
            snapshots::write(&self.log, &self.snapshots, &self.written);
        }
        Ok(())
    }

    /// Starts the replica again from the newest snapshot, which must reach `first`, the stream's
    /// oldest message now. On failure the replica stops.
    async fn rebuild(&mut self, first: u64) -> Result<(), Stop> {
        let snapshot = snapshots::load(&self.snapshots, self.log.log_id())
            .await
            .map_err(|error| Stop::Transient(error.to_string()))?;
        let head = snapshot.as_ref().map_or(0, |snapshot| snapshot.head);
        let Some(snapshot) = snapshot.filter(|_| head + 1 >= first) else {
            let hole = format!(
                "the stream starts at sequence {first}, but the newest snapshot is as of sequence {head}: the replica would hold a hole"
            );
            // A server that was down may answer before it has the newest snapshot itself.
            self.rebuild_attempts += 1;
            return Err(if self.rebuild_attempts < REBUILD_ATTEMPTS {
                Stop::Transient(hole)
            } else {
                Stop::Fatal(hole)
            });
        };
        self.rebuild_attempts = 0;
        self.log.rebuild(snapshot, first);
        self.snapshot_head = head;
        self.next = first;
        Ok(())
    }
}

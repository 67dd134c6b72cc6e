//! Reconnect storm: a durable server with every reader connected restarts, and every
//! reader comes back at once, each asking for the last 1,000 events, while the desk keeps
//! publishing.
//!
//! One run: a fresh `--data-dir`; [`PRELOAD_EVENTS`] events published, so that "1,000 back"
//! exists; N subscribers, each on a connection of its own, subscribed live; a desk publishing one
//! event every [`INTERVAL`] with unary Publish, each with an event_id of its own, for the quiet
//! phase. Then SIGTERM: the server drains (every subscription gets the events up to the head and
//! ends UNAVAILABLE) and exits, and starts again on the same directory and address. Each
//! subscriber, as soon as its stream ends, connects again every [`RETRY_INTERVAL`] until the
//! server answers, and resumes [`RESUME_BACK`] events back from the head at the restart; the desk
//! resends an unanswered publish with the same event_id until it is acknowledged. The storm is
//! over when every subscriber has had caught_up and every event the desk had acknowledged by
//! then; the desk then publishes what it still had due, and every subscriber reads to the last
//! event, for the gaps and duplicates.
//!
//! Everything is bounded in time ([`STORM_TIMEOUT`] for the storm itself), only 127.0.0.1 is
//! spoken to, and the server is stopped by its process id at the end.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::Instant,
};
use tonic::{
    Streaming,
    transport::{Channel, Endpoint},
};

use crate::error::{Result, failed};
use crate::report::{histogram, ms_at};
use crate::{
    load::{self, Rate, STORY, connect, publish, subscribe_each},
    process::{ServerProcess, Target, cpu_seconds_of},
    readers::{open_descriptors, room_for, settle},
    report::{Figure, cell, quantile},
};

/// Events in the log before the subscribers connect: more than [`RESUME_BACK`], so that resuming
/// that far back reads retained events and never asks for sequence 0.
const PRELOAD_EVENTS: u64 = 2_000;
/// How far back from the head at the restart every subscriber resumes: a reader's page that
/// rebuilds its recent history after a reconnect, the heavy case for the server.
const RESUME_BACK: u64 = 1_000;
/// How often the desk publishes, as a busy story's live updates might come.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long a subscriber or the desk waits between attempts while the server is away: a client's
/// reconnect back-off, short so that the figures count the server's time more than the wait.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How long the desk waits for one publish to be answered before it resends it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the old server may take to drain and exit after SIGTERM: its own `--shutdown-grace`
/// (10 s) and then some.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, from the restarted server listening, every subscriber has to catch up before the
/// run gives up on the rest (and counts them).
const STORM_TIMEOUT: Duration = Duration::from_secs(120);
/// Time for the start-up and the tail of a run besides the quiet phase and the storm, in the
/// deadline every task of the run keeps.
const RUN_SLACK: Duration = Duration::from_secs(90);
/// Events retained by the server: all of them, so that the resume point always exists.
const RETAIN_EVENTS: usize = 1_000_000;

/// The reconnect storm's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "storm_case")]
pub struct Args {
    /// Also run the reconnect storm: a durable server with --storm-readers
    /// subscribers, each on a connection of its own, restarts; all reconnect at once and resume
    /// 1,000 events back while a desk publishes 10 events/s.
    #[arg(long)]
    pub storm: bool,
    /// Subscribers in the reconnect storm. Each needs a descriptor in the bench and one in the
    /// server.
    #[arg(long, default_value_t = 10_000)]
    pub storm_readers: usize,
    /// Seconds of the quiet phase before the restart, whose publish latency the storm's is
    /// compared with.
    #[arg(long, default_value_t = 10)]
    pub storm_quiet_seconds: u64,
}

/// The first sequence a subscriber asks for when it resumes [`RESUME_BACK`] events back from
/// `head`, so that exactly that many are replayed (or the whole log, if it is shorter).
fn resume_sequence(head: u64) -> u64 {
    (head + 1).saturating_sub(RESUME_BACK).max(1)
}

/// What one stream delivered, against what it should have: every sequence from its first, once,
/// in order. Counts only, without [`load::Tally`]'s latency histogram, which this case does not
/// need for each of its thousands of streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sequences {
    /// The sequence expected next: one past the highest seen.
    next: u64,
    /// Events received.
    events: u64,
    /// Sequences skipped, counted by how far each jump went past the next expected one, and
    /// those missing at the end ([`Self::end_at`]).
    gaps: u64,
    /// Events at or below a sequence already seen.
    duplicates: u64,
}

impl Sequences {
    /// A stream whose first event should be `first`.
    fn starting_at(first: u64) -> Self {
        Self {
            next: first,
            ..Self::default()
        }
    }

    /// Counts the event `sequence`, just received.
    fn see(&mut self, sequence: u64) {
        self.events += 1;
        if sequence < self.next {
            self.duplicates += 1;
            return;
        }
        self.gaps += sequence - self.next;
        self.next = sequence + 1;
    }

    /// The stream should have reached `last`: what it has not received up to it counts as gaps.
    fn end_at(&mut self, last: u64) {
        if last >= self.next {
            self.gaps += last + 1 - self.next;
            self.next = last + 1;
        }
    }
}

/// What the coordinator and the desk tell each subscriber. Each subscriber holds a clone.
#[derive(Clone)]
struct Signals {
    /// The highest sequence the desk has had acknowledged; written by the desk alone.
    acked: Arc<AtomicU64>,
    /// Where to resume: set by the coordinator once the old server has exited.
    resume_from: watch::Receiver<Option<u64>>,
    /// The last sequence published: set once the desk has stopped; each subscriber reads up to
    /// it. The coordinator keeps the sender until every subscriber has returned.
    last: watch::Receiver<Option<u64>>,
    /// Each subscriber sends exactly once: when it was complete (caught up and holding every
    /// event acknowledged so far), or `None` when it gave up. The coordinator counts them.
    completed: mpsc::UnboundedSender<Option<Instant>>,
    /// When every task of the run gives up.
    deadline: Instant,
}

/// What one subscriber saw across the restart.
#[derive(Debug, Default)]
struct Follower {
    /// Its live stream before the restart, from the head its `Started` named.
    before: Sequences,
    /// Its resumed stream, from [`resume_sequence`] to the last event published.
    resumed: Sequences,
    /// Connects and Subscribe calls that failed before the resumed stream opened.
    failed_attempts: u64,
    /// When it had caught_up and every event acknowledged by then.
    completed_at: Option<Instant>,
    /// Why it gave up, if it did.
    error: Option<String>,
}

/// One subscriber: reads its live stream until the server ends it, reconnects on a new
/// connection, resumes, and reads until it has the last event published.
async fn follow(
    endpoint: Endpoint,
    channel: Channel,
    stream: Streaming<pb::SubscribeResponse>,
    signals: Signals,
) -> Follower {
    let completed = signals.completed.clone();
    let mut follower = Follower::default();
    if let Err(error) = follow_into(&mut follower, endpoint, channel, stream, signals).await {
        follower.error = Some(error.to_string());
    }
    if follower.completed_at.is_none() {
        let _ = completed.send(None);
    }
    follower
}

/// [`follow`]'s work. Once complete, the subscriber says so at once and keeps reading to the
/// last event, for the gaps and duplicates.
async fn follow_into(
    follower: &mut Follower,
    endpoint: Endpoint,
    channel: Channel,
    mut stream: Streaming<pb::SubscribeResponse>,
    mut signals: Signals,
) -> Result<()> {
    let deadline = signals.deadline;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err("the live stream did not end before the deadline".into()),
            Ok(Ok(Some(message))) => match message.item {
                Some(Item::Started(started)) => {
                    follower.before = Sequences::starting_at(started.head_sequence + 1);
                }
                Some(Item::Event(event)) => follower.before.see(event.sequence),
                _ => {}
            },
            // The server ends every stream when it drains: UNAVAILABLE, or a plain end.
            Ok(Ok(None) | Err(_)) => break,
        }
    }
    drop(stream);
    drop(channel);

    // The channel is kept until the resumed stream has been read to its end.
    let (from, mut stream, _channel) = loop {
        let channel = connect_until(&endpoint, deadline, &mut follower.failed_attempts).await?;
        let from =
            match tokio::time::timeout_at(deadline, signals.resume_from.wait_for(Option::is_some))
                .await
            {
                Ok(Ok(from)) => from.expect("waited for"),
                _ => return Err("no resume point before the deadline".into()),
            };
        let request = pb::SubscribeRequest {
            from_sequence: Some(from),
            ..Default::default()
        };
        let mut client = StoryServiceClient::new(channel.clone());
        match tokio::time::timeout_at(deadline, client.subscribe(request)).await {
            Ok(Ok(response)) => break (from, response.into_inner(), channel),
            Ok(Err(_)) => {
                follower.failed_attempts += 1;
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(_) => return Err("Subscribe did not answer before the deadline".into()),
        }
    };

    follower.resumed = Sequences::starting_at(from);
    let mut caught_up = false;
    loop {
        if let Some(last) = *signals.last.borrow()
            && follower.resumed.next > last
        {
            break;
        }
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(message)) => match message.item {
                    Some(Item::Event(event)) => follower.resumed.see(event.sequence),
                    Some(Item::CaughtUp(_)) => caught_up = true,
                    _ => {}
                },
                Ok(None) => return Err("the resumed stream ended".into()),
                Err(status) => return failed!("the resumed stream failed: {status}"),
            },
            changed = signals.last.changed() => {
                if changed.is_err() {
                    return Err("the run ended before the last event was named".into());
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err("the last event did not arrive before the deadline".into());
            }
        }
        if caught_up
            && follower.completed_at.is_none()
            && follower.resumed.next > signals.acked.load(Ordering::Acquire)
        {
            let now = Instant::now();
            follower.completed_at = Some(now);
            let _ = signals.completed.send(Some(now));
        }
    }
    if let Some(last) = *signals.last.borrow() {
        follower.resumed.end_at(last);
    }
    Ok(())
}

/// Connects to `endpoint` on a connection of its own, trying every [`RETRY_INTERVAL`] until it
/// answers or `deadline`, counting the attempts that failed.
async fn connect_until(
    endpoint: &Endpoint,
    deadline: Instant,
    failed: &mut u64,
) -> Result<Channel> {
    loop {
        match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(_)) => *failed += 1,
            Err(_) => return Err("the server did not answer before the deadline".into()),
        }
        if Instant::now() + RETRY_INTERVAL > deadline {
            return Err("the server did not answer before the deadline".into());
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
}

/// One event the desk published and had acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acked {
    /// When it was due: its tick. Latency counts from here, so that events held up behind an
    /// unanswered one are late too.
    due: Instant,
    /// When it was first sent: later than `due` when the one before it was held up.
    sent: Instant,
    /// When its acknowledgement arrived.
    acked: Instant,
    /// Its sequence in the log.
    sequence: u64,
    /// Times it was sent again, with the same event_id, after no answer or a failure.
    resends: u32,
}

/// The desk: from bench event `first` on, one unary Publish every [`INTERVAL`], each with an
/// event_id of its own, until `stop` names an end: every event due before it is published,
/// however late, so that a desk held up keeps its backlog in the figures rather than dropping
/// it; dropping `stop`'s sender ends it at once. A publish that fails or goes unanswered for
/// [`CALL_TIMEOUT`] is sent again on a new connection after [`RETRY_INTERVAL`], with the same
/// event_id, so that the server either appends it or answers that it already has it.
async fn desk(
    endpoint: Endpoint,
    first: u64,
    acked: Arc<AtomicU64>,
    stop: watch::Receiver<Option<Instant>>,
    deadline: Instant,
) -> Result<Vec<Acked>> {
    // Connected before the first tick, so that the quiet phase's latency holds no connect.
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("the desk's connect: {e}"))?;
    let mut client = StoryServiceClient::new(channel);
    let mut ticks = tokio::time::interval(INTERVAL);
    let mut published = Vec::new();
    for n in first.. {
        // Ticks missed while a publish was held up come at once, each with its own due time.
        let due = ticks.tick().await;
        if stop.has_changed().is_err() {
            return Err("the run ended under the desk".into());
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
                        return Err("the run ended under the desk".into());
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
        published.push(Acked {
            due,
            sent,
            acked: Instant::now(),
            sequence: answer.sequence,
            resends,
        });
    }
    Ok(published)
}

/// Runs [`desk`] on a thread and a runtime of its own, so that its latency is the server's and
/// the wire's, not the wait behind thousands of subscriber tasks in the bench's runtime; they
/// still share the machine's cores.
fn desk_apart(
    endpoint: Endpoint,
    first: u64,
    acked: Arc<AtomicU64>,
    stop: watch::Receiver<Option<Instant>>,
    deadline: Instant,
) -> Result<oneshot::Receiver<Result<Vec<Acked>>>, String> {
    let (sender, receiver) = oneshot::channel();
    std::thread::Builder::new()
        .name("storm-desk".into())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(desk(endpoint, first, acked, stop, deadline)),
                Err(error) => failed!("the desk's runtime: {error}"),
            };
            let _ = sender.send(outcome);
        })
        .map_err(|e| format!("the desk's thread: {e}"))?;
    Ok(receiver)
}

/// One run of the storm.
#[derive(Debug, Clone, Copy)]
struct Storm {
    /// From SIGTERM until the old server had exited (its drain).
    drain_s: f64,
    /// From SIGTERM until the new server listened.
    restart_s: f64,
    /// From the new server listening until the last subscriber was complete.
    all_from_listening_s: f64,
    /// From SIGTERM until the last subscriber was complete.
    all_from_sigterm_s: f64,
    /// Per-subscriber completion, from the new server listening.
    each_p50_s: f64,
    each_p99_s: f64,
    /// Subscribers not complete within [`STORM_TIMEOUT`] of the new server listening.
    incomplete: u64,
    /// The desk's publish latency (due to acknowledged) for events due before SIGTERM.
    quiet_p50_ms: f64,
    quiet_p99_ms: f64,
    /// The same from each event's first send, without the wait behind an earlier one.
    quiet_sent_p50_ms: f64,
    quiet_sent_p99_ms: f64,
    /// The same for events due from the new server listening until the storm was over.
    storm_p50_ms: f64,
    storm_p99_ms: f64,
    /// The same events' latency from their first send, without the wait behind an earlier one.
    storm_sent_p50_ms: f64,
    storm_sent_p99_ms: f64,
    storm_events: u64,
    /// Events due between SIGTERM and the new server listening, and the longest any took.
    outage_events: u64,
    outage_max_s: f64,
    /// Publishes sent again, over the run.
    resends: u64,
    /// Failed connects and Subscribe calls, per subscriber.
    failed_attempts_per_reader: f64,
    /// The new server's CPU seconds from its start (the log's replay included) to the end of the
    /// storm, and as cores over the storm.
    cpu_s: f64,
    cpu_cores: f64,
    /// The bench's own CPU seconds (every subscriber and the desk) over the storm.
    bench_cpu_s: f64,
    /// The old server's RSS just before SIGTERM, and the new one's peak until the storm was over.
    quiet_rss_mib: f64,
    storm_peak_rss_mib: f64,
    /// Over every subscriber's stream before the restart, and over its resumed stream.
    gaps_before: u64,
    duplicates_before: u64,
    gaps: u64,
    duplicates: u64,
}

/// A row of the storm table: its figure, and the goal for it where it sets one.
type Row = (Figure<Storm>, &'static str);

/// The storm table's rows.
const ROWS: [Row; 26] = [
    (
        (
            "SIGTERM to the old server's exit (its drain), s",
            |r| r.drain_s,
            3,
        ),
        "",
    ),
    (
        ("SIGTERM to the new server listening, s", |r| r.restart_s, 3),
        "",
    ),
    (
        (
            "all caught up, from the new server listening, s",
            |r| r.all_from_listening_s,
            3,
        ),
        "≤ 10",
    ),
    (
        (
            "all caught up, from SIGTERM, s",
            |r| r.all_from_sigterm_s,
            3,
        ),
        "",
    ),
    (
        ("each caught up, p50 from listening, s", |r| r.each_p50_s, 3),
        "",
    ),
    (
        ("each caught up, p99 from listening, s", |r| r.each_p99_s, 3),
        "",
    ),
    (
        (
            "subscribers not caught up within 120 s",
            |r| r.incomplete as f64,
            0,
        ),
        "0",
    ),
    (("publish ack p50, quiet, ms", |r| r.quiet_p50_ms, 2), ""),
    (("publish ack p99, quiet, ms", |r| r.quiet_p99_ms, 2), ""),
    (
        (
            "publish p50, quiet, from its first send, ms",
            |r| r.quiet_sent_p50_ms,
            2,
        ),
        "",
    ),
    (
        (
            "publish p99, quiet, from its first send, ms",
            |r| r.quiet_sent_p99_ms,
            2,
        ),
        "",
    ),
    (("publish ack p50, storm, ms", |r| r.storm_p50_ms, 2), ""),
    (("publish ack p99, storm, ms", |r| r.storm_p99_ms, 2), ""),
    (
        (
            "publish ack p99, storm / quiet",
            |r| r.storm_p99_ms / r.quiet_p99_ms.max(1e-9),
            2,
        ),
        "≤ 3",
    ),
    (
        (
            "publish p50, storm, from its first send, ms",
            |r| r.storm_sent_p50_ms,
            2,
        ),
        "",
    ),
    (
        (
            "publish p99, storm, from its first send, ms",
            |r| r.storm_sent_p99_ms,
            2,
        ),
        "",
    ),
    (
        ("publishes due in the storm", |r| r.storm_events as f64, 0),
        "",
    ),
    (
        (
            "publishes due in the outage (SIGTERM to listening)",
            |r| r.outage_events as f64,
            0,
        ),
        "",
    ),
    (
        (
            "longest outage publish, due to ack, s",
            |r| r.outage_max_s,
            3,
        ),
        "",
    ),
    (
        (
            "publishes resent with the same event_id",
            |r| r.resends as f64,
            0,
        ),
        "",
    ),
    (
        (
            "failed connects and Subscribes per reader",
            |r| r.failed_attempts_per_reader,
            2,
        ),
        "",
    ),
    (
        (
            "new server CPU from its start to the storm's end, s",
            |r| r.cpu_s,
            2,
        ),
        "",
    ),
    (
        ("new server CPU over the storm, cores", |r| r.cpu_cores, 2),
        "",
    ),
    (
        (
            "bench (all clients) CPU over the storm, s",
            |r| r.bench_cpu_s,
            2,
        ),
        "",
    ),
    (
        ("server RSS before SIGTERM, MiB", |r| r.quiet_rss_mib, 1),
        "",
    ),
    (
        (
            "new server peak RSS in the storm, MiB",
            |r| r.storm_peak_rss_mib,
            1,
        ),
        "",
    ),
];

/// Runs the storm `runs` times and prints its table.
pub async fn run(args: &Args, runs: usize) -> Result<()> {
    let count = args.storm_readers;
    room_for(count)?;
    let quiet = Duration::from_secs(args.storm_quiet_seconds.max(1));
    println!(
        "\nReconnect storm: {count} subscribers, each on a connection of its own, on a server with --data-dir and {PRELOAD_EVENTS} events; a desk publishes one event every {} ms (unary Publish, an event_id each) for {} s, then the server gets SIGTERM, drains, exits and starts again on the same directory and port; every subscriber reconnects (every {} ms until answered) and resumes {RESUME_BACK} events back, the desk resending what went unanswered. Median (min–max) of {runs} runs.",
        INTERVAL.as_millis(),
        quiet.as_secs(),
        RETRY_INTERVAL.as_millis(),
    );
    let mut results = Vec::new();
    let mut failed = 0;
    for run in 0..runs {
        match once(count, quiet, run).await {
            Ok(result) => {
                eprintln!("storm, {count} readers: {result:?}");
                results.push(result);
            }
            Err(error) => {
                eprintln!("storm, {count} readers: failed: {error}");
                failed += 1;
            }
        }
    }
    println!("\n{}", table(count, &results, failed));
    Ok(())
}

/// The storm table: a row per figure, then the gaps and duplicates over every run.
fn table(count: usize, results: &[Storm], failed: usize) -> String {
    let mut lines = vec![
        format!("| {count} readers, reconnect storm | storywire | goal |"),
        "|---|---|---|".to_owned(),
    ];
    for ((name, f, decimals), goal) in ROWS {
        let values: Vec<f64> = results.iter().map(f).collect();
        let value = if values.is_empty() {
            "–".to_owned()
        } else {
            cell(&values, decimals)
        };
        lines.push(format!("| {name} | {value} | {goal} |"));
    }
    let sum = |f: fn(&Storm) -> u64| -> u64 { results.iter().map(f).sum() };
    lines.push(format!(
        "| gaps / duplicates over the resumed streams, all runs | {} / {} | 0 / 0 |",
        sum(|r| r.gaps),
        sum(|r| r.duplicates)
    ));
    lines.push(format!(
        "| gaps / duplicates over the live streams before the restart, all runs | {} / {} | |",
        sum(|r| r.gaps_before),
        sum(|r| r.duplicates_before)
    ));
    if failed > 0 {
        lines.push(format!("| runs that failed (see the log) | {failed} | |"));
    }
    lines.join("\n")
}

/// One run in a fresh data directory, removed afterwards.
async fn once(count: usize, quiet: Duration, run: usize) -> Result<Storm> {
    let dir = std::env::temp_dir().join(format!("storywire-storm-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let extra = vec!["--data-dir".to_owned(), dir.display().to_string()];
    let outcome = storm(count, quiet, &extra).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// One run against a server started with `extra` (its data directory).
async fn storm(count: usize, quiet: Duration, extra: &[String]) -> Result<Storm> {
    let server = ServerProcess::start_with(Target::Storywire, RETAIN_EVENTS, extra).await?;
    let address: SocketAddr = server.address;
    let url = server.url();
    let preload = connect(&url, 1).await?.remove(0);
    publish(preload, PRELOAD_EVENTS, Rate::Max).await?;

    let descriptors = open_descriptors();
    let (channels, streams) = subscribe_each(&url, count).await?;
    let deadline = Instant::now() + quiet + STORM_TIMEOUT + RUN_SLACK;
    let endpoint = Endpoint::from_shared(url.clone())?.tcp_nodelay(true);
    let acked = Arc::new(AtomicU64::new(PRELOAD_EVENTS));
    let (resume_from, resume_from_rx) = watch::channel(None);
    let (last, last_rx) = watch::channel(None);
    let (completed, mut completions) = mpsc::unbounded_channel();
    let signals = Signals {
        acked: acked.clone(),
        resume_from: resume_from_rx,
        last: last_rx,
        completed,
        deadline,
    };
    // Dropping a JoinSet aborts its tasks: a run that fails half-way leaves nothing running.
    let mut followers = JoinSet::new();
    for (channel, stream) in channels.into_iter().zip(streams) {
        followers.spawn(follow(endpoint.clone(), channel, stream, signals.clone()));
    }
    drop(signals);
    let (stop, stop_rx) = watch::channel(None);
    let desk = desk_apart(
        endpoint.clone(),
        PRELOAD_EVENTS + 1,
        acked.clone(),
        stop_rx,
        deadline,
    )?;

    // The quiet phase is a fixed window of the bench's own clock: there is nothing to await.
    tokio::time::sleep(quiet).await;
    let quiet_rss = server.rss_bytes();
    let sigterm_at = Instant::now();
    server.terminate(EXIT_TIMEOUT).await?;
    let exited_at = Instant::now();
    resume_from.send_replace(Some(resume_sequence(acked.load(Ordering::Acquire))));
    let server = ServerProcess::start_on(Target::Storywire, address, RETAIN_EVENTS, extra).await?;
    let listening_at = Instant::now();
    let bench_cpu_before = cpu_seconds_of(std::process::id());

    let storm_deadline = (listening_at + STORM_TIMEOUT).min(deadline);
    let mut done = Vec::with_capacity(count);
    let mut gave_up = 0u64;
    while done.len() + (gave_up as usize) < count {
        match tokio::time::timeout_at(storm_deadline, completions.recv()).await {
            Ok(Some(Some(at))) => done.push(at),
            Ok(Some(None)) => gave_up += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let storm_end = Instant::now();
    let cpu = server.cpu_seconds();
    let bench_cpu = cpu_seconds_of(std::process::id()) - bench_cpu_before;
    let peak_rss = server.peak_rss_bytes();

    stop.send_replace(Some(storm_end));
    let published = desk.await.map_err(|_| "the desk's thread ended")??;
    let last_sequence = published.iter().map(|a| a.sequence).max().unwrap_or(0);
    last.send_replace(Some(last_sequence));
    let mut all = Vec::with_capacity(count);
    while let Some(follower) = followers.join_next().await {
        all.push(follower?);
    }
    drop(last);
    // The clients close first and the server stays until they are gone (see readers.rs).
    settle(descriptors).await;
    server.stop().await;

    let errors: Vec<&String> = all.iter().filter_map(|f| f.error.as_ref()).collect();
    if let Some(first) = errors.first() {
        eprintln!("{} subscribers gave up; the first: {first}", errors.len());
    }
    // Every event of the desk, for the log: where its time went.
    for event in &published {
        let at = |t: Instant| {
            t.duration_since(sigterm_at).as_secs_f64() - sigterm_at.duration_since(t).as_secs_f64()
        };
        eprintln!(
            "desk: sequence {} due {:+.3} s sent {:+.3} s acked {:+.3} s after SIGTERM, {} resends",
            event.sequence,
            at(event.due),
            at(event.sent),
            at(event.acked),
            event.resends
        );
    }
    eprintln!(
        "storm: SIGTERM +0, exited {:+.3} s, listening {:+.3} s, last caught up {:+.3} s",
        (exited_at - sigterm_at).as_secs_f64(),
        (listening_at - sigterm_at).as_secs_f64(),
        (storm_end - sigterm_at).as_secs_f64()
    );
    let latency = |due_in: &dyn Fn(Instant) -> bool, from_send: bool| -> Histogram<u64> {
        let mut histogram = histogram();
        for event in published.iter().filter(|a| due_in(a.due)) {
            let start = if from_send { event.sent } else { event.due };
            let micros = (event.acked - start).as_micros();
            histogram.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
        }
        histogram
    };
    let quiet_latency = latency(&|due| due < sigterm_at, false);
    let quiet_sent = latency(&|due| due < sigterm_at, true);
    let in_storm = |due| due >= listening_at && due < storm_end;
    let storm_latency = latency(&in_storm, false);
    let storm_sent = latency(&in_storm, true);
    let outage: Vec<&Acked> = published
        .iter()
        .filter(|a| a.due >= sigterm_at && a.due < listening_at)
        .collect();
    let each: Vec<f64> = done
        .iter()
        .map(|at| at.saturating_duration_since(listening_at).as_secs_f64())
        .collect();
    let last_done = done.iter().max().copied().unwrap_or(storm_end);
    let storm_seconds = last_done
        .saturating_duration_since(listening_at)
        .as_secs_f64();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Ok(Storm {
        drain_s: (exited_at - sigterm_at).as_secs_f64(),
        restart_s: (listening_at - sigterm_at).as_secs_f64(),
        all_from_listening_s: storm_seconds,
        all_from_sigterm_s: (last_done - sigterm_at).as_secs_f64(),
        each_p50_s: quantile(&each, 0.5),
        each_p99_s: quantile(&each, 0.99),
        incomplete: (count - done.len()) as u64,
        quiet_p50_ms: ms_at(&quiet_latency, 0.5),
        quiet_p99_ms: ms_at(&quiet_latency, 0.99),
        storm_p50_ms: ms_at(&storm_latency, 0.5),
        storm_p99_ms: ms_at(&storm_latency, 0.99),
        quiet_sent_p50_ms: ms_at(&quiet_sent, 0.5),
        quiet_sent_p99_ms: ms_at(&quiet_sent, 0.99),
        storm_sent_p50_ms: ms_at(&storm_sent, 0.5),
        storm_sent_p99_ms: ms_at(&storm_sent, 0.99),
        storm_events: storm_latency.len(),
        outage_events: outage.len() as u64,
        outage_max_s: outage
            .iter()
            .map(|a| (a.acked - a.due).as_secs_f64())
            .fold(0.0, f64::max),
        resends: published.iter().map(|a| u64::from(a.resends)).sum(),
        failed_attempts_per_reader: all.iter().map(|f| f.failed_attempts).sum::<u64>() as f64
            / count.max(1) as f64,
        cpu_s: cpu,
        bench_cpu_s: bench_cpu,
        cpu_cores: cpu
            / storm_end
                .saturating_duration_since(listening_at)
                .as_secs_f64()
                .max(1e-9),
        quiet_rss_mib: mib(quiet_rss),
        storm_peak_rss_mib: mib(peak_rss),
        gaps_before: all.iter().map(|f| f.before.gaps).sum(),
        duplicates_before: all.iter().map(|f| f.before.duplicates).sum(),
        gaps: all.iter().map(|f| f.resumed.gaps).sum(),
        duplicates: all.iter().map(|f| f.resumed.duplicates).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::{Sequences, resume_sequence};

    #[test]
    fn resuming_replays_exactly_the_last_thousand_events() {
        assert_eq!(resume_sequence(2_000), 1_001);
        assert_eq!(resume_sequence(1_000), 1);
        // A shorter log is replayed whole, from sequence 1 (0 would mean "the oldest retained").
        assert_eq!(resume_sequence(10), 1);
        assert_eq!(resume_sequence(0), 1);
    }

    #[test]
    fn a_resumed_stream_in_order_has_no_gap_and_no_duplicate() {
        let mut stream = Sequences::starting_at(1_001);
        for sequence in 1_001..=2_050 {
            stream.see(sequence);
        }
        stream.end_at(2_050);
        assert_eq!(
            (stream.events, stream.gaps, stream.duplicates),
            (1_050, 0, 0)
        );
    }

    #[test]
    fn skipped_repeated_and_missing_sequences_are_counted() {
        // Starts one late (a gap), repeats 3 and goes back to 2 (two duplicates), jumps from 3
        // to 6 (two gaps), and stops at 6 of 8 (two more).
        let mut stream = Sequences::starting_at(1);
        for sequence in [2, 3, 3, 2, 6] {
            stream.see(sequence);
        }
        stream.end_at(8);
        assert_eq!((stream.events, stream.gaps, stream.duplicates), (5, 5, 2));
        // A stream already past its last has nothing missing.
        let mut stream = Sequences::starting_at(1);
        stream.see(1);
        stream.end_at(0);
        assert_eq!(stream.gaps, 0);
    }
}

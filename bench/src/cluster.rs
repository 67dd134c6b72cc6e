//! The cluster case: what the JetStream journal of `storywire serve --nats` costs,
//! beside the in-memory log and `--fsync always`, in one run.
//!
//! The bench starts its own JetStream: one nats-server (streams of one replica, R1) and three
//! routed into a cluster (R3), each fsyncing every write before acknowledging it, as
//! docs/cluster.md asks. Every run of a case takes a fresh stream, as every other case takes a
//! fresh server. Four tables:
//!
//! 1. publishing: unary Publish latency, PublishStream to one story (sequential on a cluster
//!    node) and over [`STORIES`] stories (concurrent), for each log; and JetStream alone, through
//!    async-nats with no storywire in the way, for where the time goes;
//! 2. replication lag: two nodes on one stream, publishing on one at 100 events/s and
//!    subscribing on the other;
//! 3. a new node's catch-up: from spawning it on a stream of a million events to its gRPC health
//!    turning SERVING;
//! 4. fan-out on a node of the JetStream journal against the same node in memory.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::jetstream::{self, stream::StorageType};
use prost::Message;
use storywire::{log::replicated::Proposal, pb};
use storywire_testkit::nats::{Cluster as JetStream, Sync, find_nats_server};
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::error::{Result, failed};
use crate::report::{histogram, ms, ms_at, record};
use crate::{
    load::{
        self, Rate, connect, open_stories, publish_from, publish_measured, publish_spread, receive,
        subscribe_many,
    },
    matrix::{FAN_OUT_HEADER, FanOut, fan_out_rows, fan_out_with},
    process::{ServerProcess, Target, cpu_seconds_of},
    report::cell,
};

/// Stories the spread PublishStream publishes over: a burst of the server's (up to 256
/// messages) then splits into runs of 64 distinct stories, each run published concurrently.
const STORIES: u64 = 64;
/// Unary publishes, one at a time, whose latency the publishing table gives: enough for a p99
/// that is the 3rd-worst call.
const UNARY_EVENTS: u64 = 300;
/// Events the replication-lag case publishes, at [`LAG_RATE`]: ten seconds of them.
const LAG_EVENTS: u64 = 1_000;
/// Events per second in the replication-lag case.
const LAG_RATE: u64 = 100;
/// Stories the catch-up case's stream is filled over: 256, so that each burst of PublishStream
/// (up to 256 messages) is one run of distinct stories, published concurrently.
const CATCH_UP_STORIES: u64 = 256;
/// How long a new node may take to catch up before the bench gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a node on a fresh stream may take to turn SERVING.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);
/// The fan-out points run on each journal: subscribers and rate.
const FAN_OUT_POINTS: [(usize, Rate); 2] =
    [(100, Rate::PerSecond(100)), (1_000, Rate::PerSecond(100))];
/// The retention every node of the publishing and lag cases is started with: more than they
/// publish, so that nothing is evicted.
const RETAIN: usize = 10_000_000;

/// The cluster case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "cluster_case")]
pub struct Args {
    /// Also run the cluster case: publishing with the in-memory log, --fsync always,
    /// and the JetStream journal on one nats-server (R1) and on three (R3); replication lag
    /// between two nodes; a new node's catch-up; fan-out on a node of each journal. Starts its
    /// own nats-servers on loopback (see --nats-server).
    #[arg(long)]
    pub cluster: bool,
    /// Events published on PublishStream over 64 stories in the cluster case, with each log; one
    /// story gets a tenth as many.
    #[arg(long, default_value_t = 20_000)]
    pub cluster_events: u64,
    /// Events in the stream a new node catches up with, in the cluster case (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub cluster_catch_up_events: u64,
    /// The nats-server binary (2.12 or newer) for the cluster case and the NATS anchor [default:
    /// target/tools/nats/bin/nats-server in the workspace, where scripts/test installs it].
    #[arg(long, value_name = "PATH", env = "STORYWIRE_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
}

/// Where a node keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    /// In memory only.
    Memory,
    /// `--data-dir` with `--fsync always`.
    FsyncAlways,
    /// A JetStream stream of this many replicas.
    JetStream(u8),
}

impl Journal {
    /// The name used in the report.
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "in memory",
            Self::FsyncAlways => "--data-dir --fsync always",
            Self::JetStream(1) => "JetStream R1",
            Self::JetStream(_) => "JetStream R3",
        }
    }
}

/// The JetStream servers of the case, both fsyncing every write before acknowledging it.
struct Servers {
    /// One server alone, for streams of one replica.
    r1: JetStream,
    /// Three servers in a cluster, for streams of three replicas.
    r3: JetStream,
}

impl Servers {
    /// The servers that keep a stream of `replicas`.
    fn of(&self, replicas: u8) -> &JetStream {
        if replicas == 1 { &self.r1 } else { &self.r3 }
    }
}

/// A storywire node under test, with the data directory it may own.
struct Node {
    /// The process.
    server: ServerProcess,
    /// Its `--data-dir`, removed when the node stops.
    data_dir: Option<PathBuf>,
}

impl Node {
    /// Starts a node of `journal` (on stream `stream` for JetStream) keeping `retain` events, and
    /// waits until its health is SERVING.
    async fn start(
        journal: Journal,
        servers: &Servers,
        stream: &str,
        retain: usize,
    ) -> Result<Self> {
        let (extra, data_dir) = node_args(journal, servers, stream);
        let server = ServerProcess::start_with(Target::Storywire, retain, &extra).await?;
        until_serving(&server.url(), SERVING_TIMEOUT).await?;
        Ok(Self { server, data_dir })
    }

    /// Stops the node and removes its data directory.
    async fn stop(self) {
        self.server.stop().await;
        if let Some(dir) = self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The `storywire serve` arguments for `journal`, and the data directory they name, if any.
fn node_args(journal: Journal, servers: &Servers, stream: &str) -> (Vec<String>, Option<PathBuf>) {
    match journal {
        Journal::Memory => (Vec::new(), None),
        Journal::FsyncAlways => {
            let dir = std::env::temp_dir().join(format!(
                "storywire-bench-cluster-{}-{stream}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let args = vec![
                "--data-dir".into(),
                dir.display().to_string(),
                "--fsync".into(),
                "always".into(),
            ];
            (args, Some(dir))
        }
        Journal::JetStream(replicas) => {
            (jetstream_args(servers.of(replicas), stream, replicas), None)
        }
    }
}

/// The `storywire serve` arguments of a node on stream `stream` of `jetstream`.
fn jetstream_args(jetstream: &JetStream, stream: &str, replicas: u8) -> Vec<String> {
    vec![
        "--nats".into(),
        jetstream.urls(),
        "--nats-stream".into(),
        stream.into(),
        "--nats-replicas".into(),
        replicas.to_string(),
    ]
}

/// Waits, by watching gRPC health, until the server at `url` is SERVING.
async fn until_serving(url: &str, timeout: Duration) -> Result<()> {
    let channel = connect(url, 1).await?.remove(0);
    let mut health = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let mut watch = health
        .watch(request)
        .await
        .map_err(|e| format!("watch health: {e}"))?
        .into_inner();
    let serving = async {
        while let Some(reply) = watch.message().await? {
            if reply.status == i32::from(ServingStatus::Serving) {
                return Ok(());
            }
        }
        failed!("{url}: the health stream ended")
    };
    tokio::time::timeout(timeout, serving)
        .await
        .map_err(|_| format!("{url} was not SERVING within {}s", timeout.as_secs()))?
}

/// Runs the cluster case and prints its tables.
pub async fn run(args: &Args, connections: usize, runs: usize) -> Result<()> {
    let binary = find_nats_server(args.nats_server.clone())?;
    let servers = Servers {
        r1: start_jetstream(&binary, 1, Sync::Always).await?,
        r3: start_jetstream(&binary, 3, Sync::Always).await?,
    };
    // Dropping the servers kills them by PID and removes their stores.
    cases(args, &binary, &servers, connections, runs).await
}

/// How long the nats-servers may take to enable JetStream and, in a cluster, elect a meta
/// leader that counts every other server current: an election takes about a second; a loaded
/// machine more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `servers` nats-servers with JetStream on loopback, ready for a stream, fsyncing as `sync` says.
async fn start_jetstream(binary: &Path, servers: usize, sync: Sync) -> Result<JetStream> {
    match tokio::time::timeout(READY_TIMEOUT, JetStream::launch(binary, servers, sync)).await {
        Ok(started) => Ok(started?),
        Err(_) => failed!(
            "JetStream was not ready within {}s",
            READY_TIMEOUT.as_secs()
        ),
    }
}

/// User plus system CPU seconds every server of `jetstream` has used so far.
fn cpu_of(jetstream: &JetStream) -> f64 {
    (0..jetstream.len())
        .map(|index| cpu_seconds_of(jetstream.pid(index)))
        .sum()
}

/// The four tables, in order, on `servers`.
async fn cases(
    args: &Args,
    binary: &Path,
    servers: &Servers,
    connections: usize,
    runs: usize,
) -> Result<()> {
    if args.cluster_events > 0 {
        publishing(servers, args.cluster_events, runs).await?;
    }
    lag(servers, runs).await?;
    fan_out(servers, connections, runs).await?;
    if args.cluster_catch_up_events > 0 {
        catch_up(binary, args.cluster_catch_up_events, runs).await?;
    }
    Ok(())
}

/// A row of the publishing table.
#[derive(Debug, Clone, Copy)]
enum Row {
    /// Publishing through a node of this journal.
    Through(Journal),
    /// JetStream alone with this many replicas: the same publishes through async-nats, with no
    /// storywire in the way.
    Alone(u8),
}

impl Row {
    /// The name used in the report.
    fn name(self) -> String {
        match self {
            Self::Through(journal) => journal.name().to_owned(),
            Self::Alone(replicas) => {
                format!("JetStream R{replicas} alone (async-nats, no storywire)")
            }
        }
    }
}

/// One run of the publishing table, for one row.
#[derive(Debug, Clone, Copy)]
struct Publishing {
    /// Unary Publish, each call from its send to its answer.
    unary_p50_ms: f64,
    unary_p99_ms: f64,
    /// PublishStream to one story, at full speed.
    one_story_per_second: f64,
    /// PublishStream over [`STORIES`] stories, at full speed.
    spread_per_second: f64,
    /// The node's CPU per event while publishing over [`STORIES`] stories (none for JetStream
    /// alone).
    node_cpu_us: Option<f64>,
    /// The nats-servers' CPU per event, all of them together, likewise (none without JetStream).
    nats_cpu_us: Option<f64>,
}

/// The publishing table: each log, and JetStream alone, `runs` times, the rows' order rotating
/// from run to run so that none always runs on a warmer (or busier) machine.
async fn publishing(servers: &Servers, events: u64, runs: usize) -> Result<()> {
    let one_story = (events / 10).max(1);
    let rows = [
        Row::Through(Journal::Memory),
        Row::Through(Journal::FsyncAlways),
        Row::Through(Journal::JetStream(1)),
        Row::Through(Journal::JetStream(3)),
        Row::Alone(1),
        Row::Alone(3),
    ];
    let mut results: Vec<Vec<Publishing>> = vec![Vec::new(); rows.len()];
    for run in 0..runs {
        for k in 0..rows.len() {
            let i = (k + run) % rows.len();
            let result = match rows[i] {
                Row::Through(journal) => {
                    publish_through(journal, servers, run, events, one_story).await?
                }
                Row::Alone(replicas) => {
                    jetstream_alone(servers.of(replicas), replicas, run, events, one_story).await?
                }
            };
            eprintln!("cluster publishing, {}: {result:?}", rows[i].name());
            results[i].push(result);
        }
    }
    println!(
        "\nPublishing, one client: {UNARY_EVENTS} unary Publish calls one at a time; PublishStream at full speed to one story ({one_story} events) and over {STORIES} stories ({events} events); median (min–max) of {runs} runs. CPU: per event over {STORIES} stories, the node's and the nats-servers' (all of them).\n"
    );
    println!(
        "| log | unary p50 ms | unary p99 ms | PublishStream 1 story, events/s | PublishStream {STORIES} stories, events/s | node CPU µs/event | nats-server CPU µs/event |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (row, results) in rows.iter().zip(&results) {
        let column = |f: fn(&Publishing) -> f64| -> Vec<f64> { results.iter().map(f).collect() };
        let optional = |f: fn(&Publishing) -> Option<f64>| -> String {
            let values: Option<Vec<f64>> = results.iter().map(f).collect();
            values.map_or("–".to_owned(), |values| cell(&values, 1))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.name(),
            cell(&column(|r| r.unary_p50_ms), 2),
            cell(&column(|r| r.unary_p99_ms), 2),
            cell(&column(|r| r.one_story_per_second), 0),
            cell(&column(|r| r.spread_per_second), 0),
            optional(|r| r.node_cpu_us),
            optional(|r| r.nats_cpu_us),
        );
    }
    Ok(())
}

/// One run of the publishing table through a fresh node of `journal`.
async fn publish_through(
    journal: Journal,
    servers: &Servers,
    run: usize,
    events: u64,
    one_story: u64,
) -> Result<Publishing> {
    let stream = format!("PUBLISH-{run}");
    let node = Node::start(journal, servers, &stream, RETAIN).await?;
    let channel = connect(&node.server.url(), 1).await?.remove(0);
    let unary = load::publish_unary_measured(channel.clone(), UNARY_EVENTS).await?;
    let one = publish_from(channel.clone(), UNARY_EVENTS + 1, one_story, Rate::Max).await?;
    open_stories(channel.clone(), STORIES).await?;
    let nats = match journal {
        Journal::JetStream(replicas) => Some(servers.of(replicas)),
        _ => None,
    };
    let node_cpu = node.server.cpu_seconds();
    let nats_cpu = nats.map(cpu_of);
    let spread = publish_spread(channel, events, STORIES).await?;
    let per_event = |seconds: f64| seconds * 1e6 / events as f64;
    let node_cpu_us = per_event(node.server.cpu_seconds() - node_cpu);
    let nats_cpu_us = nats
        .zip(nats_cpu)
        .map(|(nats, before)| per_event(cpu_of(nats) - before));
    node.stop().await;
    Ok(Publishing {
        unary_p50_ms: ms_at(&unary.latency, 0.5),
        unary_p99_ms: ms_at(&unary.latency, 0.99),
        one_story_per_second: one_story as f64 / one.as_secs_f64(),
        spread_per_second: events as f64 / spread.as_secs_f64(),
        node_cpu_us: Some(node_cpu_us),
        nats_cpu_us,
    })
}

/// How many publishes JetStream alone keeps in flight when it stands in for PublishStream over
/// [`STORIES`] stories: as many as a cluster node sends at once.
const IN_FLIGHT: usize = STORIES as usize;

/// One run of JetStream alone, as a node would use it without the node: a fresh stream of
/// `replicas` on `jetstream`; a bench event's proposal published and its acknowledgement awaited
/// [`UNARY_EVENTS`] times, then `one_story` times; then `events` times with [`IN_FLIGHT`]
/// acknowledgements outstanding, spread over as many subjects. No expected-sequence headers, no
/// replica reading the stream back.
async fn jetstream_alone(
    jetstream: &JetStream,
    replicas: u8,
    run: usize,
    events: u64,
    one_story: u64,
) -> Result<Publishing> {
    let urls: Vec<async_nats::ServerAddr> = jetstream
        .urls()
        .split(',')
        .map(|url| url.parse().map_err(|e| format!("{url}: {e}")))
        .collect::<Result<_, _>>()?;
    let client = async_nats::connect(urls.as_slice())
        .await
        .map_err(|e| format!("connect to NATS: {e}"))?;
    let context = jetstream::new(client);
    let name = format!("ALONE-{run}");
    context
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.story.*")],
            storage: StorageType::File,
            num_replicas: usize::from(replicas),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create stream {name}: {e}"))?;
    let payload: bytes::Bytes = Proposal {
        request: Some(load::revision(load::STORY.into(), 2)),
        recorded_at: None,
        story_version: 2,
        filter_tags: vec!["bench".into()],
        published_by: storywire::auth::ANONYMOUS.into(),
    }
    .encode_to_vec()
    .into();
    let publish_one = |subject: String| {
        let context = context.clone();
        let payload = payload.clone();
        async move {
            context
                .publish(subject, payload)
                .await
                .map_err(|e| format!("JetStream publish: {e}"))?
                .await
                .map_err(|e| format!("JetStream acknowledgement: {e}"))
        }
    };
    let subject = |n: u64| format!("{name}.story.{}", load::story_id(n));

    let mut latency = histogram();
    for _ in 0..UNARY_EVENTS {
        let sent = Instant::now();
        publish_one(subject(0)).await?;
        record(&mut latency, sent.elapsed());
    }
    let start = Instant::now();
    for _ in 0..one_story {
        publish_one(subject(0)).await?;
    }
    let one = start.elapsed();

    let cpu = cpu_of(jetstream);
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for i in 0..events {
        if in_flight.len() == IN_FLIGHT {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                in_flight.pop_front().expect("a publish in flight");
            ack.await
                .map_err(|e| format!("JetStream acknowledgement: {e}"))?;
        }
        let ack = context
            .publish(subject(i % STORIES + 1), payload.clone())
            .await
            .map_err(|e| format!("JetStream publish: {e}"))?;
        in_flight.push_back(ack);
    }
    for ack in in_flight {
        ack.await
            .map_err(|e| format!("JetStream acknowledgement: {e}"))?;
    }
    let spread = start.elapsed();
    let nats_cpu_us = (cpu_of(jetstream) - cpu) * 1e6 / events as f64;
    Ok(Publishing {
        unary_p50_ms: ms_at(&latency, 0.5),
        unary_p99_ms: ms_at(&latency, 0.99),
        one_story_per_second: one_story as f64 / one.as_secs_f64(),
        spread_per_second: events as f64 / spread.as_secs_f64(),
        node_cpu_us: None,
        nats_cpu_us: Some(nats_cpu_us),
    })
}

/// One run of the replication-lag case.
#[derive(Debug, Clone, Copy)]
struct Lag {
    /// Arrival at node B minus the send to node A.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Node A's acknowledgement, from each event's tick.
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    /// What node B's subscriber missed or saw twice.
    gaps: u64,
    duplicates: u64,
}

/// The replication-lag table: two nodes on a fresh stream of each of R1 and R3, a subscriber on
/// node B, and a publisher on node A at [`LAG_RATE`].
async fn lag(servers: &Servers, runs: usize) -> Result<()> {
    let replicas = [1u8, 3];
    let mut results: [Vec<Lag>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        for k in 0..replicas.len() {
            let i = (k + run) % replicas.len();
            let result = lag_once(servers, replicas[i], run).await?;
            eprintln!("cluster lag, R{}: {result:?}", replicas[i]);
            results[i].push(result);
        }
    }
    println!(
        "\nReplication lag: two nodes on one stream; one client publishes {LAG_EVENTS} events on PublishStream to node A at {LAG_RATE}/s, another subscribes on node B; lag = arrival at B minus the send to A (one process, one clock); median (min–max) of {runs} runs.\n"
    );
    println!(
        "| stream | lag p50 ms | lag p99 ms | lag max ms | A's ack p50 ms | A's ack p99 ms | gaps | dups |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, replicas) in replicas.iter().enumerate() {
        let column = |f: fn(&Lag) -> f64| -> Vec<f64> { results[i].iter().map(f).collect() };
        println!(
            "| JetStream R{replicas} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&column(|r| r.p50_ms), 2),
            cell(&column(|r| r.p99_ms), 2),
            cell(&column(|r| r.max_ms), 2),
            cell(&column(|r| r.publish_p50_ms), 2),
            cell(&column(|r| r.publish_p99_ms), 2),
            results[i].iter().map(|r| r.gaps).sum::<u64>(),
            results[i].iter().map(|r| r.duplicates).sum::<u64>(),
        );
    }
    Ok(())
}

/// One run of the replication-lag case on a fresh stream of `replicas`.
async fn lag_once(servers: &Servers, replicas: u8, run: usize) -> Result<Lag> {
    let stream = format!("LAG-{run}");
    let journal = Journal::JetStream(replicas);
    let a = Node::start(journal, servers, &stream, RETAIN).await?;
    let b = Node::start(journal, servers, &stream, RETAIN).await?;
    let channel_b = connect(&b.server.url(), 1).await?.remove(0);
    let subscription = subscribe_many(&[channel_b], 1, &pb::SubscribeRequest::default())
        .await?
        .remove(0);
    let deadline = Instant::now() + Duration::from_secs(60 + LAG_EVENTS / LAG_RATE);
    let receiving = tokio::spawn(receive(subscription, 1, LAG_EVENTS, deadline));
    let channel_a = connect(&a.server.url(), 1).await?.remove(0);
    let published = publish_measured(channel_a, 1, LAG_EVENTS, Rate::PerSecond(LAG_RATE)).await?;
    let received = receiving.await?;
    a.stop().await;
    b.stop().await;
    Ok(Lag {
        p50_ms: ms_at(&received.latency, 0.5),
        p99_ms: ms_at(&received.latency, 0.99),
        max_ms: ms(received.latency.max()),
        publish_p50_ms: ms_at(&published.latency, 0.5),
        publish_p99_ms: ms_at(&published.latency, 0.99),
        gaps: received.gaps,
        duplicates: received.duplicates,
    })
}

/// The fan-out table: [`FAN_OUT_POINTS`] on a node of the JetStream journal (R1, a fresh stream
/// each run) against the same node in memory, alternating which goes first.
async fn fan_out(servers: &Servers, connections: usize, runs: usize) -> Result<()> {
    println!(
        "\nFan-out on one node: live subscribers over {connections} connections, one PublishStream publisher; median (min–max) of {runs} runs; ratios taken within each run.\n"
    );
    println!("{FAN_OUT_HEADER}");
    for (subscribers, rate) in FAN_OUT_POINTS {
        let journals = [Journal::JetStream(1), Journal::Memory];
        let mut results: [Vec<FanOut>; 2] = [Vec::new(), Vec::new()];
        for run in 0..runs {
            for k in 0..journals.len() {
                let i = (k + run) % journals.len();
                let stream = format!("FAN-OUT-{subscribers}-{run}");
                let (extra, _) = node_args(journals[i], servers, &stream);
                let result =
                    fan_out_with(Target::Storywire, &extra, subscribers, connections, rate).await?;
                eprintln!(
                    "cluster fan-out, {subscribers} subscribers, {rate}, {}: {result:?}",
                    journals[i].name()
                );
                results[i].push(result);
            }
        }
        let rows = [
            (journals[0].name(), results[0].as_slice()),
            (journals[1].name(), results[1].as_slice()),
        ];
        println!("{}", fan_out_rows(subscribers, rate, &rows));
    }
    Ok(())
}

/// The catch-up table: a stream of one server filled with `events` events through a node, then
/// a new node started on it `runs` times, each timed from its spawn to SERVING.
///
/// The filling server takes JetStream's default fsync (every two minutes) rather than every
/// write: what is measured is reading the stream back, which the fsync mode does not touch, and
/// filling a million events with an fsync each would take the case most of its time.
async fn catch_up(binary: &Path, events: u64, runs: usize) -> Result<()> {
    let jetstream = start_jetstream(binary, 1, Sync::Default).await?;
    catch_up_on(&jetstream, events, runs).await
}

async fn catch_up_on(jetstream: &JetStream, events: u64, runs: usize) -> Result<()> {
    let stream = "CATCH-UP";
    let total = events + CATCH_UP_STORIES;
    let retain = total as usize;
    let extra = jetstream_args(jetstream, stream, 1);

    let filler = ServerProcess::start_with(Target::Storywire, retain, &extra).await?;
    until_serving(&filler.url(), SERVING_TIMEOUT).await?;
    let channel = connect(&filler.url(), 1).await?.remove(0);
    open_stories(channel.clone(), CATCH_UP_STORIES).await?;
    let fill = publish_spread(channel, events, CATCH_UP_STORIES).await?;
    let fill_rate = events as f64 / fill.as_secs_f64();
    eprintln!("cluster catch-up: filled {events} events at {fill_rate:.0}/s");
    filler.stop().await;

    let mut rates = Vec::new();
    let mut listening_ms = Vec::new();
    let mut rss_per_event = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let node = ServerProcess::start_with(Target::Storywire, retain, &extra).await?;
        listening_ms.push(start.elapsed().as_secs_f64() * 1_000.0);
        until_serving(&node.url(), CATCH_UP_TIMEOUT).await?;
        let elapsed = start.elapsed();
        rates.push(total as f64 / elapsed.as_secs_f64());
        rss_per_event.push(node.rss_bytes() as f64 / total as f64);
        node.stop().await;
        eprintln!(
            "cluster catch-up of {total}: {:.0} events/s",
            rates[rates.len() - 1]
        );
    }
    println!(
        "\nA new node's catch-up: a stream of one server (R1) holding {total} events ({CATCH_UP_STORIES} stories opened, then {events} updates over them, published through a node on PublishStream at {fill_rate:.0} events/s); a new node started on it; median (min–max) of {runs} runs.\n"
    );
    println!("| case | figure |\n|---|---|");
    println!(
        "| spawn to SERVING (gRPC health), {total} events | {} events/s |",
        cell(&rates, 0)
    );
    println!(
        "| spawn to listening (connected, stream checked, snapshot read), ms | {} |",
        cell(&listening_ms, 0)
    );
    println!(
        "| node RSS once SERVING, per retained event | {} bytes |",
        cell(&rss_per_event, 0)
    );
    Ok(())
}

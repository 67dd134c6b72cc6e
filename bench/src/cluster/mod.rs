//! The cluster case: what the JetStream journal of `storywire serve --nats` costs, beside the
//! in-memory log, in one run.
//!
//! The bench starts its own JetStream (testkit's launcher): one nats-server (streams of one
//! replica, R1) and three routed into a cluster (R3), each fsyncing every write before
//! acknowledging it, as docs/cluster.md asks. Every run of a case takes a fresh stream, as every
//! other case takes a fresh server. Four tables:
//!
//! 1. publishing: unary Publish latency, PublishStream to one story (sequential on a cluster
//!    node) and over 64 stories (concurrent), for each log; and JetStream alone, through
//!    async-nats with no storywire in the way, for where the time goes;
//! 2. replication lag: two nodes on one stream, publishing on one at 100 events/s and
//!    subscribing on the other;
//! 3. fan-out on a node of the JetStream journal against the same node in memory;
//! 4. a new node's catch-up: from spawning it on a stream of a million events to its gRPC health
//!    turning SERVING.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use storywire::pb;
use storywire_testkit::nats::{Cluster as JetStream, Sync, find_nats_server};
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    error::{Result, failed},
    load::{
        Rate, connect_one, open_stories, publish_from, publish_spread, receive, subscribe_many,
    },
    matrix::{fan_out, fan_out_head, fan_out_rows},
    process::{ServerProcess, Target, cpu_seconds_of},
    report::{Table, cell, in_turn, ms, ms_at},
};

mod publishing;

use publishing::publishing;

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
/// How long the nats-servers may take to enable JetStream and, in a cluster, elect a meta
/// leader that counts every other server current: an election takes about a second; a loaded
/// machine more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// Also run the cluster case: publishing with the in-memory log and the JetStream journal on
    /// one nats-server (R1) and on three (R3); replication lag between two nodes; fan-out on a
    /// node of each journal; a new node's catch-up. Starts its own nats-servers on loopback (see
    /// --nats-server).
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

/// Where a node keeps its log, or JetStream alone with no node in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    /// In memory only.
    Memory,
    /// A JetStream stream of this many replicas.
    JetStream(u8),
    /// The same publishes through async-nats to a stream of this many replicas.
    Alone(u8),
}

impl std::fmt::Display for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => write!(f, "in memory"),
            Self::JetStream(replicas) => write!(f, "JetStream R{replicas}"),
            Self::Alone(replicas) => {
                write!(f, "JetStream R{replicas} alone (async-nats, no storywire)")
            }
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

    /// The `storywire serve` arguments of a node of `journal` on stream `stream`.
    fn node_args(&self, journal: Journal, stream: &str) -> Vec<String> {
        match journal {
            Journal::JetStream(replicas) => jetstream_args(self.of(replicas), stream, replicas),
            Journal::Memory | Journal::Alone(_) => Vec::new(),
        }
    }
}

/// The `storywire serve` arguments of a node on stream `stream` of `jetstream`.
fn jetstream_args(jetstream: &JetStream, stream: &str, replicas: u8) -> Vec<String> {
    let (urls, replicas) = (jetstream.urls(), replicas.to_string());
    [
        "--nats",
        &urls,
        "--nats-stream",
        stream,
        "--nats-replicas",
        &replicas,
    ]
    .map(String::from)
    .to_vec()
}

/// `servers` nats-servers with JetStream on loopback, ready for a stream, fsyncing as `sync` says.
async fn start_jetstream(binary: &Path, servers: usize, sync: Sync) -> Result<JetStream> {
    Ok(JetStream::launch(binary, servers, sync, READY_TIMEOUT).await?)
}

/// User plus system CPU seconds every server of `jetstream` has used so far.
fn cpu_of(jetstream: &JetStream) -> f64 {
    (0..jetstream.len())
        .map(|index| cpu_seconds_of(jetstream.pid(index)))
        .sum()
}

/// Starts a node with `extra` arguments keeping `retain` events, and waits until its health is
/// SERVING, for at most `timeout`.
async fn start_node(extra: &[String], retain: usize, timeout: Duration) -> Result<ServerProcess> {
    let node = ServerProcess::start_with(Target::Storywire, retain, extra).await?;
    let url = node.url();
    let mut health = HealthClient::new(connect_one(&url).await?);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let serving = async {
        while let Some(reply) = watch.message().await? {
            if reply.status == i32::from(ServingStatus::Serving) {
                return Ok(());
            }
        }
        failed!("{url}: the health stream ended")
    };
    match tokio::time::timeout(timeout, serving).await {
        Ok(outcome) => outcome.map(|()| node),
        Err(_) => failed!("{url} was not SERVING within {}s", timeout.as_secs()),
    }
}

/// Runs the cluster case and prints its tables.
pub async fn run(args: &Args, connections: usize, runs: usize) -> Result<()> {
    let binary = find_nats_server(args.nats_server.clone())?;
    // Dropping the servers kills them by PID and removes their stores.
    let servers = Servers {
        r1: start_jetstream(&binary, 1, Sync::Always).await?,
        r3: start_jetstream(&binary, 3, Sync::Always).await?,
    };
    if args.cluster_events > 0 {
        publishing(&servers, args.cluster_events, runs).await?;
    }
    lag(&servers, runs).await?;
    fan_out_on_a_node(&servers, connections, runs).await?;
    if args.cluster_catch_up_events > 0 {
        let jetstream = start_jetstream(&binary, 1, Sync::Default).await?;
        catch_up(&jetstream, args.cluster_catch_up_events, runs).await?;
    }
    Ok(())
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
    misses: (u64, u64),
}

/// The replication-lag table: two nodes on a fresh stream of each of R1 and R3, a subscriber on
/// node B, and a publisher on node A at [`LAG_RATE`].
async fn lag(servers: &Servers, runs: usize) -> Result<()> {
    let journals = [Journal::JetStream(1), Journal::JetStream(3)];
    let mut run = 0;
    let outcome = in_turn(&journals, runs, "cluster lag", |journal| {
        run += 1;
        lag_once(servers, journal, format!("LAG-{run}"))
    })
    .await;
    println!(
        "\nReplication lag: two nodes on one stream; one client publishes {LAG_EVENTS} events on PublishStream to node A at {LAG_RATE}/s, another subscribes on node B; lag = arrival at B minus the send to A (one process, one clock); median (min–max) of {runs} runs.\n"
    );
    let heads = [
        "stream",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "A's ack p50 ms",
    ];
    let heads = heads.into_iter().chain(["A's ack p99 ms", "gaps", "dups"]);
    let mut table = Table::new(&heads.collect::<Vec<_>>());
    for (journal, results) in journals.iter().zip(&outcome.results) {
        let column = |f: fn(&Lag) -> f64| cell(&results.iter().map(f).collect::<Vec<_>>(), 2);
        let misses = results
            .iter()
            .fold((0, 0), |(g, d), r| (g + r.misses.0, d + r.misses.1));
        table.row([
            journal.to_string(),
            column(|r| r.p50_ms),
            column(|r| r.p99_ms),
            column(|r| r.max_ms),
            column(|r| r.publish_p50_ms),
            column(|r| r.publish_p99_ms),
            misses.0.to_string(),
            misses.1.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// One run of the replication-lag case on a fresh stream `stream` of `journal`.
async fn lag_once(servers: &Servers, journal: Journal, stream: String) -> Result<Lag> {
    let extra = servers.node_args(journal, &stream);
    let a = start_node(&extra, RETAIN, SERVING_TIMEOUT).await?;
    let b = start_node(&extra, RETAIN, SERVING_TIMEOUT).await?;
    let channel_b = connect_one(&b.url()).await?;
    let request = pb::SubscribeRequest::default();
    let subscription = subscribe_many(&[channel_b], 1, &request).await?.remove(0);
    let deadline = Instant::now() + Duration::from_secs(60 + LAG_EVENTS / LAG_RATE);
    let receiving = tokio::spawn(receive(subscription, 1, LAG_EVENTS, deadline));
    let channel_a = connect_one(&a.url()).await?;
    let published = publish_from(channel_a, 1, LAG_EVENTS, Rate::PerSecond(LAG_RATE)).await?;
    let received = receiving.await?;
    a.stop().await;
    b.stop().await;
    Ok(Lag {
        p50_ms: ms_at(&received.latency, 0.5),
        p99_ms: ms_at(&received.latency, 0.99),
        max_ms: ms(received.latency.max()),
        publish_p50_ms: ms_at(&published.latency, 0.5),
        publish_p99_ms: ms_at(&published.latency, 0.99),
        misses: (received.sequences.gaps, received.sequences.duplicates),
    })
}

/// The fan-out table: [`FAN_OUT_POINTS`] on a node of the JetStream journal (R1, a fresh stream
/// each run) against the same node in memory, in turn.
async fn fan_out_on_a_node(servers: &Servers, connections: usize, runs: usize) -> Result<()> {
    println!(
        "\nFan-out on one node: live subscribers over {connections} connections, one PublishStream publisher; median (min–max) of {runs} runs; ratios taken within each run.\n"
    );
    println!("{}", fan_out_head());
    let journals = [Journal::JetStream(1), Journal::Memory];
    let names: Vec<String> = journals.iter().map(ToString::to_string).collect();
    for (subscribers, rate) in FAN_OUT_POINTS {
        let label = format!("cluster fan-out, {subscribers} subscribers, {rate}");
        let mut run = 0;
        let outcome = in_turn(&journals, runs, &label, |journal| {
            run += 1;
            let extra = servers.node_args(journal, &format!("FAN-OUT-{subscribers}-{run}"));
            async move { fan_out(Target::Storywire, &extra, subscribers, connections, rate).await }
        })
        .await;
        let mut rows = Table::rows();
        fan_out_rows(&mut rows, subscribers, rate, &names, &outcome);
        println!("{rows}");
    }
    Ok(())
}

/// The catch-up table: a stream of one server filled with `events` events through a node, then
/// a new node started on it `runs` times, each timed from its spawn to SERVING.
///
/// The filling server takes JetStream's default fsync (every two minutes) rather than every
/// write: what is measured is reading the stream back, which the fsync mode does not touch, and
/// filling a million events with an fsync each would take the case most of its time.
async fn catch_up(jetstream: &JetStream, events: u64, runs: usize) -> Result<()> {
    let total = events + CATCH_UP_STORIES;
    let retain = total as usize;
    let extra = jetstream_args(jetstream, "CATCH-UP", 1);

    let filler = start_node(&extra, retain, SERVING_TIMEOUT).await?;
    let channel = connect_one(&filler.url()).await?;
    open_stories(channel.clone(), CATCH_UP_STORIES).await?;
    let fill = publish_spread(channel, events, CATCH_UP_STORIES).await?;
    let fill_rate = events as f64 / fill.as_secs_f64();
    eprintln!("cluster catch-up: filled {events} events at {fill_rate:.0}/s");
    filler.stop().await;

    let (mut rates, mut rss_per_event) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let node = start_node(&extra, retain, CATCH_UP_TIMEOUT).await?;
        rates.push(total as f64 / start.elapsed().as_secs_f64());
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
    let mut table = Table::new(&["case", "figure"]);
    let serving = format!("spawn to SERVING (gRPC health), {total} events");
    table.row([serving, format!("{} events/s", cell(&rates, 0))]);
    let rss = "node RSS once SERVING, per retained event".to_owned();
    table.row([rss, format!("{} bytes", cell(&rss_per_event, 0))]);
    println!("{table}");
    Ok(())
}

//! Connections per reader: every subscriber on a connection of its own, as readers'
//! browsers and apps are, rather than many subscriptions sharing a few HTTP/2 connections.
//!
//! For each count of subscribers and each server (storywire, the bare tonic baseline, the NATS
//! anchor): a fresh server; its idle RSS; every subscriber connected and subscribed (one tonic
//! `Channel` or one NATS client each), timed; then one event every [`INTERVAL`] for the case's
//! duration, with the delivery latency, the server's CPU per delivery, and its RSS above idle
//! per connection, read while every connection is still open.
//!
//! All of it runs in the bench's one process, on 127.0.0.1: the per-process open-files limit
//! bounds the count (each subscriber holds one descriptor here and one in the server), and the
//! case refuses a count it cannot open rather than failing half-way.
//!
//! Besides its tables the case can keep every run in a results file (`--reader-results`), and
//! draw them (`--reader-plot`, see [`crate::plot`]); `storywire-bench plot` draws such a file
//! again without running anything.

use std::time::Duration;

use tokio::{task::JoinHandle, time::Instant};

use crate::error::{Result, failed};
use crate::report::{histogram, ms, ms_at};
use crate::{
    anchor,
    load::{Rate, Received, connect, gather, publish, receive, subscribe_each},
    process::{ServerProcess, Target},
    report::{Figure, Runs, by_server, in_turn},
};

/// How often the publisher sends, as a busy story's live updates might come.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long past the last event the subscribers wait for stragglers.
const GRACE: Duration = Duration::from_secs(60);
/// Descriptors the bench needs besides one per subscriber: the publisher, the runtime, the
/// server's pipe, stdio, and room to spare.
const SPARE_DESCRIPTORS: u64 = 256;

/// The connections-per-reader case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "readers_case")]
pub struct Args {
    /// Also run the connections-per-reader case: each subscriber on a connection of
    /// its own, one event every 100 ms, against storywire, bare tonic and NATS.
    #[arg(long)]
    pub readers: bool,
    /// Subscriber counts of the connections-per-reader case (comma-separated). Each needs a
    /// descriptor in the bench and one in the server: 19000 fits a limit of 20,000 per process.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    pub reader_counts: Vec<usize>,
    /// How long the connections-per-reader case publishes for, in seconds.
    #[arg(long, default_value_t = 30)]
    pub reader_seconds: u64,
}

/// One run of the case on one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readers {
    /// From the first connect to the last subscription registered.
    pub subscribe_all_seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu_us_per_delivery: f64,
    /// Server RSS with every subscriber connected, less its RSS before the first, per subscriber.
    pub rss_kib_per_connection: f64,
    /// Sequences missed, and seen twice, over all subscribers.
    pub gaps: u64,
    pub duplicates: u64,
}

/// The table's figures, one row each.
const FIGURES: [Figure<Readers>; 6] = [
    (
        "time to connect and subscribe all, s",
        |r| r.subscribe_all_seconds,
        3,
    ),
    ("delivery p50, ms", |r| r.p50_ms, 2),
    ("delivery p99, ms", |r| r.p99_ms, 2),
    ("delivery max, ms", |r| r.max_ms, 2),
    ("server CPU per delivery, µs", |r| r.cpu_us_per_delivery, 2),
    (
        "server RSS per connection with a subscriber, KiB",
        |r| r.rss_kib_per_connection,
        1,
    ),
];

/// Runs the case for every count on every one of `targets`, `runs` times, and prints a table
/// per count.
pub async fn run(args: &Args, targets: &[Target], runs: usize) -> Result<()> {
    let events = (args.reader_seconds * 1_000 / INTERVAL.as_millis() as u64).max(1);
    println!(
        "\nConnections per reader: each subscriber on a connection of its own, one event every {} ms for {} s ({events} events); median (min–max) of {runs} runs; ratios taken within each run.",
        INTERVAL.as_millis(),
        args.reader_seconds
    );
    for &count in &args.reader_counts {
        room_for(count)?;
        let label = format!("{count} readers");
        let runs = in_turn(targets, runs, &label, |target| once(target, count, events)).await;
        println!("\n{}", table(count, targets, &runs));
    }
    Ok(())
}

/// The table for `count` subscribers: a row per figure, a column per server, then storywire
/// over each other server.
fn table(count: usize, targets: &[Target], runs: &Runs<Readers>) -> String {
    let misses = |r: &Readers| (r.gaps, r.duplicates);
    by_server(&format!("{count} readers"), targets, &FIGURES, runs, misses)
}

/// Fails, saying why, if this process may not open `count` more sockets; raises its soft
/// open-files limit to the hard one first (the servers it starts inherit it).
pub fn room_for(count: usize) -> Result<()> {
    let limit = storywire::descriptors::raise_open_files_limit()
        .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    let needed = count as u64 + SPARE_DESCRIPTORS;
    if needed > limit {
        return failed!(
            "{count} readers need {needed} open files in the bench (and as many in the server), \
             over the limit of {limit}: spreading them over several processes is not done yet"
        );
    }
    Ok(())
}

/// A run's connections, kept open until the end of the run.
pub enum Connections {
    /// One NATS client per subscriber.
    Nats(Vec<async_nats::Client>),
    /// One tonic channel (HTTP/2 connection) per subscriber.
    Grpc(Vec<tonic::transport::Channel>),
}

impl Connections {
    /// Closes every connection.
    pub async fn close(self) {
        match self {
            Self::Nats(clients) => anchor::close(clients).await,
            Self::Grpc(channels) => drop(channels),
        }
    }
}

/// Ends a run of many readers: waits for every reader's tally, reads the server's CPU seconds
/// since `cpu_before`, then closes the clients and waits for their descriptors to come back
/// (below `descriptors` and some spare) before it stops the server. The clients close first and
/// the server stays until they are gone: killed while an HTTP/2 client was closing gracefully,
/// it left that client's socket in CLOSE-WAIT for good.
pub async fn finish(
    receivers: Vec<JoinHandle<Received>>,
    server: ServerProcess,
    open: Connections,
    descriptors: usize,
    cpu_before: f64,
) -> Result<(Vec<Received>, f64)> {
    let all = gather(receivers).await?;
    let cpu = server.cpu_seconds() - cpu_before;
    open.close().await;
    settle(descriptors).await;
    server.stop().await;
    Ok((all, cpu))
}

/// How long [`settle`] waits for the last run's sockets to be closed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Descriptors this process holds.
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
}

/// Waits until this process holds no more than [`SPARE_DESCRIPTORS`] descriptors over
/// `before`, so that a run does not start while the last one's connections, closed by tasks of
/// their own, still hold descriptors; gives up, saying so, after [`SETTLE_TIMEOUT`].
pub async fn settle(before: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while open_descriptors() > before + SPARE_DESCRIPTORS as usize {
        if Instant::now() > deadline {
            eprintln!(
                "{} descriptors still open after a run, {before} before it",
                open_descriptors()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run on `target`: a fresh server, `count` subscribers each on a connection of its own,
/// `events` events one every [`INTERVAL`].
async fn once(target: Target, count: usize, events: u64) -> Result<Readers> {
    let server = ServerProcess::start(target, events as usize + 1).await?;
    let idle_rss = server.rss_bytes();
    let url = server.url();
    let rate = Rate::PerSecond(1_000 / INTERVAL.as_millis() as u64);
    let deadline = Instant::now() + GRACE + INTERVAL * events as u32;

    let descriptors = open_descriptors();
    let start = Instant::now();
    let (receivers, open): (Vec<_>, Connections) = match target {
        Target::Nats => {
            let (clients, subscribers) = anchor::subscribe_each(&url, count).await?;
            let receivers = subscribers
                .into_iter()
                .map(|s| tokio::spawn(anchor::receive(s, 1, events, deadline)))
                .collect();
            (receivers, Connections::Nats(clients))
        }
        Target::Storywire | Target::Bare => {
            let (channels, streams) = subscribe_each(&url, count).await?;
            let receivers = streams
                .into_iter()
                .map(|s| tokio::spawn(receive(s, 1, events, deadline)))
                .collect();
            (receivers, Connections::Grpc(channels))
        }
    };
    let subscribe_all = start.elapsed();

    let cpu_before = server.cpu_seconds();
    match target {
        Target::Nats => {
            let publisher = anchor::connect(&url, 1).await?.remove(0);
            anchor::publish(&publisher, events, rate).await?;
        }
        Target::Storywire | Target::Bare => {
            let publisher = connect(&url, 1).await?.remove(0);
            publish(publisher, events, rate).await?;
        }
    }
    // Every connection is still open here, and every subscriber still subscribed.
    let rss = server.rss_bytes();
    let (all, cpu) = finish(receivers, server, open, descriptors, cpu_before).await?;

    let delivered: u64 = all.iter().map(|r| r.events).sum();
    let mut latency = histogram();
    for received in &all {
        latency.add(&received.latency)?;
    }
    Ok(Readers {
        subscribe_all_seconds: subscribe_all.as_secs_f64(),
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        rss_kib_per_connection: rss.saturating_sub(idle_rss) as f64 / count as f64 / 1024.0,
        gaps: all.iter().map(|r| r.gaps).sum(),
        duplicates: all.iter().map(|r| r.duplicates).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::{Readers, once, table};
    use crate::report::Runs;
    use crate::{anchor::tests::nats_server_at_hand, process::Target};

    #[tokio::test]
    async fn readers_on_connections_of_their_own_get_every_event_once() {
        if !nats_server_at_hand() {
            return;
        }
        let run = once(Target::Nats, 2, 5).await.unwrap();
        assert_eq!((run.gaps, run.duplicates), (0, 0));
        assert!(run.max_ms >= run.p50_ms && run.p50_ms > 0.0);
        assert!(run.subscribe_all_seconds > 0.0);
    }

    /// A run whose figures are 1 to 6 in the table's order, so that a cell shows which it is.
    fn made_up_run() -> Readers {
        Readers {
            subscribe_all_seconds: 1.0,
            p50_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
            cpu_us_per_delivery: 5.0,
            rss_kib_per_connection: 6.0,
            gaps: 0,
            duplicates: 0,
        }
    }

    #[test]
    fn the_table_has_a_column_per_server_and_a_ratio_per_other_server() {
        let run = made_up_run();
        let half = Readers { p50_ms: 1.0, ..run };
        let targets = [Target::Storywire, Target::Bare, Target::Nats];
        let runs = Runs {
            results: vec![vec![run], vec![run], vec![half]],
            failed: vec![0, 0, 0],
        };
        let text = table(10, &targets, &runs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "| 10 readers | storywire | bare tonic | NATS | storywire / bare tonic | storywire / NATS |"
        );
        assert_eq!(lines[1], "|---|---|---|---|---|---|");
        assert_eq!(
            lines[3],
            "| delivery p50, ms | 2.00 | 2.00 | 1.00 | 1.00x | 2.00x |"
        );
        assert_eq!(
            lines.last().unwrap(),
            &"| gaps / duplicates, all runs | 0 / 0 | 0 / 0 | 0 / 0 | | |"
        );

        // One server alone (`--servers storywire`, for a profile) has no ratio columns.
        let runs = Runs {
            results: vec![vec![run]],
            failed: vec![0],
        };
        let alone = table(10, &targets[..1], &runs);
        let lines: Vec<&str> = alone.lines().collect();
        assert_eq!(lines[0], "| 10 readers | storywire |");
        assert_eq!(lines[1], "|---|---|");
        assert_eq!(lines[3], "| delivery p50, ms | 2.00 |");
    }
}

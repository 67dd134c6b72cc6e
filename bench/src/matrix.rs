//! The standard cases and the order they run in: fan-out against the baseline and the NATS
//! anchor, publish paths, durability, catch-up and memory per retained event, memory per idle
//! subscriber; connections per reader, the reconnect storm, one burst to many readers, the abuse
//! phases, the heavy reads and the cluster case when asked for.

use std::{path::PathBuf, time::Duration};

use storywire::pb;
use tokio::{task::JoinHandle, time::Instant};

use crate::error::{Error, Result, failed};
use crate::report::{histogram, ms, ms_at};
use crate::{
    abuse, anchor, burst, cluster, flood, heavy_reads,
    load::{self, Rate, Received, connect, gather, publish, receive, subscribe_many},
    process::{self, ServerProcess, Target},
    readers,
    report::{cell, ratio, ratio_within_runs, summary},
    sse, storm,
};

/// How long past the expected end of a case the bench waits for stragglers before it counts
/// what is missing as gaps.
const GRACE: Duration = Duration::from_secs(60);
/// The most deliveries (events x subscribers) one max-rate case aims at: enough to run for
/// seconds, few enough that the whole matrix runs in minutes on two cores.
const DELIVERIES_PER_CASE: u64 = 2_000_000;
/// How long a fixed-rate case publishes for, at most.
const RATE_CASE_SECONDS: u64 = 5;

/// What the bench runs, and against which server binary.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The storywire server binary to measure [default: `storywire` next to this executable,
    /// which `cargo build --release --workspace` puts there].
    #[arg(long, value_name = "PATH")]
    storywire: Option<PathBuf>,
    /// Subscriber counts to run in the fan-out case (comma-separated; 0 alone skips it).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
    subscribers: Vec<usize>,
    /// HTTP/2 connections the subscribers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Publish rates to run: `max` or events per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["max", "100", "2000"], value_parser = parse_rate)]
    rates: Vec<Rate>,
    /// Runs of each case; the report gives the median and the spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The servers the fan-out and connections-per-reader cases measure (comma-separated)
    /// [default: all three, NATS where a nats-server is at hand]. Ratios are to storywire, so a
    /// profile of one server can run alone.
    #[arg(long, value_delimiter = ',', value_enum)]
    servers: Vec<Target>,
    /// Events in the catch-up and retained-memory case (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,
    /// Idle subscribers in the memory case (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle_subscribers: usize,
    /// Events published one unary Publish at a time in the publish-path case (0 skips it); the
    /// PublishStream side publishes 20 times as many.
    #[arg(long, default_value_t = 5_000)]
    unary_events: u64,
    /// Events published on PublishStream in the durability case, for each fsync mode, and then
    /// replayed at start-up (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    durability_events: u64,
    /// Also run the abuse phases: misbehaving clients against a server while a well-behaved one
    /// measures its p99.
    #[arg(long)]
    abuse: bool,
    /// Also run the lock case: 16 clients looping GetStory with as_of_version on a
    /// story of --lock-story-events events, against a publisher's p99.
    #[arg(long)]
    lock: bool,
    /// Events of the story the lock case rebuilds on every GetStory.
    #[arg(long, default_value_t = 100_000)]
    lock_story_events: u64,
    /// Also run the snapshot case: --snapshot-subscribers snapshot subscriptions over
    /// --snapshot-stories stories, never read, against the server's RSS and a subscriber's p99.
    /// Each may hold a copy of every story, so the defaults may take gigabytes.
    #[arg(long)]
    snapshot: bool,
    /// Stories in the snapshot case.
    #[arg(long, default_value_t = 10_000)]
    snapshot_stories: u64,
    /// Snapshot subscriptions that never read, in the snapshot case.
    #[arg(long, default_value_t = 1_000)]
    snapshot_subscribers: usize,
    #[command(flatten)]
    cluster: cluster::Args,
    #[command(flatten)]
    readers: readers::Args,
    #[command(flatten)]
    sse: sse::Args,
    #[command(flatten)]
    storm: storm::Args,
    #[command(flatten)]
    burst: burst::Args,
    #[command(flatten)]
    flood: flood::Args,
}

fn parse_rate(value: &str) -> Result<Rate, String> {
    match value {
        "max" => Ok(Rate::Max),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Rate::PerSecond)
            .ok_or_else(|| format!("{n:?} is neither `max` nor a positive rate")),
    }
}

/// One fan-out run's FIGURES.
#[derive(Debug, Clone, Copy, Default)]
pub struct FanOut {
    delivered_per_second: f64,
    published_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_us_per_delivery: f64,
    rss_mib: f64,
    gaps: u64,
    duplicates: u64,
}

/// A fan-out figure as the report shows it: how to read it from a run, and its decimals.
type Figure = (fn(&FanOut) -> f64, usize);

/// The report's fan-out columns, in order.
const FIGURES: [Figure; 7] = [
    (|r| r.delivered_per_second, 0),
    (|r| r.published_per_second, 0),
    (|r| r.p50_ms, 2),
    (|r| r.p99_ms, 2),
    (|r| r.max_ms, 2),
    (|r| r.cpu_us_per_delivery, 2),
    (|r| r.rss_mib, 1),
];

/// How many events a case publishes.
fn events_for(subscribers: usize, rate: Rate) -> u64 {
    let by_deliveries = (DELIVERIES_PER_CASE / subscribers.max(1) as u64).clamp(1_000, 200_000);
    match rate {
        Rate::Max => by_deliveries,
        Rate::PerSecond(per_second) => by_deliveries.min(per_second * RATE_CASE_SECONDS).max(100),
    }
}

async fn fan_out(
    target: Target,
    subscribers: usize,
    connections: usize,
    rate: Rate,
) -> Result<FanOut> {
    match target {
        Target::Nats => fan_out_nats(subscribers, connections, rate).await,
        Target::Storywire | Target::Bare => {
            fan_out_with(target, &[], subscribers, connections, rate).await
        }
    }
}

/// When the subscribers of a case give up waiting.
fn deadline_for(events: u64, rate: Rate) -> Instant {
    let expected_seconds = match rate {
        Rate::Max => 0,
        Rate::PerSecond(per_second) => events / per_second,
    };
    Instant::now() + GRACE + Duration::from_secs(expected_seconds)
}

/// Like [`fan_out`], with more arguments for the server (`storywire serve`).
pub async fn fan_out_with(
    target: Target,
    extra: &[String],
    subscribers: usize,
    connections: usize,
    rate: Rate,
) -> Result<FanOut> {
    let events = events_for(subscribers, rate);
    let server = ServerProcess::start_with(target, events as usize + 1, extra).await?;
    let channels = connect(&server.url(), connections).await?;
    let streams = subscribe_many(&channels, subscribers, &pb::SubscribeRequest::default()).await?;
    let deadline = deadline_for(events, rate);
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(receive(stream, 1, events, deadline)))
        .collect();

    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let publisher = connect(&server.url(), 1).await?.remove(0);
    let publish_time = publish(publisher, events, rate).await?;
    finish(server, receivers, cpu_before, events, start, publish_time).await
}

/// [`fan_out`] on the NATS anchor: the same events to the same number of subscribers over as
/// many client connections, one more client publishing.
async fn fan_out_nats(subscribers: usize, connections: usize, rate: Rate) -> Result<FanOut> {
    let events = events_for(subscribers, rate);
    let server = ServerProcess::start(Target::Nats, 0).await?;
    let clients = anchor::connect(&server.url(), connections).await?;
    let subscriptions = anchor::subscribe_many(&clients, subscribers).await?;
    let deadline = deadline_for(events, rate);
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|subscription| tokio::spawn(anchor::receive(subscription, 1, events, deadline)))
        .collect();

    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let publisher = anchor::connect(&server.url(), 1).await?.remove(0);
    let publish_time = anchor::publish(&publisher, events, rate).await?;
    finish(server, receivers, cpu_before, events, start, publish_time).await
}

/// Ends a fan-out run: every subscriber's tally, then the server's CPU seconds since
/// `cpu_before` and its RSS, read before it is stopped.
async fn finish(
    server: ServerProcess,
    receivers: Vec<JoinHandle<Received>>,
    cpu_before: f64,
    events: u64,
    start: Instant,
    publish_time: Duration,
) -> Result<FanOut> {
    let all = gather(receivers).await?;
    let cpu = server.cpu_seconds() - cpu_before;
    let rss = server.rss_bytes();
    server.stop().await;
    figures(&all, events, start, publish_time, cpu, rss)
}

/// A fan-out run's figures from what its subscribers saw, `events` published from `start` over
/// `publish_time`, and the server's `cpu` seconds and `rss` bytes.
fn figures(
    all: &[Received],
    events: u64,
    start: Instant,
    publish_time: Duration,
    cpu: f64,
    rss: u64,
) -> Result<FanOut> {
    let delivered: u64 = all.iter().map(|r| r.events).sum();
    let last = all.iter().filter_map(|r| r.last_at).max().unwrap_or(start);
    let mut latency = histogram();
    for received in all {
        latency.add(&received.latency)?;
    }
    Ok(FanOut {
        delivered_per_second: delivered as f64 / (last - start).as_secs_f64().max(1e-9),
        published_per_second: events as f64 / publish_time.as_secs_f64().max(1e-9),
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        gaps: all.iter().map(|r| r.gaps).sum(),
        duplicates: all.iter().map(|r| r.duplicates).sum(),
    })
}

/// The fan-out table's header, for [`fan_out_rows`].
pub const FAN_OUT_HEADER: &str = "| subscribers | rate | events | server | delivered/s | publish/s | p50 ms | p99 ms | max ms | server CPU µs/delivery | server RSS MiB | gaps | dups |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The fan-out table's rows for one case: each server's medians and spreads over its runs, then
/// for each server after the first, the first's figures over its, taken within each run.
pub fn fan_out_rows(subscribers: usize, rate: Rate, rows: &[(&str, &[FanOut])]) -> String {
    let events = events_for(subscribers, rate);
    let column =
        |i: usize, f: fn(&FanOut) -> f64| -> Vec<f64> { rows[i].1.iter().map(f).collect() };
    let mut lines = Vec::new();
    for (i, (name, results)) in rows.iter().enumerate() {
        let cells: Vec<String> = FIGURES
            .iter()
            .map(|(f, d)| cell(&column(i, *f), *d))
            .collect();
        let gaps: u64 = results.iter().map(|r| r.gaps).sum();
        let duplicates: u64 = results.iter().map(|r| r.duplicates).sum();
        lines.push(format!(
            "| {subscribers} | {rate} | {events} | {name} | {} | {gaps} | {duplicates} |",
            cells.join(" | ")
        ));
    }
    for (i, (name, _)) in rows.iter().enumerate().skip(1) {
        let ratios: Vec<String> = FIGURES
            .iter()
            .map(|(f, _)| ratio_within_runs(&column(0, *f), &column(i, *f)))
            .collect();
        lines.push(format!(
            "| {subscribers} | {rate} | | {} / {name} | {} | | |",
            rows[0].0,
            ratios.join(" | ")
        ));
    }
    lines.join("\n")
}

/// Runs the cases and prints the report as markdown.
pub async fn run(args: Args) -> Result<()> {
    process::use_storywire_binary(args.storywire.clone())?;
    let runs = args.runs.max(1);
    // The NATS anchor runs beside the others when there is a nats-server to run; without one the
    // report says so and goes on with the two gRPC servers.
    let nats = storywire_testkit::nats::find_nats_server(args.cluster.nats_server.clone())
        .map_err(Error::from)
        .and_then(process::use_nats_binary);
    let mut targets = vec![Target::Storywire, Target::Bare];
    match &nats {
        Ok(()) => targets.push(Target::Nats),
        Err(error) => eprintln!("no NATS anchor: {error}"),
    }
    if !args.servers.is_empty() {
        targets.retain(|target| args.servers.contains(target));
        if targets.len() < args.servers.len() {
            return Err("--servers names NATS, but there is no nats-server to run".into());
        }
    }
    if args.subscribers.iter().any(|&s| s > 0) {
        fan_out_table(&args, &targets, runs).await?;
        if let Err(error) = &nats {
            println!("\n(No NATS column: {error}.)");
        }
    }
    if args.readers.readers {
        readers::run(&args.readers, &targets, runs).await?;
    }
    if args.sse.sse_readers {
        sse::run(&args.sse, runs).await?;
    }
    if args.storm.storm {
        storm::run(&args.storm, runs).await?;
    }
    if args.burst.burst {
        burst::run(&args.burst, &targets, runs).await?;
    }
    if args.flood.flood {
        flood::run(&args.flood, runs).await?;
    }
    if args.unary_events > 0 {
        println!("\n{}", publish_paths(args.unary_events, runs).await?);
    }
    if args.abuse {
        abuse::run(runs).await?;
    }
    if args.lock {
        heavy_reads::history_readers(args.lock_story_events, runs).await?;
    }
    if args.snapshot {
        heavy_reads::snapshot_stallers(args.snapshot_stories, args.snapshot_subscribers, runs)
            .await?;
    }
    if args.durability_events > 0 {
        durability(args.durability_events, runs).await?;
    }
    if args.cluster.cluster {
        cluster::run(&args.cluster, args.connections, runs).await?;
    }
    if args.catch_up_events > 0 {
        println!("\n{}", catch_up(args.catch_up_events, runs).await?);
    }
    if args.idle_subscribers > 0 {
        println!(
            "\n{}",
            idle(args.idle_subscribers, args.connections, runs).await?
        );
    }
    Ok(())
}

/// The fan-out table: every subscriber count at every rate, on each of `targets`.
async fn fan_out_table(args: &Args, targets: &[Target], runs: usize) -> Result<()> {
    // Each table row is printed as soon as its case is done, so a long run that fails late
    // still leaves what it measured.
    let others: Vec<&str> = targets[1..].iter().map(|t| t.name()).collect();
    println!(
        "Fan-out: live subscribers over {} connections, one publisher (PublishStream; a NATS client for NATS); median (min–max) of {runs} runs; ratios storywire / {} taken within each run.{}\n",
        args.connections,
        others.join(", storywire / "),
        if targets.contains(&Target::Nats) {
            " NATS runs at fixed rates only: core NATS acknowledges nothing, so it has no \"as fast as the server acknowledges\", and a publisher that does not wait outruns its subscribers, which then lose events."
        } else {
            ""
        }
    );
    println!("{FAN_OUT_HEADER}");
    for &subscribers in args.subscribers.iter().filter(|&&s| s > 0) {
        for &rate in &args.rates {
            let targets: Vec<Target> = targets
                .iter()
                .copied()
                .filter(|&target| target != Target::Nats || rate != Rate::Max)
                .collect();
            let mut results: Vec<Vec<FanOut>> = vec![Vec::new(); targets.len()];
            for run in 0..runs {
                // Rotate the order so that no server always runs on a warmer machine.
                for k in 0..targets.len() {
                    let i = (k + run) % targets.len();
                    let target = targets[i];
                    let result = fan_out(target, subscribers, args.connections, rate).await?;
                    eprintln!(
                        "{subscribers} subscribers, {rate}, {}: {result:?}",
                        target.name()
                    );
                    results[i].push(result);
                }
            }
            let rows: Vec<(&str, &[FanOut])> = targets
                .iter()
                .zip(&results)
                .map(|(target, results)| (target.name(), results.as_slice()))
                .collect();
            println!("{}", fan_out_rows(subscribers, rate, &rows));
        }
    }
    Ok(())
}

/// Publish throughput: unary Publish, one call at a time, against PublishStream at full speed.
async fn publish_paths(unary_events: u64, runs: usize) -> Result<String> {
    let stream_events = unary_events * 20;
    let mut unary = Vec::new();
    let mut streamed = Vec::new();
    for _ in 0..runs {
        let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
        let channel = connect(&server.url(), 1).await?.remove(0);
        let elapsed = load::publish_unary(channel.clone(), unary_events).await?;
        unary.push(unary_events as f64 / elapsed.as_secs_f64());
        server.stop().await;

        let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
        let channel = connect(&server.url(), 1).await?.remove(0);
        let elapsed = publish(channel, stream_events, Rate::Max).await?;
        streamed.push(stream_events as f64 / elapsed.as_secs_f64());
        server.stop().await;
        eprintln!(
            "publish: unary {:.0}/s, stream {:.0}/s",
            unary[unary.len() - 1],
            streamed[streamed.len() - 1]
        );
    }
    Ok(format!(
        "| publish path (no subscribers) | events/s |\n|---|---|\n| unary Publish, one call at a time ({unary_events} events) | {} |\n| PublishStream, pipelined ({stream_events} events) | {} |\n| ratio | {} |",
        cell(&unary, 0),
        cell(&streamed, 0),
        ratio(&streamed, &unary)
    ))
}

/// Unary publishers that each publish one event at a time.
const DURABILITY_CLIENTS: u64 = 16;
/// Events each unary publisher publishes in the durability case.
const DURABILITY_UNARY_EVENTS: u64 = 200;

/// Publish throughput with each fsync mode (and in memory), and start-up time with the events on
/// disk.
async fn durability(events: u64, runs: usize) -> Result<()> {
    println!(
        "\n| log | unary publish/s, 1 client | unary publish/s, {DURABILITY_CLIENTS} clients | PublishStream events/s | start-up with {} events on disk, ms |",
        events + 1 + DURABILITY_UNARY_EVENTS * (DURABILITY_CLIENTS + 1)
    );
    println!("|---|---|---|---|---|");
    for mode in [None, Some("always"), Some("batch"), Some("never")] {
        let mut one = Vec::new();
        let mut many = Vec::new();
        let mut streamed = Vec::new();
        let mut startup = Vec::new();
        for run in 0..runs {
            let dir =
                std::env::temp_dir().join(format!("storywire-bench-{}-{run}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let extra: Vec<String> = match mode {
                None => Vec::new(),
                Some(fsync) => vec![
                    "--data-dir".into(),
                    dir.display().to_string(),
                    "--fsync".into(),
                    fsync.into(),
                ],
            };
            let server = ServerProcess::start_with(Target::Storywire, 10_000_000, &extra).await?;
            let channel = connect(&server.url(), 1).await?.remove(0);
            let elapsed = load::publish_unary(channel.clone(), DURABILITY_UNARY_EVENTS).await?;
            one.push(DURABILITY_UNARY_EVENTS as f64 / elapsed.as_secs_f64());
            let start = Instant::now();
            let mut clients = Vec::new();
            for _ in 0..DURABILITY_CLIENTS {
                clients.push(tokio::spawn(load::publish_unary_more(
                    channel.clone(),
                    DURABILITY_UNARY_EVENTS,
                )));
            }
            for client in clients {
                client.await??;
            }
            many.push(
                (DURABILITY_CLIENTS * DURABILITY_UNARY_EVENTS) as f64
                    / start.elapsed().as_secs_f64(),
            );
            let elapsed = load::publish_more(channel, events).await?;
            streamed.push(events as f64 / elapsed.as_secs_f64());
            server.stop().await;
            if mode.is_some() {
                let start = Instant::now();
                let server =
                    ServerProcess::start_with(Target::Storywire, 10_000_000, &extra).await?;
                startup.push(start.elapsed().as_secs_f64() * 1_000.0);
                server.stop().await;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let startup = if startup.is_empty() {
            "–".to_owned()
        } else {
            cell(&startup, 0)
        };
        println!(
            "| {} | {} | {} | {} | {startup} |",
            mode.map_or("in memory".to_owned(), |m| format!("--fsync {m}")),
            cell(&one, 0),
            cell(&many, 0),
            cell(&streamed, 0)
        );
    }
    Ok(())
}

/// Catch-up replay and memory per retained event.
async fn catch_up(events: u64, runs: usize) -> Result<String> {
    let mut rates = Vec::new();
    let mut per_event = Vec::new();
    for _ in 0..runs {
        let server = ServerProcess::start(Target::Storywire, events as usize).await?;
        let channel = connect(&server.url(), 1).await?.remove(0);
        let rss_before = server.rss_bytes();
        publish(channel.clone(), events, Rate::Max).await?;
        let rss_after = server.rss_bytes();
        per_event.push((rss_after.saturating_sub(rss_before)) as f64 / events as f64);

        let request = pb::SubscribeRequest {
            from_sequence: Some(1),
            ..Default::default()
        };
        let start = Instant::now();
        let stream = subscribe_many(&[channel], 1, &request).await?.remove(0);
        let received = receive(stream, 1, events, Instant::now() + GRACE * 5).await;
        let elapsed = start.elapsed();
        server.stop().await;
        if received.gaps + received.duplicates > 0 {
            return failed!(
                "catch-up: {} gaps, {} duplicates",
                received.gaps,
                received.duplicates
            );
        }
        rates.push(received.events as f64 / elapsed.as_secs_f64());
        eprintln!(
            "catch-up of {events}: {:.0} events/s, {:.0} B RSS per retained event",
            rates[rates.len() - 1],
            per_event[per_event.len() - 1]
        );
    }
    let encoded = load::typical_event_size() as f64;
    let (median, _, _) = summary(&per_event);
    Ok(format!(
        "| case | figure |\n|---|---|\n| catch-up: 1 subscriber reads {events} retained events from sequence 1 | {} events/s |\n| server RSS per retained event | {} bytes, {:.2}x the {encoded:.0}-byte encoded event |",
        cell(&rates, 0),
        cell(&per_event, 0),
        median / encoded
    ))
}

/// Memory per idle subscriber, for both servers.
async fn idle(subscribers: usize, connections: usize, runs: usize) -> Result<String> {
    let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, target) in [Target::Storywire, Target::Bare].into_iter().enumerate() {
            let server = ServerProcess::start(target, 1_000).await?;
            let channels = connect(&server.url(), connections).await?;
            // One subscriber first, so that per-connection and first-use costs are not counted.
            let _warm =
                subscribe_many(&channels, connections, &pb::SubscribeRequest::default()).await?;
            let rss_before = server.rss_bytes();
            let _idle =
                subscribe_many(&channels, subscribers, &pb::SubscribeRequest::default()).await?;
            let rss_after = server.rss_bytes();
            server.stop().await;
            per[i].push(rss_after.saturating_sub(rss_before) as f64 / subscribers as f64 / 1024.0);
            eprintln!(
                "{subscribers} idle subscribers, {}: {:.1} KiB each",
                target.name(),
                per[i][per[i].len() - 1]
            );
        }
    }
    Ok(format!(
        "| case | storywire | bare tonic | ratio |\n|---|---|---|---|\n| server RSS per idle subscriber ({subscribers} over {connections} connections), KiB | {} | {} | {} |",
        cell(&per[0], 1),
        cell(&per[1], 1),
        ratio(&per[0], &per[1])
    ))
}

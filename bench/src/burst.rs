//! One burst to many readers: the desk sends a batch of updates in one PublishStream
//! as fast as it can, and every reader, each on a connection of its own, must have all of them.
//! Where connections per reader (`--readers`) measures a steady trickle, this measures
//! the worst moment of a breaking story: every update of the batch to every reader at once.
//!
//! For each server (storywire, the bare tonic baseline, which has PublishStream too, and the NATS
//! anchor, whose publisher sends the batch and then flushes): a fresh server; every subscriber
//! connected and subscribed live; the burst; the time from its first send until each subscriber
//! has its last update, and the server's CPU from the first send until the last subscriber has
//! it.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    crowd::{Crowd, Finished, Publisher, Spread},
    error::Result,
    load::Rate,
    process::{ServerProcess, Target, room_for},
    report::{Figure, by_server, in_turn, quantile},
    tally::{Received, misses},
};

/// How long past the burst's first send the subscribers wait for its last update before what is
/// missing counts as gaps.
const GRACE: Duration = Duration::from_secs(120);

/// The burst case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "burst_case")]
pub struct Args {
    /// Also run the burst case: --burst-updates updates in one PublishStream at full
    /// speed to --burst-readers subscribers, each on a connection of its own, against storywire,
    /// bare tonic and NATS.
    #[arg(long)]
    pub burst: bool,
    /// Subscribers in the burst case.
    #[arg(long, default_value_t = 10_000)]
    pub burst_readers: usize,
    /// Updates in the burst.
    #[arg(long, default_value_t = 50)]
    pub burst_updates: u64,
}

/// One run of the burst on one server.
#[derive(Debug, Clone, Copy)]
struct Burst {
    /// From the burst's first send until the last subscriber had the last update.
    last_reader_ms: f64,
    /// The same for each subscriber, its median and 99th percentile.
    each_p50_ms: f64,
    each_p99_ms: f64,
    /// From the first send to the last acknowledgement (NATS: to the flush after the last).
    publish_ms: f64,
    /// The server's CPU from the first send until the last subscriber had the last update.
    cpu_ms: f64,
    cpu_us_per_delivery: f64,
    /// Subscribers that did not have every update within [`GRACE`].
    incomplete: f64,
    /// Sequences missed, and seen twice, over all subscribers.
    misses: (u64, u64),
}

/// The table's figures, one row each.
#[rustfmt::skip]
const FIGURES: [Figure<Burst>; 7] = [
    ("first send to the last reader's last update, ms", |r| r.last_reader_ms, 1),
    ("each reader's last update, p50, ms", |r| r.each_p50_ms, 1),
    ("each reader's last update, p99, ms", |r| r.each_p99_ms, 1),
    ("publisher: first send to last ack (NATS: flush), ms", |r| r.publish_ms, 1),
    ("server CPU for the burst, ms", |r| r.cpu_ms, 0),
    ("server CPU per delivery, µs", |r| r.cpu_us_per_delivery, 2),
    ("readers without every update within 120 s", |r| r.incomplete, 0),
];

/// Runs the burst on every one of `targets`, `runs` times, and prints its table.
pub async fn run(args: &Args, targets: &[Target], runs: usize) -> Result<()> {
    let count = args.burst_readers;
    let updates = args.burst_updates.max(1);
    room_for(count)?;
    println!(
        "\nOne burst to many readers: {updates} updates in one PublishStream at full speed (NATS: published, then flushed) to {count} subscribers, each on a connection of its own; median (min–max) of {runs} runs; ratios taken within each run."
    );
    let label = format!("burst, {count} readers");
    let runs = in_turn(targets, runs, &label, |target| once(target, count, updates)).await;
    let corner = format!("{updates} updates to {count} readers");
    println!(
        "\n{}",
        by_server(&corner, targets, &FIGURES, &runs, |r| r.misses)
    );
    Ok(())
}

/// One run on `target`: a fresh server, `count` subscribers each on a connection of its own, a
/// burst of `updates`.
async fn once(target: Target, count: usize, updates: u64) -> Result<Burst> {
    let server = ServerProcess::start(target, updates as usize + 2).await?;
    let url = server.url();
    let publisher = Publisher::connect(target, &url).await?;
    // On the gRPC servers the story is opened before anyone subscribes: the burst is its updates
    // 2 to updates + 1, as a desk's would be on a story already running. NATS has no story.
    let first = match target {
        Target::Nats => 1,
        Target::Storywire | Target::Bare => {
            publisher.publish(1, 1, Rate::Max).await?;
            2
        }
    };
    let expected = (first, first + updates - 1);
    let deadline = Instant::now() + GRACE;
    let crowd = Crowd::subscribe(target, &url, count, Spread::Each, expected, deadline).await?;
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let published = publisher.publish(first, updates, Rate::Max).await?;
    let Finished { all, cpu, .. } = crowd.finish(server, cpu_before).await?;
    publisher.close().await;

    let complete: Vec<&Received> = all
        .iter()
        .filter(|r| r.sequences.gaps == 0 && r.sequences.events >= updates)
        .collect();
    let each: Vec<f64> = complete
        .iter()
        .filter_map(|r| r.last_at)
        .map(|at| at.saturating_duration_since(start).as_secs_f64() * 1_000.0)
        .collect();
    let delivered: u64 = all.iter().map(|r| r.sequences.events).sum();
    Ok(Burst {
        last_reader_ms: each.iter().copied().fold(0.0, f64::max),
        each_p50_ms: quantile(&each, 0.5),
        each_p99_ms: quantile(&each, 0.99),
        publish_ms: published.as_secs_f64() * 1_000.0,
        cpu_ms: cpu * 1_000.0,
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        incomplete: (count - complete.len()) as f64,
        misses: misses(&all),
    })
}

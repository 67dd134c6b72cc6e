//! The standard cases, run by default: fan-out against the baseline and the NATS anchor, publish
//! paths, durability with each fsync mode, catch-up and memory per retained event, memory per
//! idle subscriber.

use std::time::Duration;

use storywire::pb;
use tokio::time::Instant;

use crate::{
    crowd::{Crowd, Finished, Publisher, Spread},
    error::{Result, failed},
    load::{self, Rate, connect, connect_one, publish, publish_unary, receive, subscribe_many},
    process::{ServerProcess, Target},
    report::{Figure, Runs, Table, cell, in_turn, ms, ms_at, ratio, ratio_within_runs, summary},
    tally::{misses, pooled},
};

/// How long past the expected end of a case the bench waits for stragglers before it counts
/// what is missing as gaps.
const GRACE: Duration = Duration::from_secs(60);
/// The most deliveries (events x subscribers) one max-rate case aims at: enough to run for
/// seconds, few enough that the whole matrix runs in minutes on two cores.
const DELIVERIES_PER_CASE: u64 = 2_000_000;
/// How long a fixed-rate case publishes for, at most.
const RATE_CASE_SECONDS: u64 = 5;
/// Unary publishers that each publish one event at a time in the durability case.
const DURABILITY_CLIENTS: u64 = 16;
/// Events each unary publisher publishes in the durability case.
const DURABILITY_UNARY_EVENTS: u64 = 200;

/// One fan-out run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct FanOut {
    delivered_per_second: f64,
    published_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_us_per_delivery: f64,
    rss_mib: f64,
    misses: (u64, u64),
}

/// The fan-out table's figures, in its columns' order.
const FIGURES: [Figure<FanOut>; 7] = [
    ("delivered/s", |r| r.delivered_per_second, 0),
    ("publish/s", |r| r.published_per_second, 0),
    ("p50 ms", |r| r.p50_ms, 2),
    ("p99 ms", |r| r.p99_ms, 2),
    ("max ms", |r| r.max_ms, 2),
    ("server CPU µs/delivery", |r| r.cpu_us_per_delivery, 2),
    ("server RSS MiB", |r| r.rss_mib, 1),
];

/// How many events a case publishes.
fn events_for(subscribers: usize, rate: Rate) -> u64 {
    let by_deliveries = (DELIVERIES_PER_CASE / subscribers.max(1) as u64).clamp(1_000, 200_000);
    match rate {
        Rate::Max => by_deliveries,
        Rate::PerSecond(per_second) => by_deliveries.min(per_second * RATE_CASE_SECONDS).max(100),
    }
}

/// One fan-out run on a fresh `target` started with `extra` arguments (`storywire serve`'s):
/// `subscribers` live subscribers over `connections` connections, one more publishing at `rate`.
pub async fn fan_out(
    target: Target,
    extra: &[String],
    subscribers: usize,
    connections: usize,
    rate: Rate,
) -> Result<FanOut> {
    let events = events_for(subscribers, rate);
    let server = ServerProcess::start_with(target, events as usize + 1, extra).await?;
    let url = server.url();
    let expected_seconds = match rate {
        Rate::Max => 0,
        Rate::PerSecond(per_second) => events / per_second,
    };
    let deadline = Instant::now() + GRACE + Duration::from_secs(expected_seconds);
    let spread = Spread::Over(connections);
    let crowd = Crowd::subscribe(target, &url, subscribers, spread, (1, events), deadline).await?;
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let publisher = Publisher::connect(target, &url).await?;
    let publish_time = publisher.publish(1, events, rate).await?;
    let Finished { all, cpu, rss } = crowd.finish(server, cpu_before).await?;
    publisher.close().await;
    let (latency, delivered) = pooled(&all)?;
    let last = all.iter().filter_map(|r| r.last_at).max().unwrap_or(start);
    Ok(FanOut {
        delivered_per_second: delivered as f64 / (last - start).as_secs_f64().max(1e-9),
        published_per_second: events as f64 / publish_time.as_secs_f64().max(1e-9),
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        misses: misses(&all),
    })
}

/// The fan-out table's head, for [`fan_out_rows`].
pub fn fan_out_head() -> Table {
    let figures = FIGURES.iter().map(|(name, _, _)| *name);
    let heads: Vec<&str> = ["subscribers", "rate", "events", "server"]
        .into_iter()
        .chain(figures)
        .chain(["gaps", "dups"])
        .collect();
    Table::new(&heads)
}

/// The fan-out table's rows for one case, to `table`: each contender's medians and spreads over
/// its runs (and how many failed, if any did), then for each after the first, the first's
/// figures over its, taken within each run.
pub fn fan_out_rows(
    table: &mut Table,
    subscribers: usize,
    rate: Rate,
    names: &[String],
    runs: &Runs<FanOut>,
) {
    let (results, failed) = (&runs.results, &runs.failed);
    let events = events_for(subscribers, rate);
    let column =
        |i: usize, f: fn(&FanOut) -> f64| -> Vec<f64> { results[i].iter().map(f).collect() };
    let case = [subscribers.to_string(), rate.to_string()];
    for (i, name) in names.iter().enumerate() {
        let cells = FIGURES.iter().map(|(_, f, d)| cell(&column(i, *f), *d));
        let (gaps, duplicates) = results[i]
            .iter()
            .fold((0, 0), |(g, d), r| (g + r.misses.0, d + r.misses.1));
        let name = match failed[i] {
            0 => name.clone(),
            n => format!("{name} ({n} runs failed, see the log)"),
        };
        let head = [events.to_string(), name];
        let tail = [gaps.to_string(), duplicates.to_string()];
        table.row(case.iter().cloned().chain(head).chain(cells).chain(tail));
    }
    for (i, name) in names.iter().enumerate().skip(1) {
        let ratios = FIGURES
            .iter()
            .map(|(_, f, _)| ratio_within_runs(&column(0, *f), &column(i, *f)));
        let head = [String::new(), format!("{} / {name}", names[0])];
        let tail = [String::new(), String::new()];
        table.row(case.iter().cloned().chain(head).chain(ratios).chain(tail));
    }
}

/// The fan-out table: every subscriber count at every rate, on each of `targets`. Each case's
/// rows are printed as soon as it is done, so a long run that fails late still leaves what it
/// measured.
pub async fn fan_out_table(
    subscriber_counts: &[usize],
    rates: &[Rate],
    connections: usize,
    targets: &[Target],
    runs: usize,
) -> Result<()> {
    let others: Vec<&str> = targets[1..].iter().map(|t| t.name()).collect();
    println!(
        "Fan-out: live subscribers over {connections} connections, one publisher (PublishStream; a NATS client for NATS); median (min–max) of {runs} runs; ratios storywire / {} taken within each run.{}\n",
        others.join(", storywire / "),
        if targets.contains(&Target::Nats) {
            " NATS runs at fixed rates only: core NATS acknowledges nothing, so it has no \"as fast as the server acknowledges\", and a publisher that does not wait outruns its subscribers, which then lose events."
        } else {
            ""
        }
    );
    println!("{}", fan_out_head());
    for &subscribers in subscriber_counts.iter().filter(|&&s| s > 0) {
        for &rate in rates {
            let targets: Vec<Target> = targets
                .iter()
                .copied()
                .filter(|&target| target != Target::Nats || rate != Rate::Max)
                .collect();
            let label = format!("{subscribers} subscribers, {rate}");
            let once = |target| fan_out(target, &[], subscribers, connections, rate);
            let runs = in_turn(&targets, runs, &label, once).await;
            let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
            let mut rows = Table::rows();
            fan_out_rows(&mut rows, subscribers, rate, &names, &runs);
            println!("{rows}");
        }
    }
    Ok(())
}

/// Publish throughput: unary Publish, one call at a time, against PublishStream at full speed.
pub async fn publish_paths(unary_events: u64, runs: usize) -> Result<Table> {
    let stream_events = unary_events * 20;
    let mut unary = Vec::new();
    let mut streamed = Vec::new();
    for _ in 0..runs {
        let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
        let channel = connect_one(&server.url()).await?;
        let elapsed = publish_unary(channel, 1, unary_events).await?;
        unary.push(unary_events as f64 / elapsed.as_secs_f64());
        server.stop().await;

        let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
        let channel = connect_one(&server.url()).await?;
        let elapsed = publish(channel, stream_events, Rate::Max).await?;
        streamed.push(stream_events as f64 / elapsed.as_secs_f64());
        server.stop().await;
        eprintln!(
            "publish: unary {:.0}/s, stream {:.0}/s",
            unary[unary.len() - 1],
            streamed[streamed.len() - 1]
        );
    }
    let mut table = Table::new(&["publish path (no subscribers)", "events/s"]);
    let one = format!("unary Publish, one call at a time ({unary_events} events)");
    table.row([one, cell(&unary, 0)]);
    let pipelined = format!("PublishStream, pipelined ({stream_events} events)");
    table.row([pipelined, cell(&streamed, 0)]);
    table.row(["ratio".to_owned(), ratio(&streamed, &unary)]);
    Ok(table)
}

/// Publish throughput with each fsync mode (and in memory), and start-up time with the events on
/// disk.
pub async fn durability(events: u64, runs: usize) -> Result<Table> {
    let on_disk = events + 1 + DURABILITY_UNARY_EVENTS * (DURABILITY_CLIENTS + 1);
    let mut table = Table::new(&[
        "log".to_owned(),
        "unary publish/s, 1 client".to_owned(),
        format!("unary publish/s, {DURABILITY_CLIENTS} clients"),
        "PublishStream events/s".to_owned(),
        format!("start-up with {on_disk} events on disk, ms"),
    ]);
    for mode in [None, Some("always"), Some("batch"), Some("never")] {
        let (mut one, mut many, mut streamed, mut startup) = (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let dir =
                std::env::temp_dir().join(format!("storywire-bench-{}", uuid::Uuid::new_v4()));
            let extra: Vec<String> = match mode {
                None => Vec::new(),
                Some(fsync) => ["--data-dir", &dir.display().to_string(), "--fsync", fsync]
                    .map(String::from)
                    .to_vec(),
            };
            let server = ServerProcess::start_with(Target::Storywire, 10_000_000, &extra).await?;
            let channel = connect_one(&server.url()).await?;
            let first = publish_unary(channel.clone(), 1, DURABILITY_UNARY_EVENTS).await?;
            one.push(DURABILITY_UNARY_EVENTS as f64 / first.as_secs_f64());
            let start = Instant::now();
            let clients: Vec<_> = (0..DURABILITY_CLIENTS)
                .map(|_| tokio::spawn(publish_unary(channel.clone(), 2, DURABILITY_UNARY_EVENTS)))
                .collect();
            for client in clients {
                client.await??;
            }
            let all = DURABILITY_CLIENTS * DURABILITY_UNARY_EVENTS;
            many.push(all as f64 / start.elapsed().as_secs_f64());
            let elapsed = load::publish_from(channel, 2, events, Rate::Max).await?;
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
        let name = mode.map_or("in memory".to_owned(), |m| format!("--fsync {m}"));
        let startup = if startup.is_empty() {
            "–".to_owned()
        } else {
            cell(&startup, 0)
        };
        table.row([
            name,
            cell(&one, 0),
            cell(&many, 0),
            cell(&streamed, 0),
            startup,
        ]);
    }
    Ok(table)
}

/// Catch-up replay and memory per retained event.
pub async fn catch_up(events: u64, runs: usize) -> Result<Table> {
    let mut rates = Vec::new();
    let mut per_event = Vec::new();
    for _ in 0..runs {
        let server = ServerProcess::start(Target::Storywire, events as usize).await?;
        let channel = connect_one(&server.url()).await?;
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
        let sequences = received.sequences;
        if sequences.gaps + sequences.duplicates > 0 {
            return failed!(
                "catch-up: {} gaps, {} duplicates",
                sequences.gaps,
                sequences.duplicates
            );
        }
        rates.push(sequences.events as f64 / elapsed.as_secs_f64());
        eprintln!(
            "catch-up of {events}: {:.0} events/s, {:.0} B RSS per retained event",
            rates[rates.len() - 1],
            per_event[per_event.len() - 1]
        );
    }
    let encoded = load::typical_event_size() as f64;
    let (median, _, _) = summary(&per_event);
    let mut table = Table::new(&["case", "figure"]);
    table.row([
        format!("catch-up: 1 subscriber reads {events} retained events from sequence 1"),
        format!("{} events/s", cell(&rates, 0)),
    ]);
    table.row([
        "server RSS per retained event".to_owned(),
        format!(
            "{} bytes, {:.2}x the {encoded:.0}-byte encoded event",
            cell(&per_event, 0),
            median / encoded
        ),
    ]);
    Ok(table)
}

/// Memory per idle subscriber, for both gRPC servers.
pub async fn idle(subscribers: usize, connections: usize, runs: usize) -> Result<Table> {
    let targets = [Target::Storywire, Target::Bare];
    let label = format!("{subscribers} idle subscribers, KiB each");
    let runs = in_turn(&targets, runs, &label, |target| async move {
        let server = ServerProcess::start(target, 1_000).await?;
        let channels = connect(&server.url(), connections).await?;
        let request = pb::SubscribeRequest::default();
        // One subscriber first, so that per-connection and first-use costs are not counted.
        let _warm = subscribe_many(&channels, connections, &request).await?;
        let rss_before = server.rss_bytes();
        let _idle = subscribe_many(&channels, subscribers, &request).await?;
        let rss_after = server.rss_bytes();
        server.stop().await;
        Ok(rss_after.saturating_sub(rss_before) as f64 / subscribers as f64 / 1024.0)
    })
    .await;
    let [storywire, bare] = [&runs.results[0], &runs.results[1]];
    let mut table = Table::new(&["case", "storywire", "bare tonic", "ratio"]);
    table.row([
        format!(
            "server RSS per idle subscriber ({subscribers} over {connections} connections), KiB"
        ),
        cell(storywire, 1),
        cell(bare, 1),
        ratio(storywire, bare),
    ]);
    Ok(table)
}

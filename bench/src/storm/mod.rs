//! Reconnect storm: a durable server with every reader connected restarts, and every reader comes
//! back at once, each asking for the last 1,000 events, while the desk keeps publishing.
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
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tonic::transport::Endpoint;

use crate::{
    error::Result,
    load::{Rate, connect_one, publish, subscribe_each},
    process::{ServerProcess, Target, cpu_seconds_of, open_descriptors, room_for, settle},
    report::{Figure, Table, cell, histogram, ms_at, quantile, record},
    tally::Sequences,
};

mod desk;
mod follow;

use desk::desk_apart;
use follow::{Follower, Signals, follow};

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

/// One run of the storm; times run from the new server listening unless they say otherwise.
#[derive(Debug, Clone, Copy)]
struct Storm {
    restart_s: f64,
    all_s: f64,
    each_p50_s: f64,
    each_p99_s: f64,
    incomplete: f64,
    quiet_p99_ms: f64,
    storm_p99_ms: f64,
    storm_sent_p99_ms: f64,
    resends: f64,
    failed_per_reader: f64,
    cpu_s: f64,
    bench_cpu_s: f64,
    peak_rss_mib: f64,
    /// Over every subscriber's stream before the restart, and over its resumed stream.
    before: (u64, u64),
    resumed: (u64, u64),
}

/// The table's rows, with the goal each figure is held to where one is set. Publish latency runs
/// from each event's tick (due) to its acknowledgement, so that events held up behind an
/// unanswered one are late too; "from its first send" leaves that wait out.
#[rustfmt::skip]
const ROWS: [(Figure<Storm>, &str); 14] = [
    (("SIGTERM to the new server listening, s", |r| r.restart_s, 3), ""),
    (("all caught up, from the new server listening, s", |r| r.all_s, 3), "≤ 10"),
    (("each caught up, p50 from listening, s", |r| r.each_p50_s, 3), ""),
    (("each caught up, p99 from listening, s", |r| r.each_p99_s, 3), ""),
    (("subscribers not caught up within 120 s", |r| r.incomplete, 0), "0"),
    (("publish ack p99, quiet, ms", |r| r.quiet_p99_ms, 2), ""),
    (("publish ack p99, storm, ms", |r| r.storm_p99_ms, 2), ""),
    (("publish ack p99, storm / quiet", |r| r.storm_p99_ms / r.quiet_p99_ms.max(1e-9), 2), "≤ 3"),
    (("publish p99, storm, from its first send, ms", |r| r.storm_sent_p99_ms, 2), ""),
    (("publishes resent with the same event_id", |r| r.resends, 0), ""),
    (("failed connects and Subscribes per reader", |r| r.failed_per_reader, 2), ""),
    (("new server CPU from its start to the storm's end, s", |r| r.cpu_s, 2), ""),
    (("bench (all clients) CPU over the storm, s", |r| r.bench_cpu_s, 2), ""),
    (("new server peak RSS in the storm, MiB", |r| r.peak_rss_mib, 1), ""),
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
    let label = format!("storm, {count} readers");
    let outcome =
        crate::report::in_turn(&["storywire"], runs, &label, |_| once(count, quiet)).await;
    println!("\n{}", table(count, &outcome.results[0], outcome.failed[0]));
    Ok(())
}

/// The storm table: a row per figure, then the gaps and duplicates over every run.
fn table(count: usize, results: &[Storm], failed: usize) -> Table {
    let mut table = Table::new(&[
        format!("{count} readers, reconnect storm"),
        "storywire".into(),
        "goal".into(),
    ]);
    for ((name, figure, decimals), goal) in ROWS {
        let values: Vec<f64> = results.iter().map(figure).collect();
        table.row([name, &cell(&values, decimals), goal]);
    }
    let sum = |f: fn(&Storm) -> (u64, u64)| {
        let (gaps, duplicates) = results
            .iter()
            .map(f)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        format!("{gaps} / {duplicates}")
    };
    let resumed = sum(|r| r.resumed);
    table.row([
        "gaps / duplicates over the resumed streams, all runs",
        &resumed,
        "0 / 0",
    ]);
    let before = sum(|r| r.before);
    table.row([
        "gaps / duplicates over the live streams before the restart",
        &before,
        "0 / 0",
    ]);
    if failed > 0 {
        table.row(["runs that failed (see the log)", &failed.to_string(), ""]);
    }
    table
}

/// One run in a fresh data directory, removed afterwards.
async fn once(count: usize, quiet: Duration) -> Result<Storm> {
    let dir = std::env::temp_dir().join(format!("storywire-storm-{}", uuid::Uuid::new_v4()));
    let extra = vec!["--data-dir".to_owned(), dir.display().to_string()];
    let outcome = storm(count, quiet, &extra).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// One run against a server started with `extra` (its data directory).
async fn storm(count: usize, quiet: Duration, extra: &[String]) -> Result<Storm> {
    let server = ServerProcess::start_with(Target::Storywire, RETAIN_EVENTS, extra).await?;
    let (address, url) = (server.address, server.url());
    publish(connect_one(&url).await?, PRELOAD_EVENTS, Rate::Max).await?;

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
    let desk = desk_apart(endpoint, acked.clone(), stop_rx, deadline)?;

    // The quiet phase is a fixed window of the bench's own clock: there is nothing to await.
    tokio::time::sleep(quiet).await;
    let sigterm_at = Instant::now();
    server.terminate(EXIT_TIMEOUT).await?;
    resume_from.send_replace(Some(resume_sequence(acked.load(Ordering::Acquire))));
    let server = ServerProcess::start_on(Target::Storywire, address, RETAIN_EVENTS, extra).await?;
    let listening_at = Instant::now();
    let bench_cpu_before = cpu_seconds_of(std::process::id());

    let storm_deadline = (listening_at + STORM_TIMEOUT).min(deadline);
    let mut done = Vec::with_capacity(count);
    let mut gave_up = 0;
    while done.len() + gave_up < count {
        match tokio::time::timeout_at(storm_deadline, completions.recv()).await {
            Ok(Some(Some(at))) => done.push(at),
            Ok(Some(None)) => gave_up += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let storm_end = Instant::now();
    let cpu_s = server.cpu_seconds();
    let bench_cpu_s = cpu_seconds_of(std::process::id()) - bench_cpu_before;
    let peak_rss_mib = server.peak_rss_bytes() as f64 / (1024.0 * 1024.0);

    stop.send_replace(Some(storm_end));
    let published = desk.await.map_err(|_| "the desk's thread ended")??;
    last.send_replace(published.iter().map(|a| a.sequence).max());
    let mut all = Vec::with_capacity(count);
    while let Some(follower) = followers.join_next().await {
        all.push(follower?);
    }
    drop(last);
    // The clients close first and the server stays until they are gone (see process::settle).
    settle(descriptors).await;
    server.stop().await;

    let errors: Vec<&String> = all.iter().filter_map(|f| f.error.as_ref()).collect();
    if let Some(first) = errors.first() {
        eprintln!("{} subscribers gave up; the first: {first}", errors.len());
    }
    let latency = |due_in: &dyn Fn(Instant) -> bool, from_send: bool| -> Histogram<u64> {
        let mut histogram = histogram();
        for event in published.iter().filter(|a| due_in(a.due)) {
            let start = if from_send { event.sent } else { event.due };
            record(&mut histogram, event.acked - start);
        }
        histogram
    };
    let in_storm = |due| due >= listening_at && due < storm_end;
    let each: Vec<f64> = done
        .iter()
        .map(|at| at.saturating_duration_since(listening_at).as_secs_f64())
        .collect();
    let last_done = done.iter().max().copied().unwrap_or(storm_end);
    let sum = |f: fn(&Follower) -> &Sequences| {
        all.iter()
            .map(f)
            .fold((0, 0), |(g, d), s| (g + s.gaps, d + s.duplicates))
    };
    Ok(Storm {
        restart_s: (listening_at - sigterm_at).as_secs_f64(),
        all_s: last_done
            .saturating_duration_since(listening_at)
            .as_secs_f64(),
        each_p50_s: quantile(&each, 0.5),
        each_p99_s: quantile(&each, 0.99),
        incomplete: (count - done.len()) as f64,
        quiet_p99_ms: ms_at(&latency(&|due| due < sigterm_at, false), 0.99),
        storm_p99_ms: ms_at(&latency(&in_storm, false), 0.99),
        storm_sent_p99_ms: ms_at(&latency(&in_storm, true), 0.99),
        resends: published.iter().map(|a| f64::from(a.resends)).sum(),
        failed_per_reader: all.iter().map(|f| f.failed_attempts).sum::<u64>() as f64
            / count.max(1) as f64,
        cpu_s,
        bench_cpu_s,
        peak_rss_mib,
        before: sum(|f| &f.before),
        resumed: sum(|f| &f.resumed),
    })
}

#[cfg(test)]
mod tests {
    use super::resume_sequence;

    #[test]
    fn resuming_replays_exactly_the_last_thousand_events() {
        assert_eq!(resume_sequence(2_000), 1_001);
        assert_eq!(resume_sequence(1_000), 1);
        // A shorter log is replayed whole, from sequence 1 (0 would mean "the oldest retained").
        assert_eq!(resume_sequence(10), 1);
        assert_eq!(resume_sequence(0), 1);
    }
}

//! Abuse and heavy reads: misbehaving or greedy clients against one server while a well-behaved
//! one measures what it feels.
//!
//! Each phase starts a fresh server and fills its log. Then one kind of abuser sets itself up on
//! its own connections, and only once it is in place does the victim open a live subscription
//! and publish 200 events a second for five seconds, measuring each event from send to receipt,
//! and from its tick to its acknowledgement. The abuser runs on a runtime and thread of its own,
//! so its client-side work shares the machine's cores with the victim but never the victim's
//! runtime. Every abuser is bounded in count and stops when the phase ends; all traffic stays on
//! loopback. The abuser connects from 127.0.0.2 and the victim from 127.0.0.1: two peers, as the
//! server's per-peer budget of wasted streams sees them.
//!
//! The lock case is a phase too: clients looping GetStory with as_of_version on a long story,
//! which the server rebuilds on every call, run at nice 19 as if on another machine, so that the
//! figures are what the server's own work for it costs, not the load generator's share of the
//! two cores.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use storywire::pb;
use tokio::{sync::oneshot, time::Instant};
use tonic::transport::Channel;

use crate::{
    error::{Result, failed},
    load::{Rate, connect, publish_from, receive, subscribe_many},
    process::{ServerProcess, Target},
    report::{Table, cell, ms_at, ratio},
};

mod abuser;

use abuser::{Abuse, join_abuser, spawn_abuser};

/// How long the victim publishes in each phase, and at what rate: 1,000 samples, so that the p99
/// is the 10th-worst latency rather than the 4th.
const PHASE_EVENTS: u64 = 1_000;
const PHASE_RATE: u64 = 200;
/// Events in the log before the abuse starts: about 500 KiB, so that a subscription from sequence
/// 1 fills any HTTP/2 window a non-reading client could offer while it catches up.
const PREFILL_EVENTS: u64 = 2_000;

/// Whether the server still answers its health check with SERVING.
async fn serving(channel: Channel) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(health.check(request).await, Ok(reply) if reply.get_ref().status == 1)
}

/// What the victim saw in one phase, and what the server spent.
#[derive(Debug)]
pub struct Phase {
    /// The victim subscriber's p99, from each event's send to its receipt.
    pub p99_ms: f64,
    /// The victim publisher's p99, from each event's tick to its acknowledgement.
    pub publish_p99_ms: f64,
    /// The server's CPU time over the victim's measurement, per second of it (2.0 is both cores).
    pub server_cpu: f64,
    /// Events the victim subscriber did not receive.
    pub lost: u64,
    /// The most the server's resident set has been, up to the phase's end.
    pub peak_rss_mib: f64,
    /// The abusive operations made: streams opened, calls made.
    pub abuses: u64,
    /// Whether the server answered its health check with SERVING after the phase.
    pub healthy: bool,
}

/// One phase: a fresh server holding `prefill` events of the bench story, `kind` in place (at
/// nice 19 with `nice`), the victim measuring.
async fn phase(kind: Abuse, nice: bool, prefill: u64) -> Result<Phase> {
    // Nothing is evicted during a phase: the victim would count it lost.
    let retain = (prefill + PHASE_EVENTS).max(1_000_000) as usize;
    let server = ServerProcess::start(Target::Storywire, retain).await?;
    let url = server.url();
    let victim = connect(&url, 2).await?;
    publish_from(victim[0].clone(), 1, prefill, Rate::Max).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, in_place) = oneshot::channel();
    let abuser = spawn_abuser(kind, nice, url.clone(), stop.clone(), ready);
    if in_place.await.is_err() {
        // The abuser ended before it was in place: its result says why.
        join_abuser(abuser).await?;
        return failed!("the {kind:?} abuser ended before it was in place");
    }
    let request = pb::SubscribeRequest::default();
    let stream = subscribe_many(&victim[1..], 1, &request).await?.remove(0);
    let (first, last) = (prefill + 1, prefill + PHASE_EVENTS);
    let deadline = Instant::now() + Duration::from_secs(PHASE_EVENTS / PHASE_RATE + 60);
    let receiving = tokio::spawn(receive(stream, first, last, deadline));
    let (cpu_before, started) = (server.cpu_seconds(), Instant::now());
    let rate = Rate::PerSecond(PHASE_RATE);
    let published = publish_from(victim[0].clone(), first, PHASE_EVENTS, rate).await?;
    let received = receiving.await?;
    let server_cpu = (server.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let abuses = join_abuser(abuser).await?;
    let healthy = serving(victim[0].clone()).await;
    let peak_rss_mib = server.peak_rss_bytes() as f64 / (1024.0 * 1024.0);
    server.stop().await;
    Ok(Phase {
        p99_ms: ms_at(&received.latency, 0.99),
        publish_p99_ms: ms_at(&published.latency, 0.99),
        server_cpu,
        lost: received.sequences.gaps,
        peak_rss_mib,
        abuses,
        healthy,
    })
}

/// A column of the phases' table: its head, and its cell from a kind's phases and the quiet ones.
type Column = (&'static str, fn(&[Phase], &[Phase]) -> String);

/// Runs a phase of each of `kinds` (the first [`Abuse::Quiet`], to compare with) `runs` times,
/// every kind once a round so that a noisy spell on the machine spreads over the phases (the
/// quiet one included) rather than landing on all the runs of one, and prints their table.
async fn phases(
    kinds: &[Abuse],
    nice: bool,
    prefill: u64,
    runs: usize,
    columns: &[Column],
) -> Result<()> {
    let outcome =
        crate::report::in_turn(kinds, runs, "phase", |kind| phase(kind, nice, prefill)).await;
    if let Some(failed) = outcome.failed.iter().find(|&&failed| failed > 0) {
        return failed!("{failed} phases failed (see the log)");
    }
    let heads: Vec<&str> = columns.iter().map(|(head, _)| *head).collect();
    let mut table = Table::new(&heads);
    let quiet = &outcome.results[0];
    for (kind, results) in kinds.iter().zip(&outcome.results) {
        let cells = columns[1..].iter().map(|(_, cell)| cell(results, quiet));
        table.row([kind.to_string()].into_iter().chain(cells));
    }
    println!("\n{table}");
    Ok(())
}

/// A figure of every phase.
fn column(phases: &[Phase], figure: fn(&Phase) -> f64) -> Vec<f64> {
    phases.iter().map(figure).collect()
}

/// `yes` if the server was healthy after every phase.
fn healthy(phases: &[Phase], _: &[Phase]) -> String {
    if phases.iter().all(|p| p.healthy) {
        "yes"
    } else {
        "NO"
    }
    .to_owned()
}

/// Events lost over every phase.
fn lost(phases: &[Phase], _: &[Phase]) -> String {
    phases.iter().map(|p| p.lost).sum::<u64>().to_string()
}

/// Every abuse phase, `runs` times, with the abuser at the same priority as the server and the
/// victim: on two cores its own client-side work then takes CPU from both, which no server
/// setting can prevent.
pub async fn run(runs: usize) -> Result<()> {
    println!(
        "\nAbuse, the abuser at the same priority as the server and the victim; median (min–max) of {runs} runs:"
    );
    let kinds = [
        Abuse::Quiet,
        Abuse::Stallers,
        Abuse::Resetters,
        Abuse::Oversized,
        Abuse::Garbage,
    ];
    let columns: [Column; 8] = [
        (
            "abuse while a client publishes 200/s and subscribes",
            |_, _| String::new(),
        ),
        ("victim p99 ms", |p, _| cell(&column(p, |p| p.p99_ms), 2)),
        ("ratio to quiet", |p, q| {
            ratio(&column(p, |p| p.p99_ms), &column(q, |p| p.p99_ms))
        }),
        ("server CPU, cores", |p, _| {
            cell(&column(p, |p| p.server_cpu), 2)
        }),
        ("events lost", lost),
        ("server peak RSS MiB", |p, _| {
            cell(&column(p, |p| p.peak_rss_mib), 1)
        }),
        ("abusive operations", |p, _| {
            cell(&column(p, |p| p.abuses as f64), 0)
        }),
        ("server healthy after", healthy),
    ];
    phases(&kinds, false, PREFILL_EVENTS, runs, &columns).await
}

/// The lock case: [`Abuse::HistoryReaders`] ask for the bench story as of its last version, so
/// that each call rebuilds it from all of its `events` events (the log once held its read lock,
/// which appends wait for, through the rebuild); the figure is the publisher's p99 against quiet.
pub async fn history_readers(events: u64, runs: usize) -> Result<()> {
    println!(
        "\nGetStory as_of_version on a story of {events} events, against a client publishing on PublishStream at 200/s and subscribing; the load at nice 19, as if on another machine; median (min–max) of {runs} runs:"
    );
    let kinds = [
        Abuse::Quiet,
        Abuse::HistoryReaders {
            as_of_version: events,
        },
    ];
    let columns: [Column; 8] = [
        ("load", |_, _| String::new()),
        ("publish p99 ms", |p, _| {
            cell(&column(p, |p| p.publish_p99_ms), 2)
        }),
        ("ratio to quiet", |p, q| {
            ratio(
                &column(p, |p| p.publish_p99_ms),
                &column(q, |p| p.publish_p99_ms),
            )
        }),
        ("delivery p99 ms", |p, _| cell(&column(p, |p| p.p99_ms), 2)),
        ("server CPU, cores", |p, _| {
            cell(&column(p, |p| p.server_cpu), 2)
        }),
        ("GetStory calls", |p, _| {
            cell(&column(p, |p| p.abuses as f64), 0)
        }),
        ("events lost", lost),
        ("server healthy after", healthy),
    ];
    phases(&kinds, true, events, runs, &columns).await
}

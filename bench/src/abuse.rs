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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut};
use storywire::pb::{self, story_service_client::StoryServiceClient};
use tokio::{sync::oneshot, time::Instant};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

use crate::{
    error::{Result, failed},
    load::{self, Rate, connect, publish_from, receive, subscribe_many},
    process::{ServerProcess, Target},
    report::{Table, cell, ms_at, ratio},
};

/// How long the victim publishes in each phase, and at what rate: 1,000 samples, so that the p99
/// is the 10th-worst latency rather than the 4th.
const PHASE_EVENTS: u64 = 1_000;
const PHASE_RATE: u64 = 200;
/// Events in the log before the abuse starts: about 500 KiB, so that a subscription from sequence
/// 1 fills any HTTP/2 window a non-reading client could offer while it catches up.
const PREFILL_EVENTS: u64 = 2_000;
/// Stalled subscriptions, and the connections they are spread over: 20 streams each, so that the
/// smallest connection window (64 KiB) holds back every stream on it.
const STALLED: usize = 1_000;
const STALLING_CONNECTIONS: usize = 50;
/// Clients that read a story's history in a loop, each on a connection of its own.
const HISTORY_READERS: usize = 16;
/// The size of each oversized publish: twice the server's default request limit.
const OVERSIZED_BYTES: usize = 2 * 1024 * 1024;
/// The most operations one abuser performs in a phase, whatever the time.
const MAX_ABUSES: u64 = 200_000;
/// The loopback address the abuser connects from, so that the server tells it from the victim.
const ABUSER_ADDRESS: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The kinds of abuse.
#[derive(Debug, Clone, Copy)]
pub enum Abuse {
    Quiet,
    /// Connections that open subscriptions from sequence 1 and never read them.
    Stallers,
    /// A client that opens streams and cancels them at once, in a loop.
    Resetters,
    /// Publishes of 2 MiB, over the 1 MiB request limit, in a loop.
    Oversized,
    /// Random bytes as the body of a Publish call, in a loop.
    Garbage,
    /// [`HISTORY_READERS`] clients asking in a loop for the bench story as of this version,
    /// which the server rebuilds from the story's events each time.
    HistoryReaders {
        as_of_version: u64,
    },
}

impl std::fmt::Display for Abuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quiet => write!(f, "quiet (no abuser)"),
            Self::Stallers => write!(
                f,
                "{STALLED} subscriptions from sequence 1 on {STALLING_CONNECTIONS} connections, never read"
            ),
            Self::Resetters => write!(f, "streams opened and reset in a loop, 4 connections"),
            Self::Oversized => write!(f, "2 MiB publishes (over the 1 MiB limit) in a loop"),
            Self::Garbage => write!(f, "random bytes as a Publish request body in a loop"),
            Self::HistoryReaders { as_of_version } => {
                write!(
                    f,
                    "{HISTORY_READERS} clients looping GetStory as_of_version {as_of_version}"
                )
            }
        }
    }
}

/// A codec that sends raw bytes and ignores the answer: a client speaking nonsense.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Runs one abuser until `stop`, returning how many abusive operations it made. It completes
/// `ready` once it is in place: its streams open, or its first abusive operation made.
async fn abuse(
    kind: Abuse,
    url: String,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<()>,
) -> Result<u64> {
    let done = Arc::new(AtomicU64::new(0));
    let mut ready = Some(ready);
    // Tells the phase the abuser is in place, the first time; a phase that stopped waiting has
    // ended, and nobody needs to hear it.
    let mut in_place = move || _ = ready.take().map(|ready| ready.send(()));
    let going = |done: &AtomicU64| {
        !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_ABUSES
    };
    match kind {
        Abuse::Quiet => in_place(),
        Abuse::Stallers => {
            let mut channels = Vec::new();
            for _ in 0..STALLING_CONNECTIONS {
                // The smallest HTTP/2 windows, so that not reading really stalls each stream once
                // the server has filled its window.
                let endpoint = abuser_endpoint(&url)?
                    .initial_stream_window_size(65_535)
                    .initial_connection_window_size(65_535);
                channels.push(endpoint.connect().await?);
            }
            let request = pb::SubscribeRequest {
                from_sequence: Some(1),
                ..Default::default()
            };
            let streams = subscribe_many(&channels, STALLED, &request).await?;
            done.fetch_add(streams.len() as u64, Ordering::Relaxed);
            in_place();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Abuse::Resetters => {
            let channels = connect_abuser(&url, 4).await?;
            in_place();
            let resetting = channels.into_iter().map(|channel| async {
                let mut client = StoryServiceClient::new(channel);
                while going(&done) {
                    // Dropping the call after its first poll resets the stream.
                    let call = client.subscribe(pb::SubscribeRequest::default());
                    let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            });
            futures_util::future::join_all(resetting).await;
        }
        Abuse::HistoryReaders { as_of_version } => {
            let channels = connect_abuser(&url, HISTORY_READERS).await?;
            let reading = channels.into_iter().map(|channel| async {
                let mut client = StoryServiceClient::new(channel);
                while going(&done) {
                    let request = pb::GetStoryRequest {
                        story_id: load::STORY.into(),
                        as_of_version: Some(as_of_version),
                    };
                    let outcome = client.get_story(request).await;
                    // In place once the server is rebuilding histories: a call has come back.
                    if outcome.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    outcome?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), Status>(())
            });
            let watching = async {
                while done.load(Ordering::Relaxed) == 0 && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if done.load(Ordering::Relaxed) > 0 {
                    in_place();
                }
            };
            let (outcomes, ()) = tokio::join!(futures_util::future::join_all(reading), watching);
            outcomes.into_iter().collect::<Result<(), Status>>()?;
        }
        Abuse::Oversized | Abuse::Garbage => {
            let channel = connect_abuser(&url, 1).await?.remove(0);
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            let mut random_bytes = |size: usize| -> Vec<u8> {
                (0..size)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect()
            };
            // One oversized body, sent again and again: what the server receives is the same,
            // and the abuser spends its CPU on sending rather than on making up 2 MiB each time.
            let oversized = random_bytes(OVERSIZED_BYTES);
            while going(&done) {
                let body = if matches!(kind, Abuse::Oversized) {
                    oversized.clone()
                } else {
                    let size = random_bytes(1)[0] as usize * 2 + 1;
                    random_bytes(size)
                };
                send_raw(channel.clone(), body).await;
                done.fetch_add(1, Ordering::Relaxed);
                in_place();
            }
        }
    }
    Ok(done.load(Ordering::Relaxed))
}

/// An endpoint for `url` that connects from [`ABUSER_ADDRESS`].
fn abuser_endpoint(url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?.local_address(Some(ABUSER_ADDRESS)))
}

/// `count` connections to `url` from [`ABUSER_ADDRESS`].
async fn connect_abuser(url: &str, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(abuser_endpoint(url)?.tcp_nodelay(true).connect().await?);
    }
    Ok(channels)
}

/// Sends `body` as a Publish request, whatever it holds, and ignores the outcome.
async fn send_raw(channel: Channel, body: Vec<u8>) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return;
    }
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/storywire.v1.StoryService/Publish");
    let _ = grpc
        .unary::<_, (), _>(tonic::Request::new(body), path, RawCodec)
        .await;
}

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

/// Runs `kind` on a current-thread runtime on a thread of its own, so that the abuser's
/// client-side work (making and sending requests, holding streams) never delays a task of the
/// victim's on the bench's runtime. The two still share the machine's cores, as the server does,
/// unless `nice` puts the abuser at nice 19, behind them.
fn spawn_abuser(
    kind: Abuse,
    nice: bool,
    url: String,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<()>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        // SAFETY: setpriority and gettid only read their integer arguments; on Linux a thread id
        // given as PRIO_PROCESS sets that one thread's nice value.
        if nice && unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 19) } != 0
        {
            return Err(std::io::Error::last_os_error().into());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(abuse(kind, url, stop, ready))
    })
}

/// Waits for the abuser's thread to end and returns what it counted.
async fn join_abuser(abuser: std::thread::JoinHandle<Result<u64>>) -> Result<u64> {
    tokio::task::spawn_blocking(move || abuser.join())
        .await?
        .map_err(|_| "the abuser panicked")?
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

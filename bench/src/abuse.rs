//! Abuse: misbehaving clients against one server while a well-behaved one measures what it feels.
//!
//! Each phase starts a fresh server and fills its log with a few thousand events (the cases in
//! `heavy_reads` fill it their own way and bring abusers of their own). Then one kind of abuser
//! sets itself up on its own connections, and only once it is in place does the victim open a
//! live subscription and publish 200 events a second for five seconds, measuring each event from
//! send to receipt, and from its tick to its acknowledgement. The abuser runs on a runtime and
//! thread of its own, so its client-side work shares the machine's cores with the victim but
//! never the victim's runtime. Every abuser is bounded in count and stops when the phase ends;
//! all traffic stays on loopback. The abuser connects from 127.0.0.2 and the victim from
//! 127.0.0.1: two peers, as the server's per-peer budget of wasted streams sees them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut};
use tokio::{sync::oneshot, time::Instant};
use tonic::{
    Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

use storywire::pb::{self, story_service_client::StoryServiceClient};

use crate::error::{Result, failed};
use crate::report::ms_at;
use crate::{
    load::{
        self, Rate, connect, open_stories, publish_from, publish_measured, publish_unary, receive,
        subscribe_many,
    },
    process::{ServerProcess, Target},
    report::{cell, summary},
};

/// How long the victim publishes in each phase, and at what rate: 1,000 samples, so that the p99
/// is the 10th-worst latency rather than the 4th.
const PHASE_EVENTS: u64 = 1_000;
const PHASE_RATE: u64 = 200;
/// Events in the log before the abuse starts: about 500 KiB, so that a subscription from sequence
/// 1 fills any HTTP/2 window a non-reading client could offer while it catches up.
const PREFILL_EVENTS: u64 = 2_000;
/// Connections the stalled subscriptions are spread over: 20 streams each for 1,000, so that
/// the smallest connection window (64 KiB) holds back every stream on it.
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
    /// This many subscriptions asking for a snapshot of every story, never read.
    SnapshotStallers {
        subscribers: usize,
    },
}

impl Abuse {
    pub fn describe(self) -> String {
        match self {
            Self::Quiet => "quiet (no abuser)".to_owned(),
            Self::Stallers => {
                "1,000 subscriptions from sequence 1 on 50 connections, never read".to_owned()
            }
            Self::Resetters => "streams opened and reset in a loop, 4 connections".to_owned(),
            Self::Oversized => "2 MiB publishes (over the 1 MiB limit) in a loop".to_owned(),
            Self::Garbage => "random bytes as a Publish request body in a loop".to_owned(),
            Self::HistoryReaders { as_of_version } => {
                format!("{HISTORY_READERS} clients looping GetStory as_of_version {as_of_version}")
            }
            Self::SnapshotStallers { subscribers } => format!(
                "{subscribers} snapshot subscriptions on {} connections, never read",
                subscribers.min(STALLING_CONNECTIONS)
            ),
        }
    }
}

/// What the log holds before a phase's abuser starts; the victim's events follow.
#[derive(Debug, Clone, Copy)]
pub enum Prefill {
    /// The bench story alone, with this many events (its opening among them).
    Events(u64),
    /// This many stories, the bench story among them, each with its opening alone.
    Stories(u64),
}

impl Prefill {
    /// The events it puts in the log.
    fn events(self) -> u64 {
        match self {
            Self::Events(n) | Self::Stories(n) => n.max(1),
        }
    }

    /// Publishes it on `channel`, the bench story's opening first, at full speed.
    async fn publish(self, channel: Channel) -> Result<()> {
        publish_unary(channel.clone(), 1).await?;
        let more = self.events() - 1;
        match self {
            Self::Events(_) => publish_from(channel, 2, more, Rate::Max).await?,
            Self::Stories(_) => open_stories(channel, more).await?,
        };
        Ok(())
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

/// Tells the phase the abuser is in place, the first time it is called.
fn say_in_place(ready: &mut Option<oneshot::Sender<()>>) {
    if let Some(ready) = ready.take() {
        // The phase stops waiting only by ending; then nobody needs to hear it.
        let _ = ready.send(());
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
    match kind {
        Abuse::Quiet => {
            say_in_place(&mut ready);
        }
        Abuse::Stallers | Abuse::SnapshotStallers { .. } => {
            let (count, request) = match kind {
                Abuse::SnapshotStallers { subscribers } => (
                    subscribers,
                    pb::SubscribeRequest {
                        snapshot: true,
                        ..Default::default()
                    },
                ),
                _ => (
                    1_000,
                    pb::SubscribeRequest {
                        from_sequence: Some(1),
                        ..Default::default()
                    },
                ),
            };
            let streams = stall(&url, count, &request).await?;
            done.fetch_add(streams.len() as u64, Ordering::Relaxed);
            say_in_place(&mut ready);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(streams);
        }
        Abuse::Resetters => {
            let channels = connect_abuser(&url, 4).await?;
            say_in_place(&mut ready);
            let mut tasks = Vec::new();
            for channel in channels {
                let (stop, done) = (stop.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = StoryServiceClient::new(channel);
                    while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_ABUSES
                    {
                        // Dropping the call after its first poll resets the stream.
                        let call = client.subscribe(pb::SubscribeRequest::default());
                        let _ = tokio::time::timeout(Duration::from_micros(1), call).await;
                        done.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        Abuse::HistoryReaders { as_of_version } => {
            let channels = connect_abuser(&url, HISTORY_READERS).await?;
            let mut tasks = Vec::new();
            for channel in channels {
                let (stop, done) = (stop.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut client = StoryServiceClient::new(channel);
                    while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_ABUSES
                    {
                        let request = pb::GetStoryRequest {
                            story_id: load::STORY.into(),
                            as_of_version: Some(as_of_version),
                        };
                        client
                            .get_story(request)
                            .await
                            .map_err(|e| format!("GetStory as_of_version {as_of_version}: {e}"))?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                }));
            }
            // In place once the server is rebuilding histories: the first call has come back.
            while done.load(Ordering::Relaxed) == 0 && tasks.iter().all(|t| !t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if done.load(Ordering::Relaxed) > 0 {
                say_in_place(&mut ready);
            } else {
                // A reader failed before any call came back: stop the others, report its error.
                stop.store(true, Ordering::Relaxed);
            }
            for task in tasks {
                task.await??;
            }
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
            while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_ABUSES {
                let body = if matches!(kind, Abuse::Oversized) {
                    oversized.clone()
                } else {
                    let size = random_bytes(1)[0] as usize * 2 + 1;
                    random_bytes(size)
                };
                send_raw(channel.clone(), body).await;
                done.fetch_add(1, Ordering::Relaxed);
                say_in_place(&mut ready);
            }
        }
    }
    Ok(done.load(Ordering::Relaxed))
}

/// Opens `count` subscriptions of `request` from [`ABUSER_ADDRESS`], spread over up to
/// [`STALLING_CONNECTIONS`] connections with the smallest HTTP/2 windows, so that not reading
/// them really stalls each stream once the server has filled its window.
async fn stall(
    url: &str,
    count: usize,
    request: &pb::SubscribeRequest,
) -> Result<Vec<Streaming<pb::SubscribeResponse>>> {
    let mut channels = Vec::new();
    for _ in 0..count.clamp(1, STALLING_CONNECTIONS) {
        let endpoint = abuser_endpoint(url)?
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
        channels.push(endpoint.connect().await?);
    }
    subscribe_many(&channels, count, request).await
}

/// An endpoint for `url` that connects from [`ABUSER_ADDRESS`].
fn abuser_endpoint(url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?.local_address(Some(ABUSER_ADDRESS)))
}

/// `count` connections to `url` from [`ABUSER_ADDRESS`].
async fn connect_abuser(url: &str, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = abuser_endpoint(url)?.tcp_nodelay(true).connect().await;
        channels.push(channel.map_err(|e| format!("connect {url} from {ABUSER_ADDRESS}: {e}"))?);
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
    /// How much the server's RSS grew from just before the abuser started to when it was in
    /// place: what the abuser's streams and calls hold.
    pub rss_growth_mib: f64,
    /// The abusive operations made: streams opened, calls made.
    pub abuses: u64,
    /// Whether the server answered its health check with SERVING after the phase.
    pub healthy: bool,
}

/// The abuser's scheduling priority against the server and the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The same as everyone's: on two cores the abuser's own client-side work then takes CPU from
    /// the server and the victim alike, which no server setting can prevent.
    Same,
    /// Nice 19: the abuser gets whatever CPU the server and the victim leave, standing in for an
    /// abuser on another machine, whose client-side work costs this one nothing.
    Background,
}

impl Priority {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Same => "the abuser at the same priority as the server and the victim",
            Self::Background => "the abuser at nice 19, as if on another machine",
        }
    }
}

/// Runs `kind` on a current-thread runtime on a thread of its own, so that the abuser's
/// client-side work (making and sending requests, holding streams) never delays a task of the
/// victim's on the bench's runtime. The two still share the machine's cores, as the server does,
/// unless `priority` puts the abuser behind them.
fn spawn_abuser(
    kind: Abuse,
    priority: Priority,
    url: String,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<()>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        if priority == Priority::Background {
            // SAFETY: setpriority and gettid only read their integer arguments; on Linux a thread
            // id given as PRIO_PROCESS sets that one thread's nice value.
            let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 19) };
            if set != 0 {
                return failed!(
                    "setting the abuser's nice value: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("abuser runtime: {e}"))?
            .block_on(abuse(kind, url, stop, ready))
    })
}

/// Waits for the abuser's thread to end and returns what it counted.
async fn join_abuser(abuser: std::thread::JoinHandle<Result<u64>>) -> Result<u64> {
    tokio::task::spawn_blocking(move || abuser.join())
        .await?
        .map_err(|_| "the abuser panicked".to_owned())?
}

/// One phase: a fresh server holding `prefill`, `kind` in place, the victim measuring.
async fn phase(kind: Abuse, priority: Priority, prefill: Prefill) -> Result<Phase> {
    // Nothing is evicted during a phase: the victim would count it lost.
    let retain = (prefill.events() + PHASE_EVENTS) as usize;
    let server = ServerProcess::start(Target::Storywire, retain.max(1_000_000)).await?;
    let url = server.url();
    let victim = connect(&url, 2).await?;
    prefill.publish(victim[0].clone()).await?;
    let rss_before = server.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, in_place) = oneshot::channel();
    let abuser = spawn_abuser(kind, priority, url.clone(), stop.clone(), ready);
    if in_place.await.is_err() {
        // The abuser ended before it was in place: its result says why.
        return Err(match join_abuser(abuser).await {
            Err(error) => error,
            Ok(_) => format!("the {kind:?} abuser ended before it was in place").into(),
        });
    }
    let rss_in_place = server.rss_bytes();
    let stream = subscribe_many(&victim[1..], 1, &pb::SubscribeRequest::default())
        .await?
        .remove(0);
    let first = prefill.events() + 1;
    let last = first + PHASE_EVENTS - 1;
    let deadline = Instant::now() + Duration::from_secs(PHASE_EVENTS / PHASE_RATE + 60);
    let receiving = tokio::spawn(receive(stream, first, last, deadline));
    let (cpu_before, started) = (server.cpu_seconds(), Instant::now());
    let published = publish_measured(
        victim[0].clone(),
        first,
        PHASE_EVENTS,
        Rate::PerSecond(PHASE_RATE),
    )
    .await?;
    let received = receiving.await?;
    let server_cpu = (server.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let abuses = join_abuser(abuser).await?;
    let healthy = serving(victim[0].clone()).await;
    let peak = server.peak_rss_bytes();
    server.stop().await;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Ok(Phase {
        p99_ms: ms_at(&received.latency, 0.99),
        publish_p99_ms: ms_at(&published.latency, 0.99),
        server_cpu,
        lost: received.gaps,
        peak_rss_mib: mib(peak),
        rss_growth_mib: mib(rss_in_place.saturating_sub(rss_before)),
        abuses,
        healthy,
    })
}

/// Runs every phase `runs` times at each priority and prints a table for each.
pub async fn run(runs: usize) -> Result<()> {
    for priority in [Priority::Same, Priority::Background] {
        table(runs, priority).await?;
    }
    Ok(())
}

/// Runs a phase of each of `kinds` (the first being [`Abuse::Quiet`], to compare with) `runs`
/// times over a log holding `prefill`, and returns each kind's phases.
pub async fn rounds(
    kinds: &[Abuse],
    priority: Priority,
    prefill: Prefill,
    runs: usize,
) -> Result<Vec<Vec<Phase>>> {
    // Each round runs every phase once, so that a noisy spell on the machine spreads over the
    // phases (the quiet one included) rather than landing on all the runs of one.
    let mut by_kind: Vec<Vec<Phase>> = kinds.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (kind, results) in kinds.iter().zip(&mut by_kind) {
            let result = phase(*kind, priority, prefill).await?;
            eprintln!(
                "phase {kind:?} ({priority:?}): p99 {:.2} ms, publish p99 {:.2} ms, server CPU {:.2} cores, lost {}, peak RSS {:.1} MiB, RSS growth {:.1} MiB, {} operations",
                result.p99_ms,
                result.publish_p99_ms,
                result.server_cpu,
                result.lost,
                result.peak_rss_mib,
                result.rss_growth_mib,
                result.abuses
            );
            results.push(result);
        }
    }
    Ok(by_kind)
}

async fn table(runs: usize, priority: Priority) -> Result<()> {
    println!("\n{}:", priority.describe());
    println!(
        "\n| abuse while a client publishes {PHASE_RATE}/s and subscribes | victim p99 ms | ratio to quiet | server CPU, cores | events lost | server peak RSS MiB | abusive operations | server healthy after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    const KINDS: [Abuse; 5] = [
        Abuse::Quiet,
        Abuse::Stallers,
        Abuse::Resetters,
        Abuse::Oversized,
        Abuse::Garbage,
    ];
    let by_kind = rounds(&KINDS, priority, Prefill::Events(PREFILL_EVENTS), runs).await?;
    let mut quiet_p99 = 0.0;
    for (kind, results) in KINDS.into_iter().zip(by_kind) {
        let p99: Vec<f64> = results.iter().map(|r| r.p99_ms).collect();
        let (median, _, _) = summary(&p99);
        if matches!(kind, Abuse::Quiet) {
            quiet_p99 = median;
        }
        let cpu: Vec<f64> = results.iter().map(|r| r.server_cpu).collect();
        let rss: Vec<f64> = results.iter().map(|r| r.peak_rss_mib).collect();
        let abuses: Vec<f64> = results.iter().map(|r| r.abuses as f64).collect();
        println!(
            "| {} | {} | {:.2}x | {} | {} | {} | {} | {} |",
            kind.describe(),
            cell(&p99, 2),
            median / quiet_p99.max(1e-9),
            cell(&cpu, 2),
            results.iter().map(|r| r.lost).sum::<u64>(),
            cell(&rss, 1),
            cell(&abuses, 0),
            if results.iter().all(|r| r.healthy) {
                "yes"
            } else {
                "NO"
            }
        );
    }
    Ok(())
}

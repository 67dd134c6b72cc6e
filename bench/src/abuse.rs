//! Abuse: misbehaving clients against one server while a well-behaved one measures what it feels.
//!
//! Each phase starts a fresh server and fills its log with a few thousand events. Then one kind
//! of abuser sets itself up on its own connections, and only once it is in place does the victim
//! open a live subscription and publish 200 events a second for five seconds, measuring each
//! event from send to receipt. The abuser runs on a runtime and thread of its own, so its
//! client-side work shares the machine's cores with the victim but never the victim's runtime.
//! Every abuser is bounded in count and stops when the phase ends; all traffic stays on
//! loopback. The abuser connects from 127.0.0.2 and the victim from 127.0.0.1: two peers, as
//! the server's per-peer budget of wasted streams sees them.

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
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

use storywire::pb::{self, story_service_client::StoryServiceClient};

use crate::{
    load::{Rate, connect, publish_from, publish_unary, receive, subscribe_many},
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
/// The size of each oversized publish: twice the server's default request limit.
const OVERSIZED_BYTES: usize = 2 * 1024 * 1024;
/// The most operations one abuser performs in a phase, whatever the time.
const MAX_ABUSES: u64 = 200_000;
/// The loopback address the abuser connects from, so that the server tells it from the victim.
const ABUSER_ADDRESS: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The kinds of abuse.
#[derive(Debug, Clone, Copy)]
enum Abuse {
    Quiet,
    /// Connections that open subscriptions from sequence 1 and never read them.
    Stallers,
    /// A client that opens streams and cancels them at once, in a loop.
    Resetters,
    /// Publishes of 2 MiB, over the 1 MiB request limit, in a loop.
    Oversized,
    /// Random bytes as the body of a Publish call, in a loop.
    Garbage,
}

impl Abuse {
    fn describe(self) -> &'static str {
        match self {
            Self::Quiet => "quiet (no abuser)",
            Self::Stallers => "1,000 subscriptions from sequence 1 on 50 connections, never read",
            Self::Resetters => "streams opened and reset in a loop, 4 connections",
            Self::Oversized => "2 MiB publishes (over the 1 MiB limit) in a loop",
            Self::Garbage => "random bytes as a Publish request body in a loop",
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
) -> Result<u64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let mut ready = Some(ready);
    match kind {
        Abuse::Quiet => {
            say_in_place(&mut ready);
        }
        Abuse::Stallers => {
            // The smallest HTTP/2 windows, so that not reading really stalls each stream.
            let mut channels = Vec::new();
            for _ in 0..50 {
                let endpoint = abuser_endpoint(&url)?
                    .initial_stream_window_size(65_535)
                    .initial_connection_window_size(65_535);
                channels.push(endpoint.connect().await.map_err(|e| e.to_string())?);
            }
            let request = pb::SubscribeRequest {
                from_sequence: Some(1),
                ..Default::default()
            };
            let streams = subscribe_many(&channels, 1_000, &request).await?;
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

/// An endpoint for `url` that connects from [`ABUSER_ADDRESS`].
fn abuser_endpoint(url: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .local_address(Some(ABUSER_ADDRESS)))
}

/// `count` connections to `url` from [`ABUSER_ADDRESS`].
async fn connect_abuser(url: &str, count: usize) -> Result<Vec<Channel>, String> {
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

/// What the victim saw in one phase.
struct Phase {
    p99_ms: f64,
    /// The server's CPU time over the victim's measurement, per second of it (2.0 is both cores).
    server_cpu: f64,
    lost: u64,
    peak_rss_mib: f64,
    abuses: u64,
    healthy: bool,
}

/// The abuser's scheduling priority against the server and the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The same as everyone's: on two cores the abuser's own client-side work then takes CPU from
    /// the server and the victim alike, which no server setting can prevent.
    Same,
    /// Nice 19: the abuser gets whatever CPU the server and the victim leave, standing in for an
    /// abuser on another machine, whose client-side work costs this one nothing.
    Background,
}

impl Priority {
    fn describe(self) -> &'static str {
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
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        if priority == Priority::Background {
            // SAFETY: setpriority and gettid only read their integer arguments; on Linux a thread
            // id given as PRIO_PROCESS sets that one thread's nice value.
            let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, 19) };
            if set != 0 {
                return Err(format!(
                    "setting the abuser's nice value: {}",
                    std::io::Error::last_os_error()
                ));
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
async fn join_abuser(abuser: std::thread::JoinHandle<Result<u64, String>>) -> Result<u64, String> {
    tokio::task::spawn_blocking(move || abuser.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the abuser panicked".to_owned())?
}

async fn phase(kind: Abuse, priority: Priority) -> Result<Phase, String> {
    let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
    let url = server.url();
    let victim = connect(&url, 2).await?;
    publish_unary(victim[0].clone(), 1).await?;
    publish_from(victim[0].clone(), 2, PREFILL_EVENTS, Rate::Max).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, in_place) = oneshot::channel();
    let abuser = spawn_abuser(kind, priority, url.clone(), stop.clone(), ready);
    if in_place.await.is_err() {
        // The abuser ended before it was in place: its result says why.
        return Err(match join_abuser(abuser).await {
            Err(error) => error,
            Ok(_) => format!("the {kind:?} abuser ended before it was in place"),
        });
    }
    let stream = subscribe_many(&victim[1..], 1, &pb::SubscribeRequest::default())
        .await?
        .remove(0);
    let first = 2 + PREFILL_EVENTS;
    let last = first + PHASE_EVENTS - 1;
    let deadline = Instant::now() + Duration::from_secs(PHASE_EVENTS / PHASE_RATE + 60);
    let receiving = tokio::spawn(receive(stream, first, last, deadline));
    let (cpu_before, started) = (server.cpu_seconds(), Instant::now());
    publish_from(
        victim[0].clone(),
        first,
        PHASE_EVENTS,
        Rate::PerSecond(PHASE_RATE),
    )
    .await?;
    let received = receiving.await.map_err(|e| e.to_string())?;
    let server_cpu = (server.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let abuses = join_abuser(abuser).await?;
    let healthy = serving(victim[0].clone()).await;
    let peak = server.peak_rss_bytes();
    server.stop().await;
    Ok(Phase {
        p99_ms: received.latency.value_at_quantile(0.99) as f64 / 1_000.0,
        server_cpu,
        lost: received.gaps,
        peak_rss_mib: peak as f64 / (1024.0 * 1024.0),
        abuses,
        healthy,
    })
}

/// Runs every phase `runs` times at each priority and prints a table for each.
pub async fn run(runs: usize) -> Result<(), String> {
    for priority in [Priority::Same, Priority::Background] {
        table(runs, priority).await?;
    }
    Ok(())
}

async fn table(runs: usize, priority: Priority) -> Result<(), String> {
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
    // Each round runs every phase once, so that a noisy spell on the machine spreads over the
    // phases (the quiet one included) rather than landing on all the runs of one.
    let mut by_kind: Vec<Vec<Phase>> = KINDS.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (kind, results) in KINDS.iter().zip(&mut by_kind) {
            let result = phase(*kind, priority).await?;
            eprintln!(
                "abuse {kind:?} ({priority:?}): p99 {:.2} ms, server CPU {:.2} cores, lost {}, peak RSS {:.1} MiB, {} operations",
                result.p99_ms, result.server_cpu, result.lost, result.peak_rss_mib, result.abuses
            );
            results.push(result);
        }
    }
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

//! Abuse: misbehaving clients against one server while a well-behaved one measures what it feels.
//!
//! Each phase starts a fresh server, opens a live subscriber and publishes 100 events a second
//! for a few seconds (the victim), while one kind of abuser runs on its own connections. Every
//! abuser is bounded in count and stops when the phase ends; all traffic stays on 127.0.0.1.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut};
use tokio::time::Instant;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use super::{
    cell,
    load::{Rate, connect, publish_from, publish_unary, receive, subscribe_many},
    process::{ServerProcess, Target},
};
use crate::pb::{self, story_service_client::StoryServiceClient};

/// How long the victim publishes in each phase, and at what rate.
const PHASE_EVENTS: u64 = 400;
const PHASE_RATE: u64 = 100;
/// The most operations one abuser performs in a phase, whatever the time.
const MAX_ABUSES: u64 = 200_000;

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

/// Runs one abuser until `stop`, returning how many abusive operations it made.
async fn abuse(kind: Abuse, url: String, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let done = Arc::new(AtomicU64::new(0));
    match kind {
        Abuse::Quiet => {}
        Abuse::Stallers => {
            // The smallest HTTP/2 windows, so that not reading really stalls each stream.
            let mut channels = Vec::new();
            for _ in 0..50 {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| e.to_string())?
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
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(streams);
        }
        Abuse::Resetters => {
            let channels = connect(&url, 4).await?;
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
            let channel = connect(&url, 1).await?.remove(0);
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < MAX_ABUSES {
                let size = if matches!(kind, Abuse::Oversized) {
                    2 * 1024 * 1024
                } else {
                    (seed % 512) as usize + 1
                };
                let body: Vec<u8> = (0..size)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                send_raw(channel.clone(), body).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(done.load(Ordering::Relaxed))
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
    lost: u64,
    peak_rss_mib: f64,
    abuses: u64,
    healthy: bool,
}

async fn phase(kind: Abuse) -> Result<Phase, String> {
    let server = ServerProcess::start(Target::Storywire, 1_000_000).await?;
    let url = server.url();
    let victim = connect(&url, 2).await?;
    publish_unary(victim[0].clone(), 1).await?;
    let stream = subscribe_many(&victim[1..], 1, &pb::SubscribeRequest::default())
        .await?
        .remove(0);
    let stop = Arc::new(AtomicBool::new(false));
    let abuser = tokio::spawn(abuse(kind, url.clone(), stop.clone()));
    // Let the abuse get going before the victim measures.
    if !matches!(kind, Abuse::Quiet) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = 1 + PHASE_EVENTS;
    let deadline = Instant::now() + Duration::from_secs(PHASE_EVENTS / PHASE_RATE + 60);
    let receiving = tokio::spawn(receive(stream, 2, last, deadline));
    publish_from(
        victim[0].clone(),
        2,
        PHASE_EVENTS,
        Rate::PerSecond(PHASE_RATE),
    )
    .await?;
    let received = receiving.await.map_err(|e| e.to_string())?;
    stop.store(true, Ordering::Relaxed);
    let abuses = abuser.await.map_err(|e| e.to_string())??;
    let healthy = serving(victim[0].clone()).await;
    let peak = server.peak_rss_bytes();
    server.stop().await;
    Ok(Phase {
        p99_ms: received.latency.value_at_quantile(0.99) as f64 / 1_000.0,
        lost: received.gaps,
        peak_rss_mib: peak as f64 / (1024.0 * 1024.0),
        abuses,
        healthy,
    })
}

/// Runs every phase `runs` times and prints the table.
pub async fn run(runs: usize) -> Result<(), String> {
    println!(
        "\n| abuse while a client publishes {PHASE_RATE}/s and subscribes | victim p99 ms | ratio to quiet | events lost | server peak RSS MiB | abusive operations | server healthy after |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut quiet_p99 = 0.0;
    for kind in [
        Abuse::Quiet,
        Abuse::Stallers,
        Abuse::Resetters,
        Abuse::Oversized,
        Abuse::Garbage,
    ] {
        let mut results = Vec::new();
        for _ in 0..runs {
            let result = phase(kind).await?;
            eprintln!(
                "abuse {kind:?}: p99 {:.2} ms, lost {}, peak RSS {:.1} MiB, {} operations",
                result.p99_ms, result.lost, result.peak_rss_mib, result.abuses
            );
            results.push(result);
        }
        let p99: Vec<f64> = results.iter().map(|r| r.p99_ms).collect();
        let (median, _, _) = super::summary(&p99);
        if matches!(kind, Abuse::Quiet) {
            quiet_p99 = median;
        }
        let rss: Vec<f64> = results.iter().map(|r| r.peak_rss_mib).collect();
        let abuses: Vec<f64> = results.iter().map(|r| r.abuses as f64).collect();
        println!(
            "| {} | {} | {:.2}x | {} | {} | {} | {} |",
            kind.describe(),
            cell(&p99, 2),
            median / quiet_p99.max(1e-9),
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

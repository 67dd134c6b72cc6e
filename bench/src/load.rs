//! The load: connections, publishers on PublishStream or unary Publish, subscribers spread over a
//! few HTTP/2 connections or each on one of its own, and what each subscriber saw (count, gaps,
//! duplicates, latency).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use prost::Message;
use storywire::{
    clock::to_timestamp,
    pb::{
        self, change::Kind, publish_stream_response::Result as Outcome,
        story_service_client::StoryServiceClient, subscribe_response::Item,
    },
};
use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Streaming,
    transport::{Channel, Endpoint},
};

use crate::{
    error::{Result, failed},
    tally::{Received, Tally},
};

/// How far apart publishing may fall behind a fixed rate before ticks are bunched: the load is
/// the rate, not an exact schedule.
const PUBLISH_QUEUE: usize = 1_024;
/// The story every bench event belongs to, but for the other stories [`open_stories`] opens.
pub const STORY: &str = "bench";
/// A summary about the size of a real one.
const SUMMARY: &str = "a sentence of summary about the size of a real one, give or take.";

/// How fast the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// As fast as the server acknowledges (PublishStream, pipelined).
    Max,
    /// This many events a second.
    PerSecond(u64),
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Max => write!(f, "max"),
            Self::PerSecond(n) => write!(f, "{n}/s"),
        }
    }
}

/// Connects `count` separate HTTP/2 connections to `url`.
pub async fn connect(url: &str, count: usize) -> Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = endpoint.connect().await;
        channels.push(channel.map_err(|e| format!("connect {url}: {e}"))?);
    }
    Ok(channels)
}

/// One connection to `url`.
pub async fn connect_one(url: &str) -> Result<Channel> {
    Ok(connect(url, 1).await?.remove(0))
}

/// The `n`th bench request (1-based): the first opens the story, the rest revise its summary, so
/// each event is ~200 bytes and the story's own state stays one summary long (the bench measures
/// the log, not a story that grows without end). Each is stamped with the time it is sent.
fn bench_request(n: u64) -> pb::PublishRequest {
    if n > 1 {
        return revision(STORY.into(), n);
    }
    let opened = pb::StoryOpened {
        headline: "Bench story".into(),
        tags: vec!["bench".into()],
        ..Default::default()
    };
    pb::PublishRequest {
        change: Some(pb::Change {
            kind: Some(Kind::StoryOpened(opened)),
        }),
        ..revision(STORY.into(), n)
    }
}

/// The `n`th update of `story_id`, a story already open: a new summary, so that every bench event
/// is about the same size whichever story it goes to.
fn revision(story_id: String, n: u64) -> pb::PublishRequest {
    let revised = pb::StoryRevised {
        summary: Some(format!("Summary {n:>10}: {SUMMARY}")),
        ..Default::default()
    };
    pb::PublishRequest {
        story_id,
        headline: format!("Update {n:>10} on the bench story, one line long"),
        occurred_at: Some(to_timestamp(SystemTime::now())),
        change: Some(pb::Change {
            kind: Some(Kind::StoryRevised(revised)),
        }),
        ..Default::default()
    }
}

/// The encoded size of a typical bench event as the server stores and sends it.
pub fn typical_event_size() -> usize {
    update_event(2, 1_000_000).encoded_len()
}

/// The event a server sends for the `n`th bench request when it stamps it `sequence`, as
/// storywire fills it in; what the NATS anchor publishes, so that every server carries the same
/// bytes. Its `occurred_at` is now.
pub fn update_event(n: u64, sequence: u64) -> pb::UpdateEvent {
    let request = bench_request(n);
    pb::UpdateEvent {
        sequence,
        event_id: uuid::Uuid::new_v4().to_string(),
        story_id: request.story_id,
        story_version: sequence,
        headline: request.headline,
        occurred_at: request.occurred_at,
        recorded_at: request.occurred_at,
        change: request.change,
        published_by: storywire::auth::ANONYMOUS.into(),
    }
}

/// Publishes `events` bench events at `rate` on one PublishStream, the first opening the story,
/// and returns how long it took from the first send to the last acknowledgement.
pub async fn publish(channel: Channel, events: u64, rate: Rate) -> Result<Duration> {
    publish_from(channel, 1, events, rate).await
}

/// Like [`publish`], starting with the `first`th bench event (1 opens the story).
pub async fn publish_from(
    channel: Channel,
    first: u64,
    events: u64,
    rate: Rate,
) -> Result<Duration> {
    stream_requests(channel, events, rate, move |i| bench_request(first + i)).await
}

/// Sends `request(0)` to `request(events - 1)` at `rate` on one PublishStream, each made when it
/// is due (so that its `occurred_at` is its send time), and waits for every acknowledgement.
async fn stream_requests(
    channel: Channel,
    events: u64,
    rate: Rate,
    request: impl Fn(u64) -> pb::PublishRequest + Send + 'static,
) -> Result<Duration> {
    let mut client = StoryServiceClient::new(channel);
    let (sender, receiver) = mpsc::channel(PUBLISH_QUEUE);
    let start = Instant::now();
    let sending = tokio::spawn(async move {
        let mut ticks = match rate {
            Rate::Max => None,
            Rate::PerSecond(per_second) => Some(tokio::time::interval(Duration::from_secs_f64(
                1.0 / per_second as f64,
            ))),
        };
        for i in 0..events {
            if let Some(ticks) = ticks.as_mut() {
                ticks.tick().await;
            }
            let message = pb::PublishStreamRequest {
                request: Some(request(i)),
            };
            if sender.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut responses = client
        .publish_stream(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    for _ in 0..events {
        match responses.message().await {
            Ok(Some(pb::PublishStreamResponse {
                result: Some(Outcome::Accepted(_)),
            })) => {}
            other => return failed!("publish failed: {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    sending.abort();
    Ok(elapsed)
}

/// Publishes bench events `first` to `first + events - 1` with unary Publish, each call awaited
/// before the next, and returns how long it took.
pub async fn publish_unary(channel: Channel, first: u64, events: u64) -> Result<Duration> {
    let mut client = StoryServiceClient::new(channel);
    let start = Instant::now();
    for n in first..first + events {
        client.publish(bench_request(n)).await?;
    }
    Ok(start.elapsed())
}

/// Every subscriber's tally, in order, once each has finished (or given up at its deadline).
pub async fn gather(receivers: Vec<JoinHandle<Received>>) -> Result<Vec<Received>> {
    let mut all = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        all.push(receiver.await?);
    }
    Ok(all)
}

/// How many subscriptions are opened at once. h2 counts each small request DATA frame a server
/// has not yet handed to its handler against a budget (about a hundred frames) and answers a
/// burst beyond it with GOAWAY ENHANCE_YOUR_CALM ("too_many_data_frames"), closing every stream
/// on the connection. Opening in waves keeps the bench a well-behaved client.
const SUBSCRIBE_WAVE: usize = 64;

/// Opens `count` live subscriptions spread over `channels`, waiting until each is registered.
pub async fn subscribe_many(
    channels: &[Channel],
    count: usize,
    request: &pb::SubscribeRequest,
) -> Result<Vec<Streaming<pb::SubscribeResponse>>> {
    let mut streams = Vec::with_capacity(count);
    let mut opened = 0;
    while opened < count {
        let wave = SUBSCRIBE_WAVE.min(count - opened);
        let mut opening = JoinSet::new();
        for i in opened..opened + wave {
            let mut client = StoryServiceClient::new(channels[i % channels.len()].clone());
            let request = request.clone();
            opening.spawn(async move { client.subscribe(request).await.map(|r| r.into_inner()) });
        }
        while let Some(stream) = opening.join_next().await {
            streams.push(stream??);
        }
        opened += wave;
    }
    Ok(streams)
}

/// How many connections [`subscribe_each`] opens at once: enough to keep the server's accept
/// loop busy, well under a listen backlog (tokio's is 1,024), so that no SYN is dropped and
/// retried a second later.
pub const CONNECT_WAVE: usize = 128;

/// How many readers' connections come from one loopback address.
const READERS_PER_SOURCE: u64 = 2_000;

/// The loopback address the next reader's connection comes from.
///
/// Linux's `connect()` takes ephemeral ports of one parity first. From one address to one server,
/// past 14,116 connections (half of 32768–60999), every connect scans that half before it tries
/// the other. Measured: 1,000 connects took 0.015 s up to 14,000 and 1.1 s each thousand after.
/// That put 7–8 s into every server's time to connect 19,000 readers. Real readers come from many
/// addresses. So every 2,000 connections come from the next of 127.0.0.2–127.0.0.254 (Linux
/// routes all of 127/8 to loopback). That is 506,000 connections before an address comes round
/// again, so none meets its own TIME_WAIT from an earlier run of the same invocation.
pub fn source_address() -> IpAddr {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    let last = 2 + (n / READERS_PER_SOURCE % 253) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A run's live streams, each on a connection of its own, with their channels: a stream keeps
/// its connection open, but the caller decides when they all close.
pub type Each = (Vec<Channel>, Vec<Streaming<pb::SubscribeResponse>>);

/// Opens `count` live subscriptions to `url`, each on an HTTP/2 connection of its own from
/// [`source_address`], waiting until each is registered.
pub async fn subscribe_each(url: &str, count: usize) -> Result<Each> {
    subscribe_each_from(url, count, |_| source_address()).await
}

/// Like [`subscribe_each`], the `n`th connection from `source(n)`.
pub async fn subscribe_each_from(
    url: &str,
    count: usize,
    source: impl Fn(usize) -> IpAddr,
) -> Result<Each> {
    let endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true);
    let opened: Vec<Result<_>> = futures_util::stream::iter(0..count)
        .map(|n| {
            let endpoint = endpoint.clone().local_address(Some(source(n)));
            async move {
                let channel = patiently(|| endpoint.connect(), &endpoint.uri().to_string()).await?;
                let stream = StoryServiceClient::new(channel.clone())
                    .subscribe(pb::SubscribeRequest::default())
                    .await?
                    .into_inner();
                Ok((channel, stream))
            }
        })
        .buffer_unordered(CONNECT_WAVE)
        .collect()
        .await;
    Ok(opened
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip())
}

/// How many times [`patiently`] tries each connection before it gives up: thousands of connects
/// in a row on a loaded machine may meet a refusal that a second later is gone.
const CONNECT_ATTEMPTS: u32 = 3;

/// Connects with `connect`, trying again after a second on failure, up to [`CONNECT_ATTEMPTS`]
/// times; the error names `to` and every cause (tonic's own says only "transport error").
pub async fn patiently<C, E, F>(mut connect: impl FnMut() -> F, to: &str) -> Result<C>
where
    E: std::error::Error,
    F: Future<Output = Result<C, E>>,
{
    let mut attempt = 1;
    loop {
        match connect().await {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                let mut message = format!("connect {to}: {error}");
                let mut source = error.source();
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                if attempt == CONNECT_ATTEMPTS {
                    return Err(message.into());
                }
                eprintln!("{message}; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Reads `stream`, whose events should run from `first` to `last`, until `last` arrives, the
/// stream ends, or `deadline`.
pub async fn receive(
    mut stream: Streaming<pb::SubscribeResponse>,
    first: u64,
    last: u64,
    deadline: Instant,
) -> Received {
    let mut tally = Tally::new(first, last);
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, stream.message()).await {
        if let Some(Item::Event(event)) = message.item
            && tally.count(&event)
        {
            break;
        }
    }
    tally.finish()
}

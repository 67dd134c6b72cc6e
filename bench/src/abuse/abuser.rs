//! The abusers: each kind of misbehaving or greedy client, on a thread and a runtime of its
//! own, from a loopback address of its own, bounded in count and stopped when its phase ends.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut};
use storywire::pb::{self, story_service_client::StoryServiceClient};
use tokio::sync::oneshot;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

use crate::{
    error::Result,
    load::{self, subscribe_many},
};

/// Stalled subscriptions, and the connections they are spread over: 20 streams each, so that the
/// smallest connection window (64 KiB) holds back every stream on it.
pub(super) const STALLED: usize = 1_000;
pub(super) const STALLING_CONNECTIONS: usize = 50;
/// Clients that read a story's history in a loop, each on a connection of its own.
pub(super) const HISTORY_READERS: usize = 16;
/// The size of each oversized publish: twice the server's default request limit.
pub(super) const OVERSIZED_BYTES: usize = 2 * 1024 * 1024;
/// The most operations one abuser performs in a phase, whatever the time.
pub(super) const MAX_ABUSES: u64 = 200_000;
/// The loopback address the abuser connects from, so that the server tells it from the victim.
pub(super) const ABUSER_ADDRESS: std::net::IpAddr =
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
                "1,000 subscriptions from sequence 1 on 50 connections, never read"
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
pub(super) struct RawCodec;

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
pub(super) async fn abuse(
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
pub(super) fn abuser_endpoint(url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?.local_address(Some(ABUSER_ADDRESS)))
}

/// `count` connections to `url` from [`ABUSER_ADDRESS`].
pub(super) async fn connect_abuser(url: &str, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(abuser_endpoint(url)?.tcp_nodelay(true).connect().await?);
    }
    Ok(channels)
}

/// Sends `body` as a Publish request, whatever it holds, and ignores the outcome.
pub(super) async fn send_raw(channel: Channel, body: Vec<u8>) {
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

/// Runs `kind` on a current-thread runtime on a thread of its own, so that the abuser's
/// client-side work (making and sending requests, holding streams) never delays a task of the
/// victim's on the bench's runtime. The two still share the machine's cores, as the server does,
/// unless `nice` puts the abuser at nice 19, behind them.
pub(super) fn spawn_abuser(
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
pub(super) async fn join_abuser(abuser: std::thread::JoinHandle<Result<u64>>) -> Result<u64> {
    tokio::task::spawn_blocking(move || abuser.join())
        .await?
        .map_err(|_| "the abuser panicked")?
}

//! Server-Sent Event readers against nginx+nchan: each reader on an HTTP/1.1 connection of its
//! own, as a live page's EventSource is, reading `GET /v1/events` from storywire's HTTP face or
//! `/sub` from nchan ([`crate::nchan`]), while one event is published every [`INTERVAL`].
//!
//! Both servers carry the same data: storywire's events are the bench's PublishStream events;
//! nchan is sent, for each, the proto3 JSON storywire writes in the event's `data:`, stamped
//! when it is published. Each reader parses every `data:` line as an `UpdateEvent` and counts it
//! with the same [`Tally`]: latency from the publisher's stamp, gaps, duplicates. Per run: the
//! server's CPU per delivery, its RSS above idle per reader (nginx's summed over master and
//! workers) while every reader is connected, and the delivery percentiles.

use std::{net::SocketAddr, time::Duration};

use storywire::pb;
use storywire_testkit::net::free_ports;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    crowd::Delivery,
    error::{Result, failed},
    load::{CONNECT_WAVE, Rate, connect_one, gather, publish, source_address, update_event},
    nchan::{self, Nginx},
    process::{ServerProcess, Target, open_descriptors, room_for, settle},
    report::{by_server, in_turn},
    tally::{Received, Tally},
};

/// How often the publisher sends, as a busy story's live updates might come.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long past the last event the readers wait for stragglers.
const GRACE: Duration = Duration::from_secs(60);
/// nginx worker processes: one per core of the machine the figures were taken on, as nginx's
/// `worker_processes auto` would choose; storywire's runtime likewise runs a thread per core.
const NGINX_WORKERS: usize = 2;

/// The SSE case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "sse_case")]
pub struct Args {
    /// Also run the SSE readers case: each reader on an HTTP/1.1 connection of its own, one event
    /// every 100 ms, against storywire's HTTP face and nginx+nchan.
    #[arg(long)]
    pub sse_readers: bool,
    /// Reader counts of the SSE readers case (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    pub sse_reader_counts: Vec<usize>,
    /// How long the SSE readers case publishes for, in seconds.
    #[arg(long, default_value_t = 30)]
    pub sse_reader_seconds: u64,
}

/// The SSE servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Storywire,
    Nchan,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Storywire => "storywire",
            Self::Nchan => "nginx+nchan",
        })
    }
}

/// The memory row's name.
const RSS: &str = "server RSS per reader, KiB";

/// Runs the case for every count on both servers, `runs` times (taking turns at going first),
/// and prints a table per count.
pub async fn run(args: &Args, runs: usize) -> Result<()> {
    if let Some(missing) = nchan::missing() {
        return failed!("the SSE readers case needs nginx with nchan: {missing}");
    }
    let events = (args.sse_reader_seconds * 1_000 / INTERVAL.as_millis() as u64).max(1);
    println!(
        "\nSSE readers: each on an HTTP/1.1 connection of its own, one event every {} ms for {} s ({events} events); nginx+nchan with {NGINX_WORKERS} workers; median (min–max) of {runs} runs; ratios taken within each run.",
        INTERVAL.as_millis(),
        args.sse_reader_seconds
    );
    let servers = [Server::Storywire, Server::Nchan];
    for &count in &args.sse_reader_counts {
        room_for(count)?;
        let label = format!("{count} SSE readers");
        let runs = in_turn(&servers, runs, &label, |server| once(server, count, events)).await;
        let table = by_server(&label, &servers, &Delivery::figures(RSS), &runs, |r| {
            r.misses
        });
        println!("\n{table}");
    }
    Ok(())
}

/// A server under the case: storywire with its HTTP face, or nginx+nchan.
enum Running {
    Storywire {
        server: ServerProcess,
        http: SocketAddr,
    },
    Nchan(Nginx),
}

impl Running {
    async fn start(server: Server, events: u64) -> Result<Self> {
        match server {
            Server::Storywire => {
                let http = SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
                let extra = ["--http".to_owned(), http.to_string()];
                let server =
                    ServerProcess::start_with(Target::Storywire, events as usize + 1, &extra)
                        .await?;
                // The gRPC port is announced first; the HTTP face listens a moment later.
                let deadline = Instant::now() + Duration::from_secs(10);
                while TcpStream::connect(http).await.is_err() {
                    if Instant::now() > deadline {
                        return failed!("storywire's HTTP face did not listen on {http}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Self::Storywire { server, http })
            }
            Server::Nchan => Ok(Self::Nchan(Nginx::start(NGINX_WORKERS).await?)),
        }
    }

    /// Where readers connect, and what they ask for.
    fn readers_at(&self) -> (SocketAddr, &'static str) {
        match self {
            Self::Storywire { http, .. } => (*http, "/v1/events"),
            Self::Nchan(nginx) => (nginx.address, "/sub"),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        match self {
            Self::Storywire { server, .. } => server.cpu_seconds(),
            Self::Nchan(nginx) => nginx.cpu_seconds(),
        }
    }

    fn rss_bytes(&self) -> u64 {
        match self {
            Self::Storywire { server, .. } => server.rss_bytes(),
            Self::Nchan(nginx) => nginx.rss_bytes(),
        }
    }

    /// Publishes `events` events at `rate`: over gRPC to storywire, POSTed to nchan.
    async fn publish(&self, events: u64, rate: Rate) -> Result<()> {
        match self {
            Self::Storywire { server, .. } => {
                publish(connect_one(&server.url()).await?, events, rate).await?;
                Ok(())
            }
            Self::Nchan(nginx) => {
                let mut publisher = nchan::Publisher::connect(nginx.address).await?;
                let mut ticks = tokio::time::interval(INTERVAL);
                for n in 1..=events {
                    ticks.tick().await;
                    let body = serde_json::to_vec(&update_event(n, n))?;
                    publisher.publish(&body).await?;
                }
                Ok(())
            }
        }
    }

    async fn stop(self) {
        match self {
            Self::Storywire { server, .. } => server.stop().await,
            Self::Nchan(nginx) => nginx.stop().await,
        }
    }
}

/// One run on `server`: a fresh server, `count` readers each on a connection of its own,
/// `events` events one every [`INTERVAL`].
async fn once(server: Server, count: usize, events: u64) -> Result<Delivery> {
    let running = Running::start(server, events).await?;
    let idle_rss = running.rss_bytes();
    let (address, path) = running.readers_at();
    let deadline = Instant::now() + GRACE + INTERVAL * events as u32;
    let descriptors = open_descriptors();

    let start = Instant::now();
    let opened: Vec<Result<BufReader<TcpStream>>> =
        futures_util::StreamExt::collect(futures_util::StreamExt::buffer_unordered(
            futures_util::stream::iter((0..count).map(|_| open_reader(address, path))),
            CONNECT_WAVE,
        ))
        .await;
    let readers = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    let subscribe_all = start.elapsed();
    let receivers: Vec<JoinHandle<Received>> = readers
        .into_iter()
        .map(|reader| tokio::spawn(receive(reader, 1, events, deadline)))
        .collect();

    let cpu_before = running.cpu_seconds();
    running
        .publish(events, Rate::PerSecond(1_000 / INTERVAL.as_millis() as u64))
        .await?;
    // Every reader is still connected here.
    let rss = running.rss_bytes();
    let all = gather(receivers).await?;
    let cpu = running.cpu_seconds() - cpu_before;
    settle(descriptors).await;
    running.stop().await;

    Delivery::of(&all, subscribe_all, cpu, rss.saturating_sub(idle_rss))
}

/// Connects one reader from the next loopback source address, sends its request as a browser's
/// EventSource does, and reads the response's head.
async fn open_reader(address: SocketAddr, path: &str) -> Result<BufReader<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source_address(), 0))
        .map_err(|e| format!("bind a reader: {e}"))?;
    let mut stream = socket
        .connect(address)
        .await
        .map_err(|e| format!("connect a reader to {address}: {e}"))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    if !status.contains(" 200 ") {
        return failed!("{path}: {}", status.trim());
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if line.trim().is_empty() {
            return Ok(reader);
        }
    }
}

/// Reads one reader's stream, whose events should run from `first` to `last`, until `last`
/// arrives, the stream ends, or `deadline`. Only the `data:` lines of unnamed events are read: both servers send each
/// event in one chunk of the chunked body, far larger than an event, so a chunk's size line never
/// splits one.
async fn receive(
    mut reader: BufReader<TcpStream>,
    first: u64,
    last: u64,
    deadline: Instant,
) -> Received {
    let mut tally = Tally::new(first, last);
    let mut line = String::new();
    // Whether the event being read is a named one (storywire's `started`, `caught_up`): not an
    // update.
    let mut named = false;
    loop {
        line.clear();
        match tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        if line.starts_with("event:") {
            named = true;
        } else if line.trim().is_empty() {
            named = false;
        }
        let Some(data) = line.strip_prefix("data: ").filter(|_| !named) else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<pb::UpdateEvent>(data.trim_end()) else {
            continue;
        };
        if tally.count(&event) {
            break;
        }
    }
    tally.finish()
}

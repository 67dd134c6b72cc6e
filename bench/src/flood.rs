//! The flood: one address floods the HTTP face while readers from other addresses read a story.
//!
//! From 127.0.0.1, `--flood-connections` each of three kinds, interleaved: connections that send
//! nothing, connections that send one byte of a request head every 3 s, and SSE readers that ask
//! for the whole log and never read. A connection the server closes is opened again (after
//! 200 ms) until the phase ends, as a flooder that keeps at it would. Meanwhile
//! `--flood-readers` gRPC readers from 127.0.0.2 onwards (200 to an address, under the default
//! share of 256) read a story published at 10 events a second from 127.0.0.254. Each run has a
//! quiet phase and a flooded one on fresh servers with their default limits; the report gives
//! the readers' p99 in both and their ratio within each run (goal: at most 2x), the server's RSS,
//! and the flood's connections closed by each rule, from `/metrics`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use storywire_testkit::net::{free_ports, get_from};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tonic::transport::Endpoint;

use crate::{
    crowd::{Crowd, Finished, Spread},
    error::{Result, failed},
    load::{Rate, publish},
    process::{ServerProcess, Target, room_for},
    report::{Table, cell, ms, ms_at, ratio_within_runs},
    tally::{misses, pooled},
};

/// The flood case's flags.
#[derive(Debug, clap::Args)]
#[group(id = "flood_case")]
pub struct Args {
    /// Also run the flood case.
    #[arg(long)]
    pub flood: bool,
    /// Connections of each kind (silent, slow header, stalled SSE) the flooder keeps open.
    #[arg(long, default_value_t = 1_000)]
    pub flood_connections: usize,
    /// Readers from other addresses.
    #[arg(long, default_value_t = 1_000)]
    pub flood_readers: usize,
    /// Seconds each phase publishes for, at 10 events a second.
    #[arg(long, default_value_t = 30)]
    pub flood_seconds: u64,
}

/// The flooder's address.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The publisher's address: neither the flooder's nor a reader's.
const PUBLISHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254));
/// Readers per source address: under the server's default share of 256.
const READERS_PER_ADDRESS: usize = 200;
/// Events a second the story gets.
const RATE: u64 = 10;
/// How long the flooder waits before it opens a connection the server closed again.
const REOPEN_AFTER: Duration = Duration::from_millis(200);
/// The reasons `storywire_connections_closed_total` counts, in the report's order.
const REASONS: [&str; 5] = [
    "per_address_limit",
    "header_timeout",
    "shed",
    "total_limit",
    "idle",
];

/// A row of the report: its name, how to read it from a phase, and its decimals.
type Row = (&'static str, fn(&Phase) -> f64, usize);

/// What one phase measured.
#[derive(Debug, Clone, Default)]
struct Phase {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rss_mib: f64,
    /// Gaps and duplicates over every reader.
    misses: (u64, u64),
    /// Connections the server closed, by [`REASONS`].
    closed: [f64; REASONS.len()],
    /// Connections the flooder opened, reopenings included.
    opened: u64,
}

/// Runs the case `runs` times and prints its table.
pub async fn run(args: &Args, runs: usize) -> Result<()> {
    room_for(args.flood_readers + 3 * args.flood_connections)?;
    println!(
        "\nFlood: {} readers from 127.0.0.2 onwards, {RATE} events/s for {} s, while 127.0.0.1 keeps {} silent, {} slow-header and {} stalled SSE connections open on the HTTP face; median (min–max) of {runs} runs.",
        args.flood_readers,
        args.flood_seconds,
        args.flood_connections,
        args.flood_connections,
        args.flood_connections
    );
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    for run in 0..runs {
        quiet.push(once(args, false).await?);
        flooded.push(once(args, true).await?);
        eprintln!("flood: run {} of {runs} done", run + 1);
    }
    let rows: [Row; 6] = [
        ("readers' p50 (ms)", |p| p.p50_ms, 2),
        ("readers' p99 (ms)", |p| p.p99_ms, 2),
        ("readers' max (ms)", |p| p.max_ms, 2),
        ("server RSS (MiB)", |p| p.rss_mib, 1),
        ("gaps + duplicates", |p| (p.misses.0 + p.misses.1) as f64, 0),
        ("flood connections opened", |p| p.opened as f64, 0),
    ];
    let mut table = Table::new(&["figure", "quiet", "flooded", "flooded / quiet"]);
    for (name, figure, decimals) in rows {
        let q: Vec<f64> = quiet.iter().map(figure).collect();
        let f: Vec<f64> = flooded.iter().map(figure).collect();
        let ratio = ratio_within_runs(&f, &q);
        table.row([name, &cell(&q, decimals), &cell(&f, decimals), &ratio]);
    }
    for (i, reason) in REASONS.iter().enumerate() {
        let f: Vec<f64> = flooded.iter().map(|p| p.closed[i]).collect();
        table.row([&format!("closed: {reason}"), "", &cell(&f, 0), ""]);
    }
    println!("\n{table}");
    Ok(())
}

/// One phase on a fresh server: the readers, the publisher, and with `flood` the flooder.
async fn once(args: &Args, flood: bool) -> Result<Phase> {
    let http = free_ports(1)?[0];
    let events = args.flood_seconds * RATE;
    let extra = [
        "--http".to_owned(),
        format!("127.0.0.1:{http}"),
        "--max-connections-per-ip".to_owned(),
        storywire::connections::DEFAULT_MAX_CONNECTIONS_PER_IP.to_string(),
        "--max-subscribers-per-ip".to_owned(),
        storywire::limits::Limits::default()
            .max_subscribers_per_ip
            .to_string(),
    ];
    let server = ServerProcess::start_with(Target::Storywire, events as usize + 1, &extra).await?;
    let url = server.url();
    let deadline = Instant::now() + Duration::from_secs(args.flood_seconds + 60);
    let readers =
        Spread::EachFrom(|n| Ipv4Addr::new(127, 0, 0, 2 + (n / READERS_PER_ADDRESS) as u8).into());
    let expected = (1, events);
    let crowd = Crowd::subscribe(
        Target::Storywire,
        &url,
        args.flood_readers,
        readers,
        expected,
        deadline,
    )
    .await?;

    let phase_ends = Instant::now() + Duration::from_secs(args.flood_seconds + 2);
    let target = SocketAddr::from(([127, 0, 0, 1], http));
    let mut flooder = JoinSet::new();
    if flood {
        for n in 0..3 * args.flood_connections {
            flooder.spawn(keep_flooding(target, n % 3, phase_ends));
        }
        // Let the first wave land before the publisher starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let publisher = Endpoint::from_shared(url.clone())?
        .tcp_nodelay(true)
        .local_address(Some(PUBLISHER))
        .connect()
        .await
        .map_err(|e| format!("connect the publisher: {e}"))?;
    publish(publisher, events, Rate::PerSecond(RATE)).await?;
    let rss = server.rss_bytes();
    let closed = match get_from(PUBLISHER, http, "/metrics").await {
        Some((200, scrape)) => REASONS.map(|reason| closed_for(&scrape, reason)),
        other => return failed!("GET /metrics: {other:?}"),
    };
    let mut opened = 0;
    while let Some(count) = flooder.join_next().await {
        opened += count?;
    }
    let Finished { all, .. } = crowd.finish(server, 0.0).await?;
    let (latency, _) = pooled(&all)?;
    Ok(Phase {
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        misses: misses(&all),
        closed,
        opened,
    })
}

/// The sum over both faces of `storywire_connections_closed_total{reason}` in a scrape.
fn closed_for(scrape: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"}} ");
    scrape
        .lines()
        .filter(|line| line.starts_with("storywire_connections_closed_total{"))
        .filter_map(|line| line.split_once(&label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum()
}

/// Keeps one flooding connection of `kind` (0: silent, 1: slow header, 2: stalled SSE) open on
/// `target` until `ends`, opening it again when the server closes it; how many it opened.
async fn keep_flooding(target: SocketAddr, kind: usize, ends: Instant) -> u64 {
    let mut opened = 0;
    while Instant::now() < ends {
        let Ok(mut tcp) = connect_from(target, FLOODER, kind == 2).await else {
            tokio::time::sleep(REOPEN_AFTER).await;
            continue;
        };
        opened += 1;
        let until_closed = async {
            match kind {
                0 => {
                    let _ = tcp.read(&mut [0; 1]).await;
                }
                1 => {
                    let head = b"GET /v1/stories HTTP/1.1\r\n";
                    for byte in head.iter().cycle() {
                        if tcp.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                }
                _ => {
                    let request = "GET /v1/events?from_sequence=1 HTTP/1.1\r\nHost: flood\r\nAccept: text/event-stream\r\n\r\n";
                    if tcp.write_all(request.as_bytes()).await.is_ok() {
                        // Never read: wait out the phase, holding what the server sent.
                        tokio::time::sleep_until(ends).await;
                    }
                }
            }
        };
        if tokio::time::timeout_at(ends, until_closed).await.is_ok() {
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    }
    opened
}

/// A connection to `target` from `local`; with `small_window`, a receive buffer of 4 KiB, so
/// that a stalled reader's kernel takes little of what the server sends.
async fn connect_from(
    target: SocketAddr,
    local: IpAddr,
    small_window: bool,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_window {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(target).await
}

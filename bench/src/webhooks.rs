//! Webhooks: a memory-only server started with `--webhooks FILE`, each endpoint of the file a
//! small HTTP receiver in this process on 127.0.0.1 that answers 200 and counts what it is sent
//! with [`Tally`] (the body is the event as proto3 JSON, stamped by the publisher).
//!
//! Two phases, each on a fresh server with fresh receivers: a steady one, with the case's
//! endpoints and a publisher at [`RATE`] events a second (delivery latency, publish to receipt
//! at the receiver); and one endpoint with the publisher as fast as the server acknowledges, for
//! a bounded count (the events a second one endpoint takes: the server sends it one event at a
//! time, the next once the last was answered).

use std::{
    fmt,
    io::Read,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use base64::{Engine, engine::general_purpose::STANDARD};
use storywire::pb;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};

use crate::{
    crowd::Publisher,
    error::{Result, failed},
    load::Rate,
    process::{ServerProcess, Target},
    report::{Table, cell, in_turn, ms, ms_at},
    tally::{Received, Tally, misses, pooled},
};

/// The steady phase's publishing rate, events a second.
const RATE: u64 = 100;
/// How long past the last publish the receivers wait for the rest.
const GRACE: Duration = Duration::from_secs(60);
/// Endpoints a run may have: each is a listener in this process.
const MAX_ENDPOINTS: usize = 100;

/// The webhooks case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "webhooks_case")]
pub struct Args {
    /// Also run the webhooks case: --webhook-endpoints local HTTP receivers at 100 events/s, then
    /// one endpoint with the publisher at full speed for --webhook-burst-events events.
    #[arg(long)]
    pub webhooks: bool,
    /// Endpoints in the steady phase (at most 100).
    #[arg(long, default_value_t = 10)]
    pub webhook_endpoints: usize,
    /// How long the steady phase publishes for, in seconds.
    #[arg(long, default_value_t = 10)]
    pub webhook_seconds: u64,
    /// Events the full-speed phase publishes to its one endpoint.
    /// 20,000: a quarter of a second took 2,000, too short for /proc's 10 ms CPU ticks.
    #[arg(long, default_value_t = 20_000)]
    pub webhook_burst_events: u64,
}

/// A phase of the case.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// This many endpoints, this many events at [`RATE`].
    Steady(usize, u64),
    /// One endpoint, this many events as fast as the server acknowledges them.
    FullSpeed(u64),
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Steady(endpoints, events) => {
                write!(
                    f,
                    "{endpoints} endpoints, {RATE} events/s ({events} events)"
                )
            }
            Self::FullSpeed(events) => {
                write!(f, "1 endpoint, publisher at full speed ({events} events)")
            }
        }
    }
}

/// One run of a phase.
#[derive(Debug, Clone, Copy)]
struct Hooks {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Events each endpoint received, over the time from the first publish to its last receipt.
    per_endpoint_per_second: f64,
    cpu_us_per_delivery: f64,
    /// Gaps and duplicates over every endpoint.
    misses: (u64, u64),
}

/// Runs both phases `runs` times and prints their table.
pub async fn run(args: &Args, runs: usize) -> Result<()> {
    let endpoints = args.webhook_endpoints.max(1);
    if endpoints > MAX_ENDPOINTS {
        return failed!("--webhook-endpoints {endpoints}: at most {MAX_ENDPOINTS}");
    }
    let events = (args.webhook_seconds * RATE).max(1);
    let phases = [
        Phase::Steady(endpoints, events),
        Phase::FullSpeed(args.webhook_burst_events.max(1)),
    ];
    println!(
        "\nWebhooks: a memory-only server with --webhooks, each endpoint a local HTTP receiver answering 200; latency from publish to receipt. Median (min–max) of {runs} runs."
    );
    let all = in_turn(&phases, runs, "webhooks", once).await;
    let mut table = Table::new(&[
        "webhooks",
        "delivery p50, ms",
        "delivery p99, ms",
        "delivery max, ms",
        "events/s per endpoint",
        "server CPU per delivery, µs",
        "gaps / duplicates, all runs",
        "runs failed",
    ]);
    for (i, phase) in phases.iter().enumerate() {
        let results = &all.results[i];
        let column = |f: fn(&Hooks) -> f64, decimals| {
            cell(&results.iter().map(f).collect::<Vec<_>>(), decimals)
        };
        let (gaps, duplicates) = results
            .iter()
            .fold((0, 0), |(g, d), r| (g + r.misses.0, d + r.misses.1));
        table.row([
            phase.to_string(),
            column(|r| r.p50_ms, 2),
            column(|r| r.p99_ms, 2),
            column(|r| r.max_ms, 2),
            column(|r| r.per_endpoint_per_second, 0),
            column(|r| r.cpu_us_per_delivery, 2),
            format!("{gaps} / {duplicates}"),
            all.failed[i].to_string(),
        ]);
    }
    println!("\n{table}");
    Ok(())
}

/// One run of `phase`: fresh receivers, a fresh server delivering to them, the publisher.
async fn once(phase: Phase) -> Result<Hooks> {
    let (endpoints, events, rate) = match phase {
        Phase::Steady(endpoints, events) => (endpoints, events, Rate::PerSecond(RATE)),
        Phase::FullSpeed(events) => (1, events, Rate::Max),
    };
    let mut receivers = Vec::with_capacity(endpoints);
    for _ in 0..endpoints {
        receivers.push(Receiver::start(events).await?);
    }
    let file = std::env::temp_dir().join(format!(
        "storywire-bench-webhooks-{}.json",
        uuid::Uuid::new_v4()
    ));
    write_endpoints(&file, &receivers)?;
    let extra = vec!["--webhooks".to_owned(), file.display().to_string()];
    let started = ServerProcess::start_with(Target::Storywire, events as usize + 1, &extra).await;
    let _ = std::fs::remove_file(&file);
    let server = started?;
    let outcome = deliver(&server, &receivers, events, rate).await;
    server.stop().await;
    outcome
}

/// Publishes `events` at `rate` to `server` and waits for every receiver to have the last.
async fn deliver(
    server: &ServerProcess,
    receivers: &[Receiver],
    events: u64,
    rate: Rate,
) -> Result<Hooks> {
    let publisher = Publisher::connect(Target::Storywire, &server.url()).await?;
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    publisher.publish(1, events, rate).await?;
    publisher.close().await;
    let deadline = Instant::now() + GRACE;
    while !receivers.iter().all(Receiver::done) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = server.cpu_seconds() - cpu_before;
    let all: Vec<Received> = receivers.iter().map(Receiver::finish).collect();
    let (latency, delivered) = pooled(&all)?;
    let took = all
        .iter()
        .filter_map(|r| r.last_at)
        .max()
        .map_or(Duration::ZERO, |last| last - start);
    Ok(Hooks {
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        per_endpoint_per_second: delivered as f64 / all.len() as f64 / took.as_secs_f64().max(1e-9),
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        misses: misses(&all),
    })
}

/// Writes the `--webhooks` file: an endpoint per receiver, each with a secret of its own.
fn write_endpoints(file: &Path, receivers: &[Receiver]) -> Result<()> {
    let mut entries = Vec::with_capacity(receivers.len());
    for (i, receiver) in receivers.iter().enumerate() {
        entries.push(serde_json::json!({
            "name": format!("bench-{i}"),
            "url": format!("http://{}/hook", receiver.address),
            "secret": secret()?,
        }));
    }
    std::fs::write(file, serde_json::to_vec(&entries)?)?;
    Ok(())
}

/// A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes.
fn secret() -> Result<String> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(format!("whsec_{}", STANDARD.encode(key)))
}

/// What one receiver has been sent.
struct Inbox {
    /// Its count, until the run takes it.
    tally: Mutex<Option<Tally>>,
    /// Whether the last expected event has arrived.
    done: AtomicBool,
}

/// A local HTTP receiver on 127.0.0.1, answering every POST to `/hook` with 200 once it has
/// counted the event; stopped when dropped.
struct Receiver {
    inbox: Arc<Inbox>,
    address: SocketAddr,
    serving: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver expecting the events 1 to `last`.
    async fn start(last: u64) -> Result<Self> {
        let inbox = Arc::new(Inbox {
            tally: Mutex::new(Some(Tally::new(1, last))),
            done: AtomicBool::new(false),
        });
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/hook", post(take))
            .with_state(inbox.clone());
        let serving = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            inbox,
            address,
            serving,
        })
    }

    fn done(&self) -> bool {
        self.inbox.done.load(Ordering::Relaxed)
    }

    /// What it was sent; a second call finds nothing, and counts everything as missing.
    fn finish(&self) -> Received {
        let mut tally = self
            .inbox
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tally.take().unwrap_or_else(|| Tally::new(1, 1)).finish()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Counts one delivery; 400 for a body that is not an event (the server would send it again).
async fn take(State(inbox): State<Arc<Inbox>>, body: Bytes) -> StatusCode {
    let Ok(event) = serde_json::from_slice::<pb::UpdateEvent>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut tally = inbox.tally.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(tally) = tally.as_mut()
        && tally.count(&event)
    {
        inbox.done.store(true, Ordering::Relaxed);
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::STANDARD};

    use super::secret;

    #[test]
    fn a_secret_is_whsec_and_32_random_bytes_in_base64() {
        let (a, b) = (secret().unwrap(), secret().unwrap());
        let key = STANDARD.decode(a.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(a, b);
    }
}

//! Named consumers against plain subscribers: what a position the server keeps costs.
//!
//! For a memory-only server and a `--data-dir` one (where every Ack is written and synced before
//! it is answered): a fresh server; [`ACK_EVERY`]-acknowledging readers of named consumers
//! (CreateConsumer, then Subscribe with `consumer`) and as many plain subscribers (Subscribe with
//! `from_sequence`) over a few HTTP/2 connections, the Acks over a few others; a publisher at
//! [`RATE`] events a second for the case's duration. A run has three phases on the same server, each with consumers of its
//! own: both kinds together, which gives each kind's delivery latency under the same load; then
//! each kind alone (which first swaps every run), which gives the server CPU per delivery that
//! kind costs (one process's CPU cannot be split between two kinds of reader reading at once).

use std::{
    fmt,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use tokio::{
    task::JoinHandle,
    time::{Instant, timeout, timeout_at},
};
use tonic::transport::Channel;

use crate::{
    crowd::Publisher,
    error::{Result, failed},
    load::{Rate, connect, receive, subscribe_many},
    process::{ServerProcess, Target},
    report::{Figure, Runs, by_server, in_turn, ms, ms_at},
    tally::{Received, Tally, misses, pooled},
};

/// The publisher's rate, events a second.
const RATE: u64 = 1_000;
/// A consumer's reader acknowledges every this many events (and the last).
const ACK_EVERY: u64 = 100;
/// HTTP/2 connections the readers of both kinds share.
const CONNECTIONS: usize = 4;
/// How long past the last event the readers wait for stragglers.
const GRACE: Duration = Duration::from_secs(30);
/// How long CreateConsumer and Subscribe may take to answer; an Ack may take until the run's
/// deadline. A server that stops answering fails the run rather than holding the bench.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Consumers a server keeps at most (docs/api.md); a run creates two sets.
const MAX_CONSUMERS: usize = 1_000;

/// The named-consumers case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "consumers_case")]
pub struct Args {
    /// Also run the named-consumers case: readers of named consumers acknowledging every 100
    /// events against as many plain subscribers, 1,000 events/s, in memory and with --data-dir.
    #[arg(long)]
    pub consumers: bool,
    /// Readers of each kind in the named-consumers case (at most 500).
    #[arg(long, default_value_t = 100)]
    pub consumer_readers: usize,
    /// How long each of the case's three phases publishes for, in seconds.
    #[arg(long, default_value_t = 10)]
    pub consumer_seconds: u64,
}

/// Where the server keeps its log and its consumers.
#[derive(Debug, Clone, Copy)]
enum Log {
    Memory,
    DataDir,
}

impl fmt::Display for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "in memory",
            Self::DataDir => "--data-dir",
        })
    }
}

/// One kind of reader's figures in one run.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// Publish to receipt, both kinds reading together.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Server CPU over the events delivered, this kind reading alone.
    cpu_us_per_delivery: f64,
    /// Events delivered to all readers of this kind, both kinds reading together.
    delivered: f64,
    /// Gaps and duplicates over every phase.
    misses: (u64, u64),
}

/// The rows of a table.
const FIGURES: [Figure<Kind>; 5] = [
    ("delivery p50, ms (together)", |k| k.p50_ms, 2),
    ("delivery p99, ms (together)", |k| k.p99_ms, 2),
    ("delivery max, ms (together)", |k| k.max_ms, 2),
    (
        "server CPU per delivery, µs (alone)",
        |k| k.cpu_us_per_delivery,
        2,
    ),
    ("events delivered (together)", |k| k.delivered, 0),
];

/// Runs the case on both servers, `runs` times, and prints a table per server.
pub async fn run(args: &Args, runs: usize) -> Result<()> {
    let count = args.consumer_readers.max(1);
    if 2 * count > MAX_CONSUMERS {
        return failed!(
            "--consumer-readers {count}: a run creates twice that many consumers, and a server keeps {MAX_CONSUMERS}"
        );
    }
    let events = (args.consumer_seconds * RATE).max(ACK_EVERY);
    println!(
        "\nNamed consumers: {count} readers of named consumers, each acknowledging every {ACK_EVERY} events (Ack awaited), against {count} plain subscribers (from_sequence), over {CONNECTIONS} connections; {RATE} events/s for {} s ({events} events) with both kinds reading, then with each alone (for its CPU). Median (min–max) of {runs} runs; ratios taken within each run.",
        args.consumer_seconds
    );
    let logs = [Log::Memory, Log::DataDir];
    let label = format!("{count} consumers");
    let all = in_turn(&logs, runs, &label, |log| once(log, count, events)).await;
    for (i, log) in logs.iter().enumerate() {
        let kinds = |k: usize| all.results[i].iter().map(|r: &[Kind; 2]| r[k]).collect();
        let runs = Runs {
            results: vec![kinds(0), kinds(1)],
            failed: vec![all.failed[i]; 2],
        };
        let names = ["named consumers", "plain subscribers"];
        let corner = format!("{count} of each, {log}");
        println!(
            "\n{}",
            by_server(&corner, &names, &FIGURES, &runs, |k| k.misses)
        );
    }
    Ok(())
}

/// One run on a fresh server keeping its log as `log` says: `count` readers of each kind,
/// `events` events per phase. Returns the consumers' figures, then the plain subscribers'.
async fn once(log: Log, count: usize, events: u64) -> Result<[Kind; 2]> {
    let dir = std::env::temp_dir().join(format!("storywire-bench-{}", uuid::Uuid::new_v4()));
    let extra = match log {
        Log::Memory => vec![],
        Log::DataDir => vec!["--data-dir".to_owned(), dir.display().to_string()],
    };
    let retain = 3 * events as usize + 1;
    let server = ServerProcess::start_with(Target::Storywire, retain, &extra).await?;
    let outcome = phases(&server, count, events).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// How many runs have begun: the kinds' phases alone swap order every run, so that neither
/// always reads on the server with the longer log or the warmer machine.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// The run's three phases on `server`.
async fn phases(server: &ServerProcess, count: usize, events: u64) -> Result<[Kind; 2]> {
    let url = server.url();
    let channels = connect(&url, CONNECTIONS).await?;
    // Acks go on connections of their own. On the streams' connections, a reader waiting for
    // its Ack does not read, its stream's events fill the connection's HTTP/2 window, and the
    // Ack's answer waits behind them for good: a run at f71fd84 stalled so on a slow fsync.
    let acks = connect(&url, CONNECTIONS).await?;
    let publisher = Publisher::connect(Target::Storywire, &url).await?;
    let both = phase(
        server,
        (&channels, &acks),
        &publisher,
        (count, count),
        1,
        events,
    )
    .await?;
    let alone = |readers, nth: u64| {
        let first = nth * events + 1;
        phase(
            server,
            (&channels, &acks),
            &publisher,
            readers,
            first,
            events,
        )
    };
    let (consumers, plain) = if RUNS.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
        let consumers = alone((count, 0), 1).await?;
        (consumers, alone((0, count), 2).await?)
    } else {
        let plain = alone((0, count), 1).await?;
        (alone((count, 0), 2).await?, plain)
    };
    publisher.close().await;
    Ok([
        kind(&both.consumers, &consumers.consumers, consumers.cpu)?,
        kind(&both.plain, &plain.plain, plain.cpu)?,
    ])
}

/// One kind's figures: latency and deliveries from the phase it shared (`together`), CPU per
/// delivery from the phase it read `alone` in, which cost the server `alone_cpu` seconds.
fn kind(together: &[Received], alone: &[Received], alone_cpu: f64) -> Result<Kind> {
    let (latency, delivered) = pooled(together)?;
    let (_, alone_delivered) = pooled(alone)?;
    let (gaps, duplicates) = misses(together);
    let (more_gaps, more_duplicates) = misses(alone);
    Ok(Kind {
        p50_ms: ms_at(&latency, 0.5),
        p99_ms: ms_at(&latency, 0.99),
        max_ms: ms(latency.max()),
        cpu_us_per_delivery: alone_cpu * 1e6 / alone_delivered.max(1) as f64,
        delivered: delivered as f64,
        misses: (gaps + more_gaps, duplicates + more_duplicates),
    })
}

/// What one phase's readers saw, and the server CPU seconds from the first publish until the
/// last reader was done.
struct Phase {
    consumers: Vec<Received>,
    plain: Vec<Received>,
    cpu: f64,
}

/// One phase: `consumers` readers of new named consumers and `plain` plain subscribers, all
/// from `first`, then `events` bench events from the `first`th at [`RATE`].
async fn phase(
    server: &ServerProcess,
    (channels, acks): (&[Channel], &[Channel]),
    publisher: &Publisher,
    (consumers, plain): (usize, usize),
    first: u64,
    events: u64,
) -> Result<Phase> {
    let last = first + events - 1;
    let deadline = Instant::now() + GRACE + Duration::from_secs(events / RATE + 1);
    let mut named = Vec::with_capacity(consumers);
    for i in 0..consumers {
        let channel = channels[i % channels.len()].clone();
        let ack = acks[i % acks.len()].clone();
        let name = format!("bench-{first}-{i}");
        named.push(consume((channel, ack), name, first, last, deadline).await?);
    }
    let request = pb::SubscribeRequest {
        from_sequence: Some(first),
        ..Default::default()
    };
    let streams = subscribe_many(channels, plain, &request).await?;
    let plain: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(receive(s, first, last, deadline)))
        .collect();
    let cpu_before = server.cpu_seconds();
    publisher
        .publish(first, events, Rate::PerSecond(RATE))
        .await?;
    let mut consumers = Vec::with_capacity(named.len());
    for reader in named {
        consumers.push(reader.await??);
    }
    let mut subscribers = Vec::with_capacity(plain.len());
    for reader in plain {
        subscribers.push(reader.await?);
    }
    let cpu = server.cpu_seconds() - cpu_before;
    Ok(Phase {
        consumers,
        plain: subscribers,
        cpu,
    })
}

/// Creates the consumer `name` from `first`, subscribes with it, and returns the task that reads
/// its events up to `last` (or until `deadline`), acknowledging every [`ACK_EVERY`]th and the
/// last, each Ack sent on `ack_channel` and awaited before it reads on.
async fn consume(
    (channel, ack_channel): (Channel, Channel),
    name: String,
    first: u64,
    last: u64,
    deadline: Instant,
) -> Result<JoinHandle<Result<Received>>> {
    let mut client = StoryServiceClient::new(channel);
    let mut acks = StoryServiceClient::new(ack_channel);
    let create = pb::CreateConsumerRequest {
        name: name.clone(),
        from_sequence: Some(first),
        ..Default::default()
    };
    let answered = |call| format!("{call} of {name} did not answer within {CALL_TIMEOUT:?}");
    timeout(CALL_TIMEOUT, client.create_consumer(create))
        .await
        .map_err(|_| answered("CreateConsumer"))??;
    let request = pb::SubscribeRequest {
        consumer: name.clone(),
        ..Default::default()
    };
    let mut stream = timeout(CALL_TIMEOUT, client.subscribe(request))
        .await
        .map_err(|_| answered("Subscribe"))??
        .into_inner();
    Ok(tokio::spawn(async move {
        let mut tally = Tally::new(first, last);
        while let Ok(message) = timeout_at(deadline, stream.message()).await {
            let Some(message) = message? else {
                break;
            };
            let Some(Item::Event(event)) = message.item else {
                continue;
            };
            let done = tally.count(&event);
            if done || event.sequence.is_multiple_of(ACK_EVERY) {
                let ack = pb::AckRequest {
                    consumer: name.clone(),
                    sequence: event.sequence,
                    ..Default::default()
                };
                let sequence = event.sequence;
                timeout_at(deadline, acks.ack(ack)).await.map_err(|_| {
                    format!("Ack of {name} at {sequence} had no answer by the run's deadline")
                })??;
            }
            if done {
                break;
            }
        }
        Ok(tally.finish())
    }))
}

#[cfg(test)]
mod tests {
    use storywire::pb;

    use super::kind;
    use crate::tally::{Received, Tally};

    /// A reader that was sent `sequences`, expecting 1 to `last`.
    fn reader(sequences: &[u64], last: u64) -> Received {
        let mut tally = Tally::new(1, last);
        for &sequence in sequences {
            tally.count(&pb::UpdateEvent {
                sequence,
                ..Default::default()
            });
        }
        tally.finish()
    }

    #[test]
    fn a_kind_takes_deliveries_from_together_cpu_from_alone_and_misses_from_both() {
        let together = [reader(&[1, 2, 3, 4], 4), reader(&[1, 2, 2, 4], 4)];
        let alone = [reader(&[1, 2], 2), reader(&[1, 2], 2)];
        let k = kind(&together, &alone, 0.002).unwrap();
        assert_eq!(k.delivered, 8.0);
        // 2 ms over the 4 events delivered alone.
        assert_eq!(k.cpu_us_per_delivery, 500.0);
        assert_eq!(k.misses, (1, 1));

        let k = kind(&together, &[reader(&[2], 2)], 0.001).unwrap();
        assert_eq!(k.misses, (2, 1));
    }
}

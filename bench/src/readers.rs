//! Connections per reader: every subscriber on a connection of its own, as readers'
//! browsers and apps are, rather than many subscriptions sharing a few HTTP/2 connections.
//!
//! For each count of subscribers and each server (storywire, the bare tonic baseline, the NATS
//! anchor): a fresh server; its idle RSS; every subscriber connected and subscribed (one tonic
//! `Channel` or one NATS client each), timed; then one event every [`INTERVAL`] for the case's
//! duration, with the delivery latency, the server's CPU per delivery, and its RSS above idle
//! per connection, read while every connection is still open.
//!
//! All of it runs in the bench's one process, on 127.0.0.1: the per-process open-files limit
//! bounds the count (each subscriber holds one descriptor here and one in the server), and the
//! case refuses a count it cannot open rather than failing half-way.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    crowd::{Crowd, Delivery, Finished, Publisher, Spread},
    error::Result,
    load::Rate,
    process::{ServerProcess, Target, room_for},
    report::{Runs, by_server, in_turn},
};

/// How often the publisher sends, as a busy story's live updates might come.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long past the last event the subscribers wait for stragglers.
const GRACE: Duration = Duration::from_secs(60);

/// The connections-per-reader case's switches and sizes.
#[derive(Debug, clap::Args)]
#[group(id = "readers_case")]
pub struct Args {
    /// Also run the connections-per-reader case: each subscriber on a connection of
    /// its own, one event every 100 ms, against storywire, bare tonic and NATS.
    #[arg(long)]
    pub readers: bool,
    /// Subscriber counts of the connections-per-reader case (comma-separated). Each needs a
    /// descriptor in the bench and one in the server: 19000 fits a limit of 20,000 per process.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    pub reader_counts: Vec<usize>,
    /// How long the connections-per-reader case publishes for, in seconds.
    #[arg(long, default_value_t = 30)]
    pub reader_seconds: u64,
}

/// The memory row's name.
const RSS: &str = "server RSS per connection with a subscriber, KiB";

/// Runs the case for every count on every one of `targets`, `runs` times, and prints a table
/// per count.
pub async fn run(args: &Args, targets: &[Target], runs: usize) -> Result<()> {
    let events = (args.reader_seconds * 1_000 / INTERVAL.as_millis() as u64).max(1);
    println!(
        "\nConnections per reader: each subscriber on a connection of its own, one event every {} ms for {} s ({events} events); median (min–max) of {runs} runs; ratios taken within each run.",
        INTERVAL.as_millis(),
        args.reader_seconds
    );
    for &count in &args.reader_counts {
        room_for(count)?;
        let label = format!("{count} readers");
        let runs = in_turn(targets, runs, &label, |target| once(target, count, events)).await;
        println!("\n{}", table(count, targets, &runs));
    }
    Ok(())
}

/// The table for `count` subscribers: a row per figure, a column per server, then storywire
/// over each other server.
fn table(count: usize, targets: &[Target], runs: &Runs<Delivery>) -> String {
    by_server(
        &format!("{count} readers"),
        targets,
        &Delivery::figures(RSS),
        runs,
        |r| r.misses,
    )
}

/// One run on `target`: a fresh server, `count` subscribers each on a connection of its own,
/// `events` events one every [`INTERVAL`].
async fn once(target: Target, count: usize, events: u64) -> Result<Delivery> {
    let server = ServerProcess::start(target, events as usize + 1).await?;
    let idle_rss = server.rss_bytes();
    let url = server.url();
    let rate = Rate::PerSecond(1_000 / INTERVAL.as_millis() as u64);
    let deadline = Instant::now() + GRACE + INTERVAL * events as u32;

    let start = Instant::now();
    let crowd = Crowd::subscribe(target, &url, count, Spread::Each, (1, events), deadline).await?;
    let subscribe_all = start.elapsed();

    let cpu_before = server.cpu_seconds();
    let publisher = Publisher::connect(target, &url).await?;
    publisher.publish(1, events, rate).await?;
    publisher.close().await;
    // Every connection is still open here, and every subscriber still subscribed.
    let rss = server.rss_bytes();
    let Finished { all, cpu, .. } = crowd.finish(server, cpu_before).await?;
    Delivery::of(&all, subscribe_all, cpu, rss.saturating_sub(idle_rss))
}

#[cfg(test)]
mod tests {
    use super::{once, table};
    use crate::{
        crowd::Delivery,
        process::{Target, tests::nats_server_at_hand},
        report::Runs,
    };

    #[tokio::test]
    async fn readers_on_connections_of_their_own_get_every_event_once() {
        if !nats_server_at_hand() {
            return;
        }
        let run = once(Target::Nats, 2, 5).await.unwrap();
        assert_eq!(run.misses, (0, 0));
        assert!(run.max_ms >= run.p50_ms && run.p50_ms > 0.0);
        assert!(run.subscribe_all_seconds > 0.0);
    }

    #[test]
    fn the_table_has_a_column_per_server_and_a_ratio_per_other_server() {
        // Figures 1 to 6 in the table's order, so that a cell shows which it is.
        let run = Delivery {
            subscribe_all_seconds: 1.0,
            p50_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
            cpu_us_per_delivery: 5.0,
            rss_kib_per_reader: 6.0,
            misses: (0, 0),
        };
        let half = Delivery { p50_ms: 1.0, ..run };
        let targets = [Target::Storywire, Target::Bare, Target::Nats];
        let runs = Runs {
            results: vec![vec![run], vec![run], vec![half]],
            failed: vec![0, 0, 0],
        };
        let text = table(10, &targets, &runs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "| 10 readers | storywire | bare tonic | NATS | storywire / bare tonic | storywire / NATS |"
        );
        assert_eq!(lines[1], "|---|---|---|---|---|---|");
        assert_eq!(
            lines[3],
            "| delivery p50, ms | 2.00 | 2.00 | 1.00 | 1.00x | 2.00x |"
        );
        assert_eq!(
            lines.last().unwrap(),
            &"| gaps / duplicates, all runs | 0 / 0 | 0 / 0 | 0 / 0 | | |"
        );

        // One server alone (`--servers storywire`, for a profile) has no ratio columns.
        let runs = Runs {
            results: vec![vec![run]],
            failed: vec![0],
        };
        let alone = table(10, &targets[..1], &runs);
        let lines: Vec<&str> = alone.lines().collect();
        assert_eq!(lines[0], "| 10 readers | storywire |");
        assert_eq!(lines[1], "|---|---|");
        assert_eq!(lines[3], "| delivery p50, ms | 2.00 |");
    }
}

//! `storywire-bench`: the load generator behind docs/benchmarks.md.
//!
//! Every case starts a fresh server process on loopback (the `storywire` binary, or the bare
//! tonic baseline that this binary serves in its `bare` mode), drives it over real sockets, reads
//! its CPU time and memory from /proc, and runs several times; the report gives the median and
//! the spread, and for each storywire figure its ratio to the baseline measured in the same run.
//! Where a nats-server is at hand, core NATS runs beside them as an anchor: what a mature broker
//! needs to fan the same bytes out.
//!
//! The modules, from the cases down to the sockets; each imports only from modules below it:
//!
//! - [`matrix`]: the standard cases: fan-out, publish paths, durability, catch-up, idle memory.
//! - [`consumers`]: named consumers acknowledging as they read, against plain subscribers,
//!   in memory and with `--data-dir`.
//! - [`webhooks`]: `serve --webhooks` to local HTTP receivers: latency, and one endpoint's rate.
//! - [`readers`]: connections per reader: each subscriber on a connection of its own.
//! - [`flood`]: one address floods the HTTP face while readers from other addresses read.
//! - [`sse`]: Server-Sent Event readers, each on a connection of its own, against nginx+nchan.
//! - [`crowd`]: a run's readers and its publisher on any of the three servers.
//! - [`nchan`]: the nginx+nchan anchor: a fresh nginx per run, its publisher's side.
//! - [`anchor`]: the NATS anchor's client side: the same events over core NATS.
//! - [`load`]: the gRPC client side: connections, publishers, subscribers.
//! - [`tally`]: what each reader saw: gaps, duplicates, latency.
//! - [`bare`]: the bare tonic baseline server.
//! - [`process`]: a server under test in its own process, its CPU time and memory from /proc;
//!   this process's descriptors.
//! - [`report`]: every case's contenders run in turn, and its markdown tables.
//! - [`error`]: the one error type.
//!
//! A new case is a module of its own above [`crowd`]: its flags as a `clap::Args` flattened into
//! [`Args`], a `run` that prints its tables with [`report`], and a line in [`run`] below.

mod anchor;
mod bare;
mod consumers;
mod crowd;
mod error;
mod flood;
mod load;
mod matrix;
mod nchan;
mod process;
mod readers;
mod report;
mod sse;
mod tally;
mod webhooks;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{error::Result, load::Rate, process::Target};

/// storywire-bench: storywire under load, beside a bare tonic baseline, as a markdown report.
#[derive(Debug, Parser)]
#[command(
    name = "storywire-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Without a mode the bench runs its cases.
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    args: Args,
}

/// What else the binary can be.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve the bare tonic baseline; the bench starts it as a child process of its own.
    #[command(hide = true)]
    Bare {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// What the bench runs, and against which server binary.
#[derive(Debug, clap::Args)]
struct Args {
    /// The storywire server binary to measure [default: `storywire` next to this executable,
    /// which `cargo build --release --workspace` puts there].
    #[arg(long, value_name = "PATH")]
    storywire: Option<PathBuf>,
    /// Subscriber counts to run in the fan-out case (comma-separated; 0 alone skips it).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
    subscribers: Vec<usize>,
    /// HTTP/2 connections the subscribers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Publish rates to run: `max` or events per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["max", "100", "2000"], value_parser = parse_rate)]
    rates: Vec<Rate>,
    /// Runs of each case; the report gives the median and the spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The servers the fan-out and connections-per-reader cases measure
    /// (comma-separated) [default: all three, NATS where a nats-server is at hand]. Ratios are
    /// to storywire, so a profile of one server can run alone.
    #[arg(long, value_delimiter = ',', value_enum)]
    servers: Vec<Target>,
    /// Events in the catch-up and retained-memory case (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,
    /// Idle subscribers in the memory case (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle_subscribers: usize,
    /// Events published one unary Publish at a time in the publish-path case (0 skips it); the
    /// PublishStream side publishes 20 times as many.
    #[arg(long, default_value_t = 5_000)]
    unary_events: u64,
    /// Events published on PublishStream in the durability case, for each fsync mode, and then
    /// replayed at start-up (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    durability_events: u64,
    /// The nats-server binary (2.12 or newer) for the NATS anchor [default:
    /// target/tools/nats/bin/nats-server in the workspace, where scripts/test installs it].
    #[arg(long, value_name = "PATH", env = "STORYWIRE_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    #[command(flatten)]
    consumers: consumers::Args,
    #[command(flatten)]
    webhooks: webhooks::Args,
    #[command(flatten)]
    readers: readers::Args,
    #[command(flatten)]
    sse: sse::Args,
    #[command(flatten)]
    flood: flood::Args,
}

fn parse_rate(value: &str) -> Result<Rate, String> {
    match value {
        "max" => Ok(Rate::Max),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Rate::PerSecond)
            .ok_or_else(|| format!("{n:?} is neither `max` nor a positive rate")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Some(Mode::Bare { listen }) => bare::run(listen).await,
        None => run(cli.args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the cases asked for, in the report's order, and prints the report as markdown.
async fn run(args: Args) -> Result<()> {
    process::use_storywire_binary(args.storywire.clone())?;
    let runs = args.runs.max(1);
    // The NATS anchor runs beside the others when there is a nats-server to run; without one the
    // report says so and goes on with the two gRPC servers.
    let nats = storywire_testkit::nats::find_nats_server(args.nats_server.clone())
        .map_err(error::Error::from)
        .and_then(process::use_nats_binary);
    let mut targets = vec![Target::Storywire, Target::Bare];
    match &nats {
        Ok(()) => targets.push(Target::Nats),
        Err(error) => eprintln!("no NATS anchor: {error}"),
    }
    if !args.servers.is_empty() {
        targets.retain(|target| args.servers.contains(target));
        if targets.len() < args.servers.len() {
            return Err("--servers names NATS, but there is no nats-server to run".into());
        }
    }
    if args.subscribers.iter().any(|&s| s > 0) {
        let counts = &args.subscribers;
        matrix::fan_out_table(counts, &args.rates, args.connections, &targets, runs).await?;
        if let Err(error) = &nats {
            println!("\n(No NATS column: {error}.)");
        }
    }
    if args.consumers.consumers {
        consumers::run(&args.consumers, runs).await?;
    }
    if args.webhooks.webhooks {
        webhooks::run(&args.webhooks, runs).await?;
    }
    if args.readers.readers {
        readers::run(&args.readers, &targets, runs).await?;
    }
    if args.sse.sse_readers {
        sse::run(&args.sse, runs).await?;
    }
    if args.flood.flood {
        flood::run(&args.flood, runs).await?;
    }
    if args.unary_events > 0 {
        println!(
            "\n{}",
            matrix::publish_paths(args.unary_events, runs).await?
        );
    }
    if args.durability_events > 0 {
        println!(
            "\n{}",
            matrix::durability(args.durability_events, runs).await?
        );
    }
    if args.catch_up_events > 0 {
        println!("\n{}", matrix::catch_up(args.catch_up_events, runs).await?);
    }
    if args.idle_subscribers > 0 {
        let table = matrix::idle(args.idle_subscribers, args.connections, runs).await?;
        println!("\n{table}");
    }
    Ok(())
}

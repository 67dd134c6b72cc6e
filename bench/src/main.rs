//! `storywire-bench`: the load generator behind docs/benchmarks.md.
//!
//! Every case starts a fresh server process on loopback (the `storywire` binary, or the bare
//! tonic baseline that this binary serves in its `bare` mode), drives it over real sockets, reads
//! its CPU time and memory from /proc, and runs several times; the report gives the median and
//! the spread, and for each storywire figure its ratio to the baseline measured in the same run.
//! Where a nats-server is at hand, core NATS runs beside them as an anchor: what a mature broker
//! needs to fan the same bytes out.
//!
//! The modules, from the command line down to the sockets:
//!
//! - [`matrix`]: the arguments and the standard cases: fan-out, publish paths, durability,
//!   catch-up, idle memory.
//! - [`abuse`]: misbehaving clients against a server while a well-behaved one measures.
//! - [`heavy_reads`]: history rebuilt by GetStory and snapshots never read, against a publisher
//!   and a subscriber.
//! - [`cluster`]: the JetStream journal of `serve --nats` beside the others: publishing,
//!   replication lag, a new node's catch-up, fan-out on one node.
//! - [`readers`]: connections per reader: each subscriber on a connection of its own.
//! - [`storm`]: the reconnect storm: a durable server restarts under every reader,
//!   and all of them come back at once and resume 1,000 events back while a desk publishes.
//! - [`burst`]: one burst to many readers: one PublishStream of updates to every
//!   reader on a connection of its own.
//! - [`flood`]: one address floods the HTTP face with silent, slow and stalled connections while
//!   readers from other addresses read a story.
//! - [`sse`]: Server-Sent Event readers, each on a connection of its own, against nginx+nchan.
//! - [`nchan`]: the nginx+nchan anchor: a fresh nginx per run, its publisher's side.
//! - [`anchor`]: the NATS anchor's client side: the same events over core NATS publish/subscribe.
//! - [`report`]: medians, spreads and ratios as the report's markdown cells.
//! - [`process`]: a server under test in its own process, its CPU time and memory from /proc.
//! - [`load`]: the client side: connections, publishers, subscribers and what each saw.
//! - [`bare`]: the bare tonic baseline server.

mod abuse;
mod anchor;
mod bare;
mod burst;
mod cluster;
mod error;
mod flood;
mod heavy_reads;
mod load;
mod matrix;
mod nchan;
mod process;
mod readers;
mod report;
mod sse;
mod storm;

use std::{net::SocketAddr, process::ExitCode};

use clap::{Parser, Subcommand};

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
    args: matrix::Args,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Some(Mode::Bare { listen }) => bare::run(listen).await,
        None => matrix::run(cli.args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

//! `storywire serve`: run the server until SIGINT or SIGTERM.

use std::{io::IsTerminal, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use super::CliError;
use crate::{clock::SystemClock, demo, log::EventLog, server};

/// Arguments of `storywire serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on.
    #[arg(long, env = "STORYWIRE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// How many events stay readable for catch-up and resumption; older ones are evicted (stories
    /// keep their current state).
    #[arg(long, env = "STORYWIRE_RETAIN_EVENTS", default_value_t = crate::log::DEFAULT_RETAIN_EVENTS,
          value_parser = at_least_one)]
    retain_events: usize,
    /// Open the demo story at start-up, then publish its later updates one every --demo-interval.
    #[arg(long)]
    demo: bool,
    /// Seconds between the demo's live updates.
    #[arg(long, default_value_t = demo::DEFAULT_INTERVAL.as_secs_f64(), requires = "demo")]
    demo_interval: f64,
}

/// Runs the server; returns when a shutdown signal has been handled and every stream has ended.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let shutdown = shutdown_signal().map_err(|e| format!("cannot watch SIGINT/SIGTERM: {e}"))?;
    let interval = Duration::try_from_secs_f64(args.demo_interval)
        .map_err(|e| format!("--demo-interval {}: {e}", args.demo_interval))?;
    let retain = args.retain_events;
    let log = Arc::new(EventLog::new(retain, Arc::new(SystemClock)));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, log_id = log.log_id(), retain_events = retain, "storywire listening");

    let replay = if args.demo {
        demo::publish_seed(&log)?;
        tracing::info!(
            head = log.head(),
            "demo: seed story published; try `storywire subscribe --from 1`"
        );
        let log = log.clone();
        Some(tokio::spawn(async move {
            if let Err(error) = demo::replay_live(&log, interval).await {
                tracing::error!(%error, "demo: replay stopped");
            }
        }))
    } else {
        None
    };

    server::run(listener, log, shutdown).await?;
    if let Some(replay) = replay {
        replay.abort();
    }
    tracing::info!("storywire stopped");
    Ok(ExitCode::SUCCESS)
}

/// Parses a count that must be at least 1.
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(e) => Err(e.to_string()),
    }
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and systemd send).
///
/// Both handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives right after the server says it is listening still shuts it down cleanly.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

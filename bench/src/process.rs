//! A server under test, in its own process so that its CPU time and memory can be read from
//! /proc apart from the load generator's.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::error::{Error, Result, failed};

/// How long a server may take to report its address before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The storywire server binary every case starts: set once, from the command line, before the
/// first case, so that the cases need not pass it down to every server they start.
static STORYWIRE_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Makes `path`, or else the `storywire` binary next to this executable (where cargo builds both
/// into the same target/release or target/debug), the server that [`Target::Storywire`] starts.
/// Fails if there is no such file, saying how to build it.
pub fn use_storywire_binary(path: Option<PathBuf>) -> Result<()> {
    let path = match path {
        Some(path) => path,
        None => {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            exe.with_file_name(format!("storywire{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        return failed!(
            "no storywire server binary at {}: build it beside the bench with `cargo build \
             --release --workspace`, or name one with --storywire PATH",
            path.display()
        );
    }
    STORYWIRE_BINARY
        .set(path)
        .map_err(|_| "the storywire binary was already chosen".into())
}

/// The nats-server binary [`Target::Nats`] starts: set once, before the first case that runs it.
static NATS_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Makes `path` the nats-server that [`Target::Nats`] starts.
pub fn use_nats_binary(path: PathBuf) -> Result<()> {
    NATS_BINARY
        .set(path)
        .map_err(|_| "the nats-server binary was already chosen".into())
}

/// The binary [`use_storywire_binary`] chose.
fn storywire_binary() -> Result<&'static Path> {
    STORYWIRE_BINARY
        .get()
        .map(PathBuf::as_path)
        .ok_or_else(|| "no storywire binary chosen before the first case".into())
}

/// Which server a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `storywire serve`.
    Storywire,
    /// The bare tonic baseline (`storywire-bench bare`, this binary in its other mode).
    Bare,
    /// Core NATS publish/subscribe (a plain `nats-server`, no JetStream): the anchor, what
    /// fanning small messages out to many connections costs a mature broker.
    Nats,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Target {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Storywire => "storywire",
            Self::Bare => "bare tonic",
            Self::Nats => "NATS",
        }
    }

    /// What the server writes on stderr just before its address, once it listens.
    fn listening_marker(self) -> &'static str {
        match self {
            Self::Storywire | Self::Bare => "listening address=",
            Self::Nats => "Listening for client connections on ",
        }
    }
}

/// A running server process on a loopback port. Killed when dropped.
pub struct ServerProcess {
    /// The child process; `kill_on_drop` ends it with the bench.
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its process id, for /proc.
    pid: u32,
    /// Which server it is.
    target: Target,
}

impl ServerProcess {
    /// Starts `target` on 127.0.0.1 with an ephemeral port and waits until it listens.
    pub async fn start(target: Target, retain_events: usize) -> Result<Self> {
        Self::start_with(target, retain_events, &[]).await
    }

    /// Like [`Self::start`], with more arguments for `storywire serve`.
    pub async fn start_with(
        target: Target,
        retain_events: usize,
        extra: &[String],
    ) -> Result<Self> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(target, any_port, retain_events, extra).await
    }

    /// Like [`Self::start_with`], listening on `listen`: a server restarted where its clients
    /// knew it (the NATS anchor always takes a port of its own).
    pub async fn start_on(
        target: Target,
        listen: SocketAddr,
        retain_events: usize,
        extra: &[String],
    ) -> Result<Self> {
        let listen = listen.to_string();
        let mut command = match target {
            Target::Storywire => {
                let mut command = Command::new(storywire_binary()?);
                command.args([
                    "serve",
                    "--listen",
                    &listen,
                    "--retain-events",
                    &retain_events.to_string(),
                ]);
                // The bench's thousands of readers stand for as many hosts but come from 253
                // loopback addresses, 2,000 to an address: no share per address, of connections
                // or of subscriptions, unless the case sets one.
                for flag in ["--max-connections-per-ip", "--max-subscribers-per-ip"] {
                    if !extra.iter().any(|arg| arg == flag) {
                        command.args([flag, "0"]);
                    }
                }
                command
            }
            Target::Bare => {
                let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
                let mut command = Command::new(exe);
                command.args(["bare", "--listen", &listen]);
                command
            }
            Target::Nats => {
                let binary = NATS_BINARY
                    .get()
                    .ok_or("no nats-server chosen before the first NATS case")?;
                let mut command = Command::new(binary);
                // Port -1: one the system picks, reported on stderr like the others'.
                command.args(["--addr", "127.0.0.1", "--port", "-1"]);
                storywire_testkit::process::die_with_parent(&mut command);
                command
            }
        };
        command.args(extra);
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("spawn server: {e}"))?;
        let pid = child.id().ok_or("server exited at once")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split(target.listening_marker()).nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    return address
                        .parse::<SocketAddr>()
                        .map_err(|e| Error::from(format!("{address:?}: {e}")));
                }
            }
            Err(Error::from("the server exited before listening"))
        })
        .await
        .map_err(|_| "the server did not report its address".to_owned())??;
        // Keep draining stderr, so the server never blocks on a full pipe, and pass on what it
        // says after start-up (warnings, errors, a panic) with the server's name.
        let name = target.name();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name} server] {line}");
            }
        });
        Ok(Self {
            child,
            address,
            pid,
            target,
        })
    }

    /// The server's URL: `http://` for the gRPC servers, `nats://` for NATS.
    pub fn url(&self) -> String {
        match self.target {
            Target::Nats => format!("nats://{}", self.address),
            Target::Storywire | Target::Bare => format!("http://{}", self.address),
        }
    }

    /// User plus system CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid)
    }

    /// The server's resident set size in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid)
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The resident set (`VmRSS:`) of process `pid` in bytes; 0 once it is gone, as a server stopped
/// under a figure has no more to add to it.
pub fn rss_of(pid: u32) -> u64 {
    storywire_testkit::process::status_bytes(pid, "VmRSS:").unwrap_or(0)
}

/// User plus system CPU seconds process `pid` has used so far; 0 once it is gone.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    storywire_testkit::process::cpu_time(pid).map_or(0.0, |cpu| cpu.as_secs_f64())
}

/// Descriptors the bench needs besides one per reader: the publisher, the runtime, the server's
/// pipe, stdio, and room to spare.
const SPARE_DESCRIPTORS: u64 = 256;
/// How long [`settle`] waits for the last run's sockets to be closed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Fails, saying why, if this process may not open `count` more sockets; raises its soft
/// open-files limit to the hard one first (the servers it starts inherit it).
pub fn room_for(count: usize) -> Result<()> {
    let limit = storywire::descriptors::raise_open_files_limit()
        .map_err(|e| format!("cannot raise the open-files limit: {e}"))?;
    let needed = count as u64 + SPARE_DESCRIPTORS;
    if needed > limit {
        return failed!(
            "{count} readers need {needed} open files in the bench (and as many in the server), \
             over the limit of {limit}: spreading them over several processes is not done yet"
        );
    }
    Ok(())
}

/// Descriptors this process holds.
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count())
}

/// Waits until this process holds no more than [`SPARE_DESCRIPTORS`] descriptors over
/// `before`, so that a run does not start while the last one's connections, closed by tasks of
/// their own, still hold descriptors; gives up, saying so, after [`SETTLE_TIMEOUT`].
pub async fn settle(before: usize) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while open_descriptors() > before + SPARE_DESCRIPTORS as usize {
        if tokio::time::Instant::now() > deadline {
            let now = open_descriptors();
            eprintln!("{now} descriptors still open after a run, {before} before it");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Makes the nats-server at hand the one [`super::Target::Nats`] starts; false, after saying
    /// so, if there is none (scripts/test installs one), so that the calling test can skip.
    pub(crate) fn nats_server_at_hand() -> bool {
        match storywire_testkit::nats::find_nats_server(None) {
            Ok(binary) => {
                // Another test may have chosen it first: the same binary either way.
                let _ = super::use_nats_binary(binary);
                true
            }
            Err(error) => {
                eprintln!("skipped: {error}");
                false
            }
        }
    }
}

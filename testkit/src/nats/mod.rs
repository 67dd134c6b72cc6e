//! A real NATS JetStream cluster on loopback, for the tests of cluster mode and the bench's
//! cluster case: `n` nats-server processes routed into one cluster (or one alone), each with its
//! own file store, started and stopped, killed and restarted, and watched through their HTTP
//! monitoring endpoints.
//!
//! Every process is killed when its [`Cluster`] drops, and dies with its parent besides, so a
//! failing test leaves nothing running; each writes to a log file in the cluster's temporary
//! directory, which is kept, and named, when the test fails. Every wait of a test is bounded by
//! [`within`]; [`Cluster::launch`], which the bench calls, returns an error instead of panicking.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::AtomicUsize,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::{
    PATIENCE,
    process::{die_with_parent, signal},
    within,
};

mod binary;
mod config;
mod monitor;

pub use binary::{PINNED_VERSION, find_nats_server, nats_server};

/// The name every cluster shares; each cluster has its own ports, so names never meet.
const CLUSTER_NAME: &str = "storywire";

/// How often a wait reads the monitoring endpoints again. The servers announce nothing a test can
/// await, so the waits poll; this is short next to an election (a fraction of a second at start,
/// several seconds after a leader is killed) and long enough that three servers' endpoints are
/// not read in a busy loop.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How many times [`Cluster::start`] picks new ports when a server finds one of its ports taken:
/// ports are chosen free, then given up before the servers bind them, so another process may take
/// one in between; twice in a row is already unlikely.
const START_ATTEMPTS: usize = 3;

/// How long dropping a [`Cluster`] waits for the processes it killed to be reaped. SIGKILL cannot
/// be ignored, so this is only a bound in case the kernel is slow.
const REAP_PATIENCE: Duration = Duration::from_secs(5);

/// How many lines of each server's log a failing test prints.
const LOG_TAIL_LINES: usize = 40;

/// Distinguishes the temporary directories of the clusters one test binary starts.
static CLUSTERS_STARTED: AtomicUsize = AtomicUsize::new(0);

/// A JetStream cluster of nats-server processes on 127.0.0.1, indexed from 0 (server `n1` is
/// index 0).
///
/// Dropping it kills every process with SIGKILL and reaps it, then removes the temporary
/// directory, unless the thread is panicking: then the directory is kept and each server's log
/// path and last lines are printed.
pub struct Cluster {
    /// The temporary directory holding every server's config, store and log.
    dir: PathBuf,
    /// The servers, in index order.
    servers: Vec<Server>,
}

/// One nats-server of a [`Cluster`]: its fixed identity and, while it runs, its process.
struct Server {
    /// Its server name, `n1`, `n2`, ...: the name JetStream reports as a leader.
    name: String,
    /// Its loopback ports, kept across restarts.
    ports: Ports,
    /// Its config file, written once; a restart reads the same one.
    config: PathBuf,
    /// The file its stdout and stderr are appended to, across restarts.
    log: PathBuf,
    /// The running process; `None` once it was killed or stopped (and reaped).
    process: Option<Child>,
    /// Whether it is stopped with SIGSTOP: its process lives, holding every connection open, and
    /// answers nothing, its monitoring port included.
    paused: bool,
}

/// The three loopback ports of a server.
#[derive(Debug, Clone, Copy)]
struct Ports {
    /// Where clients connect (`nats://`).
    client: u16,
    /// Where the other servers route to it.
    cluster: u16,
    /// The HTTP monitoring endpoint (`/healthz`, `/jsz`).
    http: u16,
}

/// When JetStream writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `sync_interval: always`: each write is fsynced before it is acknowledged, as a log of
    /// record needs (docs/cluster.md) and the cluster node's durability claim assumes.
    Always,
    /// JetStream's default, an fsync every two minutes: for filling a stream fast when only
    /// reading it is measured.
    Default,
}

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory, config or log file could not be made, or a process not started.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A server exited while it should have been running.
    #[error("nats-server {name} exited with {status} (log: {log}):\n{tail}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        log: String,
        tail: String,
    },
    /// A server found one of its ports taken by another process, `START_ATTEMPTS` times.
    #[error("nats-server found a port taken {START_ATTEMPTS} times in a row")]
    PortsTaken,
    /// The cluster had not formed within the time given.
    #[error("the JetStream cluster had not formed within {seconds} s:\n{logs}")]
    NotFormed { seconds: u64, logs: String },
}

/// Why a server process exited while a wait expected it to run.
#[derive(Debug)]
enum Exited {
    /// It found one of its ports taken by another process: starting again on new ports helps.
    PortClash,
    /// Anything else: the test or the bench fails with it.
    Failed(Error),
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortClash => f.write_str("a nats-server found one of its ports taken"),
            Self::Failed(error) => error.fmt(f),
        }
    }
}

/// [`Error::Io`] for `what`.
fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.to_string(),
        source,
    }
}

impl Cluster {
    /// Starts `n` nats-servers as one JetStream cluster and waits until every one is healthy, a
    /// JetStream meta leader is elected, and the leader counts every other server current.
    ///
    /// The ports are chosen free; if a server finds one taken by the time it binds, the whole
    /// cluster starts again on new ports. With `n == 1` the server runs JetStream without a
    /// cluster.
    pub async fn start(n: usize) -> Self {
        Self::launch(nats_server(), n, Sync::Always, PATIENCE)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Cluster::start`] with `binary` and `sync`, waiting at most `patience` for the cluster to
    /// form, and returning an error (with the servers' logs) where it would panic.
    pub async fn launch(
        binary: &Path,
        n: usize,
        sync: Sync,
        patience: Duration,
    ) -> Result<Self, Error> {
        assert!(n >= 1, "a cluster of at least one server");
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::configure(n, sync)?;
            for index in 0..n {
                cluster.try_spawn(binary, index)?;
            }
            match tokio::time::timeout(patience, cluster.until_settled()).await {
                Ok(Ok(())) => return Ok(cluster),
                Ok(Err(Exited::PortClash)) => {
                    eprintln!("nats-server found a port taken (attempt {attempt}); new ports");
                }
                Ok(Err(Exited::Failed(error))) => return Err(error),
                Err(_) => {
                    let (seconds, logs) = (patience.as_secs(), cluster.log_tails());
                    return Err(Error::NotFormed { seconds, logs });
                }
            }
        }
        Err(Error::PortsTaken)
    }

    /// How many servers the cluster has, running or not.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a cluster has at least one server"
    )]
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Every server's client URL, comma-separated, as `storywire serve --nats` takes them.
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|index| self.url(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `index`'s client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[index].ports.client)
    }

    /// Server `index`'s name (`n1` for index 0), as JetStream names leaders and peers.
    pub fn name(&self, index: usize) -> &str {
        &self.servers[index].name
    }

    /// Whether server `index` is running (it has not been killed or stopped since it started).
    pub fn is_running(&self, index: usize) -> bool {
        self.servers[index].process.is_some()
    }

    /// Server `index`'s process id. Panics if it is not running.
    pub fn pid(&self, index: usize) -> u32 {
        let server = &self.servers[index];
        server
            .process
            .as_ref()
            .and_then(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", server.name))
    }

    /// Kills server `index` with SIGKILL (kill -9: it writes nothing more, flushes nothing) and
    /// reaps it.
    pub async fn kill(&mut self, index: usize) {
        self.signal_and_reap(index, libc::SIGKILL).await;
    }

    /// Stops server `index` with SIGTERM, as a service manager does, and waits until it has
    /// exited.
    pub async fn stop(&mut self, index: usize) {
        self.signal_and_reap(index, libc::SIGTERM).await;
    }

    /// Pauses server `index` with SIGSTOP: its connections stay open, and nothing on them is
    /// answered, as when the server is cut off from everyone but the kernel still holds its
    /// sockets.
    pub fn pause(&mut self, index: usize) {
        self.send(index, libc::SIGSTOP);
        self.servers[index].paused = true;
    }

    /// Resumes server `index`, paused before, with SIGCONT.
    pub fn resume(&mut self, index: usize) {
        self.send(index, libc::SIGCONT);
        self.servers[index].paused = false;
    }

    /// Starts server `index` again, killed or stopped before, with the same ports, config and
    /// store, and waits until it is back in the cluster: healthy, counted current by the meta
    /// leader, and counted current by the leader of every stream it holds (caught up).
    pub async fn restart(&mut self, index: usize) {
        assert!(
            !self.is_running(index),
            "{} is still running",
            self.name(index)
        );
        self.try_spawn(nats_server(), index)
            .unwrap_or_else(|error| panic!("{error}"));
        let what = format!("{} to rejoin the cluster", self.name(index));
        self.settle(&what).await;
    }

    /// Starts server `index`'s process from its config, appending its output to its log.
    fn try_spawn(&mut self, binary: &Path, index: usize) -> Result<(), Error> {
        let server = &mut self.servers[index];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .map_err(io(server.log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io(server.log.display()))?)
            .stderr(log)
            // A backstop only: the drop below kills and reaps every server itself.
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().map_err(io(binary.display()))?;
        server.process = Some(child);
        Ok(())
    }

    /// Sends `signal` to server `index` and waits until it has exited.
    async fn signal_and_reap(&mut self, index: usize, signal: libc::c_int) {
        self.send(index, signal);
        self.reap(index).await;
    }

    /// Sends `signal` to running server `index`.
    fn send(&self, index: usize, sig: libc::c_int) {
        signal(self.pid(index), sig)
            .unwrap_or_else(|e| panic!("signal {sig} to {}: {e}", self.name(index)));
    }

    /// Waits until server `index`, already signalled, has exited, and forgets its process.
    async fn reap(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let what = format!("{} to exit (log: {})", server.name, server.log.display());
        let mut process = server.process.take().expect("a running server");
        within(&what, process.wait())
            .await
            .expect("wait for nats-server");
    }

    /// Checks that no server thought running has exited; a port clash is reported for a retry,
    /// any other exit as a failure with the server's log.
    fn check_running(&mut self) -> Result<(), Exited> {
        for server in &mut self.servers {
            let Some(process) = server.process.as_mut() else {
                continue;
            };
            let status = match process.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status,
                Err(source) => return Err(Exited::Failed(io("poll nats-server")(source))),
            };
            server.process = None;
            let log = fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("address already in use") {
                return Err(Exited::PortClash);
            }
            return Err(Exited::Failed(Error::Exited {
                name: server.name.clone(),
                status,
                log: server.log.display().to_string(),
                tail: tail(&log),
            }));
        }
        Ok(())
    }

    /// Like [`Cluster::check_running`], for waits where even a port clash is a failure.
    fn expect_running(&mut self) {
        if let Err(exited) = self.check_running() {
            panic!("{exited} (logs: {})", self.dir.display());
        }
    }

    /// Each server's log path and last lines.
    fn log_tails(&self) -> String {
        let tails = self.servers.iter().map(|server| {
            let log = fs::read_to_string(&server.log).unwrap_or_default();
            format!(
                "--- {} log, kept at {}:\n{}",
                server.name,
                server.log.display(),
                tail(&log)
            )
        });
        tails.collect::<Vec<_>>().join("\n")
    }

    /// The indexes of the running servers that are not paused.
    fn answering(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.is_running(i) && !self.servers[i].paused)
            .collect()
    }

    /// The index of the server named `name`.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|server| server.name == name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let Some(mut process) = server.process.take() else {
                continue;
            };
            // start_kill sends SIGKILL to the child's pid.
            let _ = process.start_kill();
            // Reap it before the directory goes, so no server outlives its store. Drop cannot
            // await, and SIGKILL leaves nothing to wait on but the kernel, so this polls.
            let deadline = Instant::now() + REAP_PATIENCE;
            while matches!(process.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

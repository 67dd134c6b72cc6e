//! nginx with the nchan module: the Server-Sent Events anchor. Many sites put it in front of live
//! pages; Debian packages it (`nginx-light libnginx-mod-nchan`).
//!
//! Each run starts a fresh nginx with a configuration of its own under a temporary directory,
//! bound to 127.0.0.1 only, with one channel: subscribers read it as EventSource at `/sub`
//! (nchan answers only requests that send `Accept: text/event-stream` there), the publisher
//! POSTs each message to `/pub`. Its CPU time and memory are summed over the master process and
//! its workers; it is stopped by the master's PID.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
    time::Instant,
};

use crate::error::{Result, failed};
use crate::process::{cpu_seconds_of, rss_of};

/// The nginx binary Debian's `nginx-light` installs.
const NGINX: &str = "/usr/sbin/nginx";
/// The nchan module Debian's `libnginx-mod-nchan` installs.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long nginx may take to exit after SIGQUIT (a graceful stop) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx. Killed (master and, through it, the workers) when dropped.
pub struct Nginx {
    /// The master process.
    master: Child,
    /// Its PID, for /proc and signals.
    pid: u32,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its configuration, pid file, logs and temp paths; removed when it stops.
    dir: PathBuf,
}

/// Why nchan cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    [NGINX, NCHAN_MODULE]
        .iter()
        .find(|path| !std::path::Path::new(path).exists())
        .map(|path| {
            format!("{path} is missing (as root: apt-get install nginx-light libnginx-mod-nchan)")
        })
}

impl Nginx {
    /// Starts nginx with nchan on a free loopback port, with `workers` worker processes.
    pub async fn start(workers: usize) -> Result<Self> {
        if let Some(missing) = missing() {
            return Err(missing.into());
        }
        let port = storywire_testkit::net::free_ports(1)?[0];
        let dir =
            std::env::temp_dir().join(format!("storywire-bench-nchan-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = dir.display();
        let config = format!(
            r#"load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 65536; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /sub {{ nchan_subscriber eventsource; nchan_channel_id story; }}
    location = /pub {{ nchan_publisher; nchan_channel_id story; nchan_message_buffer_length 64; }}
  }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut command = Command::new(NGINX);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let master = command.spawn().map_err(|e| format!("spawn nginx: {e}"))?;
        let pid = master.id().ok_or("nginx exited at once")?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let nginx = Self {
            master,
            pid,
            address,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(address).await.is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                return failed!("nginx did not listen on {address}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent is the second field after the parenthesised command name.
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if parent == Some(self.pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// User plus system CPU seconds of the master and its workers so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(cpu_seconds_of).sum()
    }

    /// The resident set sizes of the master and its workers, summed, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.pids().into_iter().map(rss_of).sum()
    }

    /// Stops nginx by its master's PID (SIGQUIT: workers finish, then exit), killing it if it
    /// has not exited in time, and removes its directory.
    pub async fn stop(mut self) {
        let _ = storywire_testkit::process::signal(self.pid, libc::SIGQUIT);
        if tokio::time::timeout(STOP_TIMEOUT, self.master.wait())
            .await
            .is_err()
        {
            let _ = self.master.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The publisher's side: messages POSTed to `/pub` on one kept-alive connection.
pub struct Publisher {
    connection: BufReader<TcpStream>,
}

impl Publisher {
    /// Connects to nginx at `address`.
    pub async fn connect(address: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect to nginx: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            connection: BufReader::new(stream),
        })
    }

    /// Publishes `body` to the channel and waits for nchan's answer.
    pub async fn publish(&mut self, body: &[u8]) -> Result<()> {
        let head = format!(
            "POST /pub HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.connection.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut status = String::new();
        self.connection.read_line(&mut status).await?;
        if !(status.contains(" 201 ") || status.contains(" 202 ")) {
            return failed!("nchan refused a publish: {}", status.trim());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.connection.read_line(&mut line).await?;
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().map_err(|_| "a bad content-length")?;
            }
        }
        let mut answer = vec![0; length];
        self.connection.read_exact(&mut answer).await?;
        Ok(())
    }
}

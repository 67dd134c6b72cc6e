//! Listening at the scale of a reconnect storm: a listen backlog as deep as the system allows,
//! and an accept loop that pauses, rather than spins, while the process is out of descriptors
//! ([`crate::descriptors`] raises the open-files limit).
//!
//! A restarted node has every reader back at once: ten thousand connections within a tenth of a
//! second. Each needs a slot in the backlog until it is accepted, and a descriptor after.

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::metrics::AcceptFailures;

/// The listen backlog asked for: how many connections the kernel completes and holds before the
/// server accepts them. Linux holds it to `net.core.somaxconn` (4,096 by default since 5.4),
/// which is what Go servers such as nats-server ask for. tokio's `TcpListener::bind` asks for
/// 1,024, which 10,000 readers reconnecting at once overflow: one reconnect storm had 2,110
/// connection attempts dropped by the kernel, each tried again by its client a second later
/// (docs/benchmarks/2026-11-30-reconnect-storm-and-burst.md, "A backlog for the storm").
pub const LISTEN_BACKLOG: u32 = 65_535;

/// The first pause after an accept fails for want of a resource; it doubles up to
/// [`LONGEST_PAUSE`] while accepting keeps failing.
const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between two tries to accept while the process is out of a resource.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Listens on `address` with a backlog of [`LISTEN_BACKLOG`] (held to what the system allows).
///
/// Like tokio's own `bind`, it sets SO_REUSEADDR, so that a restarted server can listen at once
/// on a port whose old connections are still in TIME_WAIT.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The backlog [`bind`] gets: [`LISTEN_BACKLOG`], held to `net.core.somaxconn` where
/// `/proc/sys/net/core/somaxconn` says what that is (Linux); elsewhere what was asked for, which
/// the system may hold lower.
pub fn granted_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or(LISTEN_BACKLOG, |most| most.min(LISTEN_BACKLOG))
}

/// A listener's connections as the server takes them: each configured by `configure_socket`,
/// and no failure to accept ever returned.
///
/// A failure that belongs to one connection (reset or aborted before it was accepted) is skipped.
/// Any other, such as running out of descriptors (EMFILE, ENFILE) or memory, would fail again at
/// once while the connection waits in the backlog: tokio reports it on every poll, and tonic,
/// which only traces an accept error and polls again, would spin a core on it for as long as it
/// lasts, saying nothing. Here accepting pauses instead, 10 ms at first and doubling up to 1 s,
/// with a warning when it starts failing and a note when it accepts again; meanwhile new
/// connections wait in the backlog. Both faces take their connections through it
/// ([`crate::connections`]).
#[derive(Debug)]
pub struct Accepting {
    /// Where connections come from.
    listener: TcpListener,
    /// The idle time before TCP keepalive probes a connection.
    keepalive: Duration,
    /// Tries that failed since the last connection accepted.
    failed: u64,
    /// Every try that failed for want of a resource, for `/metrics`.
    failures: AcceptFailures,
    /// How long to wait after the next failure.
    pause: Duration,
}

impl Accepting {
    /// Takes the connections of `listener`, with TCP keepalive after `keepalive` idle, counting
    /// failed tries in `failures`.
    pub fn new(listener: TcpListener, keepalive: Duration, failures: AcceptFailures) -> Self {
        Self {
            listener,
            keepalive,
            failed: 0,
            failures,
            pause: FIRST_PAUSE,
        }
    }

    /// The next connection and its peer's address, waiting for as long as it takes.
    pub async fn next_connection(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    if self.failed > 0 {
                        tracing::info!(failed = self.failed, "accepting connections again");
                        self.failed = 0;
                        self.pause = FIRST_PAUSE;
                    }
                    configure_socket(&tcp, self.keepalive);
                    return (tcp, peer);
                }
                Err(error) if belongs_to_one_connection(&error) => {
                    tracing::debug!(%error, "a connection ended before it was accepted");
                }
                Err(error) => {
                    if self.failed == 0 {
                        tracing::warn!(
                            %error,
                            "cannot accept connections; new ones wait in the backlog and are \
                             tried again after pauses of up to 1 s. Out of open files? Raise the \
                             limit (`ulimit -n`, systemd's LimitNOFILE)"
                        );
                    }
                    self.failed += 1;
                    self.failures.failed();
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(LONGEST_PAUSE);
                }
            }
        }
    }
}

/// Whether an accept failed because of the one connection it was accepting, so that the next
/// can be accepted at once.
fn belongs_to_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Sets the options every accepted connection needs, on either face.
///
/// - TCP_NODELAY: a gRPC message or a Server-Sent Event is often one small write; with Nagle's
///   algorithm on, it would wait for the peer's delayed ACK (up to 40 ms on Linux) whenever an
///   earlier one is unacked.
/// - TCP keepalive after `idle` without traffic: the kernel notices a peer that vanished even
///   where HTTP/2 pings cannot be sent (a connection the server has stopped reading, or any
///   HTTP/1.1 one).
///
/// A failure is logged and the connection served anyway: it is slower, not wrong.
fn configure_socket(tcp: &TcpStream, idle: Duration) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(idle);
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::warn!(%error, "cannot set TCP keepalive on an accepted connection");
    }
}

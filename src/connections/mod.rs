//! The lifecycle of every connection, on both faces (the gRPC port and the HTTP face): how long
//! it may take to send a request head, how long it may sit idle, how many one address may hold,
//! and which to close first when the server runs short.
//!
//! The rules are those of the servers that live on the internet: nginx's
//! `client_header_timeout`, `keepalive_timeout` and `limit_conn` per address, Go's
//! `ReadHeaderTimeout` and `IdleTimeout`, and Envoy's overload manager, which sheds the
//! connections that cost least to lose as a resource nears its limit.
//!
//! - Every connection is registered in [`Connections`] when accepted (`serve` runs the accept
//!   loop and each connection's task for both faces) and counted against its client's address.
//! - A connection that has not completed a request head within `--header-timeout` of being
//!   accepted (or, on HTTP/1.1, of starting its next request head) is closed; so is one with
//!   nothing in flight for `--idle-timeout`. One sweeper task checks every open connection once
//!   a second, which costs far less than a timer per connection.
//! - Past `--max-connections-per-ip` from one address, or `--max-connections` in all, a new
//!   connection is closed at once. From a high watermark of `--max-connections` on, the
//!   connections that have not completed a request are closed first, then the longest idle; a
//!   connection with a request or stream in flight (a reader that reads) never is.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::metrics::ConnectionMetrics;
pub use crate::metrics::{CloseReason, Face, State};

mod connection;
mod proxy;
mod request;
mod serve;

pub(crate) use connection::{Connection, InFlight, graceful};
pub use proxy::{TrustedProxies, parse_cidr};
pub(crate) use serve::{FaceConfig, serve};

/// The address a request counts against for the per-address limits (connections, subscribers):
/// the peer's own, or, when the peer is a trusted proxy (`serve --trusted-proxy`), the client
/// address it forwarded. The serving loop puts it in every request's extensions, on both faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

/// Seconds a connection may take to send a complete request head (`--header-timeout`): nginx's
/// `client_header_timeout` default is 60 s, Go servers commonly set 5-10 s. A browser or a gRPC
/// client sends its head in one round trip; 10 s leaves room for a phone on a bad network and
/// holds a silent connection's descriptor only that long.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds a connection with nothing in flight stays open (`--idle-timeout`): long enough that a
/// live page's next fetch, or a client's next call, reuses it (browsers keep idle connections
/// for 300 s at most, and a reader reconnecting after one story usually comes back within a
/// minute or two), short enough that idle connections do not pile up; Go's `IdleTimeout` and
/// Envoy's `idle_timeout` are commonly set between 60 and 300 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections one address may hold at once, across both faces (`--max-connections-per-ip`).
/// One reader needs one (HTTP/2, gRPC) or up to six (HTTP/1.1 in a browser); an office or a
/// carrier-grade NAT puts a few hundred readers behind one address. 256 lets such an address in
/// and keeps any one host to a small share of the default `--max-connections` (thousands).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

/// Descriptors kept back from `--max-connections` when it is derived from the open-files limit:
/// the listeners, the runtime's own, the write-ahead log's segments, the NATS connection, a
/// scrape of `/proc/self/fd`, plus a twentieth of the limit, so that a full house of
/// connections never makes the server itself fail to open a file.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The share of `--max-connections` from which the server sheds connections that cost least to
/// lose, and the share it sheds down to: Envoy's overload manager acts from 90% of a resource.
const HIGH_WATERMARK: f64 = 0.90;
/// See [`HIGH_WATERMARK`]: shedding in one batch down to this share, so that a flood does not
/// cost a scan of every connection for each new one it opens.
const LOW_WATERMARK: f64 = 0.80;

/// How often the sweeper checks every connection's deadlines. A connection is closed at most
/// this long after its deadline passed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// `--max-connections` by default: the open-files limit less what the server keeps for itself,
/// and at least half the limit (a limit too small for the reserve leaves half to connections).
pub fn default_max_connections(open_files_limit: u64) -> usize {
    let reserved = RESERVED_DESCRIPTORS + open_files_limit / 20;
    let most = open_files_limit
        .saturating_sub(reserved)
        .max(open_files_limit / 2)
        .max(1);
    usize::try_from(most).unwrap_or(usize::MAX)
}

/// The rules every connection lives by.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// A connection must complete a request head within this of being accepted (TLS handshake
    /// included), and on HTTP/1.1 within this of starting each next one.
    pub header_timeout: Duration,
    /// A connection with no request or stream in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections over both faces; a new one past it is closed at once.
    pub max_connections: usize,
    /// Open connections from one client address over both faces; 0: no limit.
    pub max_connections_per_ip: usize,
    /// The peers whose `Forwarded` / `X-Forwarded-For` headers name the client.
    pub trusted_proxies: TrustedProxies,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let limit = crate::descriptors::open_files_limit().unwrap_or(1024);
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(limit),
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Every open connection on both faces, and the counts the limits are checked against. Shared by
/// both faces' accept loops, every connection's task and the sweeper.
#[derive(Debug)]
pub struct Connections {
    /// The rules.
    lifecycle: Lifecycle,
    /// Open connections by state and face, closes by reason.
    metrics: ConnectionMetrics,
    /// The time every connection's clock counts from, in milliseconds.
    epoch: Instant,
    /// The registry; held only to admit, release or scan, never across an await.
    open: Mutex<Registry>,
}

/// What [`Connections`] guards with its lock.
#[derive(Debug, Default)]
struct Registry {
    /// Every open connection, by id.
    by_id: HashMap<u64, Arc<Connection>>,
    /// Open connections by the address they count against.
    per_address: HashMap<IpAddr, usize>,
    /// The id the next connection gets.
    next_id: u64,
}

/// A connection refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused(pub CloseReason);

impl Connections {
    /// A registry for connections under `lifecycle`, counting in `metrics`, with its sweeper
    /// running until the returned handle's last clone is dropped.
    pub fn new(lifecycle: Lifecycle, metrics: ConnectionMetrics) -> Arc<Self> {
        let connections = Arc::new(Self {
            lifecycle,
            metrics,
            epoch: Instant::now(),
            open: Mutex::new(Registry::default()),
        });
        tokio::spawn(sweep(Arc::downgrade(&connections)));
        connections
    }

    /// The rules.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Admits a connection from `peer` on `face`, or says which limit refuses it (and counts
    /// that). From a trusted proxy it counts against no address until its first request names
    /// the client.
    pub(crate) fn admit(
        self: &Arc<Self>,
        face: Face,
        peer: SocketAddr,
    ) -> Result<Arc<Connection>, Refused> {
        let counted = (!self.lifecycle.trusted_proxies.contains(peer.ip())).then_some(peer.ip());
        let mut shed = Vec::new();
        let connection = {
            let mut open = self.open.lock().expect("connections lock poisoned");
            if let Some(address) = counted
                && self.over_address_limit(&open, address)
            {
                drop(open);
                return Err(self.refuse(face, CloseReason::PerAddressLimit));
            }
            let mut staying = open.by_id.len();
            if staying >= high_watermark(self.lifecycle.max_connections) {
                let (victims, closing) = self.shed_candidates(&open);
                staying -= closing + victims.len();
                shed = victims;
            }
            if staying >= self.lifecycle.max_connections {
                drop(open);
                return Err(self.refuse(face, CloseReason::TotalLimit));
            }
            let id = open.next_id;
            open.next_id += 1;
            let connection = Arc::new(Connection {
                id,
                face,
                peer,
                accepted_ms: self.now_ms(),
                counted: Mutex::new(counted),
                state: AtomicU8::new(State::Awaiting as u8),
                in_flight: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(0),
                head_started_ms: AtomicU64::new(0),
                http1: AtomicBool::new(false),
                released: Mutex::new(false),
                closing: AtomicU8::new(0),
                close: Notify::new(),
                connections: Arc::downgrade(self),
            });
            if let Some(address) = counted {
                *open.per_address.entry(address).or_insert(0) += 1;
            }
            open.by_id.insert(id, connection.clone());
            connection
        };
        self.metrics.opened(face, State::Awaiting);
        for victim in shed {
            victim.close(CloseReason::Shed);
        }
        Ok(connection)
    }

    fn over_address_limit(&self, open: &Registry, address: IpAddr) -> bool {
        let max = self.lifecycle.max_connections_per_ip;
        max > 0 && open.per_address.get(&address).copied().unwrap_or(0) >= max
    }

    fn refuse(&self, face: Face, reason: CloseReason) -> Refused {
        self.metrics.closed(face, reason);
        Refused(reason)
    }

    /// The connections to close to get from the high watermark down to the low one: first those
    /// that have not completed a request, oldest first, then the idle ones, longest idle first.
    /// Never one with something in flight. Those already closing count as gone (their tasks
    /// leave the registry a moment later), so a burst of accepts does not shed twice for them.
    /// Returns them, and how many were already closing.
    fn shed_candidates(&self, open: &Registry) -> (Vec<Arc<Connection>>, usize) {
        let mut closing = 0;
        let mut awaiting = Vec::new();
        let mut idle = Vec::new();
        for connection in open.by_id.values() {
            if connection.closing.load(Ordering::Relaxed) != 0 {
                closing += 1;
                continue;
            }
            match connection.state() {
                State::Awaiting => awaiting.push(connection.clone()),
                State::Idle => idle.push(connection.clone()),
                State::Active => {}
            }
        }
        let staying = open.by_id.len() - closing;
        let target = low_watermark(self.lifecycle.max_connections);
        if staying < high_watermark(self.lifecycle.max_connections) {
            return (Vec::new(), closing);
        }
        let excess = staying.saturating_sub(target);
        awaiting.sort_by_key(|c| c.accepted_ms);
        idle.sort_by_key(|c| c.idle_since_ms.load(Ordering::Relaxed));
        let shed = awaiting.into_iter().chain(idle).take(excess).collect();
        (shed, closing)
    }

    /// Counts a trusted proxy's connection against the client its first request names, or says
    /// that client's address already holds its limit.
    pub(crate) fn count_forwarded(
        &self,
        connection: &Connection,
        client: IpAddr,
    ) -> Result<(), Refused> {
        let mut open = self.open.lock().expect("connections lock poisoned");
        let mut counted = connection.counted.lock().expect("connection lock poisoned");
        if counted.is_some() || !open.by_id.contains_key(&connection.id) {
            return Ok(());
        }
        if self.over_address_limit(&open, client) {
            drop(counted);
            drop(open);
            return Err(self.refuse(connection.face, CloseReason::PerAddressLimit));
        }
        *open.per_address.entry(client).or_insert(0) += 1;
        *counted = Some(client);
        Ok(())
    }

    /// Forgets a connection whose task has ended.
    pub(crate) fn release(&self, connection: &Connection) {
        let mut open = self.open.lock().expect("connections lock poisoned");
        if open.by_id.remove(&connection.id).is_none() {
            return;
        }
        if let Some(address) = connection
            .counted
            .lock()
            .expect("connection lock poisoned")
            .take()
            && let Some(count) = open.per_address.get_mut(&address)
        {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&address);
            }
        }
        drop(open);
        let mut released = connection
            .released
            .lock()
            .expect("connection lock poisoned");
        *released = true;
        self.metrics.left(connection.face, connection.state());
    }

    /// Asks every connection whose deadline has passed to close.
    fn sweep_once(&self) {
        let now = self.now_ms();
        let header = self.lifecycle.header_timeout.as_millis() as u64;
        let idle = self.lifecycle.idle_timeout.as_millis() as u64;
        let expired: Vec<(Arc<Connection>, CloseReason)> = {
            let open = self.open.lock().expect("connections lock poisoned");
            open.by_id
                .values()
                .filter_map(|c| {
                    c.expired(now, header, idle)
                        .map(|reason| (c.clone(), reason))
                })
                .collect()
        };
        for (connection, reason) in expired {
            connection.close(reason);
        }
    }

    /// How many connections are open, on both faces.
    pub fn open_count(&self) -> usize {
        self.open
            .lock()
            .expect("connections lock poisoned")
            .by_id
            .len()
    }
}

/// Checks the deadlines once a second until the registry is gone.
async fn sweep(connections: Weak<Connections>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(connections) = connections.upgrade() else {
            return;
        };
        connections.sweep_once();
    }
}

fn high_watermark(max: usize) -> usize {
    ((max as f64 * HIGH_WATERMARK) as usize).max(1)
}

fn low_watermark(max: usize) -> usize {
    (max as f64 * LOW_WATERMARK) as usize
}

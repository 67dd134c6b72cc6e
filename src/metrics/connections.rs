//! What the connections' lifecycle records ([`crate::connections`]): open connections by face
//! and state, and the connections the server closed, by face and reason, with their labels.

use std::sync::Arc;

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::exposition::Labeled;

/// Which listener a connection came in on: the `face` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// The gRPC port (gRPC and gRPC-Web).
    Grpc,
    /// The HTTP face (`--http`).
    Http,
}

impl Face {
    /// Both faces, in the order of their numbers.
    pub const ALL: [Self; 2] = [Self::Grpc, Self::Http];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// Where a connection stands: the `state` label of `storywire_connections_open` ([`crate::connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, no request head completed yet (a TLS handshake counts here).
    Awaiting,
    /// A request or stream in flight (a reader that reads is here).
    Active,
    /// Nothing in flight since its last request ended.
    Idle,
}

impl State {
    /// Every state, in the order of their numbers.
    pub const ALL: [Self; 3] = [Self::Awaiting, Self::Active, Self::Idle];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Awaiting => "awaiting_request",
            Self::Active => "active",
            Self::Idle => "idle",
        }
    }

    /// The state numbered `value` (the last for any larger).
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Awaiting,
            1 => Self::Active,
            _ => Self::Idle,
        }
    }
}

/// Why the server closed a connection: the `reason` label of `storywire_connections_closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `--header-timeout`.
    HeaderTimeout,
    /// Nothing in flight for `--idle-timeout`.
    Idle,
    /// Its address already held `--max-connections-per-ip`.
    PerAddressLimit,
    /// The server already held `--max-connections`.
    TotalLimit,
    /// Closed to make room, near `--max-connections`.
    Shed,
}

impl CloseReason {
    /// Every reason, in the order of their numbers.
    pub const ALL: [Self; 5] = [
        Self::HeaderTimeout,
        Self::Idle,
        Self::PerAddressLimit,
        Self::TotalLimit,
        Self::Shed,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
            Self::PerAddressLimit => "per_address_limit",
            Self::TotalLimit => "total_limit",
            Self::Shed => "shed",
        }
    }
}

/// The handles the connections' lifecycle records into. Cloning shares them.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Open connections, indexed `[face][state]`.
    open: Arc<[[Gauge; State::ALL.len()]; Face::ALL.len()]>,
    /// Closes by the server, indexed `[face][reason]`.
    closed: Arc<[[Counter; CloseReason::ALL.len()]; Face::ALL.len()]>,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        Self {
            open: Arc::new(Default::default()),
            closed: Arc::new(Default::default()),
        }
    }
}

impl ConnectionMetrics {
    /// A connection was accepted on `face`, in `state`.
    pub fn opened(&self, face: Face, state: State) {
        self.open[face as usize][state as usize].inc();
    }

    /// A connection on `face` moved from one state to another.
    pub fn moved(&self, face: Face, from: State, to: State) {
        self.open[face as usize][from as usize].dec();
        self.open[face as usize][to as usize].inc();
    }

    /// A connection on `face`, last in `state`, closed.
    pub fn left(&self, face: Face, state: State) {
        self.open[face as usize][state as usize].dec();
    }

    /// The server closed (or refused) a connection on `face` for `reason`.
    pub fn closed(&self, face: Face, reason: CloseReason) {
        self.closed[face as usize][reason as usize].inc();
    }

    pub(super) fn open_by(&self) -> Labeled<Gauge> {
        Labeled(
            Face::ALL
                .iter()
                .flat_map(|&face| State::ALL.iter().map(move |&state| (face, state)))
                .map(|(face, state)| {
                    let labels = vec![("face", face.label()), ("state", state.label())];
                    (labels, self.open[face as usize][state as usize].clone())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }

    pub(super) fn closed_by(&self) -> Labeled<Counter> {
        Labeled(
            Face::ALL
                .iter()
                .flat_map(|&face| CloseReason::ALL.iter().map(move |&reason| (face, reason)))
                .map(|(face, reason)| {
                    let labels = vec![("face", face.label()), ("reason", reason.label())];
                    (labels, self.closed[face as usize][reason as usize].clone())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }
}

//! One open connection's state: where it stands (awaiting a request, active, idle), its
//! deadlines' clocks, and the close the sweeper, the shedder or a request may ask of its task.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

use super::{CloseReason, Connections, Face, State};

/// One open connection's state, shared by its task, its requests and the sweeper.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Its key in the registry.
    pub(super) id: u64,
    /// The listener it came in on.
    pub(super) face: Face,
    /// The peer's address and port.
    pub(super) peer: SocketAddr,
    /// Milliseconds from the epoch when it was accepted.
    pub(super) accepted_ms: u64,
    /// The address it counts against for `--max-connections-per-ip`; `None` while a trusted
    /// proxy's connection has not yet named its client, and once released.
    pub(super) counted: Mutex<Option<IpAddr>>,
    /// [`State`] as a number.
    pub(super) state: AtomicU8,
    /// Requests and streams in flight.
    pub(super) in_flight: AtomicUsize,
    /// Milliseconds from the epoch when it last turned idle.
    pub(super) idle_since_ms: AtomicU64,
    /// Milliseconds from the epoch when bytes of a next request head began to arrive on an idle
    /// HTTP/1.1 connection; 0: none since it turned idle.
    pub(super) head_started_ms: AtomicU64,
    /// Whether its requests are HTTP/1.x, where a next request head is timed.
    pub(super) http1: AtomicBool,
    /// Whether it has left the registry, after which its state changes are no longer counted;
    /// state changes and the release take this lock, so the gauges see each connection leave once.
    pub(super) released: Mutex<bool>,
    /// Why the server wants it closed, as a [`CloseReason`] number + 1; 0: it does not.
    pub(super) closing: AtomicU8,
    /// Wakes its task when `closing` is set.
    pub(super) close: Notify,
    /// The registry, to update the gauges on state changes.
    pub(super) connections: Weak<Connections>,
}

/// Whether a connection closed for `reason` is worth a goodbye: an idle one gets HTTP/2's GOAWAY
/// (HTTP/1.1 closes at once when idle), and so does a trusted proxy's connection refused with a
/// response; one that never sent a request is dropped.
pub(crate) fn graceful(reason: CloseReason) -> bool {
    matches!(reason, CloseReason::Idle | CloseReason::PerAddressLimit)
}

impl Connection {
    /// Where it stands.
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The peer's address and port.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn set_state(&self, to: State) {
        // Under the lock that release takes too: hyper drives an HTTP/2 response body in a task
        // of its own, which may drop it (and so end a request) after the connection's task has
        // released the connection, and the gauges must not count a connection gone.
        let released = self.released.lock().expect("connection lock poisoned");
        let from = State::from_u8(self.state.swap(to as u8, Ordering::Relaxed));
        if from != to
            && !*released
            && let Some(connections) = self.connections.upgrade()
        {
            connections.metrics.moved(self.face, from, to);
        }
    }

    /// A request head arrived (`http1`: over HTTP/1.x); until the returned guard is dropped
    /// (its response body ended) it is in flight.
    pub(crate) fn request_started(self: &Arc<Self>, http1: bool) -> InFlight {
        self.http1.store(http1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.set_state(State::Active);
        InFlight(self.clone())
    }

    /// Bytes arrived: on an idle HTTP/1.1 connection they start the next request head, which
    /// must be complete within `--header-timeout`.
    pub(crate) fn bytes_arrived(&self) {
        if self.state() == State::Idle
            && self.http1.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
            && let Some(connections) = self.connections.upgrade()
        {
            self.head_started_ms
                .store(connections.now_ms().max(1), Ordering::Relaxed);
        }
    }

    /// Whether a deadline has passed at `now`, and which.
    pub(super) fn expired(&self, now: u64, header: u64, idle: u64) -> Option<CloseReason> {
        if self.closing.load(Ordering::Relaxed) != 0 {
            return None;
        }
        match self.state() {
            State::Awaiting => {
                (now >= self.accepted_ms + header).then_some(CloseReason::HeaderTimeout)
            }
            State::Active => None,
            State::Idle => {
                let started = self.head_started_ms.load(Ordering::Relaxed);
                if started != 0 && now >= started + header {
                    Some(CloseReason::HeaderTimeout)
                } else {
                    let since = self.idle_since_ms.load(Ordering::Relaxed);
                    (now >= since + idle).then_some(CloseReason::Idle)
                }
            }
        }
    }

    /// Asks its task to close it, for `reason` (counted once, by the first to ask).
    pub(crate) fn close(&self, reason: CloseReason) {
        if self
            .closing
            .compare_exchange(0, reason as u8 + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            if let Some(connections) = self.connections.upgrade() {
                connections.metrics.closed(self.face, reason);
            }
            self.close.notify_one();
        }
    }

    /// Completes when the server wants it closed, with why.
    pub(crate) async fn closing(&self) -> CloseReason {
        loop {
            let reason = self.closing.load(Ordering::Acquire);
            if reason != 0 {
                return CloseReason::ALL[usize::from(reason - 1)];
            }
            self.close.notified().await;
        }
    }
}

/// A request or stream in flight on a connection; dropping it (its response body ended or was
/// dropped) may leave the connection idle.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let connection = &self.0;
        if connection.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(connections) = connection.connections.upgrade()
        {
            connection
                .idle_since_ms
                .store(connections.now_ms(), Ordering::Relaxed);
            connection.head_started_ms.store(0, Ordering::Relaxed);
            connection.set_state(State::Idle);
            // A request that started between the count reaching 0 and the state turning idle
            // set it active first; it is in flight, so it stays active.
            if connection.in_flight.load(Ordering::Acquire) > 0 {
                connection.set_state(State::Active);
            }
        }
    }
}

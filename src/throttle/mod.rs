//! Slowing down a connection that wastes streams, so that it cannot slow down everyone else.
//!
//! A client can open a stream and reset it at once, over and over: each costs the server the
//! start of a call, and the client next to nothing, since a reset stream frees its slot at once
//! (h2 bounds only the resets that come before the server reads the stream,
//! `--max-pending-accept-reset-streams`). Such a stream is *wasted*: it ended with no answer
//! within a window (by default [`WASTED_WITHIN`]) of its call starting. Each connection has a
//! budget of wasted streams, a burst refilled at a steady rate; past it the server stops reading
//! that connection until the budget allows another. Its requests wait in its own socket
//! buffers, costing the server nothing, and none is lost.
//!
//! What counts, and why nothing else does:
//!
//! - **Only a stream that ends before any answer**: the client reset it while its handler was
//!   still at work, while tonic was reading its request (tonic's CANCELLED or INTERNAL then goes
//!   nowhere), or before the first frame of its response went out (a stream's headers go out
//!   before its first message; a Subscribe opened and reset in a loop never gets as far as its
//!   `started`). A call answered with a message or with any status, refusals included, held
//!   its stream until the server was done with it, so such calls are bounded by
//!   `--max-streams-per-connection` like any other load; counting them punished clients for the
//!   server's own limits.
//! - **Only within the window ([`WASTED_WITHIN`] by default) of the call starting, by the
//!   server's clock alone.** A deadline ends a call no sooner than the deadline, whether the
//!   server's timeout answers it or the client resets the stream when its own timer fires, so a
//!   deadline of that length or more never counts, and neither does a caller who gives up after
//!   waiting. The `grpc-timeout` header is not read: a client may claim any deadline, and one
//!   that claimed a nanosecond would be let off every reset. A deadline shorter than the window
//!   that expires before the answer does count: the server cannot tell it from a reset. The
//!   window is a flag so that a deployment (or a test on a loaded machine) can widen it.
//! - **Per connection, not per address.** Clients behind one proxy or NAT share an address, and
//!   one of them resetting streams would pause them all. A peer that opens many connections gets
//!   a budget on each, but pays a handshake for each, and h2's own guard against rapid resets is
//!   per connection too. A proxy that multiplexes many clients onto one HTTP/2 connection still
//!   shares that connection's budget.
//! - **A pause, not GOAWAY.** tonic offers no way to close one connection gracefully from
//!   outside hyper, and a pause refuses nothing: the connection is read again once the budget
//!   refills.
//!
//! The budget is counted by [`WasteLayer`], which sees each call, and enforced by [`Throttled`],
//! which wraps each accepted connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod connection;
mod count;

pub use connection::Throttled;
pub use count::WasteLayer;

/// By default, a stream that ends with no answer this soon after its call started counts as
/// wasted (`--wasted-stream-window`). A reset sent on purpose comes within a few milliseconds (an
/// abuser that waits for a round trip before each reset takes about 2 ms in a debug build); a
/// client's deadline, or its patience, is longer.
pub const WASTED_WITHIN: Duration = Duration::from_millis(50);
/// The longest a connection's reads are paused at once, however far past its budget it went: it
/// is then read again (and paused again if it keeps on).
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// The most a connection in debt reads at a time, giving way to other tasks in between: some
/// dozens of small frames (about 45 opened-and-reset streams), so that the calls one slice starts
/// run, and are counted, before the next slice is read (docs/benchmarks/2026-11-30-abuse.md,
/// "Abuse: what a well-behaved client felt with the first budget").
const IN_DEBT_READ: usize = 2 * 1024;
/// How often the server may log that a connection was paused, over all connections: one abuser
/// opening connection after connection must not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What each connection may waste, and each open connection's account. Shared by the accept
/// loop, every connection and every call.
#[derive(Debug)]
pub struct ConnectionBudgets {
    /// Nanoseconds one wasted stream takes to earn back; 0 turns the budgets off.
    interval: u64,
    /// Nanoseconds a connection's budget may lie ahead of now before it is paused: a burst's worth.
    tolerance: u64,
    /// A stream ended unanswered this soon after its call started is wasted.
    window: Duration,
    /// The time every account's clock counts from.
    epoch: Instant,
    /// When the server last logged a pause, in nanoseconds from the epoch (0: never).
    warned_at: AtomicU64,
    /// The account of each open connection, by its peer's address and port: how a call finds
    /// its connection's. Each [`Throttled`] removes its own when it is dropped.
    open: Mutex<HashMap<SocketAddr, Arc<Account>>>,
}

impl ConnectionBudgets {
    /// A budget of `burst` wasted streams per connection, refilled at `per_second`; 0 (or
    /// anything but a positive number) turns it off. The slowest refill is one a day. A stream
    /// counts when it ends unanswered within `window` of its call starting.
    pub fn new(per_second: f64, burst: u32, window: Duration) -> Arc<Self> {
        const DAY: f64 = 86_400e9;
        let interval = if per_second.is_finite() && per_second > 0.0 {
            (1e9 / per_second).clamp(1.0, DAY) as u64
        } else {
            0
        };
        Arc::new(Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            window,
            epoch: Instant::now(),
            warned_at: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn enabled(&self) -> bool {
        self.interval > 0
    }

    /// Counts one wasted stream against the connection from `peer`, if it is still open.
    fn waste(&self, peer: SocketAddr) {
        let open = self.open.lock().expect("accounts lock poisoned");
        if let Some(account) = open.get(&peer) {
            account.waste_at(Instant::now());
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Wraps a connection accepted from `peer` with a budget of its own, so that it reads only
    /// while within it.
    pub fn throttle<IO>(self: &Arc<Self>, io: IO, peer: Option<SocketAddr>) -> Throttled<IO> {
        let account = peer.filter(|_| self.enabled()).map(|peer| {
            let account = Arc::new(Account {
                budgets: self.clone(),
                peer,
                whole_at: AtomicU64::new(0),
            });
            let mut open = self.open.lock().expect("accounts lock poisoned");
            open.insert(peer, account.clone());
            account
        });
        Throttled {
            io,
            account,
            pause: None,
            gave_way: false,
        }
    }

    fn warn_paused(&self, peer: SocketAddr, now_nanos: u64) {
        let last = self.warned_at.load(Ordering::Relaxed);
        if last != 0 && now_nanos.saturating_sub(last) < WARN_EVERY.as_nanos() as u64 {
            return;
        }
        if self
            .warned_at
            .compare_exchange(last, now_nanos, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                %peer,
                "a connection reset more streams before any answer than --wasted-streams-burst and --max-wasted-streams-per-second allow: pausing reads from it (the next such warning comes 10 s later at the earliest)"
            );
        }
    }
}

/// One connection's budget, kept as the time it would be whole again (GCRA's "theoretical
/// arrival time"): each wasted stream pushes it one interval on; the connection is paused while
/// it lies more than a burst ahead of now.
#[derive(Debug)]
struct Account {
    budgets: Arc<ConnectionBudgets>,
    /// The peer's address and port: the key of this account, and named in the log.
    peer: SocketAddr,
    /// Nanoseconds from the budgets' epoch; at or before now once the connection owes nothing.
    whole_at: AtomicU64,
}

impl Account {
    fn waste_at(&self, now: Instant) {
        let budgets = &self.budgets;
        let now_nanos = budgets.nanos(now);
        let ceiling = now_nanos
            .saturating_add(budgets.tolerance)
            .saturating_add(MAX_PAUSE.as_nanos() as u64);
        let previous = self
            .whole_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |whole_at| {
                let later = whole_at.max(now_nanos).saturating_add(budgets.interval);
                Some(later.min(ceiling))
            })
            .expect("the update always returns Some");
        let was_paused = previous.saturating_sub(budgets.tolerance) > now_nanos;
        if !was_paused && self.paused_until(now).is_some() {
            budgets.warn_paused(self.peer, now_nanos);
        }
    }

    /// Whether the connection has wasted streams it has not yet earned back (paused or not).
    fn in_debt(&self, now: Instant) -> bool {
        self.whole_at.load(Ordering::Relaxed) > self.budgets.nanos(now)
    }

    /// Whether the connection has never wasted a stream, as nearly every one has not: then it is
    /// neither paused nor in debt, and its reads need not read the clock.
    fn never_wasted(&self) -> bool {
        self.whole_at.load(Ordering::Relaxed) == 0
    }

    /// When the connection may read again, if it is paused now.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        let budgets = &self.budgets;
        let resume = self
            .whole_at
            .load(Ordering::Relaxed)
            .saturating_sub(budgets.tolerance);
        (resume > budgets.nanos(now)).then(|| budgets.epoch + Duration::from_nanos(resume))
    }
}

#[cfg(test)]
mod tests {
    use super::{count::Unanswered, *};

    const MS: Duration = Duration::from_millis(1);
    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4321);

    fn connection(per_second: f64, burst: u32) -> Throttled<()> {
        ConnectionBudgets::new(per_second, burst, WASTED_WITHIN).throttle((), Some(PEER))
    }

    #[test]
    fn a_connection_may_waste_a_burst_then_one_stream_per_interval() {
        // 3 at once, then one every 100 ms.
        let connection = connection(10.0, 3);
        let account = connection.account.as_ref().expect("budgets on");
        let start = account.budgets.epoch + Duration::from_secs(1);
        assert!(!account.in_debt(start));
        for _ in 0..3 {
            account.waste_at(start);
            assert_eq!(account.paused_until(start), None);
        }
        assert!(account.in_debt(start));
        account.waste_at(start);
        assert_eq!(account.paused_until(start), Some(start + 100 * MS));
        assert_eq!(account.paused_until(start + 100 * MS), None);
        account.waste_at(start + 100 * MS);
        assert_eq!(
            account.paused_until(start + 100 * MS),
            Some(start + 200 * MS)
        );
        // Five wasted by 100 ms, earned back at 100 ms each: whole again at 500 ms.
        assert!(account.in_debt(start + 499 * MS));
        assert!(!account.in_debt(start + 500 * MS));
    }

    #[test]
    fn however_much_a_connection_wastes_one_pause_is_bounded() {
        let connection = connection(10.0, 3);
        let account = connection.account.as_ref().expect("budgets on");
        let start = account.budgets.epoch + Duration::from_secs(1);
        for _ in 0..100_000 {
            account.waste_at(start);
        }
        assert_eq!(account.paused_until(start), Some(start + MAX_PAUSE));
    }

    #[test]
    fn only_a_call_that_ends_unanswered_right_after_it_started_is_wasted() {
        // No burst: the first wasted stream puts the connection in debt.
        let connection = connection(0.001, 0);
        let account = connection.account.as_ref().expect("budgets on");
        let call = |peer: Option<SocketAddr>, age: Duration| Unanswered {
            budgets: account.budgets.clone(),
            peer,
            started: Instant::now() - age,
        };
        drop(call(None, Duration::ZERO));
        drop(call(Some(PEER), WASTED_WITHIN));
        assert!(!account.in_debt(Instant::now()), "answered, or too late");
        drop(call(Some(PEER), Duration::ZERO));
        assert!(account.in_debt(Instant::now()));
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let connection = connection(10.0, 3);
        let budgets = connection
            .account
            .as_ref()
            .expect("budgets on")
            .budgets
            .clone();
        drop(connection);
        assert!(budgets.open.lock().unwrap().is_empty());
    }
}

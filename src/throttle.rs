//! Slowing down a connection that wastes streams, so that it cannot slow down everyone else.
//!
//! A client can open a stream and reset it at once, over and over: each costs the server the
//! start of a call, and the client next to nothing, since a reset stream frees its slot at once
//! (h2 bounds only the resets that come before the server reads the stream,
//! `--max-pending-accept-reset-streams`). Such a stream is *wasted*: it ended with no answer
//! within [`WASTED_WITHIN`] of its call starting. Each connection has a budget of wasted
//! streams, a burst refilled at a steady rate; past it the server stops reading that connection
//! until the budget allows another. Its requests wait in its own socket buffers, costing the
//! server nothing, and none is lost.
//!
//! What counts, and why nothing else does:
//!
//! - **Only a stream that ends before any answer**: the client reset it while its handler was
//!   still at work, or while tonic was reading its request (tonic's CANCELLED or INTERNAL then
//!   goes nowhere). A call answered with a message or with any status, refusals included, held
//!   its stream until the server was done with it, so such calls are bounded by
//!   `--max-streams-per-connection` like any other load; counting them punished clients for the
//!   server's own limits.
//! - **Only within [`WASTED_WITHIN`] of the call starting, by the server's clock alone.** A
//!   deadline ends a call no sooner than the deadline, whether tonic's timeout answers it or the
//!   client resets the stream when its own timer fires, so a deadline of that length or more
//!   never counts, and neither does a caller who gives up after waiting. The `grpc-timeout`
//!   header is not read: a client may claim any deadline, and one that claimed a nanosecond
//!   would be let off every reset. A deadline shorter than [`WASTED_WITHIN`] that expires before
//!   the answer does count: the server cannot tell it from a reset.
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
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{
    body::Body,
    codegen::http,
    transport::server::{Connected, TcpConnectInfo},
};

/// A stream that ends with no answer this soon after its call started counts as wasted. A reset
/// sent on purpose comes within a few milliseconds (the tests' abusers, which wait for a round
/// trip before each reset, take about 2 ms in a debug build); a client's deadline, or its
/// patience, is longer.
pub const WASTED_WITHIN: Duration = Duration::from_millis(50);
/// The longest a connection's reads are paused at once, however far past its budget it went: it
/// is then read again (and paused again if it keeps on).
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// The most a connection in debt reads at a time, giving way to other tasks in between: some
/// dozens of small frames (about 45 opened-and-reset streams), so that the calls one slice starts
/// run, and are counted, before the next slice is read (docs/benchmarks.md, "Abuse").
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
    /// anything but a positive number) turns it off. The slowest refill is one a day.
    pub fn new(per_second: f64, burst: u32) -> Arc<Self> {
        const DAY: f64 = 86_400e9;
        let interval = if per_second.is_finite() && per_second > 0.0 {
            (1e9 / per_second).clamp(1.0, DAY) as u64
        } else {
            0
        };
        Arc::new(Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
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

/// An accepted connection that stops reading while it is past its budget. Writes (the responses
/// to what it already sent) go on.
#[derive(Debug)]
pub struct Throttled<IO> {
    io: IO,
    /// `None` when the budgets are off or the peer's address is unknown.
    account: Option<Arc<Account>>,
    /// The timer a paused read waits on.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last read, made while in debt, gave way instead of reading.
    gave_way: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Throttled<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(account) = &this.account else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let mut now = Instant::now();
        while let Some(resume) = account.paused_until(now) {
            let resume = tokio::time::Instant::from_std(resume);
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(resume)));
            if pause.deadline() != resume {
                pause.as_mut().reset(resume);
            }
            ready!(pause.as_mut().poll(cx));
            now = Instant::now();
        }
        if !account.in_debt(now) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // A connection still earning back what it wasted reads in small slices, giving way to
        // every other task in between, so that what piled up in its socket while it was paused
        // cannot hold a worker thread for milliseconds at a time.
        this.gave_way = !this.gave_way;
        if this.gave_way {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut slice = [0; IN_DEBT_READ];
        let mut limited = ReadBuf::new(&mut slice[..buf.remaining().min(IN_DEBT_READ)]);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
        buf.put_slice(limited.filled());
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Throttled<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO> Drop for Throttled<IO> {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            let mut open = account.budgets.open.lock().expect("accounts lock poisoned");
            // Unless a new connection from the same address and port has taken the key since.
            if open
                .get(&account.peer)
                .is_some_and(|a| Arc::ptr_eq(a, account))
            {
                open.remove(&account.peer);
            }
        }
    }
}

impl<IO: Connected> Connected for Throttled<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The tower layer that counts wasted streams against their connections' budgets.
#[derive(Debug, Clone)]
pub struct WasteLayer {
    budgets: Arc<ConnectionBudgets>,
}

impl WasteLayer {
    /// Counts against `budgets`.
    pub fn new(budgets: Arc<ConnectionBudgets>) -> Self {
        Self { budgets }
    }
}

impl<S> tower_layer::Layer<S> for WasteLayer {
    type Service = WasteCounted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WasteCounted {
            inner,
            budgets: self.budgets.clone(),
        }
    }
}

/// A service whose calls are watched for waste.
#[derive(Debug, Clone)]
pub struct WasteCounted<S> {
    inner: S,
    budgets: Arc<ConnectionBudgets>,
}

impl<S> tower_service::Service<http::Request<Body>> for WasteCounted<S>
where
    S: tower_service::Service<http::Request<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The TCP connection's peer, as tonic records it (under TLS too, beside the TLS info).
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let Some(peer) = peer.filter(|_| self.budgets.enabled()) else {
            return Box::pin(self.inner.call(request));
        };
        let unanswered = Unanswered {
            budgets: self.budgets.clone(),
            peer: Some(peer),
            started: Instant::now(),
        };
        let cut = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            let cut = cut.clone();
            Body::new(Watched { body, cut })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped with this future, before it resolves, if the stream ends first.
            let response = response.await;
            // A reset while tonic reads the request fails the read, and tonic then answers
            // CANCELLED or INTERNAL to a client that is no longer there: no answer at all.
            if !cut.load(Ordering::Relaxed) {
                unanswered.answered();
            }
            response
        })
    }
}

/// A call that has not answered yet. Dropped like that soon after the call started, it counts
/// as wasted against its connection.
struct Unanswered {
    budgets: Arc<ConnectionBudgets>,
    /// The connection's peer; `None` once the call has answered.
    peer: Option<SocketAddr>,
    started: Instant,
}

impl Unanswered {
    /// The call has answered, whatever with: nothing to count.
    fn answered(mut self) {
        self.peer = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(peer) = self.peer
            && self.started.elapsed() < WASTED_WITHIN
        {
            self.budgets.waste(peer);
        }
    }
}

/// A request body that notes when reading it fails, which h2 makes it do when the client resets
/// the stream (or the connection breaks).
struct Watched {
    body: Body,
    /// Set on the first failed read.
    cut: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Err(_)) = &frame {
            self.cut.store(true, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4321);

    fn connection(per_second: f64, burst: u32) -> Throttled<()> {
        ConnectionBudgets::new(per_second, burst).throttle((), Some(PEER))
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

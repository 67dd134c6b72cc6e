//! Slowing down a peer that wastes streams, so that it cannot slow down everyone else.
//!
//! Every stream costs the server work in HTTP/2 and in the call, whether or not it leads
//! anywhere. A stream is *wasted* when the client resets it within [`YOUNG`] of opening, before
//! the server sent any of its response (a client opening and cancelling streams in a loop), or
//! when the server refuses it for the request's own fault ([`wasteful`]: too large, invalid,
//! unauthenticated...).
//! Each peer (an IPv4 address, or an IPv6 /64 network) has a budget of wasted streams: a burst,
//! refilled at a steady rate. A peer past its budget is refused nothing: the server stops reading
//! from its connections until the budget allows another wasted stream. Its requests wait in its
//! own socket buffers, costing the server nothing, and none is lost; other peers are untouched.
//!
//! The budget is counted by [`WasteLayer`], which sees each call, and enforced by [`Throttled`],
//! which wraps each accepted connection. Behind a proxy every client shares the proxy's address,
//! so there the limit should be raised or turned off (SECURITY.md).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{
    Code,
    codegen::http,
    transport::server::{Connected, TcpConnectInfo},
};

/// A stream its client resets this soon after it opened, before the server sent any of its
/// response, counts as wasted. Abusive resets come within microseconds; a caller that goes away
/// after waiting a while for an answer is not wasting anything, and a subscriber that cancels
/// after reading what it wanted (the first message comes at once) never counts.
pub const YOUNG: Duration = Duration::from_secs(1);
/// The longest a peer's reads are paused at once, however far past its budget it went: its
/// connections then read again (and are paused again if it keeps on).
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Peers remembered before the ones that are back within budget and hold no connection are
/// forgotten (they are then no different from a peer never seen).
const PRUNE_AT: usize = 4_096;
/// The most a peer in debt reads at a time, giving way to other tasks in between: some dozens of
/// small frames (about 45 opened-and-reset streams), so that the calls one slice starts run, and
/// are counted, before the next slice is read (docs/benchmarks.md, "Abuse").
const IN_DEBT_READ: usize = 2 * 1024;
/// How often the server may log that one peer was paused.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What one peer may waste. Shared by the accept loop, every connection and every call.
#[derive(Debug)]
pub struct PeerBudgets {
    /// Wasted streams allowed per second, per peer, over time (for the log).
    per_second: f64,
    /// Wasted streams allowed at once before the rate applies (for the log).
    burst: u32,
    /// Nanoseconds one wasted stream takes to earn back; 0 turns the budget off.
    interval: u64,
    /// Nanoseconds a peer's budget may lie ahead of now before it is paused: a burst's worth.
    tolerance: u64,
    /// The time every peer's clock counts from.
    epoch: Instant,
    /// Each peer seen lately; each connection holds its peer's `Arc`.
    peers: Mutex<Peers>,
}

#[derive(Debug)]
struct Peers {
    by_key: HashMap<IpAddr, Arc<Peer>>,
    /// Prune again only once the map has grown past this.
    prune_at: usize,
}

/// One peer's budget, kept as the time its budget would be whole again (GCRA's "theoretical
/// arrival time"): each wasted stream pushes it one interval on; the peer is paused while it lies
/// more than a burst ahead of now.
#[derive(Debug)]
pub struct Peer {
    key: IpAddr,
    /// Nanoseconds from the budgets' epoch; at or before now once the peer owes nothing.
    whole_at: AtomicU64,
    /// When the server last logged this peer's pause, in nanoseconds from the epoch (0: never).
    warned_at: AtomicU64,
}

impl PeerBudgets {
    /// A budget of `burst` wasted streams per peer, refilled at `per_second`; 0 (or anything
    /// but a positive number) turns it off. The slowest refill is one a day.
    pub fn new(per_second: f64, burst: u32) -> Arc<Self> {
        const DAY: f64 = 86_400e9;
        let interval = if per_second.is_finite() && per_second > 0.0 {
            (1e9 / per_second).clamp(1.0, DAY) as u64
        } else {
            0
        };
        Arc::new(Self {
            per_second,
            burst,
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            epoch: Instant::now(),
            peers: Mutex::new(Peers {
                by_key: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        })
    }

    fn enabled(&self) -> bool {
        self.interval > 0
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Wraps a connection accepted from `address` so that it reads only while its peer is within
    /// budget.
    pub fn throttle<IO>(self: &Arc<Self>, io: IO, address: Option<IpAddr>) -> Throttled<IO> {
        let peer = address
            .filter(|_| self.enabled())
            .map(|address| self.peer(address));
        Throttled {
            io,
            budgets: self.clone(),
            peer,
            pause: None,
            gave_way: false,
        }
    }

    /// The peer with `address`, remembered from now on.
    fn peer(&self, address: IpAddr) -> Arc<Peer> {
        let key = peer_key(address);
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        if let Some(peer) = peers.by_key.get(&key) {
            return peer.clone();
        }
        if peers.by_key.len() >= peers.prune_at {
            let now = self.nanos(Instant::now());
            peers.by_key.retain(|_, peer| {
                Arc::strong_count(peer) > 1 || peer.whole_at.load(Ordering::Relaxed) > now
            });
            peers.prune_at = PRUNE_AT.max(peers.by_key.len() * 2);
        }
        let peer = Arc::new(Peer {
            key,
            whole_at: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        });
        peers.by_key.insert(key, peer.clone());
        peer
    }

    /// Counts one wasted stream against the peer at `address`.
    fn waste(&self, address: IpAddr) {
        if self.enabled() {
            self.waste_at(&self.peer(address), Instant::now());
        }
    }

    fn waste_at(&self, peer: &Peer, now: Instant) {
        let now_nanos = self.nanos(now);
        let ceiling = now_nanos
            .saturating_add(self.tolerance)
            .saturating_add(MAX_PAUSE.as_nanos() as u64);
        let previous = peer
            .whole_at
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |whole_at| {
                Some(
                    whole_at
                        .max(now_nanos)
                        .saturating_add(self.interval)
                        .min(ceiling),
                )
            })
            .expect("the update always returns Some");
        let was_paused = previous.saturating_sub(self.tolerance) > now_nanos;
        if !was_paused && self.paused_until(peer, now).is_some() {
            self.warn_paused(peer, now_nanos);
        }
    }

    /// Whether `peer` has wasted streams it has not yet earned back (paused or not).
    fn in_debt(&self, peer: &Peer, now: Instant) -> bool {
        peer.whole_at.load(Ordering::Relaxed) > self.nanos(now)
    }

    /// When `peer` may read again, if it is paused now.
    fn paused_until(&self, peer: &Peer, now: Instant) -> Option<Instant> {
        let resume = peer
            .whole_at
            .load(Ordering::Relaxed)
            .saturating_sub(self.tolerance);
        (resume > self.nanos(now)).then(|| self.epoch + Duration::from_nanos(resume))
    }

    fn warn_paused(&self, peer: &Peer, now_nanos: u64) {
        let last = peer.warned_at.load(Ordering::Relaxed);
        if last != 0 && now_nanos.saturating_sub(last) < WARN_EVERY.as_nanos() as u64 {
            return;
        }
        if peer
            .warned_at
            .compare_exchange(last, now_nanos, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                peer = %peer.key,
                burst = self.burst,
                per_second = self.per_second,
                "peer wasted more streams than its budget (reset right after opening, or refused): pausing reads from its connections"
            );
        }
    }
}

/// The key a peer's budget is kept under: its IPv4 address, or the /64 network of its IPv6
/// address (one host can hold a whole /64).
fn peer_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// An accepted connection that stops reading while its peer is past its budget. Writes (the
/// responses to what it already sent) go on.
#[derive(Debug)]
pub struct Throttled<IO> {
    io: IO,
    budgets: Arc<PeerBudgets>,
    /// `None` when the budget is off or the peer's address is unknown.
    peer: Option<Arc<Peer>>,
    /// The timer a paused read waits on.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last read, made while the peer was in debt, gave way instead of reading.
    gave_way: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Throttled<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(peer) = &this.peer else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let mut now = Instant::now();
        while let Some(resume) = this.budgets.paused_until(peer, now) {
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
        if !this.budgets.in_debt(peer, now) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // A peer still earning back what it wasted reads in small slices, giving way to every
        // other task in between: what piled up in its socket while it was paused (a refused
        // request's body, say) must not hold a worker thread for milliseconds at a time.
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

impl<IO: Connected> Connected for Throttled<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Whether a response with this status refuses the request for the request's own fault, so that
/// sending it again unchanged would be refused again. INTERNAL is among them because this
/// server's own code never answers it: only tonic does, for a request body it cannot decode or
/// that ends (or is reset) before its message. Conflicts (ABORTED, FAILED_PRECONDITION), misses
/// (NOT_FOUND) and UNAVAILABLE are not the client's waste.
pub fn wasteful(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::Internal
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
    )
}

/// The tower layer that counts wasted streams against their peers' budgets.
#[derive(Debug, Clone)]
pub struct WasteLayer {
    budgets: Arc<PeerBudgets>,
}

impl WasteLayer {
    /// Counts against `budgets`.
    pub fn new(budgets: Arc<PeerBudgets>) -> Self {
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
    budgets: Arc<PeerBudgets>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for WasteCounted<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Watched<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let watch = self
            .budgets
            .enabled()
            .then(|| remote_ip(&request))
            .flatten()
            .map(|address| Watch {
                budgets: self.budgets.clone(),
                address,
                opened: Instant::now(),
                open: true,
            });
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped here, before the response, if the client resets the stream.
            let mut watch = watch;
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    // The server's failure, not the client's waste.
                    if let Some(watch) = watch.take() {
                        watch.settle(None);
                    }
                    return Err(error);
                }
            };
            if let Some(code) = grpc_status(response.headers())
                && let Some(watch) = watch.take()
            {
                // A trailers-only response: the call is over, refused or not.
                watch.settle(Some(code));
            }
            Ok(response.map(|body| Watched { body, watch }))
        })
    }
}

/// The peer's address, as tonic recorded it for the connection the request came on (under TLS
/// too: tonic then records the TCP connection's info beside the TLS one).
fn remote_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let info = request.extensions().get::<TcpConnectInfo>()?;
    info.remote_addr().map(|address| address.ip())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

/// One call in progress: dropped before it is settled, it counts as wasted if it was young.
#[derive(Debug)]
struct Watch {
    budgets: Arc<PeerBudgets>,
    address: IpAddr,
    opened: Instant,
    /// False once the call is settled, by its status or its end.
    open: bool,
}

impl Watch {
    /// Settles the call: wasted if `status` says the request was at fault, or that the client
    /// cancelled it (tonic answers CANCELLED when a reset cuts off a request it is reading) while
    /// it was young, as if it had been dropped.
    fn settle(mut self, status: Option<Code>) {
        self.open = false;
        let cancelled_young = status == Some(Code::Cancelled) && self.opened.elapsed() < YOUNG;
        if status.is_some_and(wasteful) || cancelled_young {
            self.budgets.waste(self.address);
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.open && self.opened.elapsed() < YOUNG {
            self.budgets.waste(self.address);
        }
    }
}

/// A response body that settles its call's watch with its first frame: a message (no waste),
/// or trailers (waste if their status says so). Dropped before either, it was reset by the
/// client before the call did anything for it.
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    /// `None` once settled.
    watch: Option<Watch>,
}

impl<B: Body + Unpin> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(watch) = self.watch.take() {
            watch.settle(match &frame {
                // Trailers: refused or not, by their status.
                Some(Ok(frame)) if frame.is_trailers() => {
                    frame.trailers_ref().and_then(grpc_status)
                }
                // A message: the call did something for the client, whatever comes later.
                // Otherwise it ended, or failed on the server's side: no waste either.
                _ => None,
            });
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peers_are_ipv4_addresses_or_ipv6_networks() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(v4), v4);
        assert_eq!(peer_key("::ffff:192.0.2.7".parse().unwrap()), v4);
        let network: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(
            peer_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap()),
            network
        );
        assert_eq!(peer_key("2001:db8:1:2::1".parse().unwrap()), network);
        assert_ne!(peer_key("2001:db8:1:3::1".parse().unwrap()), network);
    }

    #[test]
    fn a_peer_may_waste_a_burst_then_one_stream_per_interval() {
        // 3 at once, then one every 100 ms.
        let budgets = PeerBudgets::new(10.0, 3);
        let peer = budgets.peer("192.0.2.7".parse().unwrap());
        let start = budgets.epoch + Duration::from_secs(1);
        assert!(!budgets.in_debt(&peer, start));
        for _ in 0..3 {
            budgets.waste_at(&peer, start);
            assert_eq!(budgets.paused_until(&peer, start), None);
        }
        assert!(budgets.in_debt(&peer, start));
        budgets.waste_at(&peer, start);
        assert_eq!(budgets.paused_until(&peer, start), Some(start + 100 * MS));
        assert_eq!(budgets.paused_until(&peer, start + 100 * MS), None);
        budgets.waste_at(&peer, start + 100 * MS);
        assert_eq!(
            budgets.paused_until(&peer, start + 100 * MS),
            Some(start + 200 * MS)
        );
        // Five wasted by 100 ms, earned back at 100 ms each: whole again at 500 ms.
        assert!(budgets.in_debt(&peer, start + 499 * MS));
        assert!(!budgets.in_debt(&peer, start + 500 * MS));
    }

    #[test]
    fn however_much_a_peer_wastes_one_pause_is_bounded() {
        let budgets = PeerBudgets::new(10.0, 3);
        let peer = budgets.peer("192.0.2.7".parse().unwrap());
        let start = budgets.epoch + Duration::from_secs(1);
        for _ in 0..100_000 {
            budgets.waste_at(&peer, start);
        }
        assert_eq!(budgets.paused_until(&peer, start), Some(start + MAX_PAUSE));
    }

    #[test]
    fn a_rate_of_zero_turns_the_budget_off() {
        for per_second in [0.0, -1.0, f64::NAN] {
            let budgets = PeerBudgets::new(per_second, 0);
            let connection = budgets.throttle((), Some("192.0.2.7".parse().unwrap()));
            assert!(connection.peer.is_none());
            budgets.waste("192.0.2.7".parse().unwrap());
            assert!(budgets.peers.lock().unwrap().by_key.is_empty());
        }
    }

    #[test]
    fn peers_without_connections_or_debt_are_forgotten() {
        let budgets = PeerBudgets::new(10.0, 3);
        let connected = budgets.peer("192.0.2.1".parse().unwrap());
        let indebted = budgets.peer("192.0.2.2".parse().unwrap());
        budgets.waste_at(&indebted, Instant::now());
        drop(indebted);
        for n in 0..PRUNE_AT as u32 {
            budgets.peer(IpAddr::V4((0x0a00_0000 + n).into()));
        }
        let remembered: Vec<IpAddr> = {
            let peers = budgets.peers.lock().unwrap();
            peers.by_key.keys().copied().collect()
        };
        // The two, and the peers added since the map was pruned.
        assert!(remembered.len() <= 4, "{remembered:?}");
        assert!(remembered.contains(&connected.key));
        assert!(remembered.contains(&"192.0.2.2".parse().unwrap()));
    }
}

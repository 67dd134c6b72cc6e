//! Counting the budget: a tower layer that sees each call end, and charges a stream its client
//! reset before any answer to the connection that carried it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Instant,
};

use tonic::{body::Body, codegen::http, transport::server::TcpConnectInfo};

use super::ConnectionBudgets;

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
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>,
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
            // h2 fails a read of the request when the client resets the stream.
            Body::new(Tapped::new(body, move |failed| {
                if failed {
                    cut.store(true, Ordering::Relaxed);
                }
            }))
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped with this future, before it resolves, if the stream ends first.
            let response = response.await?;
            // A reset while tonic reads the request fails the read, and tonic then answers
            // CANCELLED or INTERNAL to a client that is no longer there: no answer at all.
            if cut.load(Ordering::Relaxed) {
                return Ok(response);
            }
            // A response with nothing after its headers (a status: tonic sends those as
            // trailers-only) is whole once it is made. Any other is an answer once its first
            // frame goes out: a stream's headers go out before the handler's first message,
            // and a client resetting streams in a loop leaves before it does.
            if http_body::Body::is_end_stream(response.body()) {
                unanswered.answered();
                return Ok(response);
            }
            // Dropped with the body before a frame went out, `unanswered` counts the stream.
            let mut unanswered = Some(unanswered);
            Ok(response.map(|body| {
                Body::new(Tapped::new(body, move |failed| {
                    if !failed && let Some(unanswered) = unanswered.take() {
                        unanswered.answered();
                    }
                }))
            }))
        })
    }
}

/// A call that has not answered yet. Dropped like that soon after the call started, it counts
/// as wasted against its connection.
pub(super) struct Unanswered {
    /// The budgets the connection's account is in.
    pub(super) budgets: Arc<ConnectionBudgets>,
    /// The connection's peer; `None` once the call has answered.
    pub(super) peer: Option<SocketAddr>,
    /// When the call started.
    pub(super) started: Instant,
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
            && self.started.elapsed() < self.budgets.window
        {
            self.budgets.waste(peer);
        }
    }
}

/// A body passed through unchanged, telling `on_frame` of each frame taken from it: `true` when
/// taking it failed (the stream was reset, or the connection broke), `false` for a frame or the
/// end. The request and the response of a call each get one.
struct Tapped<F> {
    body: Body,
    on_frame: F,
}

impl<F: FnMut(bool) + Send + Unpin> Tapped<F> {
    fn new(body: Body, on_frame: F) -> Self {
        Self { body, on_frame }
    }
}

impl<F: FnMut(bool) + Send + Unpin> http_body::Body for Tapped<F> {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        (self.on_frame)(matches!(frame, Some(Err(_))));
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

//! What each connection's requests pass through on the way to a face's service: the client
//! address and the connection's addresses put in the request's extensions, the request counted
//! in flight until its response body ends, and the bytes that start a next request head noticed.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::TcpConnectInfo;

use super::{ClientAddress, CloseReason, Connection, Connections, Face, InFlight};

/// Any error a face's service or body may end with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body, whichever face made it.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Seconds a client refused for its address's share of connections is told to wait.
const RETRY_AFTER_SECS: &str = "10";

/// One connection's view of a face's service, as hyper calls it.
#[derive(Debug)]
pub(crate) struct PerConnection<S> {
    /// The face's service; cloned for each request, as tower services are.
    inner: S,
    /// This connection.
    connection: Arc<Connection>,
    /// The registry, for a trusted proxy's first request.
    connections: Arc<Connections>,
    /// The listener's own address.
    local: Option<SocketAddr>,
}

impl<S> PerConnection<S> {
    /// `inner`, for requests on `connection`.
    pub(crate) fn new(
        inner: S,
        connection: Arc<Connection>,
        connections: Arc<Connections>,
        local: Option<SocketAddr>,
    ) -> Self {
        Self {
            inner,
            connection,
            connections,
            local,
        }
    }

    /// A refusal for a client whose address already holds its share, in the face's language.
    fn refusal(&self, face: Face) -> Response<ResponseBody> {
        let message = format!(
            "this address already holds its limit of {} connections (--max-connections-per-ip); try again later",
            self.connections.lifecycle().max_connections_per_ip
        );
        let mut response = match face {
            Face::Grpc => tonic::Status::resource_exhausted(message)
                .into_http::<tonic::body::Body>()
                .map(|body| body.map_err(Into::into).boxed_unsync()),
            Face::Http => {
                let body = serde_json::json!({"code": "RESOURCE_EXHAUSTED", "message": message});
                let mut response = Response::new(full(Bytes::from(body.to_string().into_bytes())));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
        };
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
        response
    }
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

impl<S, B> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let peer = self.connection.peer();
        let lifecycle = self.connections.lifecycle();
        let client = lifecycle
            .trusted_proxies
            .client(peer.ip(), request.headers());
        if client != peer.ip()
            && self
                .connections
                .count_forwarded(&self.connection, client)
                .is_err()
        {
            self.connection.close(CloseReason::PerAddressLimit);
            let refusal = self.refusal(self.connection.face);
            return Box::pin(async move { Ok(refusal) });
        }
        let extensions = request.extensions_mut();
        extensions.insert(ClientAddress(client));
        extensions.insert(TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(peer),
        });
        let http1 = request.version() <= Version::HTTP_11;
        let in_flight = self.connection.request_started(http1);
        let mut service = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(request).await.map_err(Into::into)?;
            Ok(response.map(|body| {
                InFlightBody {
                    body,
                    _in_flight: in_flight,
                }
                .boxed_unsync()
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped: an open
    /// Subscribe or SSE stream keeps its connection from counting as idle.
    struct InFlightBody<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B> Body for InFlightBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, telling the connection when bytes arrive ([`Connection::bytes_arrived`]).
#[derive(Debug)]
pub(crate) struct Watched<IO> {
    /// The socket.
    io: IO,
    /// Whom to tell.
    connection: Arc<Connection>,
}

impl<IO> Watched<IO> {
    /// `io`, watched for `connection`.
    pub(crate) fn new(io: IO, connection: Arc<Connection>) -> Self {
        Self { io, connection }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.connection.bytes_arrived();
        }
        read
    }
}

crate::write_through::write_through!(Watched);

//! The accept loop of one face and the task of each connection it accepts: admission against the
//! limits, the TLS handshake within the header timeout, HTTP/1.1 and HTTP/2 (h2 by ALPN over
//! TLS, h2c with prior knowledge in plain text) through hyper-util's server builder, and a close
//! when the sweeper, the shedder or shutdown asks for one.

use std::{sync::Arc, time::Duration};

use axum::http::{Request, Response};
use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpStream, sync::watch, task::JoinSet};

use super::{
    Connection, Connections, Face,
    request::{BoxError, PerConnection, Watched},
};
use crate::{listen::Accepting, throttle::ConnectionBudgets, tls::ServerTls};

/// How long a connection asked to close gracefully (GOAWAY) may take to finish what it has in
/// flight before it is dropped; shutdown has its own grace.
const GOODBYE: Duration = Duration::from_secs(5);

/// How one face speaks.
#[derive(Debug, Clone)]
pub(crate) struct FaceConfig {
    /// Which face.
    pub face: Face,
    /// How often an idle HTTP/2 connection is pinged, so that a dead peer is found.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Streams one HTTP/2 connection may hold open at once.
    pub max_concurrent_streams: Option<u32>,
    /// hyper's guard against rapid-reset floods.
    pub max_pending_accept_reset_streams: Option<usize>,
    /// Streams the server may reset for a client's protocol errors before closing.
    pub max_local_error_reset_streams: Option<usize>,
    /// Connections older than this are closed gracefully.
    pub max_connection_age: Option<Duration>,
    /// TLS, read for each handshake so that a reloaded certificate takes effect at once.
    pub tls: Option<Arc<ServerTls>>,
    /// Each connection's budget of wasted streams (on the HTTP face: budgets turned off).
    pub budgets: Arc<ConnectionBudgets>,
}

impl FaceConfig {
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The connection's own deadlines are the sweeper's: hyper's header timeout would also
        // close a kept-alive HTTP/1.1 connection that is merely idle.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(self.keepalive_interval))
            .keep_alive_timeout(self.keepalive_timeout)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams);
        builder
    }
}

/// Serves `service` on the connections `accepting` takes until `stopping` turns true; then stops
/// accepting, asks every connection to finish gracefully, and returns once all have closed.
/// The caller bounds that wait (`--shutdown-grace`): dropping this future ends every connection
/// still open.
pub(crate) async fn serve<S, B>(
    mut accepting: Accepting,
    config: FaceConfig,
    connections: Arc<Connections>,
    service: S,
    mut stopping: watch::Receiver<bool>,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(config.builder());
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    let for_connections = stopping.clone();
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            (tcp, peer) = accepting.next_connection() => {
                let Ok(connection) = connections.admit(config.face, peer) else {
                    // Dropping the socket closes it: a refusal costs no more than the accept.
                    continue;
                };
                let local = tcp.local_addr().ok();
                let service = PerConnection::new(
                    service.clone(),
                    connection.clone(),
                    connections.clone(),
                    local,
                );
                let task = serve_connection(
                    tcp,
                    connection,
                    connections.clone(),
                    config.clone(),
                    builder.clone(),
                    service,
                    for_connections.clone(),
                );
                tasks.spawn(task);
            }
        }
    }
    drop(accepting);
    while tasks.join_next().await.is_some() {}
}

/// One connection, from its TLS handshake to its close; it leaves the registry when it ends.
async fn serve_connection<S, B>(
    tcp: TcpStream,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
    config: Arc<FaceConfig>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: PerConnection<S>,
    stopping: watch::Receiver<bool>,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let peer = connection.peer();
    let io = Watched::new(config.budgets.throttle(tcp, Some(peer)), connection.clone());
    match &config.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let handshake = tokio::select! {
                handshake = acceptor.accept(io) => handshake,
                _ = connection.closing() => None.ok_or(std::io::ErrorKind::TimedOut.into()),
            };
            match handshake {
                Ok(tls) => {
                    drive(
                        TokioIo::new(tls),
                        &connection,
                        &config,
                        &builder,
                        service,
                        stopping,
                    )
                    .await;
                }
                Err(error) => tracing::debug!(%error, %peer, "TLS handshake failed"),
            }
        }
        None => {
            drive(
                TokioIo::new(io),
                &connection,
                &config,
                &builder,
                service,
                stopping,
            )
            .await
        }
    }
    connections.release(&connection);
}

/// Serves HTTP on `io` until the connection ends, closing it when asked.
async fn drive<IO, S, B>(
    io: IO,
    connection: &Connection,
    config: &FaceConfig,
    builder: &auto::Builder<TokioExecutor>,
    service: PerConnection<S>,
    mut stopping: watch::Receiver<bool>,
) where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let aged = async {
        match config.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(aged);
    let mut goodbye: Option<tokio::time::Instant> = None;
    let mut shutting_down = false;
    loop {
        let give_up = async {
            match goodbye {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, peer = %connection.peer(), "connection ended");
                }
                return;
            }
            reason = connection.closing(), if goodbye.is_none() && !shutting_down => {
                if !super::graceful(reason) {
                    return;
                }
                served.as_mut().graceful_shutdown();
                goodbye = Some(tokio::time::Instant::now() + GOODBYE);
            }
            () = &mut aged, if goodbye.is_none() && !shutting_down => {
                served.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = stopping.wait_for(|stopping| *stopping), if !shutting_down => {
                // Shutdown's grace bounds this, not GOODBYE: open streams flush first.
                served.as_mut().graceful_shutdown();
                shutting_down = true;
                goodbye = None;
            }
            () = give_up => return,
        }
    }
}

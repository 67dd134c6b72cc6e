//! The HTTP client of one endpoint: one HTTP/1.1 connection (plain, or TLS checked against the
//! system's roots), kept between deliveries and opened again after any failure.
//!
//! An endpoint is delivered one request at a time, in order, so it needs exactly one connection
//! and never a pool: hyper's own client connection is all it takes, with no new dependency. A
//! connection that failed or timed out mid-request is dropped, never reused, so a late answer to
//! an old request can never be read as the answer to the next one.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};

/// The most of a receiver's answer read (for the last error); the rest is dropped unread, and
/// the connection with it.
const MAX_ANSWER_BYTES: usize = 512;

/// How one try failed: what the state and the metrics show, and the next try's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The receiver answered with a status other than 2xx.
    Status(u16),
    /// No complete answer within the endpoint's timeout.
    Timeout,
    /// The connection could not be opened (refused, unreachable, no such host).
    Connect(String),
    /// The TLS handshake failed (an untrusted certificate, say).
    Tls(String),
    /// The connection broke during the request.
    Io(String),
}

impl Failure {
    /// A short, fixed name of the kind, for the metrics' label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Io(_) => "io",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(status) => write!(f, "answered HTTP {status}"),
            Self::Timeout => f.write_str("no answer within the timeout"),
            Self::Connect(error) => write!(f, "cannot connect: {error}"),
            Self::Tls(error) => write!(f, "TLS: {error}"),
            Self::Io(error) => write!(f, "connection failed: {error}"),
        }
    }
}

/// One endpoint's connection.
pub struct Client {
    /// The endpoint.
    url: url::Url,
    /// For https endpoints: the TLS client.
    tls: Option<TlsConnector>,
    /// The kept connection; `None` until the first request and after a failure.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client of `url` (http or https, as checked by the config).
    pub fn new(url: url::Url) -> Self {
        let tls = (url.scheme() == "https").then(tls_connector);
        Self {
            url,
            tls,
            connection: None,
        }
    }

    /// POSTs `body` with `headers`, within `timeout` (connecting included). `Ok` only for a 2xx
    /// answer, whose body is read and dropped.
    pub async fn post(
        &mut self,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, Failure> {
        match tokio::time::timeout(timeout, self.try_post(headers, body)).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(failure)) => {
                self.connection = None;
                Err(failure)
            }
            Err(_) => {
                self.connection = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn try_post(
        &mut self,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, Failure> {
        match self.connection.take() {
            Some(kept) if !kept.is_closed() => {
                match self.send(kept, headers, body.clone()).await {
                    // The receiver closed the kept connection as the request went out (its
                    // keep-alive ran out): once more, on a new one, rather than a backoff. At
                    // least once allows the repeat, had it arrived.
                    Err(Failure::Io(_)) => {
                        let fresh = self.connect().await?;
                        self.send(fresh, headers, body).await
                    }
                    sent => sent,
                }
            }
            _ => {
                let fresh = self.connect().await?;
                self.send(fresh, headers, body).await
            }
        }
    }

    /// Sends one request on `connection`, keeping the connection if the answer was read whole.
    async fn send(
        &mut self,
        mut connection: SendRequest<Full<Bytes>>,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, Failure> {
        connection
            .ready()
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        let path = match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        };
        let mut request = Request::post(path)
            .header(hyper::header::HOST, self.host_header())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("storywire/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Failure::Io(e.to_string()))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        let status = response.status();
        // The answer is read up to a bound, so that the connection can carry the next request.
        let mut body = response.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Io(e.to_string()))?;
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_ANSWER_BYTES {
                // Not kept: the rest of a long answer would be read as the next one's start.
                return finish(status.as_u16());
            }
        }
        self.connection = Some(connection);
        finish(status.as_u16())
    }

    /// The `Host` header: the URL's host, with its port when not the scheme's.
    fn host_header(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// Opens a connection to the endpoint, over TLS for https.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let host = self.url.host_str().unwrap_or_default();
        // An IPv6 literal comes bracketed in a URL; the resolver wants it bare.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.url.port_or_known_default().unwrap_or(80);
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        // Each request is one small write; waiting to fill a segment only adds latency.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some(tls) => {
                let name = ServerName::try_from(bare.to_owned())
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                handshake(stream).await
            }
        }
    }
}

/// Starts HTTP/1.1 on `stream`; the connection's task ends when it closes.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Io(e.to_string()))?;
    tokio::spawn(async move {
        // Its failure shows as the request's.
        let _ = connection.await;
    });
    Ok(sender)
}

fn finish(status: u16) -> Result<u16, Failure> {
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(Failure::Status(status))
    }
}

/// A TLS client trusting the system's roots, HTTP/1.1 only (ALPN).
fn tls_connector() -> TlsConnector {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "webhooks: a system root certificate cannot be read");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("webhooks: no system root certificates: https endpoints will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

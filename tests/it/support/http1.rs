//! A plain HTTP/1.1 client for the HTTP face (`serve --http`) and for gRPC-Web on the gRPC port:
//! one request per connection, a whole reply for JSON, or a stream of Server-Sent Events read as
//! they arrive.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, body::Incoming, header::HeaderMap};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

use super::within;

/// A whole reply.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("JSON {e}: {}", self.body))
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// Its `id:`, if it had one.
    pub id: Option<String>,
    /// Its `event:` name; `None` for an unnamed (`message`) event.
    pub event: Option<String>,
    /// Its `data:` lines, joined.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("JSON {e}: {}", self.data))
    }
}

/// Sends `method path` with `headers` and `body` to `address` on a connection of its own; the
/// reply's head and its body still to read.
pub async fn send(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<Incoming> {
    send_from(address, None, method, path, headers, body).await
}

/// [`send`], from `local` (another loopback address: to the server, a peer of its own) when
/// given.
pub async fn send_from(
    address: SocketAddr,
    local: Option<IpAddr>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> hyper::Response<Incoming> {
    let stream = within("an HTTP connection", connect_from(address, local))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let what = format!("{method} {path}");
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).expect("a request");
    within(&what, sender.send_request(request))
        .await
        .expect("a reply")
}

/// `GET path`, read whole.
pub async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let response = send(address, Method::GET, path, headers, Bytes::new()).await;
    Reply::read(response).await
}

/// `OPTIONS path` with `headers`, as a browser's CORS preflight, read whole.
pub async fn options(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let response = send(address, Method::OPTIONS, path, headers, Bytes::new()).await;
    Reply::read(response).await
}

/// `GET path` from a client that takes gzip (`Accept-Encoding: gzip`), read whole: the reply,
/// its body gunzipped if the server gzipped it, and whether it did (`Content-Encoding: gzip`).
pub async fn get_gzip(address: SocketAddr, path: &str) -> (Reply, bool) {
    let headers = [("accept-encoding", "gzip")];
    let response = send(address, Method::GET, path, &headers, Bytes::new()).await;
    let gzipped = response
        .headers()
        .get("content-encoding")
        .is_some_and(|encoding| encoding == "gzip");
    if !gzipped {
        return (Reply::read(response).await, false);
    }
    let (head, body) = response.into_parts();
    let body = within("the body", body.collect())
        .await
        .expect("the body")
        .to_bytes();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .expect("a gzip stream of UTF-8");
    let reply = Reply {
        status: head.status.as_u16(),
        headers: head.headers,
        body: text,
    };
    (reply, true)
}

impl Reply {
    /// Reads `response` whole; its body must be UTF-8.
    async fn read(response: hyper::Response<Incoming>) -> Self {
        let (head, body) = response.into_parts();
        let body = within("the body", body.collect())
            .await
            .expect("the body")
            .to_bytes();
        Self {
            status: head.status.as_u16(),
            headers: head.headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8"),
        }
    }
}

/// An open event stream.
pub struct EventStream {
    /// The reply's headers.
    pub headers: HeaderMap,
    /// The body, read as it arrives.
    body: Incoming,
    /// Text received but not yet parsed into events.
    pending: String,
}

impl EventStream {
    /// `GET path` as an event stream; the whole reply if it is not a 200.
    pub async fn open(
        address: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Reply> {
        Self::open_from(address, None, path, headers).await
    }

    /// [`EventStream::open`] from `local`, another loopback address, when given.
    pub async fn open_from(
        address: SocketAddr,
        local: Option<IpAddr>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Reply> {
        let response = send_from(address, local, Method::GET, path, headers, Bytes::new()).await;
        if response.status() != 200 {
            return Err(Reply::read(response).await);
        }
        Ok(Self {
            headers: response.headers().clone(),
            body: response.into_body(),
            pending: String::new(),
        })
    }

    /// The next event (comments skipped); `None` once the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("id", value)) => event.id = Some(value.trim_start().to_owned()),
                        Some(("event", value)) => event.event = Some(value.trim_start().to_owned()),
                        Some(("data", value)) => data.push(value.trim_start().to_owned()),
                        _ => {}
                    }
                }
                if data.is_empty() && event.id.is_none() && event.event.is_none() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let frame = within("the next event", self.body.frame()).await?;
            if let Ok(data) = frame.expect("a frame").into_data() {
                self.pending
                    .push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// Reads events until one satisfies `wanted`; returns every event read, that one last.
    pub async fn until(&mut self, wanted: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut read = Vec::new();
        loop {
            let event = self.next().await.expect("the stream goes on");
            let done = wanted(&event);
            read.push(event);
            if done {
                return read;
            }
        }
    }
}

/// A TCP connection to `address`, from `local` when given (another loopback address).
pub async fn connect_from(
    address: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    match local {
        None => TcpStream::connect(address).await,
        Some(local) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(local, 0))?;
            socket.connect(address).await
        }
    }
}

/// `GET path` from `local` (another loopback address), with `headers`, on a connection of its
/// own; the whole reply.
pub async fn get_from(
    address: SocketAddr,
    local: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let response = send_from(
        address,
        Some(local),
        Method::GET,
        path,
        headers,
        Bytes::new(),
    )
    .await;
    Reply::read(response).await
}

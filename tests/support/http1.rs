//! A plain HTTP/1.1 client for the HTTP face (`serve --http`): one request per connection, a
//! whole reply for JSON, or a stream of Server-Sent Events read as they arrive.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Incoming, header::HeaderMap};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// Sends `GET path` with `headers` to `address`; the reply's head and its body still to read.
async fn send(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let stream = within("an HTTP connection", TcpStream::connect(address))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let mut request = Request::get(path).header("host", address.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<bytes::Bytes>::new())
        .expect("a request");
    within(&format!("GET {path}"), sender.send_request(request))
        .await
        .expect("a reply")
}

/// `GET path`, read whole.
pub async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let response = send(address, path, headers).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = within("the body", response.into_body().collect())
        .await
        .expect("the body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("UTF-8"),
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
        let response = send(address, path, headers).await;
        if response.status() != 200 {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            return Err(Reply {
                status,
                headers,
                body: String::from_utf8(body.to_vec()).expect("UTF-8"),
            });
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

//! gRPC-Web as a browser's client speaks it, framed by hand: a call over HTTP/1.1 on a connection
//! of its own, and the response's frames read as they arrive (over HTTP/1.1 or HTTP/2).
//!
//! A gRPC-Web body is a run of frames, each a flag byte, a 4-byte big-endian length and the
//! payload: flag 0 a message, flag 0x80 the trailers as HTTP/1 header lines. An error before any
//! message comes "trailers-only": the status in the response's headers and no frame at all.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{HeaderMap, Method, StatusCode, Version};

use super::{http1, within};

/// The content type of a gRPC-Web call with binary protobuf messages.
pub const CONTENT_TYPE: &str = "application/grpc-web+proto";

/// The headers every gRPC-Web call sends: the framing, and the client's name.
pub const HEADERS: [(&str, &str); 3] = [
    ("content-type", CONTENT_TYPE),
    ("x-grpc-web", "1"),
    ("x-user-agent", "storywire-tests"),
];

/// The flag of a frame that carries the trailers.
const TRAILERS: u8 = 0x80;

/// `message` as a gRPC-Web request body: one message frame.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + encoded.len());
    body.extend_from_slice(&[0]);
    body.extend_from_slice(&u32::try_from(encoded.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&encoded);
    body.freeze()
}

/// One frame of a response.
#[derive(Debug)]
pub enum Frame {
    /// A message, still encoded.
    Message(Bytes),
    /// The trailers, as `name: value` lines (names lowercased), which end the call.
    Trailers(Vec<(String, String)>),
}

/// A response to a gRPC-Web call: its head, and its body read a frame at a time.
pub struct Response<B> {
    /// The HTTP status (200 for any call the server took, whatever its gRPC status).
    pub status: StatusCode,
    /// The HTTP version it came over.
    pub version: Version,
    /// Its headers: `grpc-status` is here for a trailers-only answer.
    pub headers: HeaderMap,
    /// The body.
    body: B,
    /// Bytes received but not yet parsed into frames.
    pending: BytesMut,
}

/// Calls `path` (`/package.Service/Method`) with `message` over HTTP/1.1, as a browser's
/// gRPC-Web client would, with `headers` besides the ones every call sends.
pub async fn call(
    address: SocketAddr,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> Response<hyper::body::Incoming> {
    let mut all = HEADERS.to_vec();
    all.extend_from_slice(headers);
    let response = http1::send(address, Method::POST, path, &all, frame(message)).await;
    Response::new(response)
}

impl<B> Response<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    /// A response whose body is still to read.
    pub fn new(response: hyper::Response<B>) -> Self {
        let (head, body) = response.into_parts();
        Self {
            status: head.status,
            version: head.version,
            headers: head.headers,
            body,
            pending: BytesMut::new(),
        }
    }

    /// A header's value as text, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("ASCII"))
    }

    /// The next frame; `None` once the body ends.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.pending.len() >= 5 {
                let length = u32::from_be_bytes(self.pending[1..5].try_into().expect("4 bytes"));
                let length = usize::try_from(length).expect("fits");
                if self.pending.len() >= 5 + length {
                    let flag = self.pending.get_u8();
                    self.pending.advance(4);
                    let payload = self.pending.split_to(length).freeze();
                    return Some(if flag & TRAILERS == 0 {
                        Frame::Message(payload)
                    } else {
                        Frame::Trailers(trailers(&payload))
                    });
                }
            }
            let frame = within("the next gRPC-Web frame", self.body.frame()).await;
            match frame {
                None => {
                    assert!(self.pending.is_empty(), "the body ends inside a frame");
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.expect("a frame of the body").into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next frame, which must be a message of type `T`.
    pub async fn message<T: prost::Message + Default>(&mut self) -> T {
        match self.next().await {
            Some(Frame::Message(payload)) => T::decode(payload).expect("a message of its type"),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The call's gRPC status: from the trailers frame that must come next, or, for a
    /// trailers-only answer, from the headers (the body then holds no frame). The code, and the
    /// message if any.
    pub async fn status(&mut self) -> (String, Option<String>) {
        if let Some(code) = self.header("grpc-status") {
            let code = code.to_owned();
            let message = self.header("grpc-message").map(str::to_owned);
            assert!(self.next().await.is_none(), "trailers-only, yet a frame");
            return (code, message);
        }
        match self.next().await {
            Some(Frame::Trailers(trailers)) => {
                let find = |name: &str| {
                    trailers
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| value.clone())
                };
                (
                    find("grpc-status").expect("grpc-status"),
                    find("grpc-message"),
                )
            }
            other => panic!("expected the trailers, got {other:?}"),
        }
    }
}

/// The `name: value` lines of a trailers frame.
fn trailers(payload: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(payload)
        .expect("trailers are text")
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').expect("name: value");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect()
}

//! An HTTP/2 client written by hand, frame by frame, for the tests that must do what no
//! well-behaved client does: leave a request unfinished, reset streams in a burst, send malformed
//! headers, or stop answering pings. Header blocks use HPACK literals without Huffman coding, so
//! no encoder state is needed.

use std::net::{IpAddr, SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Frame types (RFC 9113, section 6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

/// Flags.
pub const ACK: u8 = 0x1;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113, section 7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as it came off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }
}

/// A raw HTTP/2 connection to a test server.
pub struct RawPeer {
    socket: TcpStream,
    /// Bytes read but not yet returned as whole frames.
    received: Vec<u8>,
}

impl RawPeer {
    /// Connects and says hello: the client preface and an empty SETTINGS frame. It acknowledges
    /// nothing by itself; see [`RawPeer::answer`].
    pub async fn connect(address: SocketAddr) -> Self {
        Self::say_hello(TcpStream::connect(address).await.expect("connect")).await
    }

    /// Like [`RawPeer::connect`], from `local`, another loopback address: to the server, a peer
    /// of its own.
    pub async fn connect_from(address: SocketAddr, local: IpAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind a loopback address");
        Self::say_hello(socket.connect(address).await.expect("connect")).await
    }

    async fn say_hello(socket: TcpStream) -> Self {
        // Each write goes out at once: Nagle's algorithm would hold a small write back until
        // the server's delayed ACK of the one before (40 ms).
        socket.set_nodelay(true).expect("TCP_NODELAY");
        let mut peer = Self {
            socket,
            received: Vec::new(),
        };
        peer.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        peer.send(&frame(SETTINGS, 0, 0, &[])).await;
        peer
    }

    /// Writes `bytes` in one go, so that a burst of frames reaches the server together. A write
    /// error is not a failure here: a server may hang up mid-burst, and what it said before it
    /// did is still there to read.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.socket.write_all(bytes).await;
    }

    /// The next whole frame, or `None` once the server has closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.received.len() >= 9 {
                let length =
                    u32::from_be_bytes([0, self.received[0], self.received[1], self.received[2]])
                        as usize;
                if self.received.len() >= 9 + length {
                    let header: Vec<u8> = self.received.drain(..9).collect();
                    return Some(Frame {
                        kind: header[3],
                        flags: header[4],
                        stream: u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"))
                            & 0x7fff_ffff,
                        payload: self.received.drain(..length).collect(),
                    });
                }
            }
            let mut buffer = [0; 16 * 1024];
            match self.socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => self.received.extend_from_slice(&buffer[..read]),
            }
        }
    }

    /// Acknowledges `frame` if it is a SETTINGS or a PING, as a live peer must.
    pub async fn answer(&mut self, frame: &Frame) {
        if frame.flags & ACK != 0 {
            return;
        }
        match frame.kind {
            SETTINGS => self.send(&self::frame(SETTINGS, ACK, 0, &[])).await,
            PING => self.send(&self::frame(PING, ACK, 0, &frame.payload)).await,
            _ => {}
        }
    }
}

/// One frame, ready to send.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A HEADERS frame (END_HEADERS, not END_STREAM) opening `stream` with `fields`.
pub fn headers(stream: u32, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00); // literal header field without indexing, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, END_HEADERS, stream, &block)
}

/// A HEADERS frame opening `stream` as a gRPC call to `path`: a request whose body never comes.
pub fn grpc_call(stream: u32, path: &str) -> Vec<u8> {
    grpc_call_with(stream, path, &[])
}

/// Like [`grpc_call`], with `extra` header fields, e.g. `("grpc-timeout", "100m")`.
pub fn grpc_call_with(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(extra);
    headers(stream, &fields)
}

/// A DATA frame carrying `message` as one uncompressed gRPC message and ending `stream`'s request.
pub fn grpc_message(stream: u32, message: &[u8]) -> Vec<u8> {
    let mut payload = vec![0];
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message);
    frame(DATA, END_STREAM, stream, &payload)
}

/// A RST_STREAM frame ending `stream` with `code`.
pub fn reset(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A PING frame carrying `data`.
pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

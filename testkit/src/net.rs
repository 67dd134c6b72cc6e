//! Loopback ports and plain HTTP GETs: enough to read a monitoring endpoint (nats-server's
//! `/healthz` and `/jsz`, storywire's `/metrics`) without an HTTP client crate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

/// `count` distinct free loopback ports: all bound at once, so that the system hands out no port
/// twice, then released for the caller's servers to bind. Another process may take one in
/// between; a caller that cannot afford that starts again on new ports.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect()
}

/// GETs `path` from loopback port `port` with HTTP/1.0, so that the server closes the connection
/// after one plain (not chunked) body. Returns the status and the body, or `None` if the server
/// cannot be reached (yet) or answers something unreadable.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_from(IpAddr::V4(Ipv4Addr::LOCALHOST), port, path).await
}

/// [`get`], from the loopback address `local` (a server may count its clients by address).
pub async fn get_from(local: IpAddr, port: u16, path: &str) -> Option<(u16, String)> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(local, 0)).ok()?;
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// [`get`], and a 200 answer parsed as JSON.
pub async fn get_json(port: u16, path: &str) -> Option<Value> {
    match get(port, path).await? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

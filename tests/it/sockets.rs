//! The socket options of the connections the server accepts, read back from the sockets
//! themselves: what the server configures must be what the running process has.
//!
//! The server runs in this process, so its accepted sockets are this process's descriptors: the
//! test finds them in `/proc/self/fd` by their local port and asks the kernel for their options.

use crate::support;

use std::{
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::RawFd,
    sync::Arc,
    time::Duration,
};

use storywire::{
    clock::SystemClock,
    cors::Origins,
    http::HttpOptions,
    limits::Limits,
    log::{DEFAULT_RETAIN_EVENTS, EventLog},
    server::{self, ServerOptions},
};
use support::{TestServer, http1::EventStream, open, publish, within};
use tokio::{net::TcpListener, sync::oneshot};

/// The address a socket descriptor is bound to (`getsockname`) or connected to (`getpeername`),
/// when it is an IPv4 TCP socket.
fn address_of(
    fd: RawFd,
    which: unsafe extern "C" fn(
        libc::c_int,
        *mut libc::sockaddr,
        *mut libc::socklen_t,
    ) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: `address` is a properly sized, writable sockaddr_in, and `length` says so.
    unsafe {
        let mut address: libc::sockaddr_in = std::mem::zeroed();
        let mut length = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let got = which(fd, (&raw mut address).cast(), &mut length);
        (got == 0 && i32::from(address.sin_family) == libc::AF_INET).then(|| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
                u16::from_be(address.sin_port),
            ))
        })
    }
}

/// An integer socket option of `fd`.
fn option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut value: libc::c_int = 0;
    let mut length = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a writable c_int and `length` says so.
    let got = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut length) };
    assert_eq!(got, 0, "getsockopt({fd}, {level}, {name})");
    value
}

/// The descriptors of this process that are connections accepted on `server`: bound to its
/// address and connected to a peer (the listening socket has none).
fn accepted_on(server: SocketAddr) -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            address_of(fd, libc::getsockname) == Some(server)
                && address_of(fd, libc::getpeername).is_some()
        })
        .collect()
}

#[tokio::test]
async fn accepted_connections_have_nagle_off_and_keepalive_on() {
    let keepalive = Duration::from_secs(17);
    let server = TestServer::with_options(ServerOptions {
        limits: Limits {
            keepalive_interval: keepalive,
            ..Limits::default()
        },
        ..ServerOptions::default()
    })
    .await;
    // Two connections, each having made a call, so both are accepted and served.
    let mut first = server.client().await;
    let mut second = server.client().await;
    publish(&mut first, open("sockets-one", &[])).await;
    publish(&mut second, open("sockets-two", &[])).await;

    let accepted = accepted_on(server.address);
    assert_eq!(
        accepted.len(),
        2,
        "one accepted socket per client connection"
    );
    for fd in accepted {
        assert_configured(fd, keepalive, "accepted socket");
    }
}

/// Asserts that the accepted socket `fd` has Nagle's algorithm off and keepalive after `idle`.
fn assert_configured(fd: RawFd, idle: Duration, what: &str) {
    assert_eq!(
        option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        1,
        "TCP_NODELAY on {what} {fd}: small messages must not wait for a delayed ACK"
    );
    assert_eq!(
        option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        1,
        "SO_KEEPALIVE on {what} {fd}"
    );
    assert_eq!(
        option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        idle.as_secs() as libc::c_int,
        "TCP keepalive idle time on {what} {fd}: the configured keepalive interval"
    );
}

#[tokio::test]
async fn the_http_face_s_connections_have_nagle_off_and_keepalive_on() {
    let keepalive = Duration::from_secs(19);
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_address = http.local_addr().unwrap();
    let log = Arc::new(EventLog::new(DEFAULT_RETAIN_EVENTS, Arc::new(SystemClock)));
    let http_options = HttpOptions {
        tokens: None,
        public_read: false,
        cors: Origins::default(),
        metrics_public: false,
    };
    let options = ServerOptions {
        limits: Limits {
            keepalive_interval: keepalive,
            ..Limits::default()
        },
        ..ServerOptions::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server::run_with_http(
        grpc,
        Some((http, http_options)),
        log,
        options,
        async move {
            let _ = stopped.await;
        },
    ));

    // A live page's event stream: Server-Sent Events are small writes, one per event.
    let events = within(
        "the event stream to open",
        EventStream::open(http_address, "/v1/events?from_sequence=1", &[]),
    )
    .await
    .expect("a 200");
    let accepted = accepted_on(http_address);
    assert_eq!(
        accepted.len(),
        1,
        "one accepted socket for the event stream"
    );
    assert_configured(accepted[0], keepalive, "the HTTP face's accepted socket");

    drop(events);
    stop.send(()).unwrap();
    within("the server to stop", served)
        .await
        .unwrap()
        .expect("served");
}

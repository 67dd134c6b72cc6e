//! The public edge under hostile clients, against the `storywire` binary: one address that floods
//! both faces with connections that send nothing (or a byte now and then) cannot keep a reader
//! from another address out; connections idle after a request are closed while a reader that
//! reads stays; one address holds at most its share, and behind a trusted proxy each forwarded
//! client holds its own.

use crate::process;
use crate::support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use process::{HttpServer, Running, curl, storywire, storywire_under};
use storywire::{descriptors, pb};
use support::{http1, http2, open, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

/// The flooding host.
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// Everyone else.
const READER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// How long a reader from another address may wait while the flood is on.
const SERVED_WITHIN: Duration = Duration::from_secs(2);

/// The value of the sample `name{labels}` in a Prometheus text scrape (0 when absent).
fn sample(scrape: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Closes counted for `reason` on both faces.
fn closed(scrape: &str, reason: &str) -> f64 {
    ["grpc", "http"]
        .iter()
        .map(|face| {
            sample(
                scrape,
                "storywire_connections_closed_total",
                &format!("face=\"{face}\",reason=\"{reason}\""),
            )
        })
        .sum()
}

/// A scrape of `/metrics`, from the reader's address.
async fn scrape(http: SocketAddr) -> String {
    let reply = http1::get_from(http, READER, "/metrics", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// `count` connections from the flooder to each of `addresses`, all at once. With `trickle`,
/// each sends one byte of a request head every 3 s (a slow-header client) until the returned
/// task is aborted or 60 s have passed; without, they are returned as they are.
async fn flood(
    addresses: &[SocketAddr],
    count: usize,
    trickle: bool,
) -> (Vec<TcpStream>, Option<JoinHandle<()>>) {
    let connects = addresses
        .iter()
        .flat_map(|&address| (0..count).map(move |_| http1::connect_from(address, Some(FLOODER))));
    let mut held: Vec<TcpStream> = join_all(connects).await.into_iter().flatten().collect();
    // The kernel completes every connection in the backlog, so each one counts, refused or not.
    assert_eq!(held.len(), addresses.len() * count, "connections completed");
    if !trickle {
        return (held, None);
    }
    let writers = std::mem::take(&mut held);
    let task = tokio::spawn(async move {
        let mut writers = writers;
        let started = Instant::now();
        let head = b"GET /v1/stories HTTP/1.1\r\n";
        let mut at = 0;
        while started.elapsed() < Duration::from_secs(60) && !writers.is_empty() {
            let byte = [head[at % head.len()]];
            let mut open = Vec::with_capacity(writers.len());
            for mut writer in writers {
                if writer.write_all(&byte).await.is_ok() {
                    open.push(writer);
                }
            }
            writers = open;
            at += 1;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });
    (held, Some(task))
}

/// The reader from another address is served while the flood is on: the story list over HTTP,
/// GetStory over gRPC, and a live event over SSE, each within [`SERVED_WITHIN`].
async fn another_reader_is_served(server: &HttpServer) {
    let grpc = format!("http://{}", server.grpc.trim_start_matches("http://"));
    let endpoint = tonic::transport::Channel::from_shared(grpc)
        .expect("a URL")
        .local_address(Some(READER));
    let served = tokio::time::timeout(SERVED_WITHIN, async {
        let channel = endpoint
            .connect()
            .await
            .expect("connect from the reader's address");
        let mut client = pb::story_service_client::StoryServiceClient::new(channel);
        client
            .get_story(pb::GetStoryRequest {
                story_id: "flood".into(),
                ..Default::default()
            })
            .await
            .expect("GetStory");
        client
    })
    .await;
    let mut client = served.expect("GetStory from another address within 2 s");

    let listed = tokio::time::timeout(
        SERVED_WITHIN,
        http1::get_from(server.http, READER, "/v1/stories", &[]),
    )
    .await
    .expect("GET /v1/stories from another address within 2 s");
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(listed.body.contains("flood"), "{listed:?}");

    let mut events = tokio::time::timeout(
        SERVED_WITHIN,
        http1::EventStream::open_from(server.http, Some(READER), "/v1/events?story=flood", &[]),
    )
    .await
    .expect("an SSE stream from another address within 2 s")
    .expect("a 200");
    let note = support::note("flood", "still live");
    client.publish(note).await.expect("publish");
    tokio::time::timeout(
        SERVED_WITHIN,
        events.until(|event| event.event.is_none() && event.data.contains("still live")),
    )
    .await
    .expect("the live event over SSE within 2 s");
}

/// A server under an open-files limit of 1,100 with its HTTP face, a story open, and the test's
/// own limit raised for the flood.
async fn server_under_1100(extra: &[&str]) -> HttpServer {
    descriptors::raise_open_files_limit().expect("room for the test's own connections");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let process = Running::spawn(storywire_under("-n 1100", &args));
    let server = HttpServer::from_process(process).await;
    let mut client = server.client().await;
    client.publish(open("flood", &[])).await.expect("open");
    server
}

/// Waits until every held connection has been closed by the server; returns how long it took.
async fn all_closed(held: Vec<TcpStream>) -> Duration {
    let started = Instant::now();
    let reads = held.into_iter().map(|mut tcp| async move {
        let mut buffer = [0; 64];
        // An end of file or a reset: either way, closed by the server.
        while let Ok(read) = tcp.read(&mut buffer).await {
            if read == 0 {
                break;
            }
        }
    });
    within("the server to close the flood", join_all(reads)).await;
    started.elapsed()
}

async fn one_address_floods_both_faces(trickle: bool) {
    let header_timeout = 4;
    let server = server_under_1100(&["--header-timeout", &header_timeout.to_string()]).await;
    let grpc: SocketAddr = server.grpc.trim_start_matches("http://").parse().unwrap();
    let (held, trickling) = flood(&[grpc, server.http], 600, trickle).await;

    another_reader_is_served(&server).await;

    // The default share per address (256) refused most of the flood at once; the rest is closed
    // by the header timeout.
    let refused = closed(&scrape(server.http).await, "per_address_limit");
    assert!(
        refused >= 900.0,
        "{refused} refused for the address's share"
    );
    if let Some(trickling) = trickling {
        let deadline = Instant::now() + Duration::from_secs(header_timeout + 5);
        loop {
            let timed_out = closed(&scrape(server.http).await, "header_timeout");
            if timed_out >= 250.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{timed_out} closed by the header timeout"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        trickling.abort();
    } else {
        let took = all_closed(held).await;
        assert!(
            took < Duration::from_secs(header_timeout + 5),
            "the flood was closed after {took:?}"
        );
        let timed_out = closed(&scrape(server.http).await, "header_timeout");
        assert!(
            timed_out >= 250.0,
            "{timed_out} closed by the header timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_from_one_address_leave_room_for_another_and_are_closed() {
    one_address_floods_both_faces(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_from_one_address_leave_room_for_another_and_are_closed() {
    one_address_floods_both_faces(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_share_per_address_the_server_sheds_silent_connections_for_a_new_reader() {
    let server = server_under_1100(&["--max-connections-per-ip", "0"]).await;
    let (_held, _) = flood(&[server.http], 1_200, false).await;
    another_reader_is_served(&server).await;
    let scrape = scrape(server.http).await;
    assert!(closed(&scrape, "shed") >= 100.0, "{scrape}");
    assert_eq!(closed(&scrape, "per_address_limit"), 0.0, "{scrape}");
}

/// Reads a whole HTTP/1.1 response with a Content-Length from `tcp`, leaving the connection open.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                return text;
            }
        }
        let read = within("the response", tcp.read(&mut buffer))
            .await
            .expect("read");
        assert!(read > 0, "closed mid-response: {text}");
        received.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_idle_after_a_request_are_closed_and_a_reading_sse_reader_stays() {
    let idle = Duration::from_secs(2);
    let server = HttpServer::start(&["--idle-timeout", "2"]).await;
    let mut client = server.client().await;
    client.publish(open("idle", &[])).await.expect("open");
    let mut reader = http1::EventStream::open(server.http, "/v1/events?story=idle", &[])
        .await
        .expect("a 200");

    // HTTP/1.1, kept alive after one request.
    let mut kept = TcpStream::connect(server.http).await.expect("connect");
    let sent = Instant::now();
    kept.write_all(b"GET /v1/stories HTTP/1.1\r\nHost: storywire\r\n\r\n")
        .await
        .expect("send");
    let reply = read_response(&mut kept).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // h2c with prior knowledge, idle after one request.
    let mut h2 = http2::RawPeer::connect(server.http).await;
    h2.send(&h2_get(1, "/v1/stories")).await;
    let mut answered = false;
    let mut goaway = false;
    while let Some(frame) = within("the h2c connection's frames", h2.next_frame()).await {
        h2.answer(&frame).await;
        if frame.kind == http2::HEADERS && frame.stream == 1 {
            answered = true;
        }
        if frame.kind == http2::GOAWAY {
            goaway = true;
        }
    }
    let h2_closed = sent.elapsed();
    assert!(answered && goaway, "answered {answered}, GOAWAY {goaway}");

    let mut buffer = [0; 16];
    let read = within("the kept-alive connection to close", kept.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let h1_closed = sent.elapsed();
    for took in [h1_closed, h2_closed] {
        assert!(
            took >= idle && took < idle + Duration::from_secs(5),
            "closed after {took:?}"
        );
    }

    // The SSE reader, reading all along, is still connected.
    client
        .publish(support::note("idle", "after the idle timeout"))
        .await
        .expect("publish");
    reader
        .until(|event| event.data.contains("after the idle timeout"))
        .await;
}

/// Whether the server closed `tcp` (an end of file or a reset) rather than keep it.
async fn refused(mut tcp: TcpStream) -> bool {
    let mut buffer = [0; 16];
    matches!(
        within("a refused connection to close", tcp.read(&mut buffer)).await,
        Ok(0) | Err(_)
    )
}

/// `GET /v1/stories` on `tcp` with `X-Forwarded-For: forwarded`, kept alive; the response.
async fn get_forwarded(tcp: &mut TcpStream, forwarded: &str) -> String {
    let request = format!(
        "GET /v1/stories HTTP/1.1\r\nHost: storywire\r\nX-Forwarded-For: {forwarded}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    read_response(tcp).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_its_share_and_another_is_served() {
    let server = HttpServer::start(&["--max-connections-per-ip", "100"]).await;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(server.http).await.expect("connect");
        let reply = get_forwarded(&mut tcp, "203.0.113.1").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        held.push(tcp);
    }
    let extra = TcpStream::connect(server.http).await.expect("connect");
    assert!(
        refused(extra).await,
        "the 101st connection from one address"
    );
    let reply = http1::get_from(server.http, READER, "/v1/stories", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let scrape = scrape(server.http).await;
    assert_eq!(closed(&scrape, "per_address_limit"), 1.0, "{scrape}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_holds_its_own_share() {
    let server = HttpServer::start(&[
        "--max-connections-per-ip",
        "100",
        "--trusted-proxy",
        "127.0.0.1/32",
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut tcp = TcpStream::connect(server.http).await.expect("connect");
        let reply = get_forwarded(&mut tcp, "198.51.100.7, 203.0.113.1").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        held.push(tcp);
    }
    // The proxy itself is not held to the share: its next connection, for the same client, is
    // refused by that client's count, with a response that says when to come back.
    let mut same = TcpStream::connect(server.http).await.expect("connect");
    let reply = get_forwarded(&mut same, "203.0.113.1").await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: "),
        "{reply}"
    );
    assert!(
        reply.contains("RESOURCE_EXHAUSTED") && reply.contains("--max-connections-per-ip"),
        "{reply}"
    );
    // Another client through the same proxy has a share of its own.
    let mut other = TcpStream::connect(server.http).await.expect("connect");
    let reply = get_forwarded(&mut other, "203.0.113.2").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // From a peer that is not a trusted proxy the header means nothing: it counts as itself.
    let mut untrusted = http1::connect_from(server.http, Some(READER))
        .await
        .expect("connect");
    let reply = get_forwarded(&mut untrusted, "203.0.113.1").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test]
async fn the_connection_flags_refuse_nonsense_naming_the_flag() {
    for (flag, value) in [
        ("--header-timeout", "0"),
        ("--idle-timeout", "-1.5"),
        ("--max-connections", "0"),
        ("--trusted-proxy", "10.0.0.0/40"),
        ("--trusted-proxy", "proxy.example"),
    ] {
        let argument = format!("{flag}={value}");
        let finished =
            process::run(storywire(&["serve", "--listen", "127.0.0.1:0", &argument])).await;
        let stderr = finished.failure(2);
        assert!(
            stderr.contains("invalid value") && stderr.contains(flag),
            "{flag} {value}: {stderr}"
        );
    }
}

#[tokio::test]
async fn without_tls_the_http_face_speaks_http2_with_prior_knowledge() {
    let server = HttpServer::start(&[]).await;
    let out = curl(&[
        "--http2-prior-knowledge",
        "--write-out",
        "\n%{http_version}",
        &format!("http://{}/v1/stories", server.http),
    ])
    .await;
    let (body, version) = out.rsplit_once('\n').expect("a version line");
    assert_eq!(version, "2", "{out}");
    serde_json::from_str::<serde_json::Value>(body).expect("JSON");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_face_pings_and_drops_an_http2_reader_that_stopped_answering() {
    let server = HttpServer::start(&[
        "--keepalive-interval-secs",
        "1",
        "--keepalive-timeout-secs",
        "1",
    ])
    .await;
    // An h2c reader with a live event stream open (so never idle), which answers nothing: not
    // the server's SETTINGS, not its pings.
    let mut peer = http2::RawPeer::connect(server.http).await;
    peer.send(&h2_get(1, "/v1/events")).await;
    let mut pinged = false;
    within(
        "the server to hang up on a peer that does not answer",
        async {
            while let Some(frame) = peer.next_frame().await {
                pinged |= frame.kind == http2::PING && frame.flags & http2::ACK == 0;
            }
        },
    )
    .await;
    assert!(pinged, "closed without a ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_new_connection_is_refused_and_readers_keep_theirs() {
    let server =
        HttpServer::start(&["--max-connections", "10", "--max-connections-per-ip", "0"]).await;
    // Ten readers with a stream in flight: none is shed to make room.
    let mut readers = Vec::new();
    for _ in 0..10 {
        let reader = http1::EventStream::open(server.http, "/v1/events", &[])
            .await
            .expect("a 200");
        readers.push(reader);
    }
    let extra = TcpStream::connect(server.http).await.expect("connect");
    assert!(refused(extra).await, "the 11th connection");
    // One reader gone, there is room again; /metrics counted the refusal.
    drop(readers.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let mut tcp = TcpStream::connect(server.http).await.expect("connect");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: storywire\r\n\r\n")
            .await
            .expect("send");
        // Refused: an end of file or a reset before any byte; served: the reply.
        let mut first = [0; 1];
        if let Ok(1..) = within("a reply or a refusal", tcp.peek(&mut first)).await {
            break read_response(&mut tcp).await;
        }
        assert!(Instant::now() < deadline, "no room after a reader left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(closed(&scrape, "total_limit") >= 1.0, "{scrape}");
    assert_eq!(closed(&scrape, "shed"), 0.0, "{scrape}");
    // The readers that stayed still read.
    let mut client = server.client().await;
    client.publish(open("full", &[])).await.expect("publish");
    for reader in &mut readers {
        reader.until(|event| event.data.contains("\"full\"")).await;
    }
}

/// A whole HTTP/2 GET of `path` on `stream` (HEADERS with END_STREAM), as an event stream reader
/// sends it.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let request = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "storywire"),
        ("accept", "text/event-stream"),
    ];
    let mut headers = http2::headers(stream, &request);
    headers[4] |= http2::END_STREAM;
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_sse_streams_within_the_shutdown_grace() {
    let mut server = HttpServer::start(&["--shutdown-grace", "5"]).await;
    let mut client = server.client().await;
    client.publish(open("ending", &[])).await.expect("open");
    // One reader that reads, and one over HTTP/2 that never reads nor answers anything: the
    // grace must bound the wait for it.
    let mut reader = http1::EventStream::open(server.http, "/v1/events?story=ending", &[])
        .await
        .expect("a 200");
    reader
        .until(|event| event.event.as_deref() == Some("caught_up"))
        .await;
    let mut stalled = http2::RawPeer::connect(server.http).await;
    stalled.send(&h2_get(1, "/v1/events?from_sequence=1")).await;
    drop(client);

    let started = Instant::now();
    server.process.terminate().await;
    // The reading reader is told the stream ended, as gRPC's Subscribe is, with UNAVAILABLE.
    let ending = reader
        .until(|event| event.event.as_deref() == Some("end"))
        .await;
    let end = ending.last().expect("the end event").json();
    assert_eq!(end["code"], "UNAVAILABLE", "{end}");
    assert!(
        reader.next().await.is_none(),
        "the stream closed after its end event"
    );
    let status = server.process.wait().await;
    assert!(status.success(), "exit on SIGTERM: {status}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5 + 5), "stopped after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_gauges_come_back_to_what_is_open_after_readers_leave() {
    let server = HttpServer::start(&[]).await;
    // Readers over HTTP/2 and HTTP/1.1 with streams in flight, then gone.
    let mut peers = Vec::new();
    for _ in 0..5 {
        let mut peer = http2::RawPeer::connect(server.http).await;
        peer.send(&h2_get(1, "/v1/events")).await;
        peers.push(peer);
    }
    for peer in &mut peers {
        while let Some(frame) = peer.next_frame().await {
            if frame.kind == http2::HEADERS && frame.stream == 1 {
                break;
            }
        }
    }
    let readers: Vec<_> =
        join_all((0..5).map(|_| http1::EventStream::open(server.http, "/v1/events", &[]))).await;
    drop(peers);
    drop(readers);
    // Only the scrape itself is open, in flight on the HTTP face, once the server has seen the
    // others go; each state counts what is really in it, never below zero.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(server.http).await;
        let gauge = |face: &str, state: &str| {
            sample(
                &scrape,
                "storywire_connections_open",
                &format!("face=\"{face}\",state=\"{state}\""),
            )
        };
        let http = [
            gauge("http", "awaiting_request"),
            gauge("http", "active"),
            gauge("http", "idle"),
        ];
        if http == [0.0, 1.0, 0.0] {
            break;
        }
        assert!(
            http.iter().all(|count| *count >= 0.0) && Instant::now() < deadline,
            "the HTTP face's gauges (awaiting, active, idle): {http:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

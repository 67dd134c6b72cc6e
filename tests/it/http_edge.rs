//! The HTTP face of the real binary at its edges: every refusal is the JSON error, including
//! those axum makes by itself; `Last-Event-ID` and `from_sequence` at the top of the range are
//! refused, never wrapped; and published text cannot change how the live page parses.

use crate::process;
use crate::support;

use http_body_util::BodyExt as _;
use hyper::Method;
use process::HttpServer as Server;
use storywire::pb;
use support::{
    change_mut,
    http1::{EventStream, Reply, get, send},
    open, report,
};

/// The greatest sequence there can be (2^64 - 1).
const LAST_SEQUENCE: &str = "18446744073709551615";

/// Text that, unescaped in a `<script>` block, would change how the page parses: a comment
/// opener followed by a script tag (and no `-->`) puts the HTML parser where the next
/// `</script>` no longer ends the block; the rest are every character a script block must not
/// carry raw.
const HOSTILE: &str = "<!--<script> </script> &\u{2028}\u{2029}";

/// Asserts that `reply` is the JSON error with `code`, under `status`.
fn assert_json_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.headers["content-type"], "application/json",
        "{reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["code"], code, "{reply:?}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reply:?}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(2),
        "only code and message: {reply:?}"
    );
}

#[tokio::test]
async fn every_refusal_is_the_json_error_even_those_axum_makes_itself() {
    let server = Server::start(&[]).await;

    // Invalid UTF-8 in a path id: axum's extractor refuses it.
    let invalid = get(server.http, "/v1/stories/%FF%FE", &[]).await;
    assert_json_error(&invalid, 400, "INVALID_ARGUMENT");
    let invalid_page = get(server.http, "/stories/%FF", &[]).await;
    assert_json_error(&invalid_page, 400, "INVALID_ARGUMENT");

    // A route that does not exist.
    let unknown = get(server.http, "/v1/nothing-here", &[]).await;
    assert_json_error(&unknown, 404, "NOT_FOUND");
    assert!(unknown.body.contains("/v1/nothing-here"), "{unknown:?}");

    // A method the route does not take keeps its Allow header.
    let response = send(
        server.http,
        Method::POST,
        "/v1/stories",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    let (head, body) = response.into_parts();
    let body = support::within("the body", body.collect())
        .await
        .expect("the body")
        .to_bytes();
    let wrong_method = Reply {
        status: head.status.as_u16(),
        body: String::from_utf8(body.to_vec()).expect("UTF-8"),
        headers: head.headers,
    };
    let allow = wrong_method.headers.get("allow");
    assert_json_error(&wrong_method, 405, "UNIMPLEMENTED");
    assert!(allow.is_some(), "{wrong_method:?}");

    let wrong_method = send(
        server.http,
        Method::POST,
        "/v1/events",
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["content-type"], "application/json");

    // A missing story's page, asked for by a tool rather than a browser.
    let missing = get(server.http, "/stories/nope", &[]).await;
    assert_json_error(&missing, 404, "NOT_FOUND");
    // A browser gets a page saying so, under the same status.
    let browser = get(
        server.http,
        "/stories/nope",
        &[("accept", "text/html,application/xhtml+xml")],
    )
    .await;
    assert_eq!(browser.status, 404);
    assert!(
        browser.headers["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html")),
        "{browser:?}"
    );
}

#[tokio::test]
async fn sequences_at_the_top_of_the_range_are_out_of_range_never_wrapped() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");

    // 2^64 - 1 as the last id seen: the next would be 2^64, which must not wrap to 0 and
    // replay the whole log.
    let wrapped = EventStream::open(
        server.http,
        "/v1/events",
        &[("last-event-id", LAST_SEQUENCE)],
    )
    .await
    .err()
    .expect("refused");
    assert_json_error(&wrapped, 400, "OUT_OF_RANGE");
    let before = EventStream::open(
        server.http,
        "/v1/events",
        &[("last-event-id", "18446744073709551614")],
    )
    .await
    .err()
    .expect("refused");
    assert_json_error(&before, 400, "OUT_OF_RANGE");

    let from = EventStream::open(
        server.http,
        &format!("/v1/events?from_sequence={LAST_SEQUENCE}"),
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_json_error(&from, 400, "OUT_OF_RANGE");
}

#[tokio::test]
async fn published_text_cannot_end_or_swallow_the_json_ld_block() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    let mut opening = open("alpha", &["politics"]);
    if let pb::change::Kind::StoryOpened(opened) = change_mut(&mut opening) {
        opened.headline = format!("Headline {HOSTILE}");
        opened.summary = format!("Summary {HOSTILE}");
    }
    opening.headline = format!("Opened {HOSTILE}");
    client.publish(opening).await.expect("open");
    let mut fact = report("alpha", "f1");
    fact.headline = format!("Reported {HOSTILE}");
    if let pb::change::Kind::FactReported(reported) = change_mut(&mut fact) {
        reported.statement = format!("Statement {HOSTILE}");
    }
    client.publish(fact).await.expect("report");

    let page = get(server.http, "/stories/alpha", &[]).await;
    assert_eq!(page.status, 200);
    let open_tag = r#"<script type="application/ld+json" id="jsonld">"#;
    let start = page.body.find(open_tag).expect("JSON-LD") + open_tag.len();
    let text = &page.body[start..start + page.body[start..].find("</script>").expect("end")];
    for c in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
        assert!(
            !text.contains(c),
            "{c:?} written raw into the block: {text}"
        );
    }
    let jsonld: serde_json::Value = serde_json::from_str(text).expect("JSON-LD parses");
    let story = get(server.http, "/v1/stories/alpha", &[]).await.json()["story"].clone();
    assert_eq!(jsonld["headline"], story["headline"]);
    assert_eq!(jsonld["description"], story["summary"]);
    let updates = jsonld["liveBlogUpdate"].as_array().expect("updates");
    assert_eq!(updates[0]["headline"], format!("Reported {HOSTILE}"));
    assert!(
        updates[0]["articleBody"]
            .as_str()
            .is_some_and(|body| body.contains("Statement <!--<script> </script> &")),
        "{updates:?}"
    );
}

/// Raw bytes of an event stream, read as they arrive.
struct RawStream {
    body: hyper::body::Incoming,
    read: Vec<u8>,
}

impl RawStream {
    async fn open(address: std::net::SocketAddr, path: &str) -> Self {
        let response = send(address, Method::GET, path, &[], bytes::Bytes::new()).await;
        assert_eq!(response.status(), 200);
        Self {
            body: response.into_body(),
            read: Vec::new(),
        }
    }

    /// Reads until `count` whole frames (each ending in a blank line) have arrived; returns them
    /// as one run of bytes.
    async fn frames(&mut self, count: usize) -> Vec<u8> {
        loop {
            let ends: Vec<usize> = self
                .read
                .windows(2)
                .enumerate()
                .filter(|(_, pair)| pair == b"\n\n")
                .map(|(at, _)| at + 2)
                .collect();
            if ends.len() >= count {
                return self.read.drain(..ends[count - 1]).collect();
            }
            let frame = support::within("the next frame", self.body.frame())
                .await
                .expect("the stream goes on")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.read.extend_from_slice(&data);
            }
        }
    }
}

/// The bytes axum's `Sse` wrote for these events before frames were shared: the format the
/// stream promises, byte for byte.
async fn as_axum_wrote_them(events: Vec<axum::response::sse::Event>) -> Vec<u8> {
    use axum::response::IntoResponse as _;
    let stream =
        futures_util::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
    let response = axum::response::sse::Sse::new(stream).into_response();
    response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
        .to_vec()
}

/// An update as axum's `Event` framed it: its sequence as `id:`, its proto3 JSON as `data:`.
fn axum_update(event: &pb::UpdateEvent) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .id(event.sequence.to_string())
        .data(serde_json::to_string(event).expect("JSON"))
}

#[tokio::test]
async fn every_reader_gets_each_event_in_the_bytes_the_stream_always_sent() {
    use axum::response::sse::Event;
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    let mut opening = open("alpha", &["politics"]);
    opening.headline = format!("Opened {HOSTILE} \"quoted\"\nline");
    client.publish(opening).await.expect("open");
    client.publish(report("alpha", "f1")).await.expect("report");

    // What gRPC sends, framed as the stream always framed it.
    let (mut grpc, started) = support::subscribe_started(&mut client, support::from(1)).await;
    let (events, caught_up) = support::until_caught_up(&mut grpc).await;
    let mut expected = vec![
        Event::default()
            .event("started")
            .data(serde_json::to_string(&started).expect("JSON")),
    ];
    expected.extend(events.iter().map(axum_update));
    expected.push(
        Event::default()
            .event("caught_up")
            .data(serde_json::to_string(&caught_up).expect("JSON")),
    );
    let expected = as_axum_wrote_them(expected).await;

    let mut readers = [
        RawStream::open(server.http, "/v1/events?from_sequence=1").await,
        RawStream::open(server.http, "/v1/events?from_sequence=1").await,
    ];
    for reader in &mut readers {
        let read = reader.frames(events.len() + 2).await;
        assert_eq!(
            String::from_utf8_lossy(&read),
            String::from_utf8_lossy(&expected)
        );
    }

    // A live event: both readers get the same bytes, as gRPC's event framed the old way.
    client.publish(report("alpha", "f2")).await.expect("report");
    let live = support::next_event(&mut grpc).await;
    let expected = as_axum_wrote_them(vec![axum_update(&live)]).await;
    for reader in &mut readers {
        let read = reader.frames(1).await;
        assert_eq!(
            String::from_utf8_lossy(&read),
            String::from_utf8_lossy(&expected)
        );
    }
}

/// The value of sample `name` in a `/metrics` scrape of `server`, 0 when absent.
async fn sample(server: &Server, name: &str) -> f64 {
    let scrape = get(server.http, "/metrics", &[]).await;
    scrape
        .body
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_reader_that_never_reads_is_cut_off_and_one_that_reads_is_not() {
    // The server cuts a reader off once its oldest unwritten bytes waited 30 s; the keep-alive
    // timer may look up to 15 s late, and filling the socket buffers takes a moment.
    const CUT_OFF_WITHIN: std::time::Duration = std::time::Duration::from_secs(75);
    let server = Server::start(&[]).await;
    let mut client = server.client().await;

    // A reader with a small receive buffer that sends its request and never reads.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect(&server.http.into())
        .expect("connect to the HTTP face");
    let mut stalled = std::net::TcpStream::from(socket);
    std::io::Write::write_all(
        &mut stalled,
        b"GET /v1/events?from_sequence=1 HTTP/1.1\r\nhost: storywire\r\n\r\n",
    )
    .expect("the request");
    let mut reading = support::http1::EventStream::open(server.http, "/v1/events", &[])
        .await
        .expect("a reading reader");
    reading
        .until(|e| e.event.as_deref() == Some("caught_up"))
        .await;
    // It reads on while the other stalls.
    let reader = tokio::spawn(async move {
        let read = reading.until(|e| e.id.as_deref() == Some("30")).await;
        (reading, read)
    });

    // About 12 MB of events: far more than the socket buffers hold.
    for n in 0..15 {
        let story = format!("bulky-{n}");
        client.publish(open(&story, &[])).await.expect("open");
        client
            .publish(support::bulky_fact(&story, "f1"))
            .await
            .expect("a bulky fact");
    }
    let deadline = tokio::time::Instant::now() + CUT_OFF_WITHIN;
    while sample(&server, "storywire_sse_stalled_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was not cut off within {CUT_OFF_WITHIN:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        sample(&server, r#"storywire_subscribers_open{transport="sse"}"#).await,
        1.0,
        "only the reader that reads is still subscribed"
    );

    // The reader that reads took every event and is still served.
    let (mut reading, read) = reader.await.expect("the reading reader");
    let updates = |events: &[support::http1::SseEvent]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.event.is_none())
            .filter_map(|e| e.id.clone())
            .collect()
    };
    let expected: Vec<String> = (1..=30).map(|n| n.to_string()).collect();
    assert_eq!(updates(&read), expected);
    client
        .publish(report("bulky-0", "f2"))
        .await
        .expect("report");
    // Checkpoints (named, with an id) may come first: the stream was quiet for a while.
    let live = reading.until(|e| e.event.is_none() && e.id.is_some()).await;
    assert_eq!(updates(&live), ["31"]);
    drop(stalled);
}

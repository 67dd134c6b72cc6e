//! Limits hold, and a client over one gets a clear error while everyone else carries on.

mod support;

use std::{sync::Arc, time::Duration};

use storywire::{
    auth::Tokens,
    limits::Limits,
    pb::{self, change::Kind, subscribe_response::Item},
    server::ServerOptions,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request};

async fn server_with(limits: Limits, tokens: Option<Tokens>) -> TestServer {
    let options = ServerOptions {
        tokens: tokens.map(Arc::new),
        limits,
        ..Default::default()
    };
    TestServer::with_options(options).await
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_and_nothing_is_lost() {
    let limits = Limits {
        max_request_bytes: 16 * 1024,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;

    let quote = "q".repeat(2_000);
    let attributions = (0..20)
        .map(|_| pb::Attribution {
            quote: quote.clone(),
            ..said_by("Kim Min-ki", "South Korean lawmaker", pb::Stance::Asserts)
        })
        .collect();
    let huge = request(
        "story",
        "",
        "Too big to take",
        Kind::FactReported(pb::FactReported {
            fact_id: "fact".into(),
            statement: "A statement.".into(),
            attributions,
        }),
    );
    let status = expect_status(client.publish(huge).await, Code::OutOfRange, &["too large"]);
    assert!(status.message().contains("16384"), "{status:?}");
    assert_eq!(server.log.head(), 1);
    assert_eq!(
        publish(&mut client, note("story", "Still serving"))
            .await
            .sequence,
        2
    );
}

#[tokio::test]
async fn subscriptions_beyond_the_total_are_resource_exhausted_until_one_ends() {
    let limits = Limits {
        max_subscribers: 2,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let mut first = subscribe(&mut client, from(1)).await;
    let second = subscribe(&mut client, from(1)).await;

    expect_status(
        client.subscribe(from(1)).await,
        Code::ResourceExhausted,
        &["limit of 2 subscriptions"],
    );
    // Those already in keep receiving.
    until_caught_up(&mut first).await;
    publish(&mut client, note("story", "For the subscribers in")).await;
    assert_eq!(next_event(&mut first).await.sequence, 2);

    drop(second);
    // The slot comes back once the server sees the stream go; a new subscriber then gets in.
    let third = within("a slot to free up", async {
        loop {
            match client.subscribe(from(1)).await {
                Ok(stream) => break stream,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
    drop(third);
}

#[tokio::test]
async fn one_token_cannot_take_every_subscription() {
    let tokens = Tokens::parse(
        "greedy subscribe greedy-token-0123456789\nother subscribe other-token-0123456789\n",
    )
    .expect("tokens");
    let limits = Limits {
        max_subscribers_per_token: 2,
        ..Limits::default()
    };
    let server = server_with(limits, Some(tokens)).await;
    let mut client = server.client().await;
    let as_token = |token: &str| {
        let mut request = Request::new(from(0));
        let value = format!("Bearer {token}").parse().expect("ascii");
        request.metadata_mut().insert("authorization", value);
        request
    };
    let _a = client
        .subscribe(as_token("greedy-token-0123456789"))
        .await
        .expect("first");
    let _b = client
        .subscribe(as_token("greedy-token-0123456789"))
        .await
        .expect("second");
    let refused = client.subscribe(as_token("greedy-token-0123456789")).await;
    expect_status(
        refused,
        Code::ResourceExhausted,
        &["token greedy", "limit of 2"],
    );
    client
        .subscribe(as_token("other-token-0123456789"))
        .await
        .expect("another token is unaffected");
}

#[tokio::test]
async fn a_connection_holds_at_most_its_stream_limit_and_others_are_unaffected() {
    let limits = Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    let first = subscribe(&mut client, pb::SubscribeRequest::default()).await;
    let _second = subscribe(&mut client, pb::SubscribeRequest::default()).await;

    // A third stream on the same connection waits for a free one (HTTP/2 flow, not an error)...
    let mut waiting_client = client.clone();
    let mut third = tokio::spawn(async move {
        waiting_client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .map(|r| r.into_inner())
    });
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
    assert!(
        waited.is_err(),
        "the third stream must wait while two are open"
    );
    // ... while another connection is served at once.
    let mut other = server.client().await;
    let mut stream = subscribe(&mut other, pb::SubscribeRequest::default()).await;
    assert!(matches!(next_item(&mut stream).await, Item::CaughtUp(_)));
    // When one ends, the waiting stream opens.
    drop(first);
    within("the third stream", third)
        .await
        .expect("task")
        .expect("opens once a stream is free");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let limits = Limits {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    // An HTTP/2 client that says hello and then never reads or answers again.
    let mut socket = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    // The server's pings go unanswered, so it closes the connection: reading reaches the end.
    let mut buffer = vec![0; 4096];
    within("the server to hang up", async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_response_over_the_size_limit_fails_the_call_not_the_server() {
    let limits = Limits {
        max_response_bytes: 256,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..5 {
        publish(&mut client, report("story", &format!("fact-{i}"))).await;
    }
    let request = pb::GetStoryRequest {
        story_id: "story".into(),
        as_of_version: None,
    };
    expect_status(
        client.get_story(request).await,
        Code::OutOfRange,
        &["too large"],
    );
    // Small answers still go out.
    let page = client
        .list_events(pb::ListEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("a small page fits");
    assert_eq!(page.into_inner().events.len(), 1);
}

/// An HTTP/2 connection opened by hand: the client preface and an empty SETTINGS frame.
async fn raw_http2(server: &TestServer) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(server.address)
        .await
        .expect("connect");
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    socket
}

#[tokio::test]
async fn a_connection_older_than_the_age_limit_is_closed() {
    let limits = Limits {
        max_connection_age: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    // A well-behaved idle peer: it acknowledges SETTINGS and answers PINGs, so keepalive (every
    // 30 s here) has no reason to act, and only the age limit can end the connection in time.
    let mut socket = raw_http2(&server).await;
    let mut received = Vec::new();
    let mut buffer = vec![0; 4096];
    within("the server to close the old connection", async {
        loop {
            let read = match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            received.extend_from_slice(&buffer[..read]);
            while received.len() >= 9 {
                let length =
                    u32::from_be_bytes([0, received[0], received[1], received[2]]) as usize;
                if received.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (received[3], received[4]);
                let acknowledged = flags & 0x01 != 0;
                let reply = match kind {
                    0x04 if !acknowledged => Some(vec![0, 0, 0, 0x04, 0x01, 0, 0, 0, 0]),
                    0x06 if !acknowledged => {
                        let mut pong = vec![0, 0, 8, 0x06, 0x01, 0, 0, 0, 0];
                        pong.extend_from_slice(&received[9..17]);
                        Some(pong)
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    let _ = socket.write_all(&reply).await;
                }
                received.drain(..9 + length);
            }
        }
    })
    .await;
}

/// A HEADERS frame (END_HEADERS, not END_STREAM) opening stream 1 as a unary call to `path`,
/// in HPACK literals without Huffman coding: a request whose body never comes.
fn headers_without_body(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00); // literal header field without indexing, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let length = block.len() as u32;
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x01, 0x04, 0, 0, 0, 1]); // HEADERS, END_HEADERS, stream 1
    frame.extend_from_slice(&block);
    frame
}

#[tokio::test]
async fn a_call_that_does_not_finish_in_time_is_answered_by_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut socket = raw_http2(&server).await;
    socket
        .write_all(&headers_without_body("/storywire.v1.StoryService/GetStory"))
        .await
        .expect("headers");
    // The request never completes, so only the timeout can make the server answer on stream 1
    // (a HEADERS frame with the status, or a RST_STREAM).
    let mut received = Vec::new();
    let mut buffer = vec![0; 4096];
    within("the server to answer stream 1", async {
        loop {
            let read = socket.read(&mut buffer).await.expect("read");
            assert!(read > 0, "the connection closed without an answer");
            received.extend_from_slice(&buffer[..read]);
            let mut at = 0;
            while received.len() >= at + 9 {
                let length =
                    u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]])
                        as usize;
                let kind = received[at + 3];
                let stream =
                    u32::from_be_bytes(received[at + 5..at + 9].try_into().expect("4 bytes"))
                        & 0x7fff_ffff;
                if stream == 1 && (kind == 0x01 || kind == 0x03) {
                    return;
                }
                at += 9 + length;
            }
        }
    })
    .await;
}

//! One host cannot take every subscription: `--max-subscribers-per-ip` counts a client address's
//! subscriptions over gRPC, gRPC-Web and Server-Sent Events together, refuses the excess with
//! RESOURCE_EXHAUSTED naming the limit (429 with `Retry-After` over HTTP), and leaves every other
//! address alone, counting each client a trusted proxy forwards apart. The server's own limit
//! answers 429 with `Retry-After` too.

use crate::process;
use crate::support;

use process::HttpServer;
use storywire::{limits::Limits, pb, server::ServerOptions};
use support::{
    grpc_web,
    http1::{EventStream, Reply},
    *,
};
use tonic::Code;

/// A live subscription to every story.
fn live() -> pb::SubscribeRequest {
    pb::SubscribeRequest::default()
}

/// Checks an HTTP refusal for a full limit: 429, a `Retry-After` in seconds, and the JSON error
/// with RESOURCE_EXHAUSTED and a message mentioning each of `words`.
fn expect_429(reply: &Reply, words: &[&str]) {
    assert_eq!(reply.status, 429, "{reply:?}");
    let retry_after = reply.headers.get("retry-after").expect("Retry-After");
    let seconds: u32 = retry_after
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!(seconds > 0, "{reply:?}");
    let error = reply.json();
    assert_eq!(error["code"], "RESOURCE_EXHAUSTED", "{reply:?}");
    let message = error["message"].as_str().expect("a message");
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} should mention {word:?}"
        );
    }
}

/// A server in this process with `limits`.
async fn server_with(limits: Limits) -> TestServer {
    TestServer::with_options(ServerOptions {
        limits,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn one_address_holds_at_most_its_limit_of_subscribe_streams_and_others_are_served() {
    let limits = Limits {
        max_subscribers_per_ip: 2,
        ..Limits::default()
    };
    let server = server_with(limits).await;
    let mut client = server.client().await;
    let first = subscribe(&mut client, live()).await;
    let _second = subscribe(&mut client, live()).await;
    expect_status(
        client.subscribe(live()).await,
        Code::ResourceExhausted,
        &[
            "address 127.0.0.1",
            "limit of 2",
            "--max-subscribers-per-ip",
        ],
    );

    // Another address is served, and its stream is live.
    let mut other = server.client_from(SECOND_PEER).await;
    let mut stream = subscribe(&mut other, live()).await;
    assert!(matches!(
        next_item(&mut stream).await,
        pb::subscribe_response::Item::CaughtUp(_)
    ));
    publish(&mut other, open("story", &[])).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    // The slot comes back once the server sees the stream go.
    drop(first);
    within("a slot to free up", async {
        loop {
            match client.subscribe(live()).await {
                Ok(stream) => break stream,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn with_the_per_address_limit_at_0_one_address_may_hold_any_number() {
    let limits = Limits {
        max_subscribers_per_ip: 0,
        max_subscribers: 5,
        ..Limits::default()
    };
    let server = server_with(limits).await;
    let mut client = server.client().await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(subscribe(&mut client, live()).await);
    }
    // Only the server's own limit applies.
    expect_status(
        client.subscribe(live()).await,
        Code::ResourceExhausted,
        &["the server already holds its limit of 5"],
    );
}

#[tokio::test]
async fn excess_readers_from_one_address_over_any_face_are_refused_and_another_address_is_served() {
    let server = HttpServer::start(&["--max-subscribers-per-ip", "2"]).await;
    let grpc: std::net::SocketAddr = server.grpc["http://".len()..].parse().expect("an address");
    // One over gRPC, one over SSE, both from 127.0.0.1: the limit counts them together.
    let mut client = server.client().await;
    let _grpc = subscribe(&mut client, live()).await;
    let _sse = EventStream::open(server.http, "/v1/events", &[])
        .await
        .expect("the second subscription from 127.0.0.1");

    let refused = EventStream::open(server.http, "/v1/events", &[])
        .await
        .err()
        .expect("a third SSE reader from 127.0.0.1 is refused");
    expect_429(
        &refused,
        &[
            "address 127.0.0.1",
            "limit of 2",
            "--max-subscribers-per-ip",
        ],
    );
    expect_status(
        client.subscribe(live()).await,
        Code::ResourceExhausted,
        &["address 127.0.0.1", "limit of 2"],
    );
    let path = "/storywire.v1.StoryService/Subscribe";
    let mut web = grpc_web::call(grpc, path, &live(), &[]).await;
    let (code, message) = web.status().await;
    assert_eq!(code, "8", "RESOURCE_EXHAUSTED over gRPC-Web: {message:?}");

    // A reader from another address is served, and gets the next update.
    let mut other = EventStream::open_from(server.http, Some(SECOND_PEER), "/v1/events", &[])
        .await
        .expect("a reader from 127.0.0.2 is served");
    other
        .until(|event| event.event.as_deref() == Some("caught_up"))
        .await;
    publish(&mut client, open("story", &[])).await;
    let update = other.until(|event| event.event.is_none()).await;
    assert_eq!(update.last().expect("an update").id.as_deref(), Some("1"));
}

#[tokio::test]
async fn the_servers_own_limit_answers_429_with_retry_after_too() {
    let server = HttpServer::start(&["--max-subscribers", "1"]).await;
    let _reader = EventStream::open(server.http, "/v1/events", &[])
        .await
        .expect("the one subscription");
    let refused = EventStream::open_from(server.http, Some(SECOND_PEER), "/v1/events", &[])
        .await
        .err()
        .expect("a second reader, from anywhere, is refused");
    expect_429(
        &refused,
        &["the server already holds its limit of 1 subscriptions"],
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_count() {
    let server = HttpServer::start(&[
        "--max-subscribers-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1/32",
    ])
    .await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    let _first = EventStream::open(server.http, "/v1/events", &from("203.0.113.1"))
        .await
        .expect("the first client's reader");
    let refused = EventStream::open(server.http, "/v1/events", &from("203.0.113.1"))
        .await
        .err()
        .expect("the first client's second reader is refused");
    expect_429(&refused, &["address 203.0.113.1", "limit of 1"]);
    let _second = EventStream::open(server.http, "/v1/events", &from("203.0.113.2"))
        .await
        .expect("another client through the same proxy is served");
}

//! gRPC-Web on the gRPC port of the real binary, as a browser's client speaks it: over HTTP/1.1,
//! beside gRPC over HTTP/2 on the same port; CORS preflights answered for the origins the rule
//! allows (any with tokens, none without, or those `--cors-origin` names); and an error's status
//! in headers a page on another origin may read.

use crate::process;
use crate::support;

use std::net::SocketAddr;

use process::{Running, run, storywire};
use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use support::{TempDir, client_at, from, grpc_web, http1::options, open, publish, report};
use tonic::transport::Channel;

/// GetStory's path, as a gRPC-Web client posts to it.
const GET_STORY: &str = "/storywire.v1.StoryService/GetStory";
/// Subscribe's path.
const SUBSCRIBE: &str = "/storywire.v1.StoryService/Subscribe";
/// A page's origin, as its browser sends it.
const PAGE: &str = "https://live.news.example";
/// The headers connect-web's and Google's gRPC-Web clients send, and a token: what a browser's
/// preflight asks for.
const REQUESTED_HEADERS: &str = "authorization,content-type,grpc-timeout,x-grpc-web,x-user-agent";
/// The token of the reader in the tokens file of [`Server::with_tokens`].
const READER: &str = "Bearer reader-token-0123456789";

/// `storywire serve` on a loopback port, with its tokens file if any.
struct Server {
    /// The process.
    process: Running,
    /// Where it listens, for gRPC and gRPC-Web alike.
    address: SocketAddr,
    /// Its tokens file, if any, kept until the server is dropped.
    _tokens: Option<TempDir>,
}

/// A tokens file in a directory of its own, removed when dropped.
impl Server {
    /// `storywire serve --listen 127.0.0.1:0` with `extra` flags.
    async fn start(extra: &[&str]) -> Self {
        Self::spawn(extra, None).await
    }

    /// `storywire serve --listen 127.0.0.1:0` with `extra` flags, keeping `tokens`.
    async fn spawn(extra: &[&str], tokens: Option<TempDir>) -> Self {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut process = Running::spawn(storywire(&args));
        let (address, _) = process.listening_address().await;
        Self {
            process,
            address,
            _tokens: tokens,
        }
    }

    /// A server whose StoryService calls need a token: `reader` may read (subscribe role).
    async fn with_tokens(extra: &[&str]) -> Self {
        let dir = TempDir::new("grpc-web");
        let tokens = dir.0.join("tokens");
        std::fs::write(&tokens, "reader subscribe reader-token-0123456789\n")
            .expect("a tokens file");
        let mut args = vec!["--tokens", tokens.to_str().expect("UTF-8")];
        args.extend_from_slice(extra);
        Self::spawn(&args, Some(dir)).await
    }

    /// A gRPC client (HTTP/2) of this server.
    async fn client(&self) -> StoryServiceClient<Channel> {
        client_at(&format!("http://{}", self.address)).await
    }

    /// A browser's preflight for a gRPC-Web call to `path` from a page on `origin`.
    async fn preflight(&self, path: &str, origin: &str) -> support::http1::Reply {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", REQUESTED_HEADERS),
        ];
        options(self.address, path, &headers).await
    }
}

/// The comma-separated names in a header, lowercased.
fn listed(reply: &support::http1::Reply, header: &str) -> Vec<String> {
    reply
        .headers
        .get(header)
        .map(|value| value.to_str().expect("ASCII"))
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

#[tokio::test]
async fn grpc_web_over_http1_answers_get_story_and_streams_subscribe_live_beside_grpc() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    publish(&mut client, open("alpha", &["politics"])).await;
    publish(&mut client, report("alpha", "f1")).await;

    let request = pb::GetStoryRequest {
        story_id: "alpha".to_owned(),
        as_of_version: None,
    };
    let mut answer = grpc_web::call(server.address, GET_STORY, &request, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.version, hyper::Version::HTTP_11);
    assert_eq!(answer.header("content-type"), Some(grpc_web::CONTENT_TYPE));
    let story: pb::GetStoryResponse = answer.message().await;
    let expected = client
        .get_story(request)
        .await
        .expect("GetStory")
        .into_inner();
    assert_eq!(story, expected, "the story gRPC gives");
    assert_eq!(answer.status().await, ("0".to_owned(), None));

    // A server stream over HTTP/1.1: catch-up, then a live event as it is published.
    let mut stream = grpc_web::call(server.address, SUBSCRIBE, &from(1), &[]).await;
    let mut items = Vec::new();
    while !matches!(items.last(), Some(Item::CaughtUp(_))) {
        let item: pb::SubscribeResponse = stream.message().await;
        items.push(item.item.expect("an item"));
    }
    let sequences: Vec<u64> = items
        .iter()
        .filter_map(|item| match item {
            Item::Event(event) => Some(event.sequence),
            _ => None,
        })
        .collect();
    assert!(matches!(items[0], Item::Started(_)), "{items:?}");
    assert_eq!(sequences, [1, 2]);
    publish(&mut client, report("alpha", "f2")).await;
    let live: pb::SubscribeResponse = stream.message().await;
    match live.item {
        Some(Item::Event(event)) => assert_eq!(event.sequence, 3),
        other => panic!("expected the live event, got {other:?}"),
    }

    // Health answers over gRPC-Web too, and gRPC still does on the same port.
    let health = tonic_health::pb::HealthCheckRequest::default();
    let mut answer =
        grpc_web::call(server.address, "/grpc.health.v1.Health/Check", &health, &[]).await;
    let reply: tonic_health::pb::HealthCheckResponse = answer.message().await;
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(answer.status().await.0, "0");
    let channel = Channel::from_shared(format!("http://{}", server.address))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let reply = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(health)
        .await
        .expect("health over gRPC")
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(server.process);
}

#[tokio::test]
async fn with_tokens_a_page_on_any_origin_may_call_and_read_an_errors_status() {
    let server = Server::with_tokens(&[]).await;

    let preflight = server.preflight(SUBSCRIBE, PAGE).await;
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    assert_eq!(listed(&preflight, "access-control-allow-methods"), ["post"]);
    let allowed = listed(&preflight, "access-control-allow-headers");
    for header in REQUESTED_HEADERS.split(',') {
        assert!(
            allowed.iter().any(|a| a == header),
            "{header} in {allowed:?}"
        );
    }
    assert_eq!(preflight.headers["access-control-max-age"], "600");
    assert!(
        preflight
            .headers
            .get("access-control-allow-credentials")
            .is_none(),
        "no credentials: the token is the credential"
    );

    // No token: UNAUTHENTICATED, trailers-only, in headers the page may read.
    let request = pb::GetStoryRequest {
        story_id: "alpha".to_owned(),
        as_of_version: None,
    };
    let mut refused =
        grpc_web::call(server.address, GET_STORY, &request, &[("origin", PAGE)]).await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.header("content-type"), Some(grpc_web::CONTENT_TYPE));
    assert_eq!(refused.header("access-control-allow-origin"), Some("*"));
    let exposed: Vec<String> = refused
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(
            exposed.iter().any(|e| e == header),
            "{header} in {exposed:?}"
        );
    }
    assert_eq!(
        refused.header("grpc-status"),
        Some("16"),
        "UNAUTHENTICATED in the headers"
    );
    let (code, message) = refused.status().await;
    assert_eq!(code, "16");
    assert!(
        message.is_some_and(|m| m.contains("authorization")),
        "the message names what is missing"
    );

    // The token goes through gRPC-Web as through gRPC: the story is not there, which only a
    // reader may learn.
    let mut missing = grpc_web::call(
        server.address,
        GET_STORY,
        &request,
        &[("origin", PAGE), ("authorization", READER)],
    )
    .await;
    assert_eq!(missing.status().await.0, "5", "NOT_FOUND");
    drop(server.process);
}

#[tokio::test]
async fn without_tokens_only_the_origins_named_may_call() {
    let anonymous = Server::start(&[]).await;
    let preflight = anonymous.preflight(GET_STORY, PAGE).await;
    assert!(
        preflight
            .headers
            .get("access-control-allow-origin")
            .is_none(),
        "no origin allowed by default without tokens: {preflight:?}"
    );
    let request = pb::GetStoryRequest {
        story_id: "alpha".to_owned(),
        as_of_version: None,
    };
    let answer = grpc_web::call(anonymous.address, GET_STORY, &request, &[("origin", PAGE)]).await;
    assert_eq!(answer.header("access-control-allow-origin"), None);

    let dev = "http://localhost:5173";
    let named = Server::start(&["--cors-origin", dev, "--cors-origin", PAGE]).await;
    for origin in [dev, PAGE] {
        let preflight = named.preflight(GET_STORY, origin).await;
        assert_eq!(
            preflight
                .headers
                .get("access-control-allow-origin")
                .map(|v| v.to_str().expect("ASCII")),
            Some(origin)
        );
    }
    let stranger = named
        .preflight(GET_STORY, "https://elsewhere.example")
        .await;
    assert!(
        stranger
            .headers
            .get("access-control-allow-origin")
            .is_none(),
        "{stranger:?}"
    );
    let mut answer = grpc_web::call(named.address, GET_STORY, &request, &[("origin", dev)]).await;
    assert_eq!(answer.header("access-control-allow-origin"), Some(dev));
    assert_eq!(
        answer.status().await.0,
        "5",
        "NOT_FOUND, read from another origin"
    );
    drop((anonymous.process, named.process));
}

#[tokio::test]
async fn an_origin_with_a_path_is_refused_at_start_up() {
    let refused = run(storywire(&[
        "serve",
        "--cors-origin",
        "https://live.news.example/",
    ]))
    .await;
    let stderr = refused.failure(2);
    assert!(
        stderr.contains("not an origin") && stderr.contains("path"),
        "{stderr}"
    );
}

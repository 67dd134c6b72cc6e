//! Authentication and authorization: every StoryService method with no token, an unknown token
//! and each role; health and reflection stay open; the CLI sends its token; and the server will
//! not serve anonymously beyond loopback unless told to.

use crate::process;
use crate::support;

use std::sync::Arc;

use process::{run, storywire};
use storywire::{
    auth::Tokens,
    pb::{self, story_service_client::StoryServiceClient},
    server::ServerOptions,
};
use support::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, transport::Channel};

const PUBLISHER: &str = "publisher-secret-0123456789";
const READER: &str = "reader-secret-0123456789";
const OPERATOR: &str = "operator-secret-0123456789";
/// A token with the metrics role, which reaches GET /metrics (tests/metrics.rs) and no RPC.
const SCRAPER: &str = "scraper-secret-0123456789";

fn tokens() -> Tokens {
    let reader_digest = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(READER.as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Tokens::parse(&format!(
        "# name roles token\n\
         desk publish {PUBLISHER}\n\
         wire subscribe sha256:{reader_digest}\n\
         ops admin {OPERATOR}\n\
         prometheus metrics {SCRAPER}\n"
    ))
    .expect("valid tokens")
}

async fn guarded_server() -> TestServer {
    let options = ServerOptions {
        tokens: Some(Arc::new(tokens())),
        ..Default::default()
    };
    let server = TestServer::with_options(options).await;
    // A story to read, published with the operator's token.
    let mut client = server.client().await;
    let mut request = Request::new(open("story", &[]));
    bearer(&mut request, Some(OPERATOR));
    client.publish(request).await.expect("operator publishes");
    server
}

fn bearer<T>(request: &mut Request<T>, token: Option<&str>) {
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii");
        request.metadata_mut().insert("authorization", value);
    }
}

/// Calls `method` with `token` and returns the status authorization refused it with, or `None`
/// if it got past authorization (an answer, a stream that opens, or a refusal only the service
/// gives: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE). Any other failure
/// (UNAVAILABLE, INTERNAL, ...) fails the test: it says nothing about authorization.
async fn call(
    client: &mut StoryServiceClient<Channel>,
    method: &str,
    token: Option<&str>,
) -> Option<Status> {
    macro_rules! unary {
        ($rpc:ident, $message:expr) => {{
            let mut request = Request::new($message);
            bearer(&mut request, token);
            client.$rpc(request).await.err()
        }};
    }
    let status = match method {
        "Publish" => unary!(publish, note("story", "An update")),
        "GetStory" => unary!(
            get_story,
            pb::GetStoryRequest {
                story_id: "story".into(),
                as_of_version: None
            }
        ),
        "ListStories" => unary!(list_stories, pb::ListStoriesRequest::default()),
        "ListEvents" => unary!(list_events, pb::ListEventsRequest::default()),
        "Subscribe" => unary!(subscribe, from(1)),
        "PublishStream" => {
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            drop(sender);
            unary!(publish_stream, ReceiverStream::new(receiver))
        }
        other => panic!("unknown method {other}"),
    };
    match status {
        None => None,
        Some(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            Some(status)
        }
        // The service itself answered: the call got past authorization.
        Some(status)
            if matches!(
                status.code(),
                Code::NotFound
                    | Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
            ) =>
        {
            None
        }
        Some(status) => {
            panic!("{method}: neither answered nor refused by authorization: {status:?}")
        }
    }
}

const METHODS: [&str; 6] = [
    "Publish",
    "PublishStream",
    "Subscribe",
    "GetStory",
    "ListStories",
    "ListEvents",
];

#[tokio::test]
async fn every_method_needs_a_known_token() {
    let server = guarded_server().await;
    let mut client = server.client().await;
    for method in METHODS {
        let missing = call(&mut client, method, None)
            .await
            .expect("refused without a token");
        assert_eq!(
            missing.code(),
            Code::Unauthenticated,
            "{method}: {missing:?}"
        );
        assert!(
            missing.message().contains("authorization"),
            "{method}: {missing:?}"
        );
        let unknown = call(&mut client, method, Some("not-a-known-token-at-all")).await;
        let unknown = unknown.expect("refused with an unknown token");
        assert_eq!(
            unknown.code(),
            Code::Unauthenticated,
            "{method}: {unknown:?}"
        );
        assert!(
            !unknown.message().contains("not-a-known-token"),
            "the token is never echoed"
        );
    }
    assert_eq!(server.log.head(), 1, "nothing refused was published");
}

#[tokio::test]
async fn each_role_reaches_exactly_its_methods() {
    let server = guarded_server().await;
    let mut client = server.client().await;
    let publishes = ["Publish", "PublishStream"];
    for method in METHODS {
        let by_publisher = call(&mut client, method, Some(PUBLISHER)).await;
        let by_reader = call(&mut client, method, Some(READER)).await;
        let by_operator = call(&mut client, method, Some(OPERATOR)).await;
        assert!(
            by_operator.is_none(),
            "admin may call {method}: {by_operator:?}"
        );
        let (allowed, denied) = if publishes.contains(&method) {
            (by_publisher, by_reader)
        } else {
            (by_reader, by_publisher)
        };
        assert!(allowed.is_none(), "{method}: {allowed:?}");
        let denied = denied.expect("the other role is refused");
        assert_eq!(
            denied.code(),
            Code::PermissionDenied,
            "{method}: {denied:?}"
        );
        assert!(denied.message().contains(method), "{method}: {denied:?}");
        let by_scraper = call(&mut client, method, Some(SCRAPER)).await;
        assert_eq!(
            by_scraper.map(|status| status.code()),
            Some(Code::PermissionDenied),
            "the metrics role reaches no RPC: {method}"
        );
    }
}

#[tokio::test]
async fn health_and_reflection_stay_open() {
    let server = guarded_server().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(reply.into_inner().status, 1, "SERVING");

    // Reflection, through the real grpcurl (v1alpha), with no token: it lists and describes the
    // StoryService whose calls need one.
    let address = server.address.to_string();
    for args in [
        vec!["-plaintext", &address, "list"],
        vec![
            "-plaintext",
            &address,
            "describe",
            "storywire.v1.StoryService",
        ],
    ] {
        let mut grpcurl = tokio::process::Command::new("grpcurl");
        grpcurl.args(&args);
        let listed = run(grpcurl).await;
        assert!(
            listed.success().contains("storywire.v1.StoryService"),
            "{args:?}: {listed}"
        );
    }
}

#[tokio::test]
async fn the_cli_sends_its_token() {
    let server = guarded_server().await;
    let url = server.url();
    let refused = run(storywire(&["story", "story", "--server", &url])).await;
    assert!(refused.failure(1).contains("UNAUTHENTICATED"), "{refused}");

    let mut with_flag = storywire(&["story", "story", "--server", &url, "--token", READER]);
    with_flag.env_remove("RUST_LOG");
    assert!(run(with_flag).await.success().contains("story"));

    let mut with_env = storywire(&["stories", "--server", &url]);
    with_env.env("STORYWIRE_TOKEN", READER);
    assert!(run(with_env).await.success().contains("story"));
}

#[tokio::test]
async fn serve_refuses_an_address_beyond_loopback_without_tokens() {
    // 192.0.2.1 is TEST-NET-1: never an address of this machine, so even a broken check could not
    // bind it, and nothing is sent anywhere.
    let refused = run(storywire(&["serve", "--listen", "192.0.2.1:50051"])).await;
    let stderr = refused.failure(1);
    assert!(
        stderr.contains("refusing to listen on 192.0.2.1:50051 without --tokens"),
        "{refused}"
    );
    assert!(stderr.contains("--allow-anonymous"), "{refused}");
}

#[test]
fn a_tokens_file_with_mistakes_is_refused_naming_the_line() {
    let cases = [
        ("desk publish\n", "line 1"),
        ("desk writer some-long-secret-token\n", "unknown role"),
        ("# comment\ndesk publish short\n", "line 2"),
        (
            "a publish first-long-secret-token\na subscribe second-long-secret-token\n",
            "named twice",
        ),
        (
            "a publish same-long-secret-token!\nb subscribe same-long-secret-token!\n",
            "already",
        ),
        ("\n# nothing\n", "no token"),
        (
            "anonymous publish some-long-secret-token\n",
            "kept for events published without a token",
        ),
    ];
    for (text, expected) in cases {
        let error = Tokens::parse(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
        assert!(
            !error.contains("secret-token"),
            "a token never appears in an error: {error}"
        );
    }
}

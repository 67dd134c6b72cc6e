//! What the contract gained for a newsroom, additively: who published each event
//! (`published_by`, set by the server from the token), each fact's history of status changes and
//! corrections and the story's history of status changes (kept in the story's state whatever the
//! retention), a source's `url` and a story's `language`.

use crate::support;

use std::sync::Arc;

use storywire::{
    auth::Tokens,
    pb::{self, change::Kind, fact_revision::Change, subscribe_response::Item},
    server::ServerOptions,
};
use support::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

const DESK: &str = "desk-secret-0123456789";
const WIRE: &str = "wire-secret-0123456789";

/// A server taking two publishing tokens, "desk" and "wire".
async fn server_with_tokens() -> TestServer {
    let tokens = Tokens::parse(&format!(
        "desk publish,subscribe {DESK}\nwire publish,subscribe {WIRE}\n"
    ))
    .expect("valid tokens");
    TestServer::with_options(ServerOptions {
        tokens: Some(Arc::new(tokens)),
        ..Default::default()
    })
    .await
}

/// `message` with `token` as its bearer token.
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Every event in the log, read with `token`.
async fn events_read_with(server: &TestServer, token: &str) -> Vec<pb::UpdateEvent> {
    let mut client = server.client().await;
    client
        .list_events(with_token(pb::ListEventsRequest::default(), token))
        .await
        .expect("list events")
        .into_inner()
        .events
}

#[tokio::test]
async fn published_by_is_the_token_s_name_for_publish_and_publish_stream_and_survives_a_retry() {
    let server = server_with_tokens().await;
    let mut client = server.client().await;
    client
        .publish(with_token(open("story", &[]), DESK))
        .await
        .expect("desk opens");
    let mut retried = note("story", "Italy denies");
    retried.event_id = "italy-denies".into();
    client
        .publish(with_token(retried.clone(), WIRE))
        .await
        .expect("wire publishes");
    // The same request again, with the other token: a duplicate, and still the wire's event.
    let duplicate = client
        .publish(with_token(retried, DESK))
        .await
        .expect("a retry")
        .into_inner();
    assert!(duplicate.duplicate);

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for text in ["First streamed", "Second streamed"] {
        tx.send(pb::PublishStreamRequest {
            request: Some(note("story", text)),
        })
        .await
        .expect("queued");
    }
    drop(tx);
    let mut responses = client
        .publish_stream(with_token(ReceiverStream::new(rx), DESK))
        .await
        .expect("stream")
        .into_inner();
    while let Some(response) = within("stream response", responses.message())
        .await
        .expect("response")
    {
        assert!(matches!(
            response.result,
            Some(pb::publish_stream_response::Result::Accepted(_))
        ));
    }

    let events = events_read_with(&server, WIRE).await;
    let by: Vec<&str> = events.iter().map(|e| e.published_by.as_str()).collect();
    assert_eq!(by, ["desk", "wire", "desk", "desk"]);

    // Subscribers see the same.
    let mut stream = client
        .subscribe(with_token(from(1), WIRE))
        .await
        .expect("subscribe")
        .into_inner();
    assert!(matches!(next_item(&mut stream).await, Item::Started(_)));
    let (streamed, _) = until_caught_up(&mut stream).await;
    assert_eq!(streamed, events);
}

#[tokio::test]
async fn published_by_is_anonymous_when_the_server_takes_no_tokens() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let events = all_events(&mut client, "").await;
    assert_eq!(events[0].published_by, "anonymous");
}

/// A correction with `reason`.
fn correct(story_id: &str, fact_id: &str, statement: &str, reason: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Wording corrected",
        Kind::FactCorrected(pb::FactCorrected {
            fact_id: fact_id.to_owned(),
            statement: statement.to_owned(),
            reason: reason.to_owned(),
        }),
    )
}

/// A status change of the story with `reason`.
fn story_status(story_id: &str, status: pb::StoryStatus, reason: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Status changed",
        Kind::StoryStatusChanged(pb::StoryStatusChanged {
            status: status.into(),
            reason: reason.to_owned(),
        }),
    )
}

#[tokio::test]
async fn corrections_and_status_changes_stay_in_the_story_after_their_events_leave_retention() {
    // Retention of three events: by the end, none of the history's events is retained.
    let server = TestServer::with_retention(3).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await; // 1
    publish(&mut client, report("story", "asylum")).await; // 2
    let mut denied = set_status("story", "asylum", pb::FactStatus::Denied);
    if let Kind::FactStatusChanged(changed) = change_mut(&mut denied) {
        changed.note = "Italy's foreign minister denies it".into();
    }
    publish(&mut client, denied).await; // 3
    publish(
        &mut client,
        correct(
            "story",
            "asylum",
            "Jo asked Italy for protection.",
            "It was a request for protection, not asylum.",
        ),
    )
    .await; // 4
    publish(
        &mut client,
        story_status("story", pb::StoryStatus::Concluded, "Jo is in Italy"),
    )
    .await; // 5
    publish(
        &mut client,
        story_status("story", pb::StoryStatus::Developing, "Jo resurfaced"),
    )
    .await; // 6
    for i in 0..3 {
        publish(&mut client, note("story", &format!("Background {i}"))).await;
    }
    assert!(
        server.log.first_retained() > 6,
        "the history's events are evicted"
    );

    let story = get_story(&mut client, "story", None).await;
    let fact = &story.facts[0];
    assert_eq!(fact.statement, "Jo asked Italy for protection.");
    let [status, statement] = fact.history.as_slice() else {
        panic!("two revisions expected: {:?}", fact.history)
    };
    assert_eq!(
        status.change,
        Some(Change::Status(pb::FactStatusRevision {
            from: pb::FactStatus::Reported.into(),
            to: pb::FactStatus::Denied.into(),
        }))
    );
    assert_eq!(status.reason, "Italy's foreign minister denies it");
    assert_eq!(status.sequence, 3);
    assert_eq!(
        statement.change,
        Some(Change::Statement(pb::FactStatementRevision {
            from: "Statement of asylum.".into(),
            to: "Jo asked Italy for protection.".into(),
        }))
    );
    assert_eq!(
        statement.reason,
        "It was a request for protection, not asylum."
    );
    assert_eq!(statement.sequence, 4);
    assert!(statement.occurred_at.is_some());

    let [concluded, reopened] = story.status_history.as_slice() else {
        panic!("two status changes expected: {:?}", story.status_history)
    };
    assert_eq!(
        (concluded.from, concluded.to, concluded.reason.as_str()),
        (
            pb::StoryStatus::Developing.into(),
            pb::StoryStatus::Concluded.into(),
            "Jo is in Italy"
        )
    );
    assert_eq!(concluded.sequence, 5);
    assert_eq!(
        (reopened.from, reopened.to, reopened.reason.as_str()),
        (
            pb::StoryStatus::Concluded.into(),
            pb::StoryStatus::Developing.into(),
            "Jo resurfaced"
        )
    );
}

#[tokio::test]
async fn a_past_version_carries_the_history_up_to_that_version() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "asylum")).await;
    publish(&mut client, correct("story", "asylum", "First fix.", "one")).await;
    publish(
        &mut client,
        correct("story", "asylum", "Second fix.", "two"),
    )
    .await;
    let past = get_story(&mut client, "story", Some(3)).await;
    let reasons: Vec<&str> = past.facts[0]
        .history
        .iter()
        .map(|r| r.reason.as_str())
        .collect();
    assert_eq!(reasons, ["one"]);
    let now = get_story(&mut client, "story", None).await;
    assert_eq!(now.facts[0].history.len(), 2);
}

#[tokio::test]
async fn a_story_s_language_is_a_bcp_47_tag_kept_and_revised() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Well-formed is what is checked ("english" is well-formed, though no language has that
    // subtag in the registry).
    for bad in ["en_GB", "e", "x", "en-", "1234", "en--gb", &"a".repeat(65)] {
        expect_status(
            client.publish(open_in("story", &[], bad)).await,
            Code::InvalidArgument,
            &["change.story_opened.language"],
        );
    }
    assert_eq!(server.log.head(), 0, "nothing refused is appended");
    publish(&mut client, open_in("story", &[], "pt-BR")).await;
    assert_eq!(
        get_story(&mut client, "story", None).await.language,
        "pt-BR"
    );

    let revise = |language: &str| {
        request(
            "story",
            "",
            "Language revised",
            Kind::StoryRevised(pb::StoryRevised {
                language: Some(language.to_owned()),
                ..Default::default()
            }),
        )
    };
    expect_status(
        client.publish(revise("not a tag")).await,
        Code::InvalidArgument,
        &["change.story_revised.language", "BCP 47"],
    );
    publish(&mut client, revise("en-GB")).await;
    let story = get_story(&mut client, "story", None).await;
    assert_eq!(story.language, "en-GB");
    publish(&mut client, revise("")).await;
    assert_eq!(get_story(&mut client, "story", None).await.language, "");
}

#[tokio::test]
async fn a_source_url_must_be_an_absolute_http_url() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for bad in [
        "ministry statement",
        "/statement",
        "ftp://example.com/statement",
        "javascript:alert(1)",
        &format!("https://example.com/{}", "a".repeat(2_000)),
    ] {
        expect_status(
            client.publish(report_from("story", "fact", bad)).await,
            Code::InvalidArgument,
            &["change.fact_reported.attributions[0].source.url"],
        );
    }
    let url = "https://www.esteri.it/en/sala_stampa/archivionotizie/comunicati/";
    publish(&mut client, report_from("story", "fact", url)).await;
    let story = get_story(&mut client, "story", None).await;
    let source = story.facts[0].attributions[0]
        .source
        .as_ref()
        .expect("source");
    assert_eq!(source.url, url);
}

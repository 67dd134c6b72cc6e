//! Every row of the error table: the code, a message naming what was wrong, and a server that goes
//! on serving with nothing accepted lost.

use crate::support;

use storywire::pb::{self, change::Kind};
use support::*;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The field named in the status's BadRequest details, which clients can read by machine.
fn violated_field(status: &Status) -> String {
    let details = status.get_error_details();
    let bad_request = details.bad_request().expect("BadRequest details");
    bad_request.field_violations[0].field.clone()
}

#[tokio::test]
async fn malformed_publish_requests_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let accepted = publish(&mut client, open("story", &[])).await;

    let with = |edit: fn(&mut pb::PublishRequest)| {
        let mut request = report("story", "fact");
        edit(&mut request);
        request
    };
    let long_statement = "x".repeat(2_001);
    let cases: Vec<(pb::PublishRequest, &str)> = vec![
        (with(|r| r.story_id = "Story".into()), "story_id"),
        (with(|r| r.story_id = String::new()), "story_id"),
        (with(|r| r.story_id = "-leading-dash".into()), "story_id"),
        (with(|r| r.story_id = "a".repeat(65)), "story_id"),
        (with(|r| r.event_id = "has space".into()), "event_id"),
        (with(|r| r.headline = String::new()), "headline"),
        (with(|r| r.headline = "   ".into()), "headline"),
        (with(|r| r.headline = "h".repeat(201)), "headline"),
        (with(|r| r.change = None), "change"),
        (
            with(|r| r.change = Some(pb::Change { kind: None })),
            "change",
        ),
        (
            request(
                "story",
                "",
                "Too long",
                Kind::FactReported(pb::FactReported {
                    fact_id: "fact".into(),
                    statement: long_statement.clone(),
                    attributions: Vec::new(),
                }),
            ),
            "change.fact_reported.statement",
        ),
        (
            request(
                "story",
                "",
                "Bad fact id",
                Kind::FactReported(pb::FactReported {
                    fact_id: "Fact_1".into(),
                    statement: "A statement.".into(),
                    attributions: Vec::new(),
                }),
            ),
            "change.fact_reported.fact_id",
        ),
        (
            set_status("story", "fact", pb::FactStatus::Unspecified),
            "change.fact_status_changed.status",
        ),
        (
            request(
                "story",
                "",
                "Unknown enum number",
                Kind::StoryStatusChanged(pb::StoryStatusChanged {
                    status: 42,
                    reason: String::new(),
                }),
            ),
            "change.story_status_changed.status",
        ),
        (
            with(|r| {
                if let Some(pb::Change {
                    kind: Some(Kind::FactReported(fact)),
                }) = &mut r.change
                {
                    fact.attributions[0].stance = pb::Stance::Unspecified.into();
                }
            }),
            "change.fact_reported.attributions[0].stance",
        ),
        (
            with(|r| {
                if let Some(pb::Change {
                    kind: Some(Kind::FactReported(fact)),
                }) = &mut r.change
                {
                    fact.attributions[0].via.push(pb::Source {
                        name: "Kim Min-ki".into(),
                        kind: pb::SourceKind::Unspecified.into(),
                        role: String::new(),
                        url: String::new(),
                    });
                }
            }),
            "change.fact_reported.attributions[0].via[0].kind",
        ),
        (
            request(
                "story",
                "",
                "Nothing revised",
                Kind::StoryRevised(pb::StoryRevised::default()),
            ),
            "change.story_revised",
        ),
    ];

    for (request, field) in cases {
        let status = expect_status(
            client.publish(request.clone()).await,
            Code::InvalidArgument,
            &[field],
        );
        assert_eq!(violated_field(&status), field, "for {request:?}");
    }

    // Nothing was appended, and the server still serves.
    assert_eq!(server.log.head(), accepted.sequence);
    assert_eq!(
        publish(&mut client, report("story", "fact")).await.sequence,
        2
    );
}

#[tokio::test]
async fn malformed_reads_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let both = pb::SubscribeRequest {
        from_sequence: Some(1),
        snapshot: true,
        ..Default::default()
    };
    let status = expect_status(
        client.subscribe(both).await,
        Code::InvalidArgument,
        &["from_sequence", "snapshot"],
    );
    assert_eq!(violated_field(&status), "from_sequence");

    let bad_filter = pb::SubscribeRequest {
        story_ids: vec!["ok".into(), "Not OK".into()],
        ..Default::default()
    };
    expect_status(
        client.subscribe(bad_filter).await,
        Code::InvalidArgument,
        &["story_ids[1]"],
    );

    let too_fast = pb::SubscribeRequest {
        heartbeat_interval: Some(pbjson_types::Duration {
            seconds: 0,
            nanos: 1_000,
        }),
        ..Default::default()
    };
    expect_status(
        client.subscribe(too_fast).await,
        Code::InvalidArgument,
        &["heartbeat_interval"],
    );

    let bad_story = pb::GetStoryRequest {
        story_id: "UPPER".into(),
        as_of_version: None,
    };
    expect_status(
        client.get_story(bad_story).await,
        Code::InvalidArgument,
        &["story_id"],
    );

    let version_zero = pb::GetStoryRequest {
        story_id: "story".into(),
        as_of_version: Some(0),
    };
    expect_status(
        client.get_story(version_zero).await,
        Code::InvalidArgument,
        &["as_of_version"],
    );

    let bad_token = pb::ListStoriesRequest {
        page_token: "not a token".into(),
        ..Default::default()
    };
    expect_status(
        client.list_stories(bad_token).await,
        Code::InvalidArgument,
        &["page_token"],
    );

    let bad_tag = pb::ListEventsRequest {
        tags: vec!["Bad Tag".into()],
        ..Default::default()
    };
    expect_status(
        client.list_events(bad_tag).await,
        Code::InvalidArgument,
        &["tags[0]"],
    );
}

#[tokio::test]
async fn opening_an_existing_story_is_already_exists() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    expect_status(
        client.publish(open("story", &[])).await,
        Code::AlreadyExists,
        &["story", "already exists"],
    );
    assert_eq!(server.log.head(), 1);
}

#[tokio::test]
async fn changes_to_and_reads_of_a_story_never_opened_are_not_found() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    expect_status(
        client.publish(report("ghost", "fact")).await,
        Code::NotFound,
        &["ghost"],
    );
    expect_status(
        client.publish(note("ghost", "Context")).await,
        Code::NotFound,
        &["ghost"],
    );
    let get = pb::GetStoryRequest {
        story_id: "ghost".into(),
        as_of_version: None,
    };
    expect_status(client.get_story(get).await, Code::NotFound, &["ghost"]);
    assert_eq!(server.log.head(), 0);
}

#[tokio::test]
async fn story_rule_violations_are_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "known")).await;

    expect_status(
        client
            .publish(set_status("story", "unknown", pb::FactStatus::Denied))
            .await,
        Code::FailedPrecondition,
        &["fact unknown", "story"],
    );
    let correction = request(
        "story",
        "",
        "Correction",
        Kind::FactCorrected(pb::FactCorrected {
            fact_id: "unknown".into(),
            statement: "Corrected.".into(),
            reason: String::new(),
        }),
    );
    expect_status(
        client.publish(correction).await,
        Code::FailedPrecondition,
        &["fact unknown"],
    );
    expect_status(
        client.publish(report("story", "known")).await,
        Code::FailedPrecondition,
        &["fact known", "already reported"],
    );

    let withdraw = request(
        "story",
        "",
        "Story withdrawn",
        Kind::StoryStatusChanged(pb::StoryStatusChanged {
            status: pb::StoryStatus::Withdrawn.into(),
            reason: "Could not be verified.".into(),
        }),
    );
    publish(&mut client, withdraw).await;
    expect_status(
        client.publish(note("story", "Too late")).await,
        Code::FailedPrecondition,
        &["withdrawn"],
    );
    expect_status(
        client
            .publish(set_status("story", "known", pb::FactStatus::Retracted))
            .await,
        Code::FailedPrecondition,
        &["withdrawn"],
    );
    assert_eq!(
        server.log.head(),
        3,
        "only the accepted updates are in the log"
    );
}

#[tokio::test]
async fn a_log_id_from_another_log_is_failed_precondition() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let resume = pb::SubscribeRequest {
        from_sequence: Some(1),
        log_id: "someotherlog".into(),
        ..Default::default()
    };
    expect_status(
        client.subscribe(resume).await,
        Code::FailedPrecondition,
        &["someotherlog", server.log.log_id()],
    );
    let page = pb::ListEventsRequest {
        log_id: "someotherlog".into(),
        ..Default::default()
    };
    expect_status(
        client.list_events(page).await,
        Code::FailedPrecondition,
        &["someotherlog"],
    );

    // The right log_id is accepted.
    let resume = pb::SubscribeRequest {
        from_sequence: Some(1),
        log_id: server.log.log_id().to_owned(),
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, resume).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
}

#[tokio::test]
async fn from_sequence_outside_the_retained_log_is_out_of_range() {
    let server = TestServer::with_retention(3).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..5 {
        publish(&mut client, note("story", &format!("Update {i}"))).await;
    }
    // Sequences 4..=6 are retained.
    expect_status(
        client.subscribe(from(3)).await,
        Code::OutOfRange,
        &["sequence 3", "first retained sequence is 4"],
    );
    expect_status(
        client.subscribe(from(8)).await,
        Code::OutOfRange,
        &["sequence 8", "(6)"],
    );
    let page = pb::ListEventsRequest {
        from_sequence: 1,
        ..Default::default()
    };
    expect_status(
        client.list_events(page).await,
        Code::OutOfRange,
        &["first retained sequence is 4"],
    );

    // head + 1 is a valid place to start: nothing yet, then the next event.
    let mut stream = subscribe(&mut client, from(7)).await;
    let (events, caught_up) = until_caught_up(&mut stream).await;
    assert!(events.is_empty());
    assert_eq!(caught_up.head_sequence, 6);
}

#[tokio::test]
async fn as_of_version_beyond_the_story_or_past_retention_is_out_of_range() {
    let server = TestServer::with_retention(3).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, note("story", "Second")).await;
    let get = |version| pb::GetStoryRequest {
        story_id: "story".into(),
        as_of_version: Some(version),
    };
    expect_status(
        client.get_story(get(3)).await,
        Code::OutOfRange,
        &["as_of_version 3", "version 2"],
    );

    for i in 0..3 {
        publish(&mut client, note("story", &format!("Update {i}"))).await;
    }
    expect_status(
        client.get_story(get(2)).await,
        Code::OutOfRange,
        &["no longer retained"],
    );
    let current = client.get_story(pb::GetStoryRequest {
        story_id: "story".into(),
        as_of_version: None,
    });
    let story = current
        .await
        .expect("current state survives retention")
        .into_inner()
        .story
        .expect("story");
    assert_eq!(story.version, 5);
    assert_eq!(story.context.len(), 4);
}

#[tokio::test]
async fn open_streams_end_unavailable_at_shutdown_after_their_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 0..3 {
        publish(&mut client, open(&format!("story-{i}"), &[])).await;
    }
    let mut stream = subscribe(&mut client, from(1)).await;
    // Let the subscriber reach the head before the server goes away.
    let (events, _) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [1, 2, 3]);
    publish(&mut client, open("story-3", &[])).await;

    server.stop().await;

    let mut tail = Vec::new();
    let end = loop {
        match within("the stream to end", stream.message()).await {
            Ok(Some(pb::SubscribeResponse {
                item: Some(pb::subscribe_response::Item::Event(e)),
            })) => tail.push(e.sequence),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream must end with a status, not silently"),
            Err(status) => break status,
        }
    };
    assert_eq!(
        tail,
        [4],
        "the event published before shutdown was flushed first"
    );
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
}

#[tokio::test]
async fn an_event_id_the_server_has_yet_to_assign_cannot_be_claimed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let log_id = server.log.log_id().to_owned();

    // Sequence 3 is not reached: its server-assigned id belongs to whatever event reaches it.
    let mut claim = note("story", "Claims an id ahead of the server");
    claim.event_id = format!("{log_id}-3");
    let status = expect_status(
        client.publish(claim.clone()).await,
        Code::InvalidArgument,
        &[&claim.event_id, "assigns"],
    );
    assert_eq!(violated_field(&status), "event_id");
    let mut stream = client
        .publish_stream(tokio_stream::iter([pb::PublishStreamRequest {
            request: Some(claim),
        }]))
        .await
        .expect("stream opens")
        .into_inner();
    match stream.message().await.expect("an answer").expect("one") {
        pb::PublishStreamResponse {
            result: Some(pb::publish_stream_response::Result::Rejected(rejected)),
        } => {
            assert_eq!(rejected.code, i32::from(Code::InvalidArgument));
            assert_eq!(rejected.field, "event_id");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(server.log.head(), 1, "nothing appended");

    // So every event keeps an id of its own when the server reaches sequence 3.
    for text in ["Second", "Third"] {
        publish(&mut client, note("story", text)).await;
    }
    let ids: Vec<String> = all_events(&mut client, &log_id)
        .await
        .into_iter()
        .map(|event| event.event_id)
        .collect();
    assert_eq!(ids[2], format!("{log_id}-3"));
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");

    // An id the server has assigned is still the way to retry that event.
    let mut retry = note("story", "Third");
    retry.event_id = format!("{log_id}-3");
    assert!(publish(&mut client, retry).await.duplicate);
}

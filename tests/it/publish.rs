//! Publish: sequences, versions, idempotency, optimistic concurrency and the story rules.

use crate::support;

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use storywire::{
    clock::{ManualClock, to_timestamp},
    pb::{self, change::Kind},
};
use support::*;
use tonic::Code;

#[tokio::test]
async fn sequences_start_at_one_and_grow_by_one_across_stories() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let mut receipts = Vec::new();
    receipts.push(publish(&mut client, open("first", &["italy"])).await);
    receipts.push(publish(&mut client, open("second", &[])).await);
    receipts.push(publish(&mut client, report("first", "in-hiding")).await);
    receipts.push(publish(&mut client, report("second", "asylum")).await);
    receipts.push(publish(&mut client, report("first", "safe-house")).await);

    let sequences: Vec<u64> = receipts.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    let versions: Vec<u64> = receipts.iter().map(|r| r.story_version).collect();
    assert_eq!(versions, [1, 1, 2, 2, 3]);
    assert!(receipts.iter().all(|r| !r.duplicate));

    let story = get_story(&mut client, "first", None).await;
    assert_eq!(story.version, 3);
    assert_eq!(story.last_sequence, 5);
    let fact_ids: Vec<&str> = story.facts.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(fact_ids, ["in-hiding", "safe-house"]);
}

#[tokio::test]
async fn the_server_assigns_distinct_event_ids_when_none_is_given() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let opened = publish(&mut client, open("story", &[])).await;
    let noted = publish(&mut client, note("story", "Background")).await;
    assert!(!opened.event_id.is_empty());
    assert_ne!(opened.event_id, noted.event_id);
    assert!(storywire::validate::is_id(&opened.event_id));

    // The assigned id is a real idempotency key from then on.
    let mut again = note("story", "Background");
    again.event_id = noted.event_id.clone();
    let replay = publish(&mut client, again).await;
    assert!(replay.duplicate);
    assert_eq!(replay.sequence, noted.sequence);

    // ... and it cannot be taken for a different update.
    let mut other = note("story", "Something else");
    other.event_id = noted.event_id.clone();
    expect_status(
        client.publish(other).await,
        Code::AlreadyExists,
        &[&noted.event_id],
    );
    assert_eq!(server.log.head(), 2);
}

#[tokio::test]
async fn republishing_an_event_id_returns_the_original_and_appends_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut first = open("story", &["italy"]);
    first.event_id = "open-1".into();
    let original = publish(&mut client, first.clone()).await;
    publish(&mut client, note("story", "Something in between")).await;

    let retry = publish(&mut client, first).await;
    assert!(retry.duplicate);
    assert_eq!(retry.sequence, original.sequence);
    assert_eq!(retry.story_version, original.story_version);
    assert_eq!(retry.event_id, "open-1");
    assert_eq!(retry.recorded_at, original.recorded_at);

    let page = client
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("events")
        .into_inner();
    assert_eq!(page.head_sequence, 2, "the retry appended nothing");
    assert_eq!(page.events.len(), 2);
}

#[tokio::test]
async fn an_event_id_reused_for_a_different_request_is_already_exists() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut first = open("story", &[]);
    first.event_id = "shared-id".into();
    publish(&mut client, first).await;

    let mut different = note("story", "Another update");
    different.event_id = "shared-id".into();
    expect_status(
        client.publish(different).await,
        Code::AlreadyExists,
        &["shared-id", "different request"],
    );
    // The same id with the same change but another expected_version is another request too.
    let mut changed = open("story", &[]);
    changed.event_id = "shared-id".into();
    changed.expected_version = Some(0);
    expect_status(
        client.publish(changed).await,
        Code::AlreadyExists,
        &["shared-id"],
    );
    assert_eq!(server.log.head(), 1);
}

#[tokio::test]
async fn expected_version_guards_concurrent_writers() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let mut create = open("story", &[]);
    create.expected_version = Some(0);
    assert_eq!(publish(&mut client, create).await.story_version, 1);

    let mut stale = note("story", "Written against version 0");
    stale.expected_version = Some(0);
    expect_status(
        client.publish(stale).await,
        Code::Aborted,
        &["expected_version 0", "version 1"],
    );

    let mut current = note("story", "Written against version 1");
    current.expected_version = Some(1);
    assert_eq!(publish(&mut client, current).await.story_version, 2);

    let mut must_not_exist = open("story", &[]);
    must_not_exist.expected_version = Some(0);
    expect_status(
        client.publish(must_not_exist).await,
        Code::Aborted,
        &["version 2"],
    );
}

#[tokio::test]
async fn timestamps_come_from_the_server_clock_and_occurred_at_defaults_to_recorded_at() {
    let start = UNIX_EPOCH + Duration::from_secs(1_546_502_400); // 2019-01-03T08:00:00Z
    let clock = ManualClock::new(start);
    let server = TestServer::with_clock(100, Arc::new(clock.clone())).await;
    let mut client = server.client().await;

    let opened = publish(&mut client, open("story", &[])).await;
    assert_eq!(opened.recorded_at, Some(to_timestamp(start)));

    clock.advance(Duration::from_secs(90));
    let mut dated = note("story", "Happened earlier");
    dated.occurred_at = Some(to_timestamp(start - Duration::from_secs(3_600)));
    publish(&mut client, dated).await;

    let page = client
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("events")
        .into_inner();
    let [first, second] = page.events.as_slice() else {
        panic!("two events expected")
    };
    assert_eq!(first.occurred_at, first.recorded_at);
    assert_eq!(
        second.recorded_at,
        Some(to_timestamp(start + Duration::from_secs(90)))
    );
    assert_eq!(
        second.occurred_at,
        Some(to_timestamp(start - Duration::from_secs(3_600)))
    );
}

#[tokio::test]
async fn status_changes_and_corrections_fold_into_the_story() {
    let server = TestServer::start().await;
    let mut client = publish_a_denied_fact(&server).await;
    publish(
        &mut client,
        request(
            "story",
            "",
            "Wording corrected",
            Kind::FactCorrected(pb::FactCorrected {
                fact_id: "asylum-italy".into(),
                statement: "Jo asked Italy for protection.".into(),
                reason: "The request was for protection, not asylum.".into(),
            }),
        ),
    )
    .await;
    publish(
        &mut client,
        request(
            "story",
            "",
            "Tags revised",
            Kind::StoryRevised(pb::StoryRevised {
                headline: None,
                summary: Some("Italy denies.".into()),
                tags: Some(pb::TagList {
                    tags: vec!["north-korea".into()],
                }),
                language: None,
            }),
        ),
    )
    .await;
    publish(
        &mut client,
        request(
            "story",
            "",
            "Story concluded",
            Kind::StoryStatusChanged(pb::StoryStatusChanged {
                status: pb::StoryStatus::Concluded.into(),
                reason: "No further developments expected.".into(),
            }),
        ),
    )
    .await;
    publish(
        &mut client,
        note("story", "About 30,000 have defected since 1953."),
    )
    .await;

    let story = get_story(&mut client, "story", None).await;
    assert_eq!(story.version, 7);
    assert_eq!(story.status, i32::from(pb::StoryStatus::Concluded));
    assert_eq!(story.summary, "Italy denies.");
    assert_eq!(
        story.headline, "The story story",
        "an unset headline is unchanged"
    );
    assert_eq!(story.tags, ["north-korea"]);
    let fact = &story.facts[0];
    assert_eq!(fact.status, i32::from(pb::FactStatus::Denied));
    assert_eq!(fact.statement, "Jo asked Italy for protection.");
    assert_eq!(
        fact.attributions.len(),
        2,
        "the denial is added to the fact's sources"
    );
    assert_eq!(fact.attributions[1].stance, i32::from(pb::Stance::Denies));
    assert_eq!(story.context.len(), 1);
}

//! Subscribe: catch-up then live in sequence order, filters, checkpoints, snapshots, resumption,
//! and slow subscribers that fall out of retention without slowing anyone else.

use crate::support;

use storywire::{
    limits::StoryLimits,
    pb::{self, change::Kind, subscribe_response::Item},
};
use support::*;
use tonic::{Code, transport::Endpoint};

#[tokio::test]
async fn catch_up_then_live_arrive_in_sequence_order_with_one_caught_up() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "in-hiding")).await;
    publish(&mut client, report("story", "asylum")).await;

    let mut stream = subscribe(&mut client, from(1)).await;
    let (events, caught_up) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [1, 2, 3]);
    assert_eq!(caught_up.head_sequence, 3);
    assert_eq!(caught_up.log_id, server.log.log_id());
    assert_eq!(events[1].story_version, 2);
    assert_eq!(events[1].headline, "Fact in-hiding reported");

    publish(
        &mut client,
        set_status("story", "asylum", pb::FactStatus::Denied),
    )
    .await;
    publish(&mut client, note("story", "Background")).await;
    assert_eq!(next_event(&mut stream).await.sequence, 4);
    assert_eq!(next_event(&mut stream).await.sequence, 5);
}

#[tokio::test]
async fn without_from_sequence_only_later_events_arrive() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, note("story", "Before")).await;

    let mut stream = subscribe(&mut client, pb::SubscribeRequest::default()).await;
    let (events, caught_up) = until_caught_up(&mut stream).await;
    assert!(events.is_empty());
    assert_eq!(caught_up.head_sequence, 2);
    publish(&mut client, note("story", "After")).await;
    let event = next_event(&mut stream).await;
    assert_eq!((event.sequence, event.headline.as_str()), (3, "After"));
}

#[tokio::test]
async fn from_sequence_zero_starts_at_the_oldest_retained_event() {
    let server = TestServer::with_retention(2).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..3 {
        publish(&mut client, note("story", &format!("Update {i}"))).await;
    }
    let mut stream = subscribe(&mut client, from(0)).await;
    let (events, _) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [3, 4]);
}

#[tokio::test]
async fn filters_by_story_and_tag_combine_with_and() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("rome", &["italy"])).await; // 1
    publish(&mut client, open("seoul", &["korea"])).await; // 2
    publish(&mut client, open("both", &["italy", "korea"])).await; // 3
    publish(&mut client, note("rome", "Rome")).await; // 4
    publish(&mut client, note("seoul", "Seoul")).await; // 5
    publish(&mut client, note("both", "Both")).await; // 6

    let cases = [
        (vec![], vec!["italy"], vec![1, 3, 4, 6]),
        (vec!["seoul"], vec![], vec![2, 5]),
        (vec!["rome", "seoul"], vec!["korea"], vec![2, 5]),
        (vec!["nobody"], vec![], vec![]),
    ];
    for (story_ids, tags, expected) in cases {
        let request = pb::SubscribeRequest {
            story_ids: story_ids.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            from_sequence: Some(1),
            ..Default::default()
        };
        let mut stream = subscribe(&mut client, request).await;
        let (events, caught_up) = until_caught_up(&mut stream).await;
        assert_eq!(
            sequences(&events),
            expected,
            "stories {story_ids:?} tags {tags:?}"
        );
        assert_eq!(caught_up.head_sequence, 6);
    }
}

#[tokio::test]
async fn a_tag_subscriber_sees_the_revision_that_removes_its_tag_and_nothing_after() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &["italy"])).await;
    let retag = request(
        "story",
        "",
        "No longer about Italy",
        Kind::StoryRevised(pb::StoryRevised {
            tags: Some(pb::TagList {
                tags: vec!["korea".into()],
            }),
            ..Default::default()
        }),
    );
    publish(&mut client, retag).await;
    publish(&mut client, note("story", "About Korea")).await;

    let request = pb::SubscribeRequest {
        tags: vec!["italy".into()],
        from_sequence: Some(1),
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, request).await;
    let (events, _) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [1, 2]);
}

#[tokio::test]
async fn a_filtered_idle_subscriber_gets_checkpoints_of_what_it_skipped() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("watched", &[])).await;
    publish(&mut client, open("other", &[])).await;

    let request = pb::SubscribeRequest {
        story_ids: vec!["watched".into()],
        from_sequence: Some(1),
        heartbeat_interval: Some(pbjson_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, request).await;
    let (events, _) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [1]);

    for i in 0..3 {
        publish(&mut client, note("other", &format!("Not watched {i}"))).await;
    }
    // Checkpoints arrive on the heartbeat; the last one covers every skipped event.
    let checkpoint = loop {
        match next_item(&mut stream).await {
            Item::Checkpoint(c) if c.sequence == 5 => break c,
            Item::Checkpoint(c) => assert!(c.sequence <= 5),
            other => panic!("only checkpoints expected, got {other:?}"),
        }
    };
    assert_eq!(checkpoint.log_id, server.log.log_id());

    // Resuming from the checkpoint misses nothing and repeats nothing.
    publish(&mut client, note("watched", "Watched again")).await;
    let resume = pb::SubscribeRequest {
        story_ids: vec!["watched".into()],
        from_sequence: Some(checkpoint.sequence + 1),
        log_id: checkpoint.log_id,
        ..Default::default()
    };
    let mut resumed = subscribe(&mut client, resume).await;
    let (events, _) = until_caught_up(&mut resumed).await;
    assert_eq!(sequences(&events), [6]);
}

#[tokio::test]
async fn a_snapshot_sends_matching_stories_then_only_newer_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("rome", &["italy"])).await;
    publish(&mut client, open("seoul", &["korea"])).await;
    publish(&mut client, report("rome", "asylum")).await;

    let request = pb::SubscribeRequest {
        tags: vec!["italy".into()],
        snapshot: true,
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, request).await;
    let Item::Story(story) = next_item(&mut stream).await else {
        panic!("a story first")
    };
    assert_eq!(
        (story.id.as_str(), story.version, story.last_sequence),
        ("rome", 2, 3)
    );
    assert_eq!(story.facts.len(), 1);
    let Item::CaughtUp(caught_up) = next_item(&mut stream).await else {
        panic!("then caught_up")
    };
    assert_eq!(caught_up.head_sequence, 3);

    publish(&mut client, note("seoul", "Not matching")).await;
    publish(
        &mut client,
        set_status("rome", "asylum", pb::FactStatus::Denied),
    )
    .await;
    let event = next_event(&mut stream).await;
    assert_eq!((event.sequence, event.story_version), (5, 3));
}

#[tokio::test]
async fn a_resumed_subscriber_sees_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..4 {
        publish(&mut client, note("story", &format!("Update {i}"))).await;
    }
    let mut stream = subscribe(&mut client, from(1)).await;
    let first: Vec<u64> = vec![
        next_event(&mut stream).await.sequence,
        next_event(&mut stream).await.sequence,
    ];
    drop(stream);
    for i in 4..6 {
        publish(&mut client, note("story", &format!("Update {i}"))).await;
    }

    let resume = pb::SubscribeRequest {
        from_sequence: Some(first[1] + 1),
        log_id: server.log.log_id().to_owned(),
        ..Default::default()
    };
    let mut resumed = subscribe(&mut client, resume).await;
    let (rest, _) = until_caught_up(&mut resumed).await;
    let all: Vec<u64> = first.into_iter().chain(sequences(&rest)).collect();
    assert_eq!(all, (1..=7).collect::<Vec<_>>());
}

/// A client whose HTTP/2 stream window is the protocol's minimum, so that a subscriber that stops
/// reading stops the server's sending after a few kilobytes.
async fn small_window_client(
    server: &TestServer,
) -> pb::story_service_client::StoryServiceClient<tonic::transport::Channel> {
    let endpoint = Endpoint::from_shared(server.url())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let channel = within("a connection", endpoint.connect()).await;
    pb::story_service_client::StoryServiceClient::new(channel.expect("connect"))
}

#[tokio::test]
async fn a_stalled_subscriber_blocks_no_one_and_ends_out_of_range_when_evicted() {
    const EVENTS: u64 = 1_500;
    const RETAIN: usize = 100;
    let server = TestServer::with_retention(RETAIN).await;
    // Every event is a note to one story: more than a story holds by default.
    server.log.set_story_limits(StoryLimits {
        max_notes_per_story: EVENTS as usize,
        ..StoryLimits::default()
    });
    let mut publisher = server.client().await;
    publish(&mut publisher, open("story", &[])).await;

    // Opens its stream, then reads nothing while the log moves on.
    let mut stalled_client = small_window_client(&server).await;
    let mut stalled = subscribe(&mut stalled_client, from(1)).await;
    // Keeps up throughout, on its own connection.
    let mut reader_client = server.client().await;
    let mut reader = subscribe(&mut reader_client, from(1)).await;

    let padding = "p".repeat(180);
    let reading = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < EVENTS as usize {
            if let Item::Event(event) = next_item(&mut reader).await {
                seen.push(event.sequence);
            }
        }
        seen
    });
    for i in 1..EVENTS {
        publish(&mut publisher, note("story", &format!("{i} {padding}"))).await;
    }
    let seen = within("the reader", reading).await.expect("reader task");
    assert_eq!(
        seen,
        (1..=EVENTS).collect::<Vec<_>>(),
        "the reader missed nothing"
    );

    // The stalled subscriber gets what it had in flight, gapless, then OUT_OF_RANGE.
    let mut received = Vec::new();
    let end = loop {
        match within("the stalled stream", stalled.message()).await {
            Ok(Some(pb::SubscribeResponse {
                item: Some(Item::Event(event)),
            })) => received.push(event.sequence),
            Ok(Some(_caught_up_or_checkpoint)) => {}
            Ok(None) => panic!("the stream must end with OUT_OF_RANGE"),
            Err(status) => break status,
        }
    };
    assert_eq!(received, (1..=received.len() as u64).collect::<Vec<_>>());
    assert!(
        (received.len() as u64) < EVENTS - RETAIN as u64,
        "it really fell behind"
    );
    assert_eq!(end.code(), Code::OutOfRange, "{end:?}");
    let first_retained = EVENTS - RETAIN as u64 + 1;
    assert!(
        end.message()
            .contains(&format!("first retained sequence is {first_retained}")),
        "{end:?}"
    );
}

#[tokio::test]
async fn every_stream_starts_with_the_log_id_and_the_head() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, note("story", "Second")).await;

    let starts = [
        ("live", pb::SubscribeRequest::default()),
        ("from 1", from(1)),
        (
            "snapshot",
            pb::SubscribeRequest {
                snapshot: true,
                ..Default::default()
            },
        ),
        (
            "filtered on another story",
            pb::SubscribeRequest {
                story_ids: vec!["elsewhere".into()],
                from_sequence: Some(1),
                ..Default::default()
            },
        ),
    ];
    for (kind, request) in starts {
        let mut stream = within("subscribe", client.subscribe(request))
            .await
            .expect("subscription accepted")
            .into_inner();
        match next_item(&mut stream).await {
            Item::Started(started) => {
                assert_eq!(started.log_id, server.log.log_id(), "{kind}");
                assert_eq!(started.head_sequence, 2, "{kind}");
            }
            other => panic!("{kind}: expected started first, got {other:?}"),
        }
    }
}

/// A revision that sets a story's tags.
fn retag(story_id: &str, tags: &[&str]) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Retagged",
        Kind::StoryRevised(pb::StoryRevised {
            tags: Some(pb::TagList {
                tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            }),
            ..Default::default()
        }),
    )
}

#[tokio::test]
async fn a_story_entering_a_tag_filter_arrives_with_its_state_before_the_revision() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &["korea"])).await;
    publish(&mut client, report("story", "in-hiding")).await;

    let italy = pb::SubscribeRequest {
        tags: vec!["italy".into()],
        ..Default::default()
    };
    let mut live = subscribe(&mut client, italy.clone()).await;
    let mut from_start = subscribe(
        &mut client,
        pb::SubscribeRequest {
            from_sequence: Some(1),
            ..italy
        },
    )
    .await;
    assert!(matches!(
        next_item(&mut from_start).await,
        Item::CaughtUp(_)
    ));
    assert!(matches!(next_item(&mut live).await, Item::CaughtUp(_)));

    let entered = publish(&mut client, retag("story", &["korea", "italy"])).await;
    // Still matching: no state again.
    let after = publish(&mut client, retag("story", &["italy", "asylum"])).await;
    for stream in [&mut live, &mut from_start] {
        match next_item(stream).await {
            Item::Story(story) => {
                assert_eq!(story.id, "story");
                assert_eq!(
                    story.version, entered.story_version,
                    "the state right after it"
                );
                assert_eq!(story.last_sequence, entered.sequence);
                assert_eq!(story.tags, ["korea", "italy"]);
                assert_eq!(story.facts.len(), 1, "the facts it had before it entered");
            }
            other => panic!("expected the story's state first, got {other:?}"),
        }
        assert_eq!(next_event(stream).await.sequence, entered.sequence);
        assert_eq!(next_event(stream).await.sequence, after.sequence);
    }
}

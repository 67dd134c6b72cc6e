//! Reading state: GetStory (now and as of a version), ListStories pages and filters, ListEvents
//! pages and filters.

use crate::support;

use storywire::pb::{self, change::Kind};
use support::*;

#[tokio::test]
async fn as_of_version_rebuilds_the_state_right_after_that_version() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &["italy"])).await;
    publish(&mut client, open("other", &[])).await;
    publish(&mut client, report("story", "asylum-italy")).await;
    publish(
        &mut client,
        set_status("story", "asylum-italy", pb::FactStatus::Denied),
    )
    .await;

    let v1 = get_story(&mut client, "story", Some(1)).await;
    assert_eq!((v1.version, v1.last_sequence, v1.facts.len()), (1, 1, 0));
    let v2 = get_story(&mut client, "story", Some(2)).await;
    assert_eq!(v2.facts[0].status, i32::from(pb::FactStatus::Reported));
    let v3 = get_story(&mut client, "story", Some(3)).await;
    assert_eq!(v3, get_story(&mut client, "story", None).await);
    assert_eq!(v3.facts[0].status, i32::from(pb::FactStatus::Denied));
}

#[tokio::test]
async fn list_stories_pages_in_id_order_and_filters_by_tag_and_status() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for id in ["delta", "alpha", "echo", "charlie", "bravo"] {
        let tags: &[&str] = if id < "c" { &["early"] } else { &["late"] };
        publish(&mut client, open(id, tags)).await;
    }
    let conclude = request(
        "echo",
        "",
        "Concluded",
        Kind::StoryStatusChanged(pb::StoryStatusChanged {
            status: pb::StoryStatus::Concluded.into(),
            reason: String::new(),
        }),
    );
    publish(&mut client, conclude).await;

    let mut ids = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_stories(pb::ListStoriesRequest {
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.stories.len() <= 2);
        ids.extend(page.stories.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids, ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(pages, 3);

    let list = |tag: &str, status: pb::StoryStatus| pb::ListStoriesRequest {
        tag: tag.into(),
        status: status.into(),
        ..Default::default()
    };
    let early = client
        .list_stories(list("early", pb::StoryStatus::Unspecified))
        .await;
    let early: Vec<String> = early
        .expect("list")
        .into_inner()
        .stories
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(early, ["alpha", "bravo"]);
    let concluded = client
        .list_stories(list("", pb::StoryStatus::Concluded))
        .await;
    let concluded = concluded.expect("list").into_inner();
    assert_eq!(concluded.stories.len(), 1);
    assert_eq!(concluded.stories[0].id, "echo");
    assert!(concluded.next_page_token.is_empty());
}

#[tokio::test]
async fn list_events_pages_through_the_log_with_the_subscribe_filters() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("rome", &["italy"])).await;
    publish(&mut client, open("seoul", &["korea"])).await;
    for i in 0..5 {
        publish(&mut client, note("rome", &format!("Rome {i}"))).await;
        publish(&mut client, note("seoul", &format!("Seoul {i}"))).await;
    }

    let mut from_sequence = 1;
    let mut seen = Vec::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                from_sequence,
                page_size: 3,
                tags: vec!["italy".into()],
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(page.head_sequence, 12);
        assert_eq!(page.first_retained_sequence, 1);
        assert_eq!(page.log_id, server.log.log_id());
        assert!(page.events.len() <= 3);
        seen.extend(sequences(&page.events));
        from_sequence = page.next_sequence;
        if from_sequence > page.head_sequence {
            break;
        }
    }
    assert_eq!(seen, [1, 3, 5, 7, 9, 11]);

    let everything = client
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(sequences(&everything.events), (1..=12).collect::<Vec<_>>());
    assert_eq!(everything.next_sequence, 13);
}

/// A story as of a version is rebuilt from its history while publishes to the same story go on:
/// each rebuild shows the story at that version, every publish lands, and neither waits for the
/// other to fail. How long a publish waits behind rebuilds (they run outside the log's lock, on
/// a thread of their own) is a figure, not a test's to time: it is in
/// docs/benchmarks/2026-11-30-heavy-reads.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_story_as_of_a_version_is_rebuilt_while_publishes_to_the_story_go_on() {
    const HISTORY: u64 = 20_000;
    const REBUILDS: usize = 10;
    let server = TestServer::start().await;
    storywire::service::publish(&server.log, open("long", &[]), "test").expect("open");
    for i in 1..HISTORY {
        let revise = summary_revised("long", format!("Summary {i:06}"));
        storywire::service::publish(&server.log, revise, "test").expect("revise");
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        let mut client = server.client().await;
        tokio::spawn(async move {
            let mut published = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publish(
                    &mut client,
                    summary_revised("long", format!("Later {published}")),
                )
                .await;
                published += 1;
            }
            published
        })
    };
    let mut reader = server.client().await;
    for _ in 0..REBUILDS {
        let story = get_story(&mut reader, "long", Some(HISTORY)).await;
        assert_eq!(story.version, HISTORY);
        assert_eq!(story.summary, format!("Summary {:06}", HISTORY - 1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = within("the publisher", publishing)
        .await
        .expect("publisher task");
    let now = get_story(&mut reader, "long", None).await;
    assert_eq!(now.version, HISTORY + published);
}

/// A publish that revises `story_id`'s summary to `summary`.
fn summary_revised(story_id: &str, summary: String) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Revised",
        Kind::StoryRevised(pb::StoryRevised {
            summary: Some(summary),
            ..Default::default()
        }),
    )
}

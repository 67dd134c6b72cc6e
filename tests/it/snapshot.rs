//! Snapshot subscriptions: the stories go out page by page, each as it stands when its page is
//! read, with nothing lost or repeated against the events that follow; and a subscriber that
//! stops reading holds a page, not a copy of every story.

use crate::process;
use crate::support;

use process::Running;
use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use support::*;
use tonic::transport::{Channel, Endpoint};

/// A snapshot request over every story.
fn snapshot() -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        snapshot: true,
        ..Default::default()
    }
}

/// A client whose stream window is the protocol's smallest (64 KiB), and whose connection
/// window is `connection_window`: what the server can push to it before it reads.
async fn small_window_client(url: &str, connection_window: u32) -> StoryServiceClient<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .expect("valid url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(connection_window);
    let channel = within("a connection", endpoint.connect())
        .await
        .expect("connect");
    StoryServiceClient::new(channel)
}

/// Opens `count` stories, `s00000` on, through one PublishStream.
async fn open_stories(client: &mut StoryServiceClient<Channel>, count: usize, statement: &str) {
    let requests = (0..count).map(|i| {
        let mut request = open(&format!("s{i:05}"), &["wire"]);
        if let pb::change::Kind::StoryOpened(opened) = change_mut(&mut request) {
            opened.summary = statement.to_owned();
        }
        request
    });
    let accepted = publish_all(client, requests).await;
    assert_eq!(accepted, count);
}

#[tokio::test]
async fn a_story_that_changes_before_its_page_is_read_arrives_changed_and_its_event_is_not_repeated()
 {
    const STORIES: usize = 100;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // About 2 KiB a story: the 64 KiB window holds some 30 of them, so the last pages are read
    // only as the subscriber reads.
    open_stories(&mut client, STORIES, &"x".repeat(2_000)).await;
    let pinned = server.log.head();

    let mut reader = small_window_client(&server.url(), 65_535).await;
    let mut stream = subscribe(&mut reader, snapshot()).await;
    let first = match next_item(&mut stream).await {
        Item::Story(story) => story,
        other => panic!("expected a story, got {other:?}"),
    };
    assert_eq!(first.id, "s00000");
    // One change to a story already sent, one to a story whose page is not read yet.
    let early = publish(&mut client, note("s00000", "After its page")).await;
    let late = publish(&mut client, note("s00099", "Before its page")).await;
    assert!(early.sequence > pinned && late.sequence > pinned);

    let mut stories = vec![first];
    let mut events = Vec::new();
    loop {
        match next_item(&mut stream).await {
            Item::Story(story) => {
                assert!(events.is_empty(), "every story comes before any event");
                stories.push(story);
            }
            Item::Event(event) => events.push(event),
            Item::CaughtUp(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let ids: Vec<String> = (0..STORIES).map(|i| format!("s{i:05}")).collect();
    let received: Vec<&String> = stories.iter().map(|story| &story.id).collect();
    assert_eq!(
        received,
        ids.iter().collect::<Vec<_>>(),
        "each story once, in id order"
    );
    let last = stories.last().expect("stories");
    assert_eq!(last.version, 2, "read after the change, it includes it");
    assert_eq!(last.last_sequence, late.sequence);
    assert_eq!(
        sequences(&events),
        [early.sequence],
        "the early story's change follows; the late one's is in its state, not repeated"
    );
}

/// The server's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_snapshots_of_ten_thousand_stories_hold_little_memory() {
    const STORIES: usize = 10_000;
    const SUBSCRIBERS: usize = 1_000;
    const CONNECTIONS: usize = 10;
    const MAX_GROWTH: u64 = 64 * 1024 * 1024;
    // All 1,001 subscriptions come from one address: no share per address here, which would
    // refuse the last (the case is what stalled snapshots cost, not who may open them).
    let mut serve = Running::spawn(process::storywire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--max-subscribers-per-ip",
        "0",
    ]));
    let url = format!("http://{}", serve.listening_address().await.0);
    let mut client = client_at(&url).await;
    open_stories(&mut client, STORIES, "A developing story").await;
    let before = rss_bytes(serve.id());

    // Each stream may be sent 64 KiB before its reader reads, and the connections' windows
    // leave room for every stream's share, so each subscription is well into its snapshot.
    let per_connection = SUBSCRIBERS / CONNECTIONS;
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut reader = small_window_client(&url, (per_connection as u32 + 1) * 65_535).await;
        for _ in 0..per_connection {
            streams.push(subscribe(&mut reader, snapshot()).await);
        }
    }
    // Each is sent stories and stops reading after the first.
    for stream in &mut streams {
        assert!(matches!(next_item(stream).await, Item::Story(_)));
    }
    // The server still serves a reader that reads.
    let mut live = subscribe(&mut client, pb::SubscribeRequest::default()).await;
    let receipt = publish(&mut client, note("s00000", "Still served")).await;
    loop {
        match next_item(&mut live).await {
            Item::Event(event) => break assert_eq!(event.sequence, receipt.sequence),
            Item::CaughtUp(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    let grown = rss_bytes(serve.id()).saturating_sub(before);
    assert!(
        grown < MAX_GROWTH,
        "{SUBSCRIBERS} stalled snapshots of {STORIES} stories grew the server by {} MiB",
        grown / (1024 * 1024)
    );
    drop(streams);
    serve.stop_cleanly().await;
}

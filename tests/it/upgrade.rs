//! Upgrades keep the log: a data directory written by an earlier release, kept under
//! `tests/fixtures/`, opens with this build exactly as that release left it.

use std::{path::Path, sync::Arc};

use storywire::{
    clock::SystemClock,
    consumers::Consumers,
    log::EventLog,
    pb,
    server::ServerOptions,
    wal::{FsyncMode, WalConfig},
};

use crate::support::{TempDir, TestServer, all_events, get_story, next_event, subscribe, within};

/// The fixture with named consumers: the same log, and a `consumers` file.
const FIXTURE_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-v2");
const CONSUMERS_V2: &str = include_str!("../fixtures/datadir-v2.consumers.json");
/// The fixture written before named consumers added state to the data directory.
const FIXTURE_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-v1");
/// What the fixture's server answered, read by the release that wrote it.
const EVENTS_V1: &str = include_str!("../fixtures/datadir-v1.events.jsonl");
const STORIES_V1: &str = include_str!("../fixtures/datadir-v1.stories.json");
/// The fixture's log_id, head and first retained sequence, as its README says.
const LOG_ID_V1: &str = "2451557e3d4f4fd7a4c6c305804b5dee";
const HEAD_V1: u64 = 12;
const FIRST_RETAINED_V1: u64 = 7;
/// The retention the fixture was written with: recovery evicts to it again.
const RETAIN_V1: usize = 6;

/// A copy of a fixture in a temp dir, so that opening it (which may write) leaves the committed
/// one as it is.
pub fn copy_fixture(fixture: &str) -> TempDir {
    let dir = TempDir::new("fixture");
    for entry in std::fs::read_dir(fixture).expect("the fixture is there") {
        let entry = entry.expect("fixture entry");
        std::fs::copy(entry.path(), dir.0.join(entry.file_name())).expect("copy the fixture");
    }
    dir
}

/// Opens a data directory with the fixture's retention.
pub fn open_v1(dir: &Path) -> Arc<EventLog> {
    EventLog::open(
        RETAIN_V1,
        Arc::new(SystemClock),
        &WalConfig::new(dir, FsyncMode::Always),
    )
    .expect("the fixture opens")
}

/// Every line of a JSON Lines text, parsed.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The request of line `n` (1-based) of the file that wrote the fixture.
fn fixture_request(n: usize) -> pb::PublishRequest {
    let line = include_str!("../fixtures/datadir-v1.jsonl")
        .lines()
        .nth(n - 1)
        .expect("the line is there");
    serde_json::from_str(line).expect("a PublishRequest")
}

#[tokio::test]
async fn a_data_directory_from_the_release_before_consumers_recovers_exactly() {
    let dir = copy_fixture(FIXTURE_V1);
    let server = TestServer::over(open_v1(&dir.0)).await;
    let mut client = server.client().await;

    assert_eq!(server.log.log_id(), LOG_ID_V1);
    assert_eq!(server.log.head(), HEAD_V1);
    assert_eq!(server.log.first_retained(), FIRST_RETAINED_V1);

    // Events, bodies and all (recorded_at, published_by, the assigned id), through ListEvents.
    let events: Vec<serde_json::Value> = all_events(&mut client, LOG_ID_V1)
        .await
        .iter()
        .map(|event| serde_json::to_value(event).expect("event as JSON"))
        .collect();
    let expected: Vec<serde_json::Value> = json_lines(EVENTS_V1)
        .into_iter()
        .map(|line| line["event"].clone())
        .collect();
    assert_eq!(events, expected);

    // Stories, with their status, tags, corrections and history.
    for expected in json_lines(STORIES_V1) {
        let id = expected["id"].as_str().expect("story id");
        let story = get_story(&mut client, id, None).await;
        assert_eq!(
            serde_json::to_value(&story).expect("story as JSON"),
            expected
        );
    }
    let harbour = get_story(&mut client, "harbour-fire", None).await;
    assert_eq!(harbour.tags, ["fire", "harbour", "politics"]);
    assert_eq!(harbour.status(), pb::StoryStatus::Concluded);
    let council = get_story(&mut client, "council-vote", None).await;
    assert_eq!(council.status(), pb::StoryStatus::Withdrawn);

    // Dedupe: a retained event_id answers as a duplicate with its original sequence, and an id
    // the server assigned is recognised too.
    for (line, sequence) in [(10, 10), (12, 12)] {
        let receipt = within("publish", client.publish(fixture_request(line)))
            .await
            .expect("a retry is accepted")
            .into_inner();
        assert!(receipt.duplicate, "line {line}: {receipt:?}");
        assert_eq!(receipt.sequence, sequence);
    }
    let mut assigned = fixture_request(11);
    assigned.event_id = format!("{LOG_ID_V1}-11");
    let receipt = within("publish", client.publish(assigned))
        .await
        .expect("a retry is accepted")
        .into_inner();
    assert!(receipt.duplicate && receipt.sequence == 11, "{receipt:?}");
    assert_eq!(server.log.head(), HEAD_V1, "nothing new was appended");
    server.stop().await;
}

#[tokio::test]
async fn a_data_directory_with_consumers_recovers_the_log_and_every_consumer_exactly() {
    let dir = copy_fixture(FIXTURE_V2);
    let options = ServerOptions {
        consumers: Some(Consumers::open(&dir.0, Arc::new(SystemClock)).expect("consumers open")),
        ..Default::default()
    };
    let server = TestServer::over_with(open_v1(&dir.0), options).await;
    let mut client = server.client().await;
    assert_eq!(server.log.log_id(), LOG_ID_V1);
    assert_eq!(server.log.head(), HEAD_V1);
    assert_eq!(server.log.first_retained(), FIRST_RETAINED_V1);
    let events = all_events(&mut client, LOG_ID_V1).await;
    assert_eq!(events.len(), json_lines(EVENTS_V1).len());

    let listed = within(
        "list_consumers",
        client.list_consumers(pb::ListConsumersRequest {}),
    )
    .await
    .expect("list")
    .into_inner()
    .consumers;
    let listed: Vec<serde_json::Value> = listed
        .iter()
        .map(|consumer| serde_json::to_value(consumer).expect("consumer as JSON"))
        .collect();
    assert_eq!(listed, json_lines(CONSUMERS_V2));

    // And the position is one to read from: `archive` goes on after #9.
    let request = pb::SubscribeRequest {
        consumer: "archive".to_owned(),
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, request).await;
    assert_eq!(next_event(&mut stream).await.sequence, 10);
    drop(stream);
    server.stop().await;
}

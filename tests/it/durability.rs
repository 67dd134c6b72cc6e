//! Durability with `--data-dir`: nothing acknowledged is lost across a kill -9, a torn tail costs
//! only the torn record, damage in the middle stops start-up with the segment and offset named,
//! and retention deletes whole segments while a snapshot keeps every story.

use crate::process;
use crate::support;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use process::{Pipe, Running};
use storywire::{
    clock::SystemClock,
    log::EventLog,
    pb::{self, subscribe_response::Item},
    wal::{FsyncMode, SEGMENT_MAGIC, WalConfig, WalError},
};
use support::*;
use tokio::process::Command;
use tonic::Code;

fn config(dir: &Path) -> WalConfig {
    WalConfig::new(dir, FsyncMode::Always)
}

fn open_log(config: &WalConfig) -> Arc<EventLog> {
    EventLog::open(1_000, Arc::new(SystemClock), config).expect("the log opens")
}

/// Every event a server's log holds.
async fn events_of(server: &TestServer) -> Vec<pb::UpdateEvent> {
    all_events(&mut server.client().await, "").await
}

/// A story's current state on a server.
async fn story(server: &TestServer, story_id: &str) -> pb::Story {
    get_story(&mut server.client().await, story_id, None).await
}

#[tokio::test]
async fn a_restart_keeps_the_log_id_sequences_stories_and_idempotency() {
    let dir = TempDir::new("restart");
    let config = config(&dir.0);
    let server = TestServer::over(open_log(&config)).await;
    let mut client = server.client().await;
    let mut opened = open("story", &["italy"]);
    opened.event_id = "open".into();
    opened.expected_version = Some(0);
    publish(&mut client, opened.clone()).await;
    publish(&mut client, report("story", "asylum-italy")).await;
    publish(
        &mut client,
        set_status("story", "asylum-italy", pb::FactStatus::Denied),
    )
    .await;
    let before_events = events_of(&server).await;
    let before_story = story(&server, "story").await;
    let log_id = server.log.log_id().to_owned();
    let log = server.log.clone();
    server.stop().await;
    log.close();
    drop(log);

    let server = TestServer::over(open_log(&config)).await;
    assert_eq!(server.log.log_id(), log_id);
    assert_eq!(events_of(&server).await, before_events);
    assert_eq!(story(&server, "story").await, before_story);

    let mut client = server.client().await;
    // A retry from before the restart is still recognised, expected_version and all.
    let retry = publish(&mut client, opened).await;
    assert!(retry.duplicate);
    assert_eq!(retry.sequence, 1);
    // A subscriber resumes with the old log_id, and sequences go on.
    let resume = pb::SubscribeRequest {
        from_sequence: Some(4),
        log_id,
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, resume).await;
    let (events, caught_up) = until_caught_up(&mut stream).await;
    assert!(events.is_empty());
    assert_eq!(caught_up.head_sequence, 3);
    assert_eq!(
        publish(&mut client, note("story", "After the restart"))
            .await
            .sequence,
        4
    );
    assert_eq!(next_event(&mut stream).await.sequence, 4);
}

/// Publishes `count` events to a fresh log in `dir` and closes it; returns the segment's path and
/// the byte offset where each record starts.
fn write_log(dir: &Path, count: u64) -> (PathBuf, Vec<u64>) {
    let log = open_log(&config(dir));
    storywire::service::publish(&log, open("story", &[]), "test").expect("open");
    for i in 1..count {
        storywire::service::publish(&log, note("story", &format!("Update {i}")), "test")
            .expect("note");
    }
    log.close();
    drop(log);
    let segment = dir.join(format!("{:020}.wal", 1));
    let bytes = std::fs::read(&segment).expect("segment");
    let mut starts = Vec::new();
    let mut offset = SEGMENT_MAGIC.len();
    while offset < bytes.len() {
        starts.push(offset as u64);
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        offset += 8 + length as usize;
    }
    assert_eq!(offset, bytes.len());
    assert_eq!(starts.len() as u64, count);
    (segment, starts)
}

/// The `.broken` files recovery left in `dir`.
fn broken_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".broken"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[tokio::test]
async fn a_torn_tail_at_every_byte_offset_of_the_last_two_records_loses_only_the_torn_record() {
    const EVENTS: u64 = 10;
    let original = TempDir::new("torn-original");
    let (segment, starts) = write_log(&original.0, EVENTS);
    let full = std::fs::read(&segment).expect("segment");
    let name = segment.file_name().expect("name").to_owned();

    for cut in starts[EVENTS as usize - 2]..full.len() as u64 {
        let dir = TempDir::new("torn");
        copy_dir(&original.0, &dir.0);
        let torn = dir.0.join(&name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");

        let log = open_log(&config(&dir.0));
        // The records that end at or before the cut survive; the one it went through does not.
        let end = |i: usize| starts.get(i + 1).copied().unwrap_or(full.len() as u64);
        let kept = (0..starts.len()).filter(|i| end(*i) <= cut).count() as u64;
        assert_eq!(log.head(), kept, "cut at byte {cut}");
        // The cut bytes are kept for a person to look at, never dropped silently.
        let broken = broken_files(&dir.0);
        if starts.contains(&cut) {
            assert!(
                broken.is_empty(),
                "nothing torn at a record boundary ({cut})"
            );
        } else {
            let start = starts[kept as usize] as usize;
            assert_eq!(broken.len(), 1, "cut at byte {cut}");
            assert_eq!(
                std::fs::read(&broken[0]).expect("broken"),
                full[start..cut as usize]
            );
        }
        // The repaired log takes the next event at the next sequence, and keeps it.
        let receipt = storywire::service::publish(&log, note("story", "After the tear"), "test")
            .expect("publish after repair");
        assert_eq!(receipt.sequence, kept + 1);
        log.close();
        drop(log);
        assert_eq!(
            open_log(&config(&dir.0)).head(),
            kept + 1,
            "cut at byte {cut}"
        );
    }
}

#[tokio::test]
async fn a_flipped_bit_in_the_middle_stops_start_up_naming_the_segment_and_offset() {
    let dir = TempDir::new("bitflip");
    let (segment, starts) = write_log(&dir.0, 10);
    let mut bytes = std::fs::read(&segment).expect("segment");
    let damaged = starts[4];
    bytes[damaged as usize + 20] ^= 0x10;
    std::fs::write(&segment, &bytes).expect("write");

    let error = EventLog::open(1_000, Arc::new(SystemClock), &config(&dir.0))
        .expect_err("start-up refuses");
    match &error {
        WalError::Corrupt {
            segment: s, offset, ..
        } => {
            assert_eq!(s, &segment);
            assert_eq!(*offset, damaged);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("00000000000000000001.wal"), "{message}");
    assert!(message.contains(&format!("offset {damaged}")), "{message}");

    // The binary refuses too, and says where.
    let mut serve = Running::spawn(storywire_serve(&dir.0, &[]));
    let status = serve.wait().await;
    let stderr = serve.read_to_end(Pipe::Stderr).await.join("\n");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("offset {damaged}")), "{stderr}");
    assert!(stderr.contains("00000000000000000001.wal"), "{stderr}");

    // With --repair the log is cut at the damaged record and the rest kept aside.
    let mut repaired = config(&dir.0);
    repaired.repair = true;
    let log = EventLog::open(1_000, Arc::new(SystemClock), &repaired).expect("repaired");
    assert_eq!(log.head(), 4);
    let broken = broken_files(&dir.0).len();
    assert_eq!(broken, 1);
}

#[tokio::test]
async fn retention_deletes_whole_segments_and_a_snapshot_keeps_every_story() {
    let dir = TempDir::new("retention");
    let mut config = config(&dir.0);
    config.segment_bytes = 2_048;
    let log = EventLog::open(20, Arc::new(SystemClock), &config).expect("open");
    let server = TestServer::over(log).await;
    let mut client = server.client().await;
    let stories = ["rome", "seoul", "pyongyang"];
    for story_id in stories {
        publish(&mut client, open(story_id, &[story_id])).await;
    }
    for i in 0..200 {
        publish(&mut client, note(stories[i % 3], &format!("Update {i}"))).await;
    }
    let mut before = Vec::new();
    for story_id in stories {
        before.push(story(&server, story_id).await);
    }
    let head = server.log.head();
    let log = server.log.clone();
    server.stop().await;
    log.close();
    drop(log);

    let files: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let segments = files.iter().filter(|f| f.ends_with(".wal")).count();
    assert!(files.iter().any(|f| f == "snapshot"), "{files:?}");
    assert!(
        !files.iter().any(|f| f == &format!("{:020}.wal", 1)),
        "the first segment was deleted: {files:?}"
    );
    // About 20 retained events of roughly 150 bytes fit in a few 2 KiB segments.
    assert!(segments <= 4, "{segments} segments left: {files:?}");

    let server =
        TestServer::over(EventLog::open(20, Arc::new(SystemClock), &config).expect("reopen")).await;
    assert_eq!(server.log.head(), head);
    for (story_id, before) in stories.iter().zip(before) {
        assert_eq!(story(&server, story_id).await, before);
    }
    let events = events_of(&server).await;
    assert_eq!(events.last().expect("events").sequence, head);
    assert!(events.len() <= 20);
    let mut client = server.client().await;
    assert_eq!(
        publish(&mut client, note("rome", "After")).await.sequence,
        head + 1
    );
}

/// `storywire serve --data-dir DIR` on an ephemeral loopback port, with `extra` arguments.
fn storywire_serve(dir: &Path, extra: &[&str]) -> Command {
    let mut command = process::storywire(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(dir).args(extra);
    command
}

/// Starts the binary and returns it with its URL.
async fn start(dir: &Path) -> (Running, String) {
    let mut serve = Running::spawn(storywire_serve(dir, &["--fsync", "always"]));
    let (address, _) = serve.listening_address().await;
    (serve, format!("http://{address}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_acknowledged_publishes_loses_nothing_acknowledged() {
    const TRIALS: u64 = 20;
    const PUBLISHERS: u64 = 4;
    let dir = TempDir::new("kill9");
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut log_id = String::new();
    for trial in 0..TRIALS {
        let (mut serve, url) = start(&dir.0).await;
        let mut client = client_at(&url).await;
        if trial == 0 {
            publish(&mut client, open("story", &[])).await;
        }
        let page = client
            .list_events(pb::ListEventsRequest::default())
            .await
            .expect("list")
            .into_inner();
        if trial == 0 {
            log_id = page.log_id.clone();
        }
        assert_eq!(page.log_id, log_id, "trial {trial}: the log_id survives");

        // Publishers race each other; the server is killed while they are mid-stream.
        let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let mut client = client.clone();
            let acks_tx = acks_tx.clone();
            publishers.push(tokio::spawn(async move {
                for i in 0.. {
                    let mut request =
                        note("story", &format!("Trial {trial} publisher {p} update {i}"));
                    request.event_id = format!("t{trial}-p{p}-{i}");
                    match client.publish(request.clone()).await {
                        Ok(receipt) => {
                            if acks_tx
                                .send((request.event_id, receipt.into_inner().sequence))
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(acks_tx);
        let kill_after = 10 + (trial * 7) % 40;
        for _ in 0..kill_after {
            acknowledged.push(
                within("an acknowledgement", acks.recv())
                    .await
                    .expect("acks flow"),
            );
        }
        serve.kill().await;
        // Acknowledgements that raced the kill count too: they were sent before it died.
        while let Some(ack) = within("the publishers to notice", acks.recv()).await {
            acknowledged.push(ack);
        }
        for publisher in publishers {
            within("a publisher", publisher)
                .await
                .expect("publisher task");
        }
    }

    let (mut serve, url) = start(&dir.0).await;
    let mut client = client_at(&url).await;
    let server_events = all_events(&mut client, &log_id).await;
    // Sequences are continuous from 1, and no event_id appears twice.
    let sequences: Vec<u64> = server_events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    let mut ids: Vec<&str> = server_events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), total, "no event is there twice");
    // Every acknowledged event is there, at the sequence it was acknowledged with.
    for (event_id, sequence) in &acknowledged {
        let event = &server_events[*sequence as usize - 1];
        assert_eq!(
            &event.event_id, event_id,
            "acknowledged {event_id} at {sequence}"
        );
    }
    assert!(acknowledged.len() as u64 >= TRIALS * 10);
    serve.terminate().await;
    assert!(serve.wait().await.success());
}

#[tokio::test]
async fn a_restart_with_lowered_story_limits_recovers_every_story_and_refuses_only_new_growth() {
    let dir = TempDir::new("lowered-limits");
    let (mut serve, url) = start(&dir.0).await;
    let mut client = client_at(&url).await;
    publish(&mut client, open("story", &[])).await;
    for fact in ["hiding", "asylum", "family"] {
        publish(&mut client, report("story", fact)).await;
    }
    // A second attribution for the fact.
    publish(
        &mut client,
        set_status("story", "asylum", pb::FactStatus::Denied),
    )
    .await;
    publish(&mut client, note("story", "Background")).await;
    publish(&mut client, note("story", "More background")).await;
    let before = get_story(&mut client, "story", None).await;
    serve.stop_cleanly().await;

    // Every limit is now below what the story holds; replaying it must refuse nothing.
    let lowered = [
        "--max-facts-per-story",
        "1",
        "--max-notes-per-story",
        "1",
        "--max-attributions-per-fact",
        "1",
        "--max-story-bytes",
        "100",
    ];
    let mut serve = Running::spawn(storywire_serve(&dir.0, &lowered));
    let (address, _) = serve.listening_address().await;
    let mut client = client_at(&format!("http://{address}")).await;
    assert_eq!(get_story(&mut client, "story", None).await, before);
    // Rebuilding a version folds the story's events again, past the limits too.
    assert_eq!(
        get_story(&mut client, "story", Some(before.version)).await,
        before
    );

    expect_status(
        client.publish(report("story", "new")).await,
        Code::FailedPrecondition,
        &["story story", "--max-facts-per-story"],
    );
    // A bare status change adds no content, but its history is past the lowered limit and its
    // reserve; the story's withdrawal always goes through.
    expect_status(
        client
            .publish(bare_status("story", "asylum", pb::FactStatus::Confirmed))
            .await,
        Code::FailedPrecondition,
        &["story story", "history of corrections and status changes"],
    );
    let receipt = publish(&mut client, withdraw("story")).await;
    assert_eq!(receipt.story_version, before.version + 1);
    serve.stop_cleanly().await;
}

#[tokio::test]
async fn a_segment_torn_inside_its_header_is_set_aside_and_writing_goes_on() {
    let dir = TempDir::new("torn-header");
    write_log(&dir.0, 10);
    // A crash while rolling over: the next segment got only part of its header.
    let next = dir.0.join(format!("{:020}.wal", 11));
    std::fs::write(&next, &SEGMENT_MAGIC[..3]).expect("write");

    let log = open_log(&config(&dir.0));
    assert_eq!(log.head(), 10);
    let receipt = storywire::service::publish(&log, note("story", "After the torn roll"), "test")
        .expect("publish");
    assert_eq!(receipt.sequence, 11);
    log.close();
    drop(log);
    assert_eq!(open_log(&config(&dir.0)).head(), 11);
    let broken = broken_files(&dir.0).len();
    assert_eq!(broken, 1, "the torn header is kept for inspection");
}

#[tokio::test]
async fn an_event_id_used_again_after_eviction_stays_idempotent_across_a_restart() {
    let dir = TempDir::new("reused-id");
    let serve_with_retention = || {
        Running::spawn(storywire_serve(
            &dir.0,
            &["--fsync", "always", "--retain-events", "3"],
        ))
    };
    let mut serve = serve_with_retention();
    let url = format!("http://{}", serve.listening_address().await.0);
    let mut client = client_at(&url).await;
    publish(&mut client, open("story", &[])).await;
    let mut first_use = note("story", "The first update to use the id");
    first_use.event_id = "desk-42".into();
    assert_eq!(publish(&mut client, first_use).await.sequence, 2);
    for i in 0..3 {
        publish(&mut client, note("story", &format!("Filler {i}"))).await;
    }
    // Sequence 2 is evicted, so the id is free again, and a new request takes it.
    let mut second_use = note("story", "A different update under the same id");
    second_use.event_id = "desk-42".into();
    let accepted = publish(&mut client, second_use.clone()).await;
    assert!(!accepted.duplicate);
    assert_eq!(accepted.sequence, 6);
    serve.stop_cleanly().await;

    // Recovery replays both uses; evicting sequence 2 again must not forget the id at 6.
    let mut serve = serve_with_retention();
    let url = format!("http://{}", serve.listening_address().await.0);
    let mut client = client_at(&url).await;
    let retry = publish(&mut client, second_use).await;
    assert!(retry.duplicate, "a retry after the restart is recognised");
    assert_eq!(retry.sequence, 6);
    let events = all_events(&mut client, "").await;
    assert_eq!(
        sequences(&events),
        vec![4, 5, 6],
        "nothing was appended twice"
    );
    serve.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_subscriber_that_never_reads_exits_within_the_grace_and_loses_nothing() {
    const EVENTS: usize = 2_000;
    const GRACE_SECS: u64 = 2;
    let dir = TempDir::new("grace");
    let grace = GRACE_SECS.to_string();
    let mut serve = Running::spawn(storywire_serve(
        &dir.0,
        &[
            "--fsync",
            "always",
            "--shutdown-grace",
            &grace,
            "--max-notes-per-story",
            "5000",
        ],
    ));
    let url = format!("http://{}", serve.listening_address().await.0);
    let mut publisher = client_at(&url).await;
    publish(&mut publisher, open("story", &[])).await;

    // A subscriber with the protocol's smallest windows that reads nothing after `started`: its
    // stream can never drain.
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("valid url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let channel = within("a connection", endpoint.connect())
        .await
        .expect("connect");
    let mut stalled_client = pb::story_service_client::StoryServiceClient::new(channel);
    let _stalled = subscribe(&mut stalled_client, from(1)).await;

    let padding = "p".repeat(180);
    let requests = (0..EVENTS).map(|i| note("story", &format!("{i} {padding}")));
    let acknowledged = publish_all(&mut publisher, requests).await;
    assert_eq!(acknowledged, EVENTS);

    let asked = std::time::Instant::now();
    serve.terminate().await;
    let status = serve.wait().await;
    let took = asked.elapsed();
    assert!(status.success(), "exit on SIGTERM: {status}");
    assert!(
        took < std::time::Duration::from_secs(GRACE_SECS + 5),
        "shutdown took {took:?} with a grace of {GRACE_SECS} s"
    );
    let rest = serve.read_to_end(Pipe::Stderr).await;
    assert!(
        rest.iter().any(|line| line.contains("storywire stopped")),
        "{rest:#?}"
    );

    let (mut serve, url) = start(&dir.0).await;
    let events = all_events(&mut client_at(&url).await, "").await;
    assert_eq!(
        sequences(&events),
        (1..=EVENTS as u64 + 1).collect::<Vec<_>>(),
        "every acknowledged event is there after the restart"
    );
    serve.stop_cleanly().await;
}

#[tokio::test]
async fn a_repair_cut_below_the_snapshot_starts_a_new_log_id_and_reads_answer_at_once() {
    let dir = TempDir::new("repair-below-snapshot");
    let mut config = config(&dir.0);
    config.segment_bytes = 2_048;
    let log = EventLog::open(20, Arc::new(SystemClock), &config).expect("open");
    let server = TestServer::over(log).await;
    let mut client = server.client().await;
    publish(&mut client, open("rome", &[])).await;
    for i in 0..200 {
        publish(&mut client, note("rome", &format!("Update {i}"))).await;
    }
    let old_log_id = server.log.log_id().to_owned();
    let before = story(&server, "rome").await;
    let log = server.log.clone();
    server.stop().await;
    log.close();
    drop(log);

    // Damage the first record of the oldest segment left, which the snapshot already covers.
    let snapshot_bytes = std::fs::read(dir.0.join("snapshot")).expect("a snapshot was written");
    let snapshot_head =
        <storywire::wal::Snapshot as prost::Message>::decode(snapshot_bytes.as_slice())
            .expect("snapshot")
            .head;
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let oldest = &segments[0];
    let first: u64 = oldest
        .file_stem()
        .expect("name")
        .to_string_lossy()
        .parse()
        .expect("a number");
    assert!(
        first <= snapshot_head,
        "the oldest segment ({first}) holds records the snapshot ({snapshot_head}) covers"
    );
    let mut bytes = std::fs::read(oldest).expect("segment");
    bytes[SEGMENT_MAGIC.len() + 12] ^= 0x10;
    std::fs::write(oldest, &bytes).expect("write");

    config.repair = true;
    let server =
        TestServer::over(EventLog::open(20, Arc::new(SystemClock), &config).expect("repaired"))
            .await;
    assert_ne!(
        server.log.log_id(),
        old_log_id,
        "a new log_id after the cut"
    );
    assert_eq!(
        server.log.head(),
        snapshot_head,
        "the log goes on from the snapshot"
    );
    let mut client = server.client().await;
    // The story is read at once: no wait for a head that would never come.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.get_story(pb::GetStoryRequest {
            story_id: "rome".into(),
            as_of_version: None,
        }),
    )
    .await
    .expect("GetStory answers at once")
    .expect("the story")
    .into_inner()
    .story
    .expect("story set");
    assert_eq!(read.last_sequence, snapshot_head);
    assert!(read.version <= before.version);
    // A subscriber resuming with the old log_id is told the log changed.
    let resumed = client
        .subscribe(pb::SubscribeRequest {
            from_sequence: Some(snapshot_head),
            log_id: old_log_id,
            ..Default::default()
        })
        .await;
    expect_status(resumed, tonic::Code::FailedPrecondition, &["log_id"]);
    // New events follow the snapshot, and the new id stays across a restart.
    let receipt = publish(&mut client, note("rome", "After the repair")).await;
    assert_eq!(receipt.sequence, snapshot_head + 1);
    let new_log_id = server.log.log_id().to_owned();
    let log = server.log.clone();
    server.stop().await;
    log.close();
    drop(log);
    config.repair = false;
    let log = EventLog::open(20, Arc::new(SystemClock), &config).expect("reopen");
    assert_eq!(log.log_id(), new_log_id);
    assert_eq!(log.head(), snapshot_head + 1);
}

#[tokio::test]
async fn with_fsync_batch_an_event_is_acknowledged_when_written_and_seen_only_once_synced() {
    const INTERVAL_MS: u64 = 3_000;
    let dir = TempDir::new("batch-visibility");
    let mut config = WalConfig::new(&dir.0, FsyncMode::Batch);
    config.batch_interval = std::time::Duration::from_millis(INTERVAL_MS);
    let server = TestServer::over(open_log(&config)).await;
    let mut client = server.client().await;
    // The first event becomes visible with the next sync; the one after it is written right
    // after that sync, so it waits a whole interval for the next.
    let synced = publish(&mut client, open("story", &[])).await;
    let mut subscriber = subscribe(&mut client, from(1)).await;
    loop {
        match next_item(&mut subscriber).await {
            Item::Event(event) => break assert_eq!(event.sequence, synced.sequence),
            Item::CaughtUp(_) => {}
            other => panic!("expected the first event, got {other:?}"),
        }
    }
    let written = publish(&mut client, note("story", "Written, not yet synced")).await;

    // Acknowledged, yet no reader sees it: a power loss now could give its sequence to another
    // event.
    let page = client
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        page.head_sequence, synced.sequence,
        "the visible head waits for the sync"
    );
    assert_eq!(sequences(&page.events), [synced.sequence]);
    // Once synced it arrives.
    assert_eq!(next_event(&mut subscriber).await.sequence, written.sequence);
}

#[tokio::test]
async fn a_story_entering_a_tag_filter_still_arrives_with_its_state_after_a_restart() {
    let dir = TempDir::new("entered");
    let config = config(&dir.0);
    let server = TestServer::over(open_log(&config)).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &["korea"])).await;
    publish(&mut client, report("story", "in-hiding")).await;
    let retag = request(
        "story",
        "",
        "Now about Italy too",
        pb::change::Kind::StoryRevised(pb::StoryRevised {
            tags: Some(pb::TagList {
                tags: vec!["korea".into(), "italy".into()],
            }),
            ..Default::default()
        }),
    );
    let entered = publish(&mut client, retag).await;
    let log = server.log.clone();
    server.stop().await;
    log.close();
    drop(log);

    let server = TestServer::over(open_log(&config)).await;
    let mut client = server.client().await;
    let request = pb::SubscribeRequest {
        tags: vec!["italy".into()],
        from_sequence: Some(1),
        ..Default::default()
    };
    let mut stream = subscribe(&mut client, request).await;
    match next_item(&mut stream).await {
        Item::Story(story) => {
            assert_eq!(story.last_sequence, entered.sequence);
            assert_eq!(story.facts.len(), 1);
        }
        other => panic!("expected the story's state first, got {other:?}"),
    }
    assert_eq!(next_event(&mut stream).await.sequence, entered.sequence);
}

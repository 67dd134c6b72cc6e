//! Concurrency: publishers and subscribers racing each other. Every subscriber, whenever it
//! joins and however it starts, must see exactly the matching events after its starting point,
//! in sequence order, with no gap and no duplicate; snapshots must join their events seamlessly.

use crate::support;

use std::collections::HashMap;

use storywire::pb::{self, subscribe_response::Item};
use support::*;
use tokio::sync::watch;

const STORIES: [&str; 3] = ["rome", "seoul", "pyongyang"];
const PUBLISHERS: u64 = 4;
const PER_PUBLISHER: u64 = 150;
const SUBSCRIBERS: u64 = 16;

/// A small deterministic generator (an LCG), so a failing run can be replayed exactly.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// How a subscriber starts.
#[derive(Debug, Clone)]
enum Mode {
    From(u64),
    Live,
    Snapshot,
    Story(&'static str),
}

/// What a subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    stories: Vec<pb::Story>,
    caught_up_at: Option<u64>,
    events: Vec<pb::UpdateEvent>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_at_random_moments_see_gapless_duplicate_free_runs() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for story in STORIES {
        publish(&mut client, open(story, &[story])).await;
    }
    let opened = STORIES.len() as u64;
    let total = opened + PUBLISHERS * PER_PUBLISHER;

    let (progress_tx, progress) = watch::channel(0u64);
    let (target_tx, target) = watch::channel(None::<u64>);

    let mut subscribers = Vec::new();
    let mut dice = Dice(7);
    for i in 0..SUBSCRIBERS {
        let join_after = dice.roll(PUBLISHERS * PER_PUBLISHER);
        let mode = match i % 4 {
            0 => Mode::From(1 + dice.roll(opened + join_after)),
            1 => Mode::Live,
            2 => Mode::Snapshot,
            _ => Mode::Story(STORIES[dice.roll(3) as usize]),
        };
        let mut client = server.client().await;
        let mut progress = progress.clone();
        let target = target.clone();
        subscribers.push(tokio::spawn(async move {
            within(
                "the publishers' progress",
                progress.wait_for(|n| *n >= join_after),
            )
            .await
            .expect("progress sender alive");
            let mut request = pb::SubscribeRequest {
                heartbeat_interval: Some(pbjson_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                ..Default::default()
            };
            match &mode {
                Mode::From(n) => request.from_sequence = Some(*n),
                Mode::Live => {}
                Mode::Snapshot => request.snapshot = true,
                Mode::Story(story) => {
                    request.story_ids = vec![(*story).to_owned()];
                    request.from_sequence = Some(1);
                }
            }
            let mut stream = subscribe(&mut client, request).await;
            let mut seen = Seen::default();
            let mut scanned = 0;
            loop {
                match next_item(&mut stream).await {
                    Item::Event(event) => {
                        scanned = event.sequence;
                        seen.events.push(event);
                    }
                    Item::Story(story) => seen.stories.push(story),
                    Item::CaughtUp(c) => {
                        assert!(seen.caught_up_at.is_none(), "caught_up is sent once");
                        seen.caught_up_at = Some(c.head_sequence);
                        scanned = scanned.max(c.head_sequence);
                    }
                    Item::Checkpoint(c) => scanned = scanned.max(c.sequence),
                    Item::Started(s) => panic!("started is sent once, first: {s:?}"),
                }
                // The 100 ms heartbeat brings this check round even when the stream is quiet.
                // A subscriber that joined late replays up to the target before its caught_up
                // comes: it reads on until that arrives too.
                if seen.caught_up_at.is_some()
                    && matches!(*target.borrow(), Some(t) if scanned >= t)
                {
                    return (mode, seen);
                }
            }
        }));
    }

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = server.client().await;
        let progress_tx = progress_tx.clone();
        publishers.push(tokio::spawn(async move {
            let mut dice = Dice(100 + p);
            let mut receipts = Vec::new();
            for i in 0..PER_PUBLISHER {
                let story = STORIES[dice.roll(3) as usize];
                let receipt = publish(
                    &mut client,
                    note(story, &format!("Publisher {p} update {i}")),
                )
                .await;
                receipts.push((receipt.sequence, story));
                progress_tx.send_modify(|n| *n += 1);
            }
            receipts
        }));
    }

    let mut story_of: HashMap<u64, &str> = (1..=opened).zip(STORIES).collect();
    for publisher in publishers {
        let receipts = within("a publisher", publisher)
            .await
            .expect("publisher task");
        story_of.extend(receipts);
    }
    // The log itself is gapless: every sequence 1..=total was handed out exactly once.
    assert_eq!(story_of.len() as u64, total);
    assert_eq!(*story_of.keys().max().expect("events"), total);
    target_tx.send_replace(Some(total));

    for subscriber in subscribers {
        let (mode, seen) = within("a subscriber", subscriber)
            .await
            .expect("subscriber task");
        let got = sequences(&seen.events);
        let caught_up_at = seen.caught_up_at.expect("every subscriber catches up");
        match mode {
            Mode::From(n) => assert_eq!(got, (n..=total).collect::<Vec<_>>(), "from {n}"),
            Mode::Live => {
                // It starts wherever the head was when it joined: a run to the end, beginning no
                // later than where it caught up.
                let start = got.first().copied().unwrap_or(total + 1);
                assert!(start <= caught_up_at + 1, "live started after catching up");
                assert_eq!(got, (start..=total).collect::<Vec<_>>(), "live");
            }
            Mode::Story(story) => {
                let mut expected: Vec<u64> = story_of
                    .iter()
                    .filter(|(_, s)| **s == story)
                    .map(|(seq, _)| *seq)
                    .collect();
                expected.sort_unstable();
                assert_eq!(got, expected, "story {story}");
            }
            Mode::Snapshot => {
                // Unfiltered, the newest story holds the snapshot's head: every event after it
                // follows, and nothing before it does.
                assert_eq!(seen.stories.len(), STORIES.len());
                let snapshot_head = seen.stories.iter().map(|s| s.last_sequence).max();
                let after = snapshot_head.expect("stories") + 1;
                assert_eq!(got, (after..=total).collect::<Vec<_>>(), "snapshot tail");
                // Each story's snapshot joins its first later event with no version skipped or
                // repeated: nothing slipped between the snapshot and the stream.
                for story in &seen.stories {
                    let versions: Vec<u64> = seen
                        .events
                        .iter()
                        .filter(|e| e.story_id == story.id)
                        .map(|e| e.story_version)
                        .collect();
                    let expected: Vec<u64> =
                        (story.version + 1..=story.version + versions.len() as u64).collect();
                    assert_eq!(versions, expected, "story {} after its snapshot", story.id);
                }
            }
        }
    }
}

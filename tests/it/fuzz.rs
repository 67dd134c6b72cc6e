//! Fuzzing on the stable toolchain: random bytes through the decoders the project relies on and
//! writes (requests as the server decodes them, segments as recovery reads them). Nothing may
//! panic, and what is accepted must leave the log consistent. (cargo-fuzz needs a nightly
//! toolchain, which these machines do not have; proptest drives the same entry points.)

use std::{path::PathBuf, sync::Arc};

use proptest::prelude::*;
use prost::Message;
use storywire::{
    clock::SystemClock,
    log::{EventLog, Filter},
    pb, service,
    wal::{FsyncMode, SEGMENT_MAGIC, WalConfig},
};

/// Bytes that are mostly a valid request with a few bytes changed, so that decoding gets deep.
fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    let valid = pb::PublishRequest {
        story_id: "story".into(),
        event_id: "e1".into(),
        expected_version: Some(0),
        headline: "Italy denies asylum request".into(),
        occurred_at: None,
        change: Some(pb::Change {
            kind: Some(pb::change::Kind::StoryOpened(pb::StoryOpened {
                headline: "Opened".into(),
                summary: "A summary.".into(),
                tags: vec!["italy".into()],
                language: "en".into(),
            })),
        }),
    }
    .encode_to_vec();
    let len = valid.len();
    proptest::collection::vec((0..len, any::<u8>()), 0..8).prop_map(move |edits| {
        let mut bytes = valid.clone();
        for (at, byte) in edits {
            bytes[at] = byte;
        }
        bytes
    })
}

fn temp_dir(name: &str, case: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "storywire-fuzz-{name}-{}-{case}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_bytes_are_refused_or_appended_and_the_log_stays_gapless(
        inputs in proptest::collection::vec(
            prop_oneof![mutated_request(), proptest::collection::vec(any::<u8>(), 0..256)],
            1..16,
        )
    ) {
        let log = EventLog::new(8, Arc::new(SystemClock));
        let mut appended = 0;
        for bytes in inputs {
            let Ok(request) = pb::PublishRequest::decode(bytes.as_slice()) else { continue };
            if let Ok(receipt) = service::publish(&log, request, "test")
                && !receipt.duplicate
            {
                appended += 1;
                prop_assert_eq!(receipt.sequence, appended);
            }
        }
        prop_assert_eq!(log.head(), appended);
        let batch = log.read_from(0, &Filter::default(), usize::MAX, usize::MAX).expect("read");
        let sequences: Vec<u64> = batch.events.iter().map(|e| e.sequence).collect();
        let first = log.first_retained();
        prop_assert_eq!(sequences, (first..=appended).collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_segment_bytes_are_recovered_or_refused_without_panicking(
        case in any::<u64>(),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let dir = temp_dir("segment", case);
        let config = WalConfig::new(&dir, FsyncMode::Never);
        {
            let log = EventLog::open(100, Arc::new(SystemClock), &config).expect("open");
            for (i, request) in [open_request(), note_request(1), note_request(2)].into_iter().enumerate() {
                let receipt = service::publish(&log, request, "test").expect("publish");
                prop_assert_eq!(receipt.sequence, i as u64 + 1);
            }
            log.close();
        }
        let segment = dir.join(format!("{:020}.wal", 1));
        let mut bytes = std::fs::read(&segment).expect("segment");
        for (index, byte) in flips {
            let at = SEGMENT_MAGIC.len() + index.index(bytes.len() - SEGMENT_MAGIC.len());
            bytes[at] ^= byte;
        }
        bytes.extend_from_slice(&tail);
        std::fs::write(&segment, &bytes).expect("write");

        // Recovery either refuses (naming the damage) or comes back with a gapless prefix.
        if let Ok(log) = EventLog::open(100, Arc::new(SystemClock), &config) {
            let head = log.head();
            prop_assert!(head <= 3);
            let batch = log.read_from(0, &Filter::default(), usize::MAX, usize::MAX).expect("read");
            prop_assert_eq!(batch.events.len() as u64, head);
            log.close();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn open_request() -> pb::PublishRequest {
    pb::PublishRequest {
        story_id: "story".into(),
        headline: "Opened".into(),
        change: Some(pb::Change {
            kind: Some(pb::change::Kind::StoryOpened(pb::StoryOpened {
                headline: "Opened".into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

fn note_request(n: u32) -> pb::PublishRequest {
    pb::PublishRequest {
        story_id: "story".into(),
        headline: format!("Note {n}"),
        change: Some(pb::Change {
            kind: Some(pb::change::Kind::ContextAdded(pb::ContextAdded {
                text: format!("Background {n}."),
                attributions: Vec::new(),
            })),
        }),
        ..Default::default()
    }
}

//! A data directory whose segment holds what the fuzzer picks (see `segment`), opened as
//! `serve --data-dir` opens it (`EventLog::open`, with or without `--repair`). Nothing may panic;
//! recovery either refuses with an error or comes back with a log whose sequences are a gapless
//! prefix that keeps every intact record at the start of the segment. A recovered log must then
//! take a new event and come back with it after a restart.

#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use libfuzzer_sys::fuzz_target;
use storywire::{
    clock::SystemClock,
    log::EventLog,
    pb, service,
    wal::{FsyncMode, WalConfig},
};
use storywire_fuzz::{invariants, segment::Segment};

fuzz_target!(|segment: Segment| {
    let dir = Scratch::new();
    let written = segment.write(dir.path());
    let mut config = WalConfig::new(dir.path(), FsyncMode::Never);
    config.repair = segment.repair;
    let Ok(log) = EventLog::open(usize::MAX, Arc::new(SystemClock), &config) else {
        return;
    };

    let intact = written.intact.len() as u64;
    let head = log.head();
    assert!(
        head >= intact,
        "recovery lost intact records: {head} of {intact} kept"
    );
    // Beyond the intact records only pieces the fuzzer forged with a valid CRC can be recovered;
    // they promise a gapless prefix but not the log's other invariants.
    let events = if head == intact {
        invariants::assert_consistent(&log)
    } else {
        invariants::assert_gapless(&log)
    };
    assert_eq!(events.first().map(|e| e.sequence), (head > 0).then_some(1));
    assert_eq!(
        &events[..written.intact.len()],
        written.intact.as_slice(),
        "recovery changed intact records"
    );

    let receipt = match service::publish(&log, opened_after_recovery(), "fuzz") {
        Ok(receipt) => receipt,
        Err(error) => {
            assert!(
                head > intact,
                "a recovered log refused a new story: {error}"
            );
            log.close();
            return;
        }
    };
    assert_eq!(receipt.sequence, head + 1, "the first event after recovery");
    log.close();
    drop(log);

    config.repair = false;
    let reopened = EventLog::open(usize::MAX, Arc::new(SystemClock), &config)
        .unwrap_or_else(|error| panic!("a recovered log did not open again: {error}"));
    assert_eq!(
        reopened.head(),
        head + 1,
        "the restart lost or invented events"
    );
    let again = invariants::assert_gapless(&reopened);
    assert_eq!(
        &again[..events.len()],
        events.as_slice(),
        "the restart changed events"
    );
    reopened.close();
});

/// A story no fuzzed record names, opened once recovery is done.
fn opened_after_recovery() -> pb::PublishRequest {
    pb::PublishRequest {
        story_id: "after-recovery".to_owned(),
        headline: "Opened after recovery".to_owned(),
        change: Some(pb::Change {
            kind: Some(pb::change::Kind::StoryOpened(pb::StoryOpened {
                headline: "Opened after recovery".to_owned(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// The data directory of one input, empty at the start and removed at the end. Under
/// `$STORYWIRE_FUZZ_DIR` when set (scripts/fuzz sets it, and removes it afterwards: libFuzzer
/// exits at its time limit without running destructors); otherwise in memory where the machine
/// has `/dev/shm`, so that the fsyncs of recovery and of the writer cost nothing.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("STORYWIRE_FUZZ_DIR") {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm.to_owned(),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("storywire-fuzz-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch data directory");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

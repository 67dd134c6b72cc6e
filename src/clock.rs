//! The one clock the service reads, so that tests can control time.
//!
//! Only timestamps come from the clock (`recorded_at`, and `occurred_at` when the publisher gives
//! none). Ids and sequences never do.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use pbjson_types::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time as a protobuf timestamp.
    fn timestamp(&self) -> Timestamp {
        to_timestamp(self.now())
    }
}

/// The machine's wall clock: what the server uses outside tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until told to move: tests use it to predict timestamps exactly.
///
/// Cloning is shallow: every clone reads and moves the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The current time, shared by every clone.
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().expect("clock lock poisoned") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().expect("clock lock poisoned")
    }
}

/// Converts a wall-clock time to a protobuf timestamp (times before 1970 clamp to the epoch: the
/// server never records such a time).
pub fn to_timestamp(time: SystemTime) -> Timestamp {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).expect("nanos < 1e9 fit in i32"),
    }
}

//! The journal of a log kept only in memory: nothing to make durable, so an event is visible as
//! soon as it is appended. A restart starts a new log, with a new `log_id`.

use std::sync::Arc;

use super::journal::{Accepted, Heads, Journal};

/// The journal of a log kept only in memory.
#[derive(Debug)]
pub struct Memory {
    /// The log's heads, moved as soon as events are appended.
    heads: Arc<Heads>,
}

impl Memory {
    /// A journal that shows events on the log's `heads` as soon as they are appended.
    pub fn new(heads: Arc<Heads>) -> Self {
        Self { heads }
    }
}

impl Journal for Memory {
    fn record(&self, _accepted: Accepted<'_>) {}

    fn flush(&self, newest: u64) {
        self.heads.announce(newest);
    }

    fn close(&self) {}
}

//! The publisher of a server whose log is the log of record: requests are appended under the
//! log's write lock and answered once the log's journal acknowledges them (at once in memory;
//! with `--data-dir`, as the fsync mode says).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::{Publisher, Refused};
use crate::{log::EventLog, pb};

/// Publishes to the log itself.
#[derive(Debug)]
pub struct Local {
    /// The log of record, with its journal.
    log: Arc<EventLog>,
}

impl Local {
    /// A publisher appending to `log`.
    pub fn new(log: Arc<EventLog>) -> Self {
        Self { log }
    }
}

impl Publisher for Local {
    fn publish_all<'a>(
        &'a self,
        requests: Vec<pb::PublishRequest>,
        published_by: &'a str,
    ) -> BoxFuture<'a, Vec<Result<pb::PublishResponse, Refused>>> {
        Box::pin(async move {
            // One append under one lock and one flush of the journal; then wait for the
            // burst's newest.
            let outcomes = self.log.append_all(requests, published_by);
            let newest = outcomes
                .iter()
                .filter_map(|outcome| outcome.as_ref().ok())
                .map(|receipt| receipt.sequence)
                .max();
            if let Some(newest) = newest {
                self.log.acknowledged(newest).await;
            }
            outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(Refused::from))
                .collect()
        })
    }

    fn reach(&self, from: u64, _named_log: bool) -> BoxFuture<'_, Result<(), Refused>> {
        let checked = self.log.check_position(from).map_err(Refused::from);
        Box::pin(std::future::ready(checked))
    }

    /// Always SERVING: nothing outside the process decides whether this server can serve. The
    /// sender is dropped at once, so health reads the value and never waits for a change.
    fn serving(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    fn log(&self) -> &Arc<EventLog> {
        &self.log
    }
}

//! The consumers table as this server holds it: one row per consumer with its reader lock, and
//! the checks and views every request makes of a row.

use std::{collections::BTreeMap, sync::Arc};

use super::{ConsumerError, store::StoredConsumer};
use crate::{log::EventLog, pb};

/// One consumer in the table, with its reader lock.
#[derive(Debug)]
pub(super) struct Entry {
    /// What is kept.
    pub(super) stored: StoredConsumer,
    /// Held by the one reader of the consumer ([`super::Attached`]); a second reader waits on it.
    pub(super) reader: Arc<tokio::sync::Mutex<()>>,
}

/// The table, and how many changes it has seen (for the store's group commit).
#[derive(Debug, Default)]
pub(super) struct Table {
    /// Every consumer, by name.
    pub(super) consumers: BTreeMap<String, Entry>,
    /// Counts the changes to `consumers`.
    pub(super) version: u64,
}

/// Fails with [`ConsumerError::FilterTaken`] unless `wanted` has the filter of `existing`, the
/// consumer that already holds its name.
pub(super) fn same_filter(
    existing: &StoredConsumer,
    wanted: &StoredConsumer,
) -> Result<(), ConsumerError> {
    if existing.story_ids == wanted.story_ids && existing.tags == wanted.tags {
        Ok(())
    } else {
        Err(ConsumerError::FilterTaken {
            name: existing.name.clone(),
            story_ids: existing.story_ids.join(", "),
            tags: existing.tags.join(", "),
        })
    }
}

/// Puts `stored` in `table`, keeping the reader lock of the row it replaces.
pub(super) fn mirror(table: &mut Table, stored: StoredConsumer) {
    match table.consumers.get_mut(&stored.name) {
        Some(entry) => entry.stored = stored,
        None => {
            let entry = Entry {
                stored,
                reader: Arc::default(),
            };
            table.consumers.insert(entry.stored.name.clone(), entry);
        }
    }
}

pub(super) fn found<'t>(table: &'t Table, name: &str) -> Result<&'t Entry, ConsumerError> {
    table
        .consumers
        .get(name)
        .ok_or_else(|| ConsumerError::NotFound {
            name: name.to_owned(),
        })
}

pub(super) fn found_mut<'t>(
    table: &'t mut Table,
    name: &str,
) -> Result<&'t mut Entry, ConsumerError> {
    table
        .consumers
        .get_mut(name)
        .ok_or_else(|| ConsumerError::NotFound {
            name: name.to_owned(),
        })
}

/// Fails when `stored` was created in another incarnation of `log`.
pub(super) fn same_log(log: &EventLog, stored: &StoredConsumer) -> Result<(), ConsumerError> {
    if stored.log_id == log.log_id() {
        Ok(())
    } else {
        Err(ConsumerError::OtherLog {
            name: stored.name.clone(),
            log_id: stored.log_id.clone(),
            actual: log.log_id().to_owned(),
        })
    }
}

/// A filter list sorted and without repeats, so that the same filter compares equal however it
/// was written.
pub(super) fn normalized(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values.dedup();
    values
}

/// A consumer as the wire shows it, with its lag against `log`'s head.
pub(super) fn view(log: &EventLog, entry: &Entry) -> pb::Consumer {
    let stored = &entry.stored;
    pb::Consumer {
        name: stored.name.clone(),
        story_ids: stored.story_ids.clone(),
        tags: stored.tags.clone(),
        acknowledged_sequence: stored.acknowledged,
        lag: log.head().saturating_sub(stored.acknowledged),
        last_acknowledged_at: stored.last_acknowledged_at,
        created_at: stored.created_at,
        log_id: stored.log_id.clone(),
        reading: entry.reader.try_lock().is_err(),
        // Filled in by the service for a webhook endpoint's consumer (`crate::webhooks`).
        webhook: None,
    }
}

//! Named consumers: a filter and a position the server keeps for a pipeline, so that it resumes
//! with only a name, after its own crash, a disconnect or a restart of the server.
//!
//! A consumer's position is its *acknowledged sequence*: every event up to it is done with, and
//! reading the consumer delivers its filter's events from the next one. Acknowledgements are
//! cumulative and only move the position forward, so an acknowledgement that arrives late or
//! twice changes nothing; what was delivered and not acknowledged is delivered again. That is
//! at-least-once delivery with no event skipped, as long as a reader acknowledges only what it
//! has handled.
//!
//! One reader at a time: [`Consumers::attach`] waits while another reader holds the consumer,
//! and the next reader starts from what was acknowledged when it got its turn. Two readers can
//! therefore never split a consumer's events between them, and neither can make the other skip
//! one.
//!
//! The table is kept as the log is (`store`): in memory for a memory-only server, in the data
//! directory with `--data-dir`. This module is the one API to it: the gRPC service
//! (`crate::service`) calls it, and so can anything inside the server that delivers a consumer's
//! events itself (a webhook deliverer: [`Consumers::attach`], then read the log from
//! [`Attached::from`] with [`Attached::filter`], then [`Consumers::ack`]).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::OwnedMutexGuard;

use crate::{
    clock::Clock,
    log::{EventLog, Filter, LogError},
    pb,
    validate::{self, FieldError},
    wal::WalError,
};

mod shared;
mod store;

use shared::Shared;
pub use store::{CONSUMERS_FILE, CONSUMERS_MAGIC};
use store::{Store, StoredConsumer};

/// The most consumers one server keeps: each is a row rewritten with every change to the table
/// (see `store`), so the table stays small enough to rewrite in well under a millisecond; far
/// more than the pipelines of a newsroom.
pub const MAX_CONSUMERS: usize = 1_000;

/// Why a consumer request was refused. The service maps each variant to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No consumer has the name.
    #[error("consumer {name} does not exist; create it with CreateConsumer")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is taken by a consumer with another filter.
    #[error(
        "consumer {name} already exists with another filter (story_ids [{story_ids}], tags [{tags}]); choose another name, or delete it first"
    )]
    FilterTaken {
        /// The name.
        name: String,
        /// The existing consumer's stories.
        story_ids: String,
        /// The existing consumer's tags.
        tags: String,
    },
    /// The consumer's position belongs to another incarnation of the log.
    #[error(
        "consumer {name} belongs to log {log_id}, not this server's log {actual}: its position means nothing here; delete it and create it again"
    )]
    OtherLog {
        /// The consumer.
        name: String,
        /// The log it was created in.
        log_id: String,
        /// This server's log.
        actual: String,
    },
    /// The log refused a position (outside the retained log, or another log_id).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The table is full.
    #[error("this server keeps at most {max} consumers; delete one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The position could not be kept on disk; it may be delivered again.
    #[error("the consumer could not be kept on disk: {0}")]
    Storage(String),
    /// This server has nowhere to keep consumers: a cluster node's service built without the
    /// cluster's bucket ([`Consumers::shared`]), whose own memory would lose them with it.
    #[error(
        "this server keeps no named consumers; keep the position in the client and resume with SubscribeRequest.from_sequence and log_id"
    )]
    Unsupported,
}

/// One consumer in the table, with its reader lock.
#[derive(Debug)]
struct Entry {
    /// What is kept.
    stored: StoredConsumer,
    /// Held by the one reader of the consumer ([`Attached`]); a second reader waits on it.
    reader: Arc<tokio::sync::Mutex<()>>,
}

/// The table, and how many changes it has seen (for the store's group commit).
#[derive(Debug, Default)]
struct Table {
    /// Every consumer, by name.
    consumers: BTreeMap<String, Entry>,
    /// Counts the changes to `consumers`.
    version: u64,
}

/// Every named consumer of one server. Shared by `Arc`; every method is safe from any task.
pub struct Consumers {
    /// The table. Held only to read or change rows, never across a wait or a write to disk.
    table: Mutex<Table>,
    /// Where the table is kept.
    store: Store,
    /// Where `created_at` and `last_acknowledged_at` come from.
    clock: Arc<dyn Clock>,
    /// Whether this server keeps consumers at all.
    supported: bool,
    /// On a cluster node: the bucket every node keeps the consumers in. `table` is then this
    /// node's copy, read again from the bucket before each use, and holds the reader locks.
    shared: Option<Shared>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("store", &self.store)
            .field("supported", &self.supported)
            .finish_non_exhaustive()
    }
}

/// A consumer being read: while this lives, nobody else reads it.
#[derive(Debug)]
pub struct Attached {
    /// The consumer's name.
    pub name: String,
    /// Its filter.
    pub filter: Filter,
    /// The first sequence to deliver: its acknowledged sequence + 1 when it was attached. At
    /// most the log's head + 1, except on a cluster node whose replica is behind the stream
    /// (wait for it).
    pub from: u64,
    /// The consumer's reader lock; dropping it lets the next reader in.
    _reader: OwnedMutexGuard<()>,
}

impl Consumers {
    /// An empty table kept in memory only.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self::with(Vec::new(), Store::Memory, clock, true))
    }

    /// The consumers of a cluster node, kept in a JetStream key-value bucket beside `stream`
    /// (created with `replicas` replicas if missing), which every node of the cluster shares.
    pub async fn shared(
        context: &async_nats::jetstream::Context,
        stream: &str,
        replicas: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let shared = Shared::open(context, stream, replicas).await?;
        let mut consumers = Self::with(Vec::new(), Store::Memory, clock, true);
        consumers.shared = Some(shared);
        Ok(Arc::new(consumers))
    }

    /// A table for a server that cannot keep consumers: every request is refused with
    /// [`ConsumerError::Unsupported`].
    pub fn unsupported(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self::with(Vec::new(), Store::Memory, clock, false))
    }

    /// The table kept in the data directory `dir` (empty when it holds none yet).
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Arc<Self>, WalError> {
        let stored = Store::read(dir)?;
        let store = Store::Dir {
            dir: dir.to_owned(),
            written: Mutex::new(0),
        };
        Ok(Arc::new(Self::with(stored, store, clock, true)))
    }

    fn with(
        stored: Vec<StoredConsumer>,
        store: Store,
        clock: Arc<dyn Clock>,
        supported: bool,
    ) -> Self {
        let consumers = stored
            .into_iter()
            .map(|stored| {
                let entry = Entry {
                    stored,
                    reader: Arc::default(),
                };
                (entry.stored.name.clone(), entry)
            })
            .collect();
        Self {
            table: Mutex::new(Table {
                consumers,
                version: 0,
            }),
            store,
            clock,
            supported,
            shared: None,
        }
    }

    /// On a cluster node, brings this node's copy of consumer `name` up to date with the bucket
    /// (keeping its reader lock); elsewhere, nothing to do.
    async fn refresh(&self, name: &str) -> Result<(), ConsumerError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let stored = shared.read(name).await?;
        let mut table = self.table()?;
        match stored {
            Some(stored) => mirror(&mut table, stored),
            None => {
                table.consumers.remove(name);
            }
        }
        Ok(())
    }

    /// On a cluster node, brings this node's copy of every consumer up to date with the bucket.
    async fn refresh_all(&self) -> Result<(), ConsumerError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let all = shared.read_all().await?;
        let mut table = self.table()?;
        let names: std::collections::HashSet<String> =
            all.iter().map(|stored| stored.name.clone()).collect();
        table.consumers.retain(|name, _| names.contains(name));
        for stored in all {
            mirror(&mut table, stored);
        }
        Ok(())
    }

    fn table(&self) -> Result<MutexGuard<'_, Table>, ConsumerError> {
        if !self.supported {
            return Err(ConsumerError::Unsupported);
        }
        Ok(self.table.lock().expect("consumers table poisoned"))
    }

    /// Creates consumer `name` with a filter, positioned before `from` (see
    /// `CreateConsumerRequest.from_sequence`); or, when it exists with the same filter, returns
    /// it as it stands. `true` when it was created.
    pub async fn create(
        self: &Arc<Self>,
        log: &EventLog,
        request: pb::CreateConsumerRequest,
    ) -> Result<(pb::Consumer, bool), ConsumerError> {
        validate::id("name", &request.name)?;
        validate::filter(&request.story_ids, &request.tags)?;
        let story_ids = normalized(request.story_ids);
        let tags = normalized(request.tags);
        let acknowledged = match request.from_sequence {
            None => log.head(),
            Some(0) => log.first_retained() - 1,
            Some(from) => {
                log.check_position(from)?;
                from - 1
            }
        };
        let stored = StoredConsumer {
            name: request.name.clone(),
            story_ids,
            tags,
            acknowledged,
            log_id: log.log_id().to_owned(),
            created_at: Some(self.clock.timestamp()),
            last_acknowledged_at: None,
        };
        if let Some(shared) = &self.shared {
            // Counted before, not with, the create: nodes creating at once may pass the limit by
            // a few, which bounds the table all the same.
            if shared.read(&stored.name).await?.is_none() && shared.count().await? >= MAX_CONSUMERS
            {
                return Err(ConsumerError::TooMany { max: MAX_CONSUMERS });
            }
            let existing = shared.create(&stored).await?;
            let created = existing.is_none();
            let kept = existing.unwrap_or(stored.clone());
            same_filter(&kept, &stored)?;
            mirror(&mut *self.table()?, kept);
            return Ok((self.this_nodes(log, &request.name)?, created));
        }
        let version = {
            let mut table = self.table()?;
            if let Some(entry) = table.consumers.get(&request.name) {
                same_filter(&entry.stored, &stored)?;
                return Ok((view(log, entry), false));
            }
            if table.consumers.len() >= MAX_CONSUMERS {
                return Err(ConsumerError::TooMany { max: MAX_CONSUMERS });
            }
            mirror(&mut table, stored);
            table.version += 1;
            table.version
        };
        self.persist(version).await?;
        Ok((self.get(log, &request.name).await?, true))
    }

    /// Consumer `name` as it stands.
    pub async fn get(&self, log: &EventLog, name: &str) -> Result<pb::Consumer, ConsumerError> {
        validate::id("name", name)?;
        self.refresh(name).await?;
        self.this_nodes(log, name)
    }

    /// Consumer `name` as this node's table has it, without reading the bucket again: right
    /// after this node wrote it, that is what it is.
    fn this_nodes(&self, log: &EventLog, name: &str) -> Result<pb::Consumer, ConsumerError> {
        let table = self.table()?;
        let entry = found(&table, name)?;
        Ok(view(log, entry))
    }

    /// Every consumer, in name order.
    pub async fn list(&self, log: &EventLog) -> Result<Vec<pb::Consumer>, ConsumerError> {
        self.refresh_all().await?;
        let table = self.table()?;
        Ok(table.consumers.values().map(|e| view(log, e)).collect())
    }

    /// Deletes consumer `name`. A reader attached to it keeps its stream, but its
    /// acknowledgements find no consumer.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), ConsumerError> {
        validate::id("name", name)?;
        if let Some(shared) = &self.shared {
            if !shared.delete(name).await? {
                return Err(ConsumerError::NotFound {
                    name: name.to_owned(),
                });
            }
            self.table()?.consumers.remove(name);
            return Ok(());
        }
        let version = {
            let mut table = self.table()?;
            found(&table, name)?;
            table.consumers.remove(name);
            table.version += 1;
            table.version
        };
        self.persist(version).await
    }

    /// Acknowledges every event of consumer `name` up to `sequence` and returns it once its
    /// position is kept as durably as the log keeps events. A sequence at or below the position
    /// changes nothing.
    pub async fn ack(
        self: &Arc<Self>,
        log: &EventLog,
        name: &str,
        sequence: u64,
    ) -> Result<pb::Consumer, ConsumerError> {
        validate::id("consumer", name)?;
        if sequence == 0 {
            return Err(FieldError {
                field: "sequence".to_owned(),
                description: "must be at least 1: the sequence of the last event handled"
                    .to_owned(),
            }
            .into());
        }
        let head = log.head();
        if sequence > head {
            return Err(LogError::BeyondHead {
                requested: sequence,
                head,
            }
            .into());
        }
        if let Some(shared) = &self.shared {
            let now = self.clock.timestamp();
            let stored = shared
                .ack(name, sequence, now, |stored| same_log(log, stored))
                .await?
                .ok_or_else(|| ConsumerError::NotFound {
                    name: name.to_owned(),
                })?;
            mirror(&mut *self.table()?, stored);
            return self.this_nodes(log, name);
        }
        let moved = {
            let mut table = self.table()?;
            let now = self.clock.timestamp();
            let entry = found_mut(&mut table, name)?;
            same_log(log, &entry.stored)?;
            let moved = sequence > entry.stored.acknowledged;
            // Only a moving position is written, so only it is timed: what is shown is what a
            // restart keeps.
            if moved {
                entry.stored.acknowledged = sequence;
                entry.stored.last_acknowledged_at = Some(now);
                table.version += 1;
            }
            moved.then_some(table.version)
        };
        if let Some(version) = moved {
            self.persist(version).await?;
        }
        self.get(log, name).await
    }

    /// Takes consumer `name` for reading, waiting while another reader has it, and says where
    /// to read from: its acknowledged sequence + 1 once it is this reader's turn. Fails when
    /// that is no longer retained (OUT_OF_RANGE naming the first retained sequence) or the
    /// consumer belongs to another log.
    pub async fn attach(&self, log: &EventLog, name: &str) -> Result<Attached, ConsumerError> {
        validate::id("consumer", name)?;
        self.refresh(name).await?;
        let reader = found(&*self.table()?, name)?.reader.clone();
        let guard = reader.clone().lock_owned().await;
        // On a cluster node, where the previous reader may have been on another node.
        self.refresh(name).await?;
        let table = self.table()?;
        // Deleted (and perhaps created again) while this reader waited: not the one it asked
        // for.
        let entry = found(&table, name)?;
        if !Arc::ptr_eq(&entry.reader, &reader) {
            return Err(ConsumerError::NotFound {
                name: name.to_owned(),
            });
        }
        same_log(log, &entry.stored)?;
        let from = entry.stored.acknowledged + 1;
        match log.check_position(from) {
            // A cluster node's replica behind the stream (the previous reader acknowledged
            // through another node): the reader waits for the replica to get there.
            Err(LogError::BeyondHead { .. }) => {}
            checked => checked?,
        }
        Ok(Attached {
            name: name.to_owned(),
            filter: Filter::new(&entry.stored.story_ids, &entry.stored.tags),
            from,
            _reader: guard,
        })
    }

    /// Writes the table (at `version` or later) where it is kept, off the async runtime.
    async fn persist(self: &Arc<Self>, version: u64) -> Result<(), ConsumerError> {
        if matches!(self.store, Store::Memory) {
            return Ok(());
        }
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || {
            this.store.write(version, || {
                let table = this.table.lock().expect("consumers table poisoned");
                let rows = table.consumers.values().map(|e| e.stored.clone()).collect();
                (table.version, rows)
            })
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot keep the consumers on disk");
                Err(ConsumerError::Storage(error.to_string()))
            }
            Err(join) => Err(ConsumerError::Storage(join.to_string())),
        }
    }
}

/// Fails with [`ConsumerError::FilterTaken`] unless `wanted` has the filter of `existing`, the
/// consumer that already holds its name.
fn same_filter(existing: &StoredConsumer, wanted: &StoredConsumer) -> Result<(), ConsumerError> {
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
fn mirror(table: &mut Table, stored: StoredConsumer) {
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

fn found<'t>(table: &'t Table, name: &str) -> Result<&'t Entry, ConsumerError> {
    table
        .consumers
        .get(name)
        .ok_or_else(|| ConsumerError::NotFound {
            name: name.to_owned(),
        })
}

fn found_mut<'t>(table: &'t mut Table, name: &str) -> Result<&'t mut Entry, ConsumerError> {
    table
        .consumers
        .get_mut(name)
        .ok_or_else(|| ConsumerError::NotFound {
            name: name.to_owned(),
        })
}

/// Fails when `stored` was created in another incarnation of `log`.
fn same_log(log: &EventLog, stored: &StoredConsumer) -> Result<(), ConsumerError> {
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
fn normalized(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values.dedup();
    values
}

/// A consumer as the wire shows it, with its lag against `log`'s head.
fn view(log: &EventLog, entry: &Entry) -> pb::Consumer {
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

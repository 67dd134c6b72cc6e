//! The journal behind `serve --data-dir`: a thread of its own writes each accepted event to the
//! write-ahead log ([`crate::wal`]), syncs as the fsync mode says (publishers waiting together
//! share one fsync: group commit), and only then moves the log's heads; and it compacts, writing a
//! snapshot and deleting the segments retention emptied.

use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    EventLog,
    journal::{Accepted, Heads, Journal},
    state::LogState,
};
use crate::{
    clock::Clock,
    encoded::event_bytes,
    wal::{self, FsyncMode, SegmentWriter, WalConfig, WalError, WriterSignal},
};

/// A record framed for the write-ahead log ([`wal::frame`]), with its sequence.
type Framed = (u64, Vec<u8>);

/// Framed records accepted but not yet taken by the writer thread, in sequence order. Filled
/// under the log's write lock, so in order; the thread takes them all at once.
type Pending = Arc<Mutex<Vec<Framed>>>;

/// Takes every pending record.
fn take(pending: &Pending) -> Vec<Framed> {
    std::mem::take(&mut *pending.lock().expect("pending records poisoned"))
}

/// The write-ahead journal: what the log hands over, and the thread that writes it.
#[derive(Debug)]
pub struct WriteAhead {
    /// Records for the writer thread, which shares them.
    pending: Pending,
    /// Wakes the writer thread: work waiting, or the log closing.
    signal: Arc<WriterSignal>,
    /// The writer thread, taken when the log is closed.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Journal for WriteAhead {
    fn record(&self, accepted: Accepted<'_>) {
        let entry = accepted.entry;
        let record = wal::Record {
            event: event_bytes(&entry.encoded),
            expected_version: accepted.expected_version,
            occurred_at_given: accepted.occurred_at_given,
            filter_tags: entry.tags.to_vec(),
            entered_tags: entry
                .entered
                .as_ref()
                .map(|entered| entered.tags.to_vec())
                .unwrap_or_default(),
            entered_story: entry.entered.as_ref().map(|entered| entered.story.clone()),
        };
        self.pending
            .lock()
            .expect("pending records poisoned")
            .push((entry.sequence, wal::frame(&record)));
    }

    fn flush(&self, _newest: u64) {
        self.signal.work();
    }

    fn close(&self) {
        self.signal.close();
        let thread = self.thread.lock().expect("journal lock poisoned").take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the write-ahead thread panicked");
        }
    }
}

/// The log kept in `config.dir`: recovers what is on disk (same log_id, sequences and story
/// states) and starts the writer thread that makes every later event durable before it is
/// acknowledged or seen.
pub(super) fn open(
    retain_events: usize,
    clock: Arc<dyn Clock>,
    config: &WalConfig,
) -> Result<Arc<EventLog>, WalError> {
    let recovery = wal::recover(config)?;
    let mut state = LogState::empty();
    let mut snapshot_head = 0;
    if let Some(snapshot) = recovery.snapshot {
        snapshot_head = snapshot.head;
        state.stories.restore(snapshot.stories);
        state.appended = snapshot.head;
        state.first_retained = snapshot.head + 1;
    }
    if let Some(first) = recovery.sequences.first() {
        // Records the snapshot already covers are kept for reading, not applied again.
        state.appended = first - 1;
        state.first_retained = *first;
    }
    for (record, sequence) in recovery.records.into_iter().zip(recovery.sequences) {
        state
            .restore(&recovery.log_id, record, snapshot_head)
            .map_err(|reason| WalError::Invalid {
                path: config.dir.clone(),
                reason: format!("replaying sequence {sequence}: {reason}"),
            })?;
    }
    let retain_events = retain_events.max(1);
    state.evict(retain_events);
    let head = state.appended;
    tracing::info!(dir = %config.dir.display(), head, first_retained = state.first_retained,
        stories = state.stories.iter().count(), "recovered the log from disk");

    let signal = Arc::new(WriterSignal::default());
    let writer = recovery.writer;
    let fsync = config.fsync;
    let interval = config.batch_interval;
    let heads = Arc::new(Heads::new(head));
    let pending = Pending::default();
    Ok(Arc::new_cyclic(|log: &Weak<EventLog>| {
        let log = log.clone();
        let thread_signal = signal.clone();
        let thread_heads = heads.clone();
        let thread_pending = pending.clone();
        let thread = std::thread::Builder::new()
            .name("storywire-wal".to_owned())
            .spawn(move || {
                let rounds = Rounds {
                    log,
                    pending: thread_pending,
                    heads: thread_heads,
                    writer,
                    fsync,
                    interval,
                    last_sync: Instant::now(),
                    last_written: head,
                };
                rounds.run(&thread_signal);
            })
            .expect("spawn the write-ahead thread");
        let journal = WriteAhead {
            pending,
            signal,
            thread: Mutex::new(Some(thread)),
        };
        let log = EventLog::assemble(
            recovery.log_id,
            retain_events,
            clock,
            RwLock::new(state),
            heads,
            Box::new(journal),
        );
        // Exposed from the start, before the first fsync.
        log.metrics().wal_fsync();
        log
    }))
}

/// The writer thread's state between rounds.
struct Rounds {
    /// The log, to take its pending records and snapshots. Weak: the log owns the thread, and a
    /// log dropped without `close` ends the thread after a final sync.
    log: Weak<EventLog>,
    /// The records the journal took from the log.
    pending: Pending,
    /// The log's heads, moved once records are written and synced.
    heads: Arc<Heads>,
    /// The segments.
    writer: SegmentWriter,
    /// When publishers are answered and events shown, relative to the disk.
    fsync: FsyncMode,
    /// How often `FsyncMode::Batch` syncs.
    interval: Duration,
    /// When the segments were last synced.
    last_sync: Instant,
    /// The newest sequence written, not yet necessarily synced.
    last_written: u64,
}

impl Rounds {
    /// Writes appended records in order, syncs as the fsync mode says, then moves the heads;
    /// deletes segments that retention emptied once a snapshot covers them. A failing disk stops
    /// the process: no later event may be acknowledged, and nothing acknowledged was lost.
    fn run(mut self, signal: &WriterSignal) {
        let timeout = (self.fsync == FsyncMode::Batch).then_some(self.interval);
        loop {
            let closing = signal.wait(timeout);
            let Some(log) = self.log.upgrade() else {
                if let Err(error) = self.writer.sync() {
                    tracing::error!(%error, "write-ahead log: final sync failed");
                }
                return;
            };
            if let Err(error) = self.round(&log) {
                tracing::error!(%error, "write-ahead log: the disk failed; stopping so that nothing unwritten is acknowledged");
                std::process::abort();
            }
            if closing {
                if let Err(error) = self.writer.sync() {
                    tracing::error!(%error, "write-ahead log: final sync failed");
                }
                return;
            }
        }
    }

    /// One round: write what was appended, sync as the fsync mode says, and move the heads.
    ///
    /// An event becomes visible only once it is where a crash the mode protects against cannot
    /// take it back, so that a sequence a reader has seen never comes back as another event:
    /// `always`, once synced (and acknowledged then too); `batch`, acknowledged once written but
    /// visible only once synced; `never` (tests only), visible once written.
    fn round(&mut self, log: &EventLog) -> Result<(), WalError> {
        let pending = take(&self.pending);
        self.write(&pending)?;
        let sync_due = self.last_sync.elapsed() >= self.interval;
        match self.fsync {
            FsyncMode::Always => {
                self.fsync(log)?;
                self.heads.announce(self.last_written);
            }
            FsyncMode::Batch => {
                self.heads.acknowledge(self.last_written);
                if sync_due && self.writer.is_dirty() {
                    self.sync(log)?;
                }
            }
            FsyncMode::Never => self.heads.announce(self.last_written),
        }
        let first_retained = log.first_retained();
        if self.writer.has_evicted_segments(first_retained) {
            self.compact(log)?;
        }
        Ok(())
    }

    /// Writes a snapshot of every story and deletes the segments it makes unnecessary.
    ///
    /// The snapshot is as of the newest appended event, so the records not yet written up to it
    /// are taken under the same lock and written and synced first: then it covers everything up
    /// to its head. The lock is held only to take the stories' reference counts (they are copied
    /// on write), not to encode them: publishers wait microseconds, not the time a large log
    /// takes to encode.
    fn compact(&mut self, log: &EventLog) -> Result<(), WalError> {
        let (stories, head, first_retained, pending) =
            log.stories_for_snapshot(|| take(&self.pending));
        self.write(&pending)?;
        self.sync(log)?;
        let snapshot = wal::encode_snapshot(log.log_id(), head, &stories);
        self.writer.compact(&snapshot, first_retained)
    }

    /// Syncs what was written, and shows it.
    fn sync(&mut self, log: &EventLog) -> Result<(), WalError> {
        self.fsync(log)?;
        self.last_sync = Instant::now();
        self.heads.announce(self.last_written);
        Ok(())
    }

    /// Syncs what was written, timing the fsync (if there was anything to sync) in the log's
    /// metrics.
    fn fsync(&mut self, log: &EventLog) -> Result<(), WalError> {
        if !self.writer.is_dirty() {
            return Ok(());
        }
        let started = Instant::now();
        self.writer.sync()?;
        log.metrics()
            .wal_fsync()
            .observe_duration(started.elapsed());
        Ok(())
    }

    /// Writes framed records, in order.
    fn write(&mut self, records: &[Framed]) -> Result<(), WalError> {
        for (sequence, framed) in records {
            self.writer.write(*sequence, framed)?;
            self.last_written = *sequence;
        }
        Ok(())
    }
}

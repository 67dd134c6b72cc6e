//! Writing segments: appending framed records, rolling at the size limit, syncing, and deleting
//! what a snapshot covers; and the signal that wakes the thread doing it.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{Condvar, Mutex},
    time::Duration,
};

use super::{
    SEGMENT_MAGIC, SNAPSHOT_FILE, SegmentFile, WalConfig, WalError, io_error, segment_name,
    sync_dir, write_atomically,
};

/// Appends framed records to the current segment, rolls to a new one at the size limit, syncs,
/// and deletes old segments once a snapshot covers them. Owned by the writer thread.
pub struct SegmentWriter {
    dir: PathBuf,
    segment_bytes: u64,
    /// The open segment, with its description; `None` until the first write after start-up if
    /// there is no segment to continue.
    current: Option<(File, SegmentFile)>,
    /// Closed segments, oldest first.
    closed: VecDeque<SegmentFile>,
    /// The sequence the next record will have.
    next: u64,
    /// Whether anything was written since the last sync.
    dirty: bool,
}

impl SegmentWriter {
    /// A writer appending to the last of `segments` (or to a new one) from sequence `next`.
    pub(super) fn resume(
        config: &WalConfig,
        mut segments: Vec<SegmentFile>,
        next: u64,
    ) -> Result<Self, WalError> {
        let current = match segments.pop() {
            Some(last) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_error(&last.path))?;
                Some((file, last))
            }
            None => None,
        };
        Ok(Self {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            current,
            closed: segments.into(),
            next,
            dirty: false,
        })
    }

    /// Appends one framed record with sequence `sequence`.
    pub fn write(&mut self, sequence: u64, framed: &[u8]) -> Result<(), WalError> {
        debug_assert_eq!(sequence, self.next, "records are written in sequence order");
        let full = self.current.as_ref().is_some_and(|(_, s)| {
            s.last.is_some() && s.len + framed.len() as u64 > self.segment_bytes
        });
        if self.current.is_none() || full {
            self.roll(sequence)?;
        }
        let (file, segment) = self.current.as_mut().expect("rolled above");
        file.write_all(framed).map_err(io_error(&segment.path))?;
        segment.len += framed.len() as u64;
        segment.last = Some(sequence);
        self.next = sequence + 1;
        self.dirty = true;
        Ok(())
    }

    /// Closes the current segment (synced) and starts a new one whose first record is `first`.
    fn roll(&mut self, first: u64) -> Result<(), WalError> {
        if let Some((file, segment)) = self.current.take() {
            file.sync_data().map_err(io_error(&segment.path))?;
            self.closed.push_back(segment);
        }
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all(SEGMENT_MAGIC).map_err(io_error(&path))?;
        file.sync_data().map_err(io_error(&path))?;
        // The new file's name must survive a crash too.
        sync_dir(&self.dir)?;
        let segment = SegmentFile {
            path,
            first,
            last: None,
            len: SEGMENT_MAGIC.len() as u64,
        };
        self.current = Some((file, segment));
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if let Some((file, segment)) = &self.current
            && self.dirty
        {
            file.sync_data().map_err(io_error(&segment.path))?;
        }
        self.dirty = false;
        Ok(())
    }

    /// Whether anything was written since the last sync.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether a closed segment holds only sequences before `first_retained`.
    pub fn has_evicted_segments(&self, first_retained: u64) -> bool {
        self.closed
            .front()
            .is_some_and(|s| s.last.is_none_or(|last| last < first_retained))
    }

    /// Writes `snapshot` (encoded by [`super::encode_snapshot`]; it must cover every sequence before
    /// `first_retained`), then deletes the closed segments it makes unnecessary.
    pub fn compact(&mut self, snapshot: &[u8], first_retained: u64) -> Result<(), WalError> {
        write_atomically(&self.dir, SNAPSHOT_FILE, snapshot)?;
        while self.has_evicted_segments(first_retained) {
            let segment = self.closed.pop_front().expect("checked");
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            tracing::info!(segment = %segment.path.display(), "retention: deleted a segment");
        }
        sync_dir(&self.dir)
    }
}

/// Wakes the writer thread: set when there are records to write, or when the log is closing.
#[derive(Debug, Default)]
pub struct WriterSignal {
    /// `(work is waiting, the log is closing)`.
    state: Mutex<(bool, bool)>,
    /// Notified whenever `state` changes.
    changed: Condvar,
}

impl WriterSignal {
    /// Tells the writer there are records to write.
    pub fn work(&self) {
        let mut state = self.state.lock().expect("writer signal poisoned");
        if !state.0 {
            state.0 = true;
            self.changed.notify_one();
        }
    }

    /// Tells the writer to write what is left and stop.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("writer signal poisoned");
        state.1 = true;
        self.changed.notify_one();
    }

    /// Waits for work, the close signal, or `timeout`; returns whether the log is closing.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut state = self.state.lock().expect("writer signal poisoned");
        if !state.0 && !state.1 {
            state = match timeout {
                Some(timeout) => {
                    self.changed
                        .wait_timeout_while(state, timeout, |s| !s.0 && !s.1)
                        .expect("writer signal poisoned")
                        .0
                }
                None => self
                    .changed
                    .wait_while(state, |s| !s.0 && !s.1)
                    .expect("writer signal poisoned"),
            };
        }
        state.0 = false;
        state.1
    }
}

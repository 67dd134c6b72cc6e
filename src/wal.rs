//! The write-ahead log behind `serve --data-dir`: every event the log accepts is framed, written to
//! a segment file and (with `--fsync always`) synced before anyone hears of it, so that a restart
//! comes back with the same `log_id`, sequences and story states.
//!
//! On disk, in the data directory:
//!
//! - `log_id`: this log's id, written once, atomically (write, fsync, rename, fsync the directory).
//! - `NNNNNNNNNNNNNNNNNNNN.wal`: segments, named by the sequence of their first record. Each starts
//!   with [`SEGMENT_MAGIC`], then records: a little-endian `u32` length, a little-endian `u32`
//!   CRC32C of the length bytes and the payload, and the payload, an encoded [`Record`].
//! - `snapshot`: every story's state as of a sequence, written atomically when old segments are
//!   deleted, so that retention bounds start-up: only retained records are replayed.
//! - `*.broken`: bytes recovery cut off (a torn tail, or what `--repair` removed), kept for a person
//!   to look at. Nothing is ever skipped silently.
//!
//! Recovery ([`recover`]) trusts nothing it cannot check: a record that fails its CRC or is cut
//! short at the very end of the last segment is a torn write and is truncated; anywhere else it is
//! damage, and start-up stops naming the segment and the offset unless `--repair` says to cut there.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use bytes::Bytes;
use pbjson_types::Timestamp;
use prost::Message;

use crate::pb;

/// The first bytes of every segment: names the format and its version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SWAL0001";
/// Segments roll over at about this size: large enough that rolling is rare, small enough that
/// retention frees disk in useful steps.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How often `--fsync batch` syncs when nobody asks sooner.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// No record is larger: a request is at most 4 MiB (tonic's default decode limit), so a length
/// beyond this is damage, not data.
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
/// A record's header: the payload's length and the CRC32C.
const RECORD_HEADER: usize = 8;
/// The file holding the log's id.
const LOG_ID_FILE: &str = "log_id";
/// The file holding the latest snapshot of the stories.
const SNAPSHOT_FILE: &str = "snapshot";

/// When an accepted event is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// After its record is written and fsynced; concurrent publishers share each fsync (group
    /// commit). Survives a crash of the process or the machine.
    Always,
    /// After its record is written to the operating system; fsync runs every batch interval,
    /// and readers see the event only after it. Survives a crash of the process; a power loss
    /// can lose the last interval, which no reader has seen.
    Batch,
    /// After its record is written to the operating system; never fsynced. For tests.
    Never,
}

/// Where and how the log is kept on disk.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    /// When publishes are acknowledged relative to the disk.
    pub fsync: FsyncMode,
    /// How often `FsyncMode::Batch` syncs.
    pub batch_interval: Duration,
    /// The size at which a segment is closed and a new one started.
    pub segment_bytes: u64,
    /// Cut the log at the first damaged record instead of refusing to start.
    pub repair: bool,
}

impl WalConfig {
    /// A configuration with the defaults for everything but the directory and the fsync mode.
    pub fn new(dir: impl Into<PathBuf>, fsync: FsyncMode) -> Self {
        Self {
            dir: dir.into(),
            fsync,
            batch_interval: DEFAULT_BATCH_INTERVAL,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            repair: false,
        }
    }
}

/// Why the log on disk could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file system failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A record in the middle of the log is damaged.
    #[error(
        "{}: damaged record at byte offset {offset}: {reason}. Refusing to start: a torn write at the very end is repaired by itself, damage in the middle is not. Inspect the file, or start with --repair to cut the log at this record (the rest is kept in .broken files)",
        segment.display()
    )]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A file that is not what the log wrote.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record: an accepted event and what idempotency and filtering need after a restart.
#[derive(Clone, PartialEq, Message)]
pub struct Record {
    /// The encoded `UpdateEvent`.
    #[prost(bytes = "bytes", tag = "1")]
    pub event: Bytes,
    /// The request's `expected_version`, to recognise a retry of the same request.
    #[prost(uint64, optional, tag = "2")]
    pub expected_version: Option<u64>,
    /// The request's `occurred_at` as given, to recognise a retry of the same request.
    #[prost(message, optional, tag = "3")]
    pub occurred_at_given: Option<Timestamp>,
    /// The tags subscribers filter this event by.
    #[prost(string, repeated, tag = "4")]
    pub filter_tags: Vec<String>,
    /// For a revision that added tags: those tags (see [`crate::log::Entered`]).
    #[prost(string, repeated, tag = "5")]
    pub entered_tags: Vec<String>,
    /// For a revision that added tags: the story's state right after it, as the encoded
    /// `SubscribeResponse` a subscriber it enters receives first.
    #[prost(bytes = "bytes", optional, tag = "6")]
    pub entered_story: Option<Bytes>,
}

/// Every story's state as of `head`: replay starts after it.
#[derive(Clone, PartialEq, Message)]
pub struct Snapshot {
    /// The log the snapshot belongs to.
    #[prost(string, tag = "1")]
    pub log_id: String,
    /// The sequence of the last event folded into `stories`.
    #[prost(uint64, tag = "2")]
    pub head: u64,
    /// Every story, as of `head`.
    #[prost(message, repeated, tag = "3")]
    pub stories: Vec<pb::Story>,
}

/// Encodes a [`Snapshot`] from shared stories, without copying them into one first.
pub fn encode_snapshot(log_id: &str, head: u64, stories: &[Arc<pb::Story>]) -> Vec<u8> {
    use prost::encoding;
    let mut bytes = Vec::new();
    if !log_id.is_empty() {
        encoding::string::encode(1, &log_id.to_owned(), &mut bytes);
    }
    if head != 0 {
        encoding::uint64::encode(2, &head, &mut bytes);
    }
    for story in stories {
        encoding::message::encode(3, &**story, &mut bytes);
    }
    bytes
}

/// A record framed for a segment: length, CRC32C, payload.
pub fn frame(record: &Record) -> Vec<u8> {
    let payload = record.encode_to_vec();
    let length = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    let length_bytes = length.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length_bytes), &payload);
    let mut framed = Vec::with_capacity(RECORD_HEADER + payload.len());
    framed.extend_from_slice(&length_bytes);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed.extend_from_slice(&payload);
    framed
}

/// Writes `contents` to `dir/name` so that a crash leaves either the old file or the new one:
/// write a temporary file, fsync it, rename it over, fsync the directory.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), WalError> {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(contents).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Keeps `bytes` (cut from `segment` at `offset`) next to it for a person to inspect.
fn keep_broken(segment: &Path, offset: u64, bytes: &[u8]) -> Result<PathBuf, WalError> {
    let path = segment.with_extension(format!("wal.{offset}.broken"));
    fs::write(&path, bytes).map_err(io_error(&path))?;
    Ok(path)
}

/// A segment on disk: its file and the sequences it holds.
#[derive(Debug, Clone)]
struct SegmentFile {
    path: PathBuf,
    /// The sequence of its first record (from its name).
    first: u64,
    /// The sequence of its last record; `None` while it holds none.
    last: Option<u64>,
    /// Its length in bytes.
    len: u64,
}

/// What recovery found on disk: everything [`crate::log::EventLog::open`] needs to rebuild.
pub struct Recovery {
    /// The log's id, read from disk or new.
    pub log_id: String,
    /// The latest snapshot, if old segments were ever deleted.
    pub snapshot: Option<Snapshot>,
    /// Every record on disk after any cut, in sequence order, without gaps.
    pub records: Vec<Record>,
    /// The decoded sequence of each record, for convenience.
    pub sequences: Vec<u64>,
    /// Appends to where recovery stopped.
    pub writer: SegmentWriter,
}

/// Reads the data directory: the log's id, the snapshot, and every segment's records, repairing
/// a torn tail and refusing (or with `repair`, cutting at) damage anywhere else.
pub fn recover(config: &WalConfig) -> Result<Recovery, WalError> {
    let dir = &config.dir;
    fs::create_dir_all(dir).map_err(io_error(dir))?;

    let log_id_path = dir.join(LOG_ID_FILE);
    let log_id = match fs::read_to_string(&log_id_path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            if !crate::validate::is_id(&id) {
                return Err(WalError::Invalid {
                    path: log_id_path,
                    reason: format!("{id:?} is not a log id"),
                });
            }
            id
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            write_atomically(dir, LOG_ID_FILE, id.as_bytes())?;
            id
        }
        Err(e) => return Err(io_error(&log_id_path)(e)),
    };

    let snapshot_path = dir.join(SNAPSHOT_FILE);
    let snapshot = match fs::read(&snapshot_path) {
        Ok(bytes) => {
            let snapshot = Snapshot::decode(bytes.as_slice()).map_err(|e| WalError::Invalid {
                path: snapshot_path.clone(),
                reason: format!("not a snapshot: {e}"),
            })?;
            if snapshot.log_id != log_id {
                return Err(WalError::Invalid {
                    path: snapshot_path,
                    reason: format!("belongs to log {}, not {log_id}", snapshot.log_id),
                });
            }
            Some(snapshot)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&snapshot_path)(e)),
    };

    let mut segments = list_segments(dir)?;
    // Whether --repair cut records that readers may have seen: then their sequences may come
    // back as other events, and the log must take a new id.
    let mut cut = false;
    let mut records = Vec::new();
    let mut sequences = Vec::new();
    let mut expected: Option<u64> = None;
    let mut index = 0;
    while index < segments.len() {
        let is_last = index == segments.len() - 1;
        let segment = &mut segments[index];
        let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
        let mut next = *expected.get_or_insert(segment.first);
        if segment.first != next {
            return Err(WalError::Invalid {
                path: segment.path.clone(),
                reason: format!(
                    "starts at sequence {} where {next} was expected",
                    segment.first
                ),
            });
        }
        let scanned = scan(&bytes, next);
        for (record, sequence) in scanned.records {
            records.push(record);
            sequences.push(sequence);
            segment.last = Some(sequence);
            next = sequence + 1;
        }
        expected = Some(next);
        segment.len = scanned.valid_len;
        if let Some(problem) = scanned.problem {
            let offset = scanned.valid_len;
            let torn = is_last && problem.reaches_end;
            if torn || config.repair {
                let broken = keep_broken(&segment.path, offset, &bytes[offset as usize..])?;
                if offset < SEGMENT_MAGIC.len() as u64 {
                    // Torn before its header was complete: the segment never held a record.
                    // Without it the writer starts a fresh one with the same name.
                    fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
                } else {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&segment.path)
                        .map_err(io_error(&segment.path))?;
                    file.set_len(offset).map_err(io_error(&segment.path))?;
                    file.sync_all().map_err(io_error(&segment.path))?;
                }
                if torn {
                    tracing::warn!(segment = %segment.path.display(), offset, reason = %problem.reason, broken = %broken.display(),
                        "recovery: truncated a torn write at the end of the log");
                } else {
                    cut = true;
                    tracing::error!(segment = %segment.path.display(), offset, reason = %problem.reason, broken = %broken.display(),
                        "recovery (--repair): cut the log at a damaged record");
                    // Everything after the cut goes too, or sequences would have a gap.
                    for later in segments.drain(index + 1..) {
                        let aside = later.path.with_extension("wal.broken");
                        fs::rename(&later.path, &aside).map_err(io_error(&later.path))?;
                        tracing::error!(segment = %later.path.display(), moved_to = %aside.display(),
                            "recovery (--repair): set aside a segment after the cut");
                    }
                }
            } else {
                return Err(WalError::Corrupt {
                    segment: segment.path.clone(),
                    offset,
                    reason: problem.reason,
                });
            }
        }
        index += 1;
    }

    if let (Some(snapshot), Some(first)) = (&snapshot, sequences.first())
        && *first > snapshot.head + 1
    {
        return Err(WalError::Invalid {
            path: dir.clone(),
            reason: format!(
                "the segments start at sequence {first} but the snapshot ends at {}: events are missing",
                snapshot.head
            ),
        });
    }
    segments.retain(|segment| segment.path.exists());
    let mut next = expected
        .or(snapshot.as_ref().map(|s| s.head + 1))
        .unwrap_or(1);
    let mut log_id = log_id;
    let mut snapshot = snapshot;
    if cut {
        if let Some(snapshot) = &snapshot
            && next <= snapshot.head
        {
            // Cut at or below what the snapshot covers: the stories are ahead of the records
            // left. The log goes on from the snapshot; the records it covers are set aside.
            for segment in segments.drain(..) {
                let aside = segment.path.with_extension("wal.broken");
                fs::rename(&segment.path, &aside).map_err(io_error(&segment.path))?;
                tracing::error!(segment = %segment.path.display(), moved_to = %aside.display(),
                    "recovery (--repair): the cut is below the snapshot; set aside a segment it covers");
            }
            records.clear();
            sequences.clear();
            next = snapshot.head + 1;
        }
        log_id = new_incarnation(dir, &log_id, snapshot.as_mut())?;
    }
    let writer = SegmentWriter::resume(config, segments, next)?;
    Ok(Recovery {
        log_id,
        snapshot,
        records,
        sequences,
        writer,
    })
}

/// Gives the log a new id after `--repair` cut records readers may have seen, so that no
/// sequence ever names two different events under one id: a client resuming with the old id is
/// refused (FAILED_PRECONDITION) and starts over instead of reading other events at sequences it
/// has seen. The snapshot is rewritten first under the new id; the id file last.
fn new_incarnation(
    dir: &Path,
    old: &str,
    snapshot: Option<&mut Snapshot>,
) -> Result<String, WalError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Some(snapshot) = snapshot {
        snapshot.log_id = id.clone();
        write_atomically(dir, SNAPSHOT_FILE, &snapshot.encode_to_vec())?;
    }
    write_atomically(dir, LOG_ID_FILE, id.as_bytes())?;
    tracing::error!(old_log_id = old, log_id = %id,
        "recovery (--repair): the log takes a new log_id; subscribers must start again without one");
    Ok(id)
}

fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let len = entry.metadata().map_err(io_error(&path))?.len();
        segments.push(SegmentFile {
            path,
            first,
            last: None,
            len,
        });
    }
    segments.sort_by_key(|s| s.first);
    Ok(segments)
}

/// What scanning one segment found.
struct Scanned {
    /// The valid records and their sequences.
    records: Vec<(Record, u64)>,
    /// The length of the valid prefix (magic plus whole, checked records).
    valid_len: u64,
    /// Why scanning stopped before the end, if it did.
    problem: Option<Problem>,
}

/// A record that could not be read.
struct Problem {
    reason: String,
    /// Whether the bad record runs to (or past) the end of the file: only then can it be a torn
    /// write rather than damage.
    reaches_end: bool,
}

/// Reads the records of one segment, whose first record must have sequence `first`.
fn scan(bytes: &[u8], first: u64) -> Scanned {
    let mut scanned = Scanned {
        records: Vec::new(),
        valid_len: 0,
        problem: None,
    };
    let stop = |scanned: &mut Scanned, reason: String, reaches_end: bool| {
        scanned.problem = Some(Problem {
            reason,
            reaches_end,
        });
    };
    if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        let reaches_end = SEGMENT_MAGIC.starts_with(bytes);
        stop(
            &mut scanned,
            "the segment header is missing or wrong".to_owned(),
            reaches_end,
        );
        return scanned;
    }
    let mut offset = SEGMENT_MAGIC.len();
    let mut expected = first;
    scanned.valid_len = offset as u64;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < RECORD_HEADER {
            stop(
                &mut scanned,
                "the record header is cut short".to_owned(),
                true,
            );
            return scanned;
        }
        let length_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let length = u32::from_le_bytes(length_bytes);
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if length > MAX_RECORD_BYTES {
            stop(
                &mut scanned,
                format!("a length of {length} bytes is impossible"),
                false,
            );
            return scanned;
        }
        let end = RECORD_HEADER + length as usize;
        if rest.len() < end {
            stop(&mut scanned, "the record is cut short".to_owned(), true);
            return scanned;
        }
        let payload = &rest[RECORD_HEADER..end];
        if crc32c::crc32c_append(crc32c::crc32c(&length_bytes), payload) != crc {
            stop(
                &mut scanned,
                "the CRC32C does not match".to_owned(),
                rest.len() == end,
            );
            return scanned;
        }
        let decoded = Record::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|record| {
                let event =
                    pb::UpdateEvent::decode(record.event.clone()).map_err(|e| e.to_string())?;
                Ok((record, event.sequence))
            });
        match decoded {
            Ok((record, sequence)) if sequence == expected => {
                scanned.records.push((record, sequence));
                expected += 1;
            }
            Ok((_, sequence)) => {
                stop(
                    &mut scanned,
                    format!("sequence {sequence} where {expected} was expected"),
                    false,
                );
                return scanned;
            }
            Err(error) => {
                stop(
                    &mut scanned,
                    format!("the record does not decode: {error}"),
                    false,
                );
                return scanned;
            }
        }
        offset += end;
        scanned.valid_len = offset as u64;
    }
    scanned
}

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
    fn resume(
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

    /// Writes `snapshot` (encoded by [`encode_snapshot`]; it must cover every sequence before
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

/// The writer side shared between the log and its writer thread.
#[derive(Debug)]
pub struct Journal {
    /// Wakes the writer thread.
    pub signal: Arc<WriterSignal>,
    /// The writer thread, taken when the log is closed.
    pub thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

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
//! The files of this module: this one holds the format ([`Record`], [`Snapshot`], [`frame`]) and
//! the configuration; `recover.rs` reads a data directory back ([`recover`]); `segments.rs` writes
//! it ([`SegmentWriter`]). The thread that drives the writer is the log's write-ahead journal,
//! `crate::log::write_ahead`.
//!
//! Recovery ([`recover`]) trusts nothing it cannot check: a record that fails its CRC or is cut
//! short at the very end of the last segment is a torn write and is truncated; anywhere else it is
//! damage, and start-up stops naming the segment and the offset unless `--repair` says to cut there.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use pbjson_types::Timestamp;
use prost::Message;

use crate::pb;

mod recover;
mod segments;

pub use recover::{Recovery, recover};
pub use segments::{SegmentWriter, WriterSignal};

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
pub(crate) fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), WalError> {
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
    /// The segment's file.
    path: PathBuf,
    /// The sequence of its first record (from its name).
    first: u64,
    /// The sequence of its last record; `None` while it holds none.
    last: Option<u64>,
    /// Its length in bytes.
    len: u64,
}

//! Where named consumers are kept: in memory (a memory-only server, whose log does not outlive
//! it either), or in the data directory's `consumers` file (`serve --data-dir`).
//!
//! The file is the whole table, rewritten atomically on every change (write a temporary file,
//! fsync it, rename it over, fsync the directory), so that `kill -9` at any moment leaves either
//! the table before the change or the one after it, never a torn one. It starts with
//! [`CONSUMERS_MAGIC`], which names its format and version, then holds an encoded
//! [`ConsumersFile`]. A data directory without it (the format before consumers) simply has none.
//!
//! Rewriting the whole table costs two fsyncs per change, shared by every change waiting at the
//! same time (group commit): a table is small (a few hundred bytes a consumer) and pipelines
//! acknowledge in batches, not per event.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use pbjson_types::Timestamp;
use prost::Message;

use crate::wal::{WalError, write_atomically};

/// The first bytes of the `consumers` file: names the format and its version.
pub const CONSUMERS_MAGIC: &[u8; 8] = b"SWCN0001";
/// The file in the data directory that holds the consumers.
pub const CONSUMERS_FILE: &str = "consumers";

/// One consumer as it is kept.
#[derive(Clone, PartialEq, Message)]
pub struct StoredConsumer {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its stories filter, sorted, without repeats.
    #[prost(string, repeated, tag = "2")]
    pub story_ids: Vec<String>,
    /// Its tags filter, sorted, without repeats.
    #[prost(string, repeated, tag = "3")]
    pub tags: Vec<String>,
    /// Every event up to this sequence is acknowledged.
    #[prost(uint64, tag = "4")]
    pub acknowledged: u64,
    /// The log the position belongs to.
    #[prost(string, tag = "5")]
    pub log_id: String,
    /// When it was created.
    #[prost(message, optional, tag = "6")]
    pub created_at: Option<Timestamp>,
    /// When it was last acknowledged.
    #[prost(message, optional, tag = "7")]
    pub last_acknowledged_at: Option<Timestamp>,
}

/// The `consumers` file after its magic.
#[derive(Clone, PartialEq, Message)]
pub struct ConsumersFile {
    /// Every consumer, in name order.
    #[prost(message, repeated, tag = "1")]
    pub consumers: Vec<StoredConsumer>,
}

/// Where the table is kept.
#[derive(Debug)]
pub enum Store {
    /// Nowhere but in memory: gone when the server stops, as a memory-only log is.
    Memory,
    /// The data directory's `consumers` file.
    Dir {
        /// The data directory.
        dir: PathBuf,
        /// The version of the table last written, held while writing: one writer at a time, and
        /// a change whose version is already written (by a writer that took the table after
        /// it) need not write again.
        written: Mutex<u64>,
    },
}

impl Store {
    /// Reads the consumers kept in `dir` (none when there is no file yet).
    pub fn read(dir: &Path) -> Result<Vec<StoredConsumer>, WalError> {
        let path = dir.join(CONSUMERS_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(WalError::Io { path, source }),
        };
        let invalid = |reason: String| WalError::Invalid {
            path: path.clone(),
            reason,
        };
        let payload = bytes.strip_prefix(CONSUMERS_MAGIC).ok_or_else(|| {
            invalid(format!(
                "does not start with {:?}: not a consumers file of a format this build knows",
                String::from_utf8_lossy(CONSUMERS_MAGIC)
            ))
        })?;
        let file = ConsumersFile::decode(payload)
            .map_err(|e| invalid(format!("not a consumers table: {e}")))?;
        Ok(file.consumers)
    }

    /// Writes `consumers` (the table at `version`) unless a later version is written already.
    /// Blocking: call it off the async runtime.
    pub fn write(
        &self,
        version: u64,
        consumers: impl FnOnce() -> (u64, Vec<StoredConsumer>),
    ) -> Result<(), WalError> {
        let Self::Dir { dir, written } = self else {
            return Ok(());
        };
        let mut written = written.lock().expect("consumers store poisoned");
        if *written >= version {
            return Ok(());
        }
        // The table as it stands now, which includes `version` and perhaps later changes too.
        let (current, consumers) = consumers();
        let mut bytes = CONSUMERS_MAGIC.to_vec();
        ConsumersFile { consumers }
            .encode(&mut bytes)
            .expect("a Vec grows");
        write_atomically(dir, CONSUMERS_FILE, &bytes)?;
        *written = current;
        Ok(())
    }
}

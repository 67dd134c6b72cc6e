//! Reading a data directory back: the log's id, the snapshot, and every segment's records, with a
//! torn tail repaired and damage anywhere else refused (or, with `--repair`, cut).

use std::{
    fs::{self, OpenOptions},
    io,
    path::Path,
};

use prost::Message;

use super::{
    LOG_ID_FILE, MAX_RECORD_BYTES, RECORD_HEADER, Record, SEGMENT_MAGIC, SNAPSHOT_FILE,
    SegmentFile, SegmentWriter, Snapshot, WalConfig, WalError, io_error, keep_broken,
    write_atomically,
};
use crate::pb;

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

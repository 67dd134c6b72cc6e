//! A small shape of a data directory's first segment, for recovery to read: a header, then pieces
//! that are records the writer could have written (some damaged, some out of sequence), records
//! with a right length and CRC32C around any payload, and raw bytes.
//!
//! Random bytes alone would almost never get past a record's CRC32C; framing most pieces the way
//! the writer does lets the fuzzer reach replay, the story rules and the writer that resumes
//! after recovery.

use std::{collections::HashMap, collections::HashSet, fs, path::Path};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use pbjson_types::Timestamp;
use prost::Message;
use storywire::{
    pb, validate,
    wal::{self, SEGMENT_MAGIC},
};

use crate::request::Publish;

/// The log_id every fuzzed data directory holds. Written before recovery, so that recovery does
/// not create (and fsync) one of its own.
pub const LOG_ID: &str = "fuzzlog";
/// The first segment's file name: segments are named by their first sequence.
pub const FIRST_SEGMENT: &str = "00000000000000000001.wal";
/// Every fuzzed event's `recorded_at`: 2019-01-03T00:00:00Z.
const RECORDED_AT: Timestamp = Timestamp {
    seconds: 1_546_473_600,
    nanos: 0,
};

/// A segment, in the shape the fuzzer picks.
#[derive(Arbitrary, Debug)]
pub struct Segment {
    /// What the file starts with.
    pub header: Header,
    /// Recover with `--repair`: cut the log at damage instead of refusing it.
    pub repair: bool,
    /// What follows the header, in order.
    pub pieces: Vec<Piece>,
}

/// What a segment starts with.
#[derive(Arbitrary, Debug)]
pub enum Header {
    /// The real [`SEGMENT_MAGIC`].
    Magic,
    /// Nothing.
    Missing,
    /// The first bytes of the magic (taken modulo its length): a header torn while written.
    Torn(u8),
    /// Eight bytes of anything.
    Wrong([u8; 8]),
}

/// One piece of a segment after its header.
#[derive(Arbitrary, Debug)]
pub enum Piece {
    /// A publish as the writer frames its event, unless damaged.
    Event(Publish, Sequence, Option<Damage>),
    /// A right length and CRC32C around an arbitrary payload: for the record decoder.
    Checked(Vec<u8>),
    /// Raw bytes: garbage, or what a torn or damaged write leaves.
    Raw(Vec<u8>),
}

/// The sequence a framed event carries.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next one: what the writer writes.
    Next,
    /// This many (taken modulo 4) past the next one: a record missing before it.
    Ahead(u8),
    /// The previous one again: a record written twice.
    Again,
}

/// What happened to a framed event on its way to the disk.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Damage {
    /// Only its first bytes (this many, modulo its length) were written: a torn write.
    Cut(u16),
    /// One byte (at this offset, modulo its length) was changed by this (nonzero) xor: bit rot.
    Flip(u16, u8),
}

/// What [`Segment::write`] put on disk.
pub struct Written {
    /// The events of the undamaged records in sequence at the start of the segment: recovery
    /// must keep at least these, unchanged.
    pub intact: Vec<pb::UpdateEvent>,
}

impl Segment {
    /// Writes `dir/log_id` and the segment into `dir`, which must exist and be empty.
    pub fn write(&self, dir: &Path) -> Written {
        fs::write(dir.join("log_id"), LOG_ID).expect("write log_id");
        let mut bytes = match self.header {
            Header::Magic => SEGMENT_MAGIC.to_vec(),
            Header::Missing => Vec::new(),
            Header::Torn(len) => SEGMENT_MAGIC[..usize::from(len) % SEGMENT_MAGIC.len()].to_vec(),
            Header::Wrong(header) => header.to_vec(),
        };
        let mut log = Writer::default();
        // Recovery must keep the undamaged records up to the first other piece.
        let mut intact = Vec::new();
        let mut in_prefix = matches!(self.header, Header::Magic);
        for piece in &self.pieces {
            match piece {
                Piece::Event(publish, sequence, damage) => {
                    let Some((event, mut framed)) = log.frame(publish, *sequence, damage.is_none())
                    else {
                        continue;
                    };
                    match damage {
                        None if *sequence == Sequence::Next && in_prefix => intact.push(event),
                        None => in_prefix = false,
                        Some(Damage::Cut(keep)) => {
                            framed.truncate(usize::from(*keep) % framed.len());
                            in_prefix &= framed.is_empty();
                        }
                        Some(Damage::Flip(at, xor)) => {
                            let len = framed.len();
                            framed[usize::from(*at) % len] ^= (*xor).max(1);
                            in_prefix = false;
                        }
                    }
                    bytes.extend_from_slice(&framed);
                }
                Piece::Checked(payload) => {
                    bytes.extend_from_slice(&checked_frame(payload));
                    in_prefix = false;
                }
                Piece::Raw(raw) => {
                    bytes.extend_from_slice(raw);
                    in_prefix &= raw.is_empty();
                }
            }
        }
        fs::write(dir.join(FIRST_SEGMENT), &bytes).expect("write the segment");
        Written { intact }
    }
}

/// What the writer knows while framing: the next sequence, each story's version, the event_ids
/// in use.
#[derive(Default)]
struct Writer {
    /// The sequence of the last record written whole and in order.
    head: u64,
    /// Each story's version after the records written so far.
    versions: HashMap<String, u64>,
    /// The client event_ids written so far: the log answers a second one as a duplicate and
    /// writes nothing.
    event_ids: HashSet<String>,
}

impl Writer {
    /// The event `publish` becomes and its framed record, or `None` when the log would have
    /// written nothing for it (an invalid request, a duplicate). Only a record that `lands`
    /// (whole, in sequence) moves the writer on; story rules are not checked here, replay checks
    /// them.
    fn frame(
        &mut self,
        publish: &Publish,
        sequence: Sequence,
        lands: bool,
    ) -> Option<(pb::UpdateEvent, Vec<u8>)> {
        let request = publish.request(LOG_ID, self.head);
        let duplicate = !request.event_id.is_empty() && self.event_ids.contains(&request.event_id);
        if duplicate || validate::publish(&request).is_err() {
            return None;
        }
        let version = self.versions.get(&request.story_id).copied().unwrap_or(0);
        let next = self.head + 1;
        let sequence = match sequence {
            Sequence::Next => next,
            Sequence::Ahead(by) => next + 1 + u64::from(by % 4),
            Sequence::Again => self.head,
        };
        let event = pb::UpdateEvent {
            sequence,
            event_id: if request.event_id.is_empty() {
                format!("{LOG_ID}-{sequence}")
            } else {
                request.event_id.clone()
            },
            story_id: request.story_id.clone(),
            story_version: version + 1,
            headline: request.headline,
            occurred_at: Some(request.occurred_at.unwrap_or(RECORDED_AT)),
            recorded_at: Some(RECORDED_AT),
            change: request.change,
            published_by: "fuzz".to_owned(),
        };
        let record = wal::Record {
            event: event.encode_to_vec().into(),
            expected_version: request.expected_version,
            occurred_at_given: request.occurred_at,
            filter_tags: Vec::new(),
            entered_tags: Vec::new(),
            entered_story: None,
        };
        if lands && sequence == next {
            self.head = next;
            self.versions.insert(request.story_id, version + 1);
            if !request.event_id.is_empty() {
                self.event_ids.insert(request.event_id);
            }
        }
        Some((event, wal::frame(&record)))
    }
}

/// `payload` framed as a record: its length and the CRC32C of the length and payload, both
/// little-endian, then the payload.
fn checked_frame(payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len())
        .expect("fuzz inputs are small")
        .to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&length), payload);
    let mut framed = Vec::with_capacity(8 + payload.len());
    framed.extend_from_slice(&length);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

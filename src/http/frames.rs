//! Server-Sent Event frames, each event's encoded once and shared by every reader.
//!
//! A subscription hands each reader the log's shared protobuf bytes of an event
//! ([`EncodedResponse::Encoded`]). Turning them into an SSE frame (decoding the protobuf, writing
//! proto3 JSON, framing it as `id:` and `data:` lines) costs far more than sending it, so
//! [`Frames`] keeps the frames of the newest events, keyed by those shared bytes: the first
//! reader to send an event encodes it, every other reader sends the same frame (a reference
//! count). The bytes are those axum's `Event` wrote for the same item, which
//! `tests/http_edge.rs` pins.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use tonic::Status;

use super::error;
use crate::{
    encoded::EncodedResponse,
    pb::{self, subscribe_response::Item},
};

/// How many events' frames [`Frames`] keeps. Live readers all send the newest few; readers
/// catching up from the same place follow each other closely. A frame is about twice its event's
/// protobuf size, so with events of 1 KiB this holds about 2 MiB, whatever the number of readers.
const CACHED_FRAMES: usize = 1024;

/// The comment an idle stream sends, so that proxies and browsers keep it open: the bytes of
/// axum's default keep-alive.
pub const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// The frames of the newest events, shared by every SSE reader of one server.
#[derive(Debug, Default)]
pub struct Frames {
    /// Frames by the address of the shared protobuf bytes they were made from. The cache holds a
    /// reference to those bytes, so no other event can take their address while it is here.
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// The protobuf bytes and their frame, by the protobuf's address.
    frames: HashMap<usize, (Bytes, Bytes)>,
    /// The addresses in `frames`, oldest first, for eviction.
    order: VecDeque<usize>,
}

impl Frames {
    /// The SSE frame of one subscription item. An event's (or an entered story's) frame is
    /// shared; the other items are a reader's own (`started`, `caught_up`, a checkpoint, a
    /// snapshot's stories) and encoded as they come.
    pub fn frame(&self, item: EncodedResponse) -> Bytes {
        match item {
            EncodedResponse::Encoded(encoded) => self.shared(encoded),
            EncodedResponse::Message(message) => frame(message.item),
            EncodedResponse::Story(story) => frame(Some(Item::Story((*story).clone()))),
        }
    }

    /// The frame of `encoded`, from the cache or encoded now and kept.
    fn shared(&self, encoded: Bytes) -> Bytes {
        let key = encoded.as_ptr() as usize;
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((source, frame)) = cache.frames.get(&key)
                && source.len() == encoded.len()
            {
                return frame.clone();
            }
        }
        // Encoded outside the lock: two readers may both encode a new event; both frames are
        // the same bytes, and the second insert only replaces the first.
        let made = frame(
            pb::SubscribeResponse::decode(encoded.clone())
                .unwrap_or_default()
                .item,
        );
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.frames.insert(key, (encoded, made.clone())).is_none() {
            cache.order.push_back(key);
        }
        while cache.order.len() > CACHED_FRAMES {
            if let Some(oldest) = cache.order.pop_front() {
                cache.frames.remove(&oldest);
            }
        }
        made
    }
}

/// The last frame of a stream that ends in error: a named event `end` with the error JSON.
pub fn end_frame(status: &Status) -> Bytes {
    named("end", None, &error::body(status).to_string())
}

/// One subscription item as an SSE frame.
///
/// - an update: an unnamed event (EventSource's `message`) with its sequence as `id:`;
/// - `started`, `story`, `caught_up`: named events;
/// - a checkpoint: a named event with its sequence as `id:`, so that a filtered subscription
///   resumes past events it did not need.
fn frame(item: Option<Item>) -> Bytes {
    match item {
        Some(Item::Event(update)) => {
            let id = update.sequence.to_string();
            let data = update.to_json();
            let mut frame = BytesMut::with_capacity(id.len() + data.len() + 12);
            field(&mut frame, "id", &id);
            field(&mut frame, "data", &data);
            frame.put_u8(b'\n');
            frame.freeze()
        }
        Some(Item::Started(started)) => named("started", None, &json(&started)),
        Some(Item::Story(story)) => named("story", None, &json(&story)),
        Some(Item::CaughtUp(caught_up)) => named("caught_up", None, &json(&caught_up)),
        Some(Item::Checkpoint(checkpoint)) => named(
            "checkpoint",
            Some(&checkpoint.sequence.to_string()),
            &json(&checkpoint),
        ),
        None => Bytes::from_static(b": an empty item\n\n"),
    }
}

/// A named event, with an `id:` when given.
fn named(name: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(name.len() + data.len() + 40);
    field(&mut frame, "event", name);
    if let Some(id) = id {
        field(&mut frame, "id", id);
    }
    field(&mut frame, "data", data);
    frame.put_u8(b'\n');
    frame.freeze()
}

/// Writes one `name: value` line. Values here are proto3 JSON or numbers: JSON writes line
/// breaks inside strings as `\n`, so a value is always one line.
fn field(frame: &mut BytesMut, name: &str, value: &str) {
    frame.reserve(name.len() + value.len() + 3);
    frame.put_slice(name.as_bytes());
    frame.put_slice(b": ");
    frame.put_slice(value.as_bytes());
    frame.put_u8(b'\n');
}

/// A message as proto3 JSON, for a frame's `data:` (an event has [`pb::UpdateEvent::to_json`]).
fn json<T: serde::Serialize>(message: &T) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

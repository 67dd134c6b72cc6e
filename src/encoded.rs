//! Responses encoded once and shared. Each event is encoded as a `SubscribeResponse` when it is
//! appended; every subscriber sends those same bytes (a reference count, then a copy into the
//! HTTP/2 buffer), instead of cloning and encoding the event once per subscriber.
//!
//! [`EncodedResponse`] stands in for `pb::SubscribeResponse` on the server side of Subscribe
//! (see `build.rs`): the bytes on the wire are identical, so clients see no difference.

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

use crate::pb::{self, subscribe_response::Item};

/// One Subscribe response, either already encoded or encoded when sent.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedResponse {
    /// A `SubscribeResponse` carrying an event, encoded when the event was appended.
    Encoded(Bytes),
    /// Any other response (a story, caught_up, a checkpoint), encoded as it is sent.
    Message(pb::SubscribeResponse),
}

impl Default for EncodedResponse {
    fn default() -> Self {
        Self::Message(pb::SubscribeResponse::default())
    }
}

impl From<Item> for EncodedResponse {
    fn from(item: Item) -> Self {
        Self::Message(pb::SubscribeResponse { item: Some(item) })
    }
}

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Encoded(bytes) => buf.put_slice(bytes),
            Self::Message(message) => message.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // The server only ever sends this type; clients decode `pb::SubscribeResponse`.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Encoded(bytes) => bytes.len(),
            Self::Message(message) => message.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Encodes an event as the `SubscribeResponse` subscribers receive.
pub fn encode_event(event: pb::UpdateEvent) -> Bytes {
    let response = pb::SubscribeResponse {
        item: Some(Item::Event(event)),
    };
    Bytes::from(response.encode_to_vec())
}

/// The event inside bytes made by [`encode_event`].
pub fn decode_event(encoded: &Bytes) -> pb::UpdateEvent {
    match pb::SubscribeResponse::decode(encoded.clone()) {
        Ok(pb::SubscribeResponse {
            item: Some(Item::Event(event)),
        }) => event,
        other => unreachable!("the log only holds encoded events: {other:?}"),
    }
}

/// The encoded `UpdateEvent` inside bytes made by [`encode_event`], without copying: what the
/// write-ahead log stores.
pub fn event_bytes(encoded: &Bytes) -> Bytes {
    // A SubscribeResponse holding only an event is its field key (one byte), the event's length
    // as a varint, then the event.
    let mut rest = &encoded[1..];
    let length = prost::encoding::decode_varint(&mut rest).expect("made by encode_event");
    let start = encoded.len() - rest.len();
    debug_assert_eq!(length as usize, rest.len());
    encoded.slice(start..)
}

/// The inverse of [`event_bytes`]: the `SubscribeResponse` bytes for an encoded `UpdateEvent`.
pub fn from_event_bytes(event: &[u8]) -> Bytes {
    let mut encoded = Vec::with_capacity(event.len() + 11);
    prost::encoding::encode_key(1, WireType::LengthDelimited, &mut encoded);
    prost::encoding::encode_varint(event.len() as u64, &mut encoded);
    encoded.extend_from_slice(event);
    Bytes::from(encoded)
}

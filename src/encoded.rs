//! Responses encoded once and shared. Each event is encoded as a `SubscribeResponse` when it is
//! appended; every subscriber sends those same bytes (a reference count, then a copy into the
//! HTTP/2 buffer), instead of cloning and encoding the event once per subscriber.
//!
//! [`EncodedResponse`] stands in for `pb::SubscribeResponse` on the server side of Subscribe
//! (see `build.rs`): the bytes on the wire are identical, so clients see no difference. The
//! server side also encodes with [`ServerCodec`], which hands HTTP/2 smaller chunks.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::pb::{self, subscribe_response::Item};

/// One Subscribe response, either already encoded or encoded when sent.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedResponse {
    /// A `SubscribeResponse` carrying an event, encoded when the event was appended.
    Encoded(Bytes),
    /// Any other response (a story, caught_up, a checkpoint), encoded as it is sent. Boxed, so
    /// that a response is the size of `Bytes` (32 bytes, not 224): a subscription holds up to a
    /// batch of 256 of them.
    Message(Box<pb::SubscribeResponse>),
    /// A `story` item of a snapshot, shared with the log's projection until it is encoded as it
    /// is sent: a subscriber that stopped reading holds a reference count, not a copy.
    Story(std::sync::Arc<pb::Story>),
}

/// The field number of `SubscribeResponse.story`.
const STORY_FIELD: u32 = 2;

impl Default for EncodedResponse {
    fn default() -> Self {
        Self::Message(Box::default())
    }
}

impl From<Item> for EncodedResponse {
    fn from(item: Item) -> Self {
        Self::Message(Box::new(pb::SubscribeResponse { item: Some(item) }))
    }
}

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Encoded(bytes) => buf.put_slice(bytes),
            Self::Message(message) => message.encode_raw(buf),
            Self::Story(story) => prost::encoding::message::encode(STORY_FIELD, &**story, buf),
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
            Self::Story(story) => prost::encoding::message::encoded_len(STORY_FIELD, &**story),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// How many bytes of responses the server gathers before handing them to HTTP/2 as one chunk
/// (tonic's default is 32 KiB). A subscriber that stops reading leaves about two chunks behind
/// (one queued in HTTP/2, one waiting for window), in one allocation of about twice this size,
/// so this bounds what a stalled subscription holds: about 25 KiB in all, not about 100 KiB. A
/// busy stream sends DATA frames of about 8 KiB instead of 16 KiB; the fan-out figures in
/// docs/benchmarks.md ("Fan-out") are measured with it.
pub const SERVER_CHUNK_BYTES: usize = 8 * 1024;

/// How much room a stream's encoding buffer starts with. It grows to a chunk when a catch-up
/// fills one, and a live stream, writing one event at a time, reuses its start (HTTP/2 copies a
/// small DATA frame out before the next event is encoded). So a reader on a connection of its
/// own keeps about this much resident, not the 8 KiB a chunk-sized buffer comes to once its
/// writes have walked through it: with ten thousand readers that is 70 MiB.
pub const SERVER_BUFFER_BYTES: usize = 1024;

/// The codec of the generated server: prost's decoder, and prost's encoder with
/// [`SERVER_CHUNK_BYTES`] chunks.
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(SERVER_BUFFER_BYTES, SERVER_CHUNK_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}

/// Encodes an event as the `SubscribeResponse` subscribers receive.
pub fn encode_event(event: pb::UpdateEvent) -> Bytes {
    let response = pb::SubscribeResponse {
        item: Some(Item::Event(event)),
    };
    Bytes::from(response.encode_to_vec())
}

/// Encodes a story once as the `SubscribeResponse` subscribers receive, from a reference: the
/// same bytes [`EncodedResponse::Story`] writes, without copying the story first.
pub fn encode_story(story: &pb::Story) -> Bytes {
    let mut bytes = Vec::with_capacity(prost::encoding::message::encoded_len(STORY_FIELD, story));
    prost::encoding::message::encode(STORY_FIELD, story, &mut bytes);
    Bytes::from(bytes)
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

//! The generated wire types and gRPC stubs of `storywire.v1`, with their proto3 JSON mapping.
//!
//! Everything that crosses the wire lives here, under `pb::`, so that domain names and wire names
//! never collide.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("storywire.v1");
include!(concat!(env!("OUT_DIR"), "/storywire.v1.serde.rs"));

/// The server side of StoryService as storywire serves it: the same service, except that Subscribe
/// streams `crate::encoded::EncodedResponse`, so that each event is encoded once for all
/// subscribers. Clients use [`story_service_client`] and see the same wire format.
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/encoded/storywire.v1.rs"));
}

/// The encoded `FileDescriptorSet` of the storywire protos and their imports, with comments, as
/// served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/storywire_descriptor.bin"));

impl UpdateEvent {
    /// The event as proto3 JSON: the `data:` of its Server-Sent Event, and a webhook's body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What the event changed, if its `change` says anything.
    pub fn kind(&self) -> Option<&change::Kind> {
        self.change.as_ref().and_then(|change| change.kind.as_ref())
    }
}

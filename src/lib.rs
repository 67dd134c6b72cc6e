//! storywire keeps developing news stories as an append-only log of attributed updates and
//! streams them, in order, to every subscriber over gRPC.
//!
//! The modules, in the order an update flows through them (docs/architecture.md draws it):
//!
//! - [`pb`]: the generated wire types and gRPC stubs of `storywire.v1`.
//! - [`validate`]: the shape rules every request must meet, each failure naming its field.
//! - [`log`]: the event log, the only truth: `state` (retained events, retention), `dedupe`
//!   (idempotency), `query` (reads), and the [`log::Journal`] seam through which events become
//!   durable and visible: `memory` and `write_ahead`.
//! - `publisher`: where an update goes, decided once at start: the [`log`] itself (`Local`), or a
//!   cluster node's stream; the faces and health call it without knowing which.
//! - `cluster`: a node of a cluster (`serve --nats`): the log kept in a NATS JetStream stream,
//!   each node's log a replica of it (`log::replicated`), publishes appended by JetStream only if
//!   the story has not changed since they were decided.
//! - [`wal`]: the on-disk format of the write-ahead log (`serve --data-dir`), recovery from it,
//!   and the segment writer the write-ahead journal drives.
//! - [`story`]: the projection: a story's state as the fold of its events, the story rules, and
//!   what one story may hold.
//! - `narration`: how updates and stories read for people, in the CLI and on the live page.
//! - [`ninjs`]: a story as an IPTC ninjs 2.1 news item (`story --ninjs`), a pure function of it.
//! - `encoded`: each event encoded once, its bytes shared by every subscriber.
//! - `subscription`: a cursor into the log plus a filter: catch-up, live, checkpoints, the end.
//! - [`consumers`]: named consumers, a filter and a position the server keeps for a pipeline
//!   (in memory, in the data directory, or in the cluster's JetStream), read one reader at a
//!   time and acknowledged.
//! - [`service`]: the StoryService, and the one mapping from domain errors to gRPC status codes.
//! - [`http`]: the read side as proto3 JSON over HTTP, and Subscribe as Server-Sent Events
//!   (`serve --http`), through the same service.
//! - [`webhooks`]: each endpoint of `serve --webhooks` a named consumer whose events are POSTed,
//!   signed, in order, at least once.
//! - `metrics`: what the server measures (appends, publishes by code, subscribers, lag,
//!   delivery latency, fsync time, replica lag, failed accepts and descriptors), recorded without
//!   locks, for `GET /metrics`.
//! - [`auth`]: bearer tokens with roles, checked before any StoryService method runs.
//! - [`cors`]: which web pages may call from a browser, over gRPC-Web and over HTTP.
//! - [`tls`]: the server's TLS and mutual TLS from PEM files.
//! - [`limits`]: what one client may take and one story may hold, and the subscriber slots.
//! - `throttle`: each connection's budget of wasted streams; past it, its reads pause.
//! - `write_through`: writes handed straight to the IO under a wrapper that watches reads.
//! - [`connections`]: every connection's lifecycle: timeouts, per-address limits, shedding.
//! - [`descriptors`]: the open-files limit, raised to the hard one, and the descriptors open.
//! - [`listen`]: the listen backlog, and accepting without spinning.
//! - [`server`]: both faces started and ended together: gRPC with health, reflection and gRPC-Web,
//!   the HTTP face, and graceful shutdown.
//! - `codes`: gRPC status codes by the names gRPC gives them.
//! - [`clock`]: the one clock timestamps come from, so tests can control it.
//! - [`demo`]: the seed story and its live replay for `serve --demo`.
//! - [`cli`]: the `storywire` command: `serve` and the client subcommands.
//!
//! What is `pub` is the API the binary, the integration tests and the bench build on: the wire
//! types, the log and its journals, the named consumers, the server and its options, the HTTP
//! face's options, tokens, TLS, the limits, the connection rules, the clock and the demo. The
//! modules shown without a link are internal (`pub(crate)`): the publisher seam, the cluster
//! node, the metrics, the encoding cache, the subscription loop, the wasted-stream throttle, the
//! code names and the narration.

#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod clock;
pub(crate) mod cluster;
pub(crate) mod codes;
pub mod connections;
pub mod consumers;
pub mod cors;
mod deadline;
pub mod demo;
pub mod descriptors;
pub(crate) mod encoded;
pub mod http;
pub mod limits;
pub mod listen;
pub mod log;
pub(crate) mod metrics;
pub(crate) mod narration;
pub mod ninjs;
pub mod pb;
pub(crate) mod publisher;
pub mod server;
pub mod service;
pub mod story;
pub(crate) mod subscription;
pub(crate) mod throttle;
pub mod tls;
pub mod validate;
pub mod wal;
pub mod webhooks;
mod write_through;

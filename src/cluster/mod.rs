//! A node of a cluster: the log kept in a NATS JetStream stream that several storywire nodes
//! share (`serve --nats`). JetStream is the log of record, replicated by its own Raft; each node
//! keeps its in-memory log as a replica of the stream and serves its own subscribers from it.

use std::path::PathBuf;

/// The stream's name when `--nats-stream` is not given.
pub const DEFAULT_STREAM: &str = "STORYWIRE";

/// How many JetStream servers keep a stream this node creates, when `--nats-replicas` is not
/// given: three, so that the log of record survives losing one server.
pub const DEFAULT_REPLICAS: u8 = 3;

/// How a node reaches its stream.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The NATS server URLs (any of them will do; the client finds the rest).
    pub servers: Vec<String>,
    /// The stream's name; its subjects are `<stream>.story.<story_id>`.
    pub stream: String,
    /// How many servers keep the stream, when this node creates it.
    pub replicas: u8,
    /// A credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// A CA (PEM) to trust for the servers' TLS certificates.
    pub ca: Option<PathBuf>,
}

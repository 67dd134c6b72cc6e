//! Test tooling shared by storywire's integration tests (`tests/it`) and its bench (`bench/`),
//! as nats.rs shares its nats-server launcher between the client's tests and benches.
//!
//! - [`within`]: every wait a test makes, bounded.
//! - [`process`]: children that die with their parent, signalled by their PID; their CPU time
//!   and memory from /proc.
//! - [`net`]: free loopback ports and plain HTTP/1.0 GETs of monitoring endpoints.
//! - [`nats`]: nats-server processes on loopback, alone or in a JetStream cluster of several.

pub mod nats;
pub mod net;
pub mod process;

use std::{future::Future, time::Duration};

/// The most any single wait in a test may take before the test fails instead of hanging. It bounds
/// a wait; it never stands in for one.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

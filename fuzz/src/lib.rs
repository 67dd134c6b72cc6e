//! What the libFuzzer targets in `fuzz_targets/` share. Each target is a thin `fuzz_target!` over
//! these modules, in the order a fuzzed input flows through them:
//!
//! - [`request`]: a small shape of a `PublishRequest` that `arbitrary` builds from fuzzer bytes.
//! - [`segment`]: a small shape of a segment file (its header, records and damage) for recovery.
//! - [`invariants`]: what must hold of the log whatever it was sent, checked after every step.
//!
//! The targets drive the entry points the server uses (`service::publish`, `validate` and
//! `EventLog::append_all`, `EventLog::open`), as `tests/fuzz.rs` does on the stable toolchain.

pub mod invariants;
pub mod request;
pub mod segment;

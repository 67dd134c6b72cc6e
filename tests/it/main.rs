//! The integration tests, one crate with a module per area (as rust-analyzer and vector lay
//! theirs out), so that the support modules are compiled and linked once: `support` (a server in
//! this process on 127.0.0.1:0, clients, requests, bounded waits), `process` (the `storywire`
//! binary and other children, killed when dropped), `node` (a storywire node of a test cluster)
//! and `terminal` (a pseudo-terminal for the CLI's progress bars); the tooling the bench shares
//! (a real nats-server cluster, bounded waits) is the `storywire-testkit` crate. Every test runs
//! against a real server over a real socket; `faults` runs the cluster in network namespaces, as
//! root.

mod node;
mod process;
mod support;
mod terminal;

mod auth;
mod cli;
mod cluster;
mod cluster_faults;
mod compose;
mod concurrency;
mod consumers;
mod dockerfile;
mod durability;
mod edge;
mod errors;
mod faults;
mod fuzz;
mod grpc_web;
mod http;
mod http_edge;
mod jetstream_server;
mod limits;
mod listen;
mod metrics;
mod model;
mod newsroom;
mod ninjs;
mod publish;
mod publish_stream;
mod reflection;
mod rotation;
mod snapshot;
mod sockets;
mod stories;
mod story_limits;
mod subscribe;
mod subscribers_per_address;
mod tls;
mod upgrade;
mod webhooks;

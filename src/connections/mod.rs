//! The lifecycle of every connection, on both faces (the gRPC port and the HTTP face): how long
//! it may take to send a request head, how long it may sit idle, how many one address may hold,
//! and which to close first when the server runs short.

use std::net::IpAddr;

/// The address a request counts against for the per-address limits (connections, subscribers):
/// the peer's own, or, when the peer is a trusted proxy (`serve --trusted-proxy`), the client
/// address it forwarded. The serving loop puts it in every request's extensions, on both faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

//! Pure codecs: bytes to typed frames and back. No sockets, no clocks.
//!
//! Layout: `client` is protocol v1 (JSON lines); `lines` splits a byte stream into bounded
//! lines.

pub mod client;
pub mod heartbeat;
pub mod keyring;
pub mod lines;
pub mod replication;
pub mod witness;

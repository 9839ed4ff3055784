//! Why a replication link (or its handshake) ended: the link threads' error, shared by the
//! link (`link.rs`) and its stream (`link_stream.rs`).

use crate::core::link::handshake::LinkEnd;
use crate::log::LogError;
use crate::wire::replication::PeerFrameError;

/// Why a replication link (or its handshake) ended, for the line that says so. Not fatal:
/// the dialer dials again and the listener takes the next backup.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A refusal or end the link protocol decided (`core::link`).
    #[error("{0}")]
    End(LinkEnd),
    /// The link session ended the link, in its words.
    #[error("{0}")]
    Session(String),
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: std::io::Error,
    },
    /// TLS could not start or its handshake failed, in rustls's words.
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bad frame: {0}")]
    BadFrame(#[from] PeerFrameError),
    #[error("closed by the peer")]
    Closed,
    /// The driver is gone: the node is stopping.
    #[error("core gone")]
    CoreGone,
    #[error("reading the log at {from}: {source}")]
    Log { from: u64, source: LogError },
    #[error("reading orphans: {0}")]
    Orphans(std::io::Error),
}

impl LinkError {
    /// `f` for a failed socket call `step`.
    pub(super) fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> LinkError {
        move |source| LinkError::Io { step, source }
    }
}

impl From<LinkEnd> for LinkError {
    fn from(end: LinkEnd) -> Self {
        LinkError::End(end)
    }
}

impl From<String> for LinkError {
    fn from(reason: String) -> Self {
        LinkError::Session(reason)
    }
}

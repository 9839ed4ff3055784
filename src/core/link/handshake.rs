//! The link's handshake, both sides, pure: the backup's `Hello`, the primary's checks and
//! signed `Welcome`, the backup's checks and `Auth`, the primary's check of that. Nonces
//! come from the caller (the daemon draws them from the OS); the MACs are the keyring's.
//! The MACs cover both frames whole (nonces, ids, epochs, heads), so nothing in the
//! handshake can be altered, replayed on another connection or reflected.

use super::BackupHello;
use crate::wire::keyring::Keyring;
use crate::wire::replication::{
    handshake_transcript, PeerFrame, Transcript, NONCE_BYTES, REPLICATION_VERSION,
};

/// What a node that is not primary answers a dialing backup.
pub const NOT_PRIMARY: &str = "this node is not the primary";

/// Why a handshake (or a link) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// The other end (or this node, for an incoming link) is not primary: the normal answer
    /// while the pair picks a primary.
    NotPrimary,
    /// Anything else, in words.
    Failed(String),
}

impl From<String> for LinkEnd {
    fn from(text: String) -> Self {
        LinkEnd::Failed(text)
    }
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::NotPrimary => f.write_str(NOT_PRIMARY),
            LinkEnd::Failed(text) => f.write_str(text),
        }
    }
}

/// Who is at each end: this node and the peer it expects.
#[derive(Clone, Debug)]
pub struct Ends<'a> {
    pub node_id: &'a str,
    pub peer_id: &'a str,
    pub keys: &'a Keyring,
}

/// The node's log and epochs as the handshake shows them; the daemon's driver refreshes
/// its copy after each turn that changed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogView {
    pub epoch: u64,
    pub seen_epoch: u64,
    pub spans: Vec<(u64, u64)>,
    pub head: u64,
    pub last_seq: u64,
    pub first_seq: u64,
    /// The core's `log_stuck`: a backup does not follow a primary meanwhile.
    pub log_stuck: bool,
}

/// A refused `Hello`: why, and whether the backup is told (a `Refuse` with the reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub end: LinkEnd,
    told: bool,
}

impl Refusal {
    fn new(end: LinkEnd) -> Self {
        Refusal { end, told: true }
    }

    /// The frame that tells the backup, if it is told.
    pub fn answer(&self) -> Option<PeerFrame> {
        let reason = self.end.to_string();
        self.told.then_some(PeerFrame::Refuse { reason })
    }
}

/// The backup's side once the primary's `Welcome` checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcomed {
    /// The `Auth` frame to send.
    pub auth: PeerFrame,
    /// The primary's epoch and epoch history, for the session.
    pub epoch: u64,
    pub spans: Vec<(u64, u64)>,
}

/// Backup: the first frame.
pub fn hello(ends: &Ends, view: &LogView, nonce: [u8; NONCE_BYTES]) -> PeerFrame {
    PeerFrame::Hello {
        version: REPLICATION_VERSION,
        node_id: ends.node_id.to_string(),
        epoch: view.seen_epoch,
        last_seq: view.last_seq,
        first_seq: view.first_seq,
        epochs: view.spans.clone(),
        nonce,
        boot: 0,
    }
}

/// Primary: the signed `Welcome` for a backup's `Hello`, or the refusal (`primary`: this
/// node's role now).
pub fn welcome(
    ends: &Ends,
    hello: &PeerFrame,
    (view, primary): (&LogView, bool),
    nonce: [u8; NONCE_BYTES],
) -> Result<PeerFrame, Refusal> {
    let PeerFrame::Hello {
        version, node_id, ..
    } = hello
    else {
        let end = LinkEnd::Failed(format!("expected hello, got {}", hello.name()));
        return Err(Refusal { end, told: false });
    };
    if *version != REPLICATION_VERSION {
        let reason = format!("replication version {version} is not {REPLICATION_VERSION}");
        return Err(Refusal::new(reason.into()));
    }
    if node_id != ends.peer_id {
        let reason = format!(
            "node {node_id:?} is not this node's peer ({:?})",
            ends.peer_id
        );
        return Err(Refusal::new(reason.into()));
    }
    if !primary {
        return Err(Refusal::new(LinkEnd::NotPrimary));
    }
    let mut welcome = PeerFrame::Welcome {
        node_id: ends.node_id.to_string(),
        epoch: view.epoch,
        epochs: view.spans.clone(),
        head: view.head,
        nonce,
        key_id: ends.keys.signing_key_id(),
        mac: [0; 32],
    };
    let transcript = handshake_transcript(Transcript::Welcome, hello, &welcome);
    let (_, signed) = ends.keys.sign(&transcript);
    if let PeerFrame::Welcome { mac, .. } = &mut welcome {
        *mac = signed;
    }
    Ok(welcome)
}

/// Backup: the primary's answer checked; the `Auth` to send, and the primary's epoch and
/// epoch history for the session.
pub fn auth(ends: &Ends, hello: &PeerFrame, answer: &PeerFrame) -> Result<Welcomed, LinkEnd> {
    let (node_id, epoch, epochs, key_id, mac) = match answer {
        PeerFrame::Welcome {
            node_id,
            epoch,
            epochs,
            key_id,
            mac,
            ..
        } => (node_id, *epoch, epochs, *key_id, mac),
        PeerFrame::Refuse { reason } if reason == NOT_PRIMARY => return Err(LinkEnd::NotPrimary),
        PeerFrame::Refuse { reason } => return Err(format!("refused: {reason}").into()),
        other => {
            return Err(format!("handshake: expected welcome, got {}", other.name()).into());
        }
    };
    if node_id != ends.peer_id {
        return Err(format!("answered by {node_id:?}, not the peer {:?}", ends.peer_id).into());
    }
    let transcript = handshake_transcript(Transcript::Welcome, hello, answer);
    if !ends.keys.verify(key_id, &transcript, mac) {
        let text = "handshake: the primary's MAC does not verify (wrong secret?)";
        return Err(text.to_string().into());
    }
    let (key_id, mac) = ends
        .keys
        .sign(&handshake_transcript(Transcript::Auth, hello, answer));
    Ok(Welcomed {
        auth: PeerFrame::Auth { key_id, mac },
        epoch,
        spans: epochs.clone(),
    })
}

/// Primary: the backup's `Auth` checked; what its `Hello` said, for the session.
pub fn authenticated(
    ends: &Ends,
    hello: &PeerFrame,
    welcome: &PeerFrame,
    auth: &PeerFrame,
) -> Result<BackupHello, LinkEnd> {
    let PeerFrame::Auth { key_id, mac } = auth else {
        return Err(format!("handshake: expected auth, got {}", auth.name()).into());
    };
    let transcript = handshake_transcript(Transcript::Auth, hello, welcome);
    if !ends.keys.verify(*key_id, &transcript, mac) {
        let text = "handshake: the backup's MAC does not verify (wrong secret?)";
        return Err(text.to_string().into());
    }
    let PeerFrame::Hello {
        epoch,
        last_seq,
        epochs,
        ..
    } = hello
    else {
        unreachable!("a welcome answers only a hello")
    };
    Ok(BackupHello {
        epoch: *epoch,
        last_seq: *last_seq,
        spans: epochs.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::keyring::parse_keyring;

    const SECRET: &str = "1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    const OTHER: &str = "1 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n";

    fn keys(text: &str) -> Keyring {
        parse_keyring("test", text).expect("a test keyring")
    }

    fn view() -> LogView {
        LogView {
            epoch: 4,
            seen_epoch: 4,
            spans: vec![(1, 1), (4, 9)],
            head: 12,
            last_seq: 12,
            first_seq: 1,
            log_stuck: false,
        }
    }

    #[test]
    fn a_handshake_under_one_secret_gives_each_side_what_the_other_said() {
        let ring = keys(SECRET);
        let backup = Ends {
            node_id: "b",
            peer_id: "a",
            keys: &ring,
        };
        let primary = Ends {
            node_id: "a",
            peer_id: "b",
            keys: &ring,
        };
        let backup_view = LogView {
            seen_epoch: 3,
            last_seq: 7,
            spans: vec![(1, 1)],
            ..LogView::default()
        };
        let hello = hello(&backup, &backup_view, [1; NONCE_BYTES]);
        let welcome =
            welcome(&primary, &hello, (&view(), true), [2; NONCE_BYTES]).expect("welcome");
        let welcomed = auth(&backup, &hello, &welcome).expect("the welcome verifies");
        assert_eq!((welcomed.epoch, welcomed.spans), (4, vec![(1, 1), (4, 9)]));
        let said = authenticated(&primary, &hello, &welcome, &welcomed.auth).expect("auth");
        let expected = BackupHello {
            epoch: 3,
            last_seq: 7,
            spans: vec![(1, 1)],
        };
        assert_eq!(said, expected);
    }

    #[test]
    fn a_backup_under_another_secret_fails_both_checks() {
        let (ours, theirs) = (keys(SECRET), keys(OTHER));
        let primary = Ends {
            node_id: "a",
            peer_id: "b",
            keys: &ours,
        };
        let backup = Ends {
            node_id: "b",
            peer_id: "a",
            keys: &theirs,
        };
        let hello = hello(&backup, &view(), [1; NONCE_BYTES]);
        let welcome =
            welcome(&primary, &hello, (&view(), true), [2; NONCE_BYTES]).expect("welcome");
        let failed = auth(&backup, &hello, &welcome).expect_err("the MAC is not theirs");
        assert!(failed.to_string().contains("wrong secret?"), "{failed}");
        let forged = PeerFrame::Auth {
            key_id: 1,
            mac: [0; 32],
        };
        let failed = authenticated(&primary, &hello, &welcome, &forged).expect_err("forged");
        assert!(failed.to_string().contains("backup's MAC"), "{failed}");
    }

    #[test]
    fn a_hello_is_refused_by_a_non_primary_a_stranger_or_another_version() {
        let ring = keys(SECRET);
        let primary = Ends {
            node_id: "a",
            peer_id: "b",
            keys: &ring,
        };
        let hello_from = |node_id: &str| PeerFrame::Hello {
            version: REPLICATION_VERSION,
            node_id: node_id.into(),
            epoch: 1,
            last_seq: 0,
            first_seq: 1,
            epochs: Vec::new(),
            nonce: [0; NONCE_BYTES],
            boot: 0,
        };
        let refused = welcome(&primary, &hello_from("b"), (&view(), false), [0; 16]);
        let refused = refused.expect_err("not primary");
        assert_eq!(refused.end, LinkEnd::NotPrimary);
        let told = PeerFrame::Refuse {
            reason: NOT_PRIMARY.into(),
        };
        assert_eq!(refused.answer(), Some(told.clone()));
        // The backup reads that refusal as the normal answer of a node not yet primary.
        let backup = Ends {
            node_id: "b",
            peer_id: "a",
            keys: &ring,
        };
        let hello = hello_from("b");
        assert_eq!(auth(&backup, &hello, &told), Err(LinkEnd::NotPrimary));
        let stranger = welcome(&primary, &hello_from("c"), (&view(), true), [0; 16]);
        let stranger = stranger.expect_err("a stranger").end.to_string();
        assert_eq!(stranger, r#"node "c" is not this node's peer ("b")"#);
        let mut old = hello_from("b");
        if let PeerFrame::Hello { version, .. } = &mut old {
            *version = REPLICATION_VERSION + 1;
        }
        let old = welcome(&primary, &old, (&view(), true), [0; 16]).expect_err("another version");
        assert!(old.answer().is_some());
    }
}

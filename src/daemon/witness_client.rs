//! Strict mode, a node's side of the witness: two small threads around one UDP socket.
//!
//! `witness-send` takes the core's claims (`Action::Claim`) from a bounded channel, signs
//! them with the pair's keys, a boot nonce and a rising counter, and sends them;
//! `witness-recv` checks each answer (MAC, our node id, our boot, a claim still waiting)
//! and hands it to the core as `Input::WitnessAnswer`. Neither decides anything: the core
//! counts the lease from the moment it asked, which is no later than the moment the claim
//! left, so any delay here only shortens the lease.

use super::queue::QueueSender;
use super::DaemonError;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::core::strict::CLAIMS_INFLIGHT_MAX;
use crate::core::witness::Verdict;
use crate::core::Input;
use crate::daemon::logging::{suppressed_note, Throttle};
use crate::wire::keyring::Keyring;
use crate::wire::witness::{decode_answer, encode_claim, Claim, WITNESS_DATAGRAM_MAX_BYTES};

/// How often the receiver looks at the stop flag while no answer arrives.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A claim the core asked for: (its request number, the epoch).
pub type ClaimRequest = (u64, u64);

/// Claims sent and not yet answered: (counter on the wire, the core's request number).
type Waiting = Arc<Mutex<VecDeque<(u64, u64)>>>;

/// Starts both threads (`base`: the core's monotonic clock starts there); the returned sender takes the core's claims (it never blocks the
/// core: when full, a claim is dropped and the core asks again at its next renewal).
pub fn spawn(
    node_id: String,
    witness: SocketAddr,
    keys: Arc<Keyring>,
    inputs: QueueSender<Input>,
    stopping: Arc<AtomicBool>,
    base: Instant,
) -> Result<Sender<ClaimRequest>, DaemonError> {
    let any: SocketAddr = if witness.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let fail = |step| {
        move |source| DaemonError::Witness {
            address: witness,
            step,
            source,
        }
    };
    let socket = UdpSocket::bind(any).map_err(fail("bind"))?;
    socket
        .set_read_timeout(Some(STOP_CHECK_INTERVAL))
        .map_err(fail("read timeout"))?;
    let receiving = socket.try_clone().map_err(fail("clone socket"))?;
    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let waiting: Waiting = Arc::new(Mutex::new(VecDeque::new()));
    let (claims_tx, claims_rx) = bounded::<ClaimRequest>(CLAIMS_INFLIGHT_MAX);
    {
        let (keys, waiting, node_id) = (keys.clone(), waiting.clone(), node_id.clone());
        super::spawn("witness-send", move || {
            send_loop(socket, witness, node_id, boot, keys, waiting, claims_rx)
        })?;
    }
    super::spawn("witness-recv", move || {
        let me = Me {
            node_id,
            boot,
            keys,
            waiting,
        };
        receive_loop(receiving, me, inputs, stopping, base)
    })?;
    Ok(claims_tx)
}

fn send_loop(
    socket: UdpSocket,
    witness: SocketAddr,
    node_id: String,
    boot: u64,
    keys: Arc<Keyring>,
    waiting: Waiting,
    claims: Receiver<ClaimRequest>,
) {
    let mut counter = 0u64;
    let mut failures = Throttle::new(1, Duration::from_secs(10));
    // Ends when the core drops the sender (the daemon is stopping).
    for (request, epoch) in claims {
        counter += 1;
        {
            let mut waiting = waiting.lock().expect("witness waiting lock");
            if waiting.len() == CLAIMS_INFLIGHT_MAX {
                waiting.pop_front();
            }
            waiting.push_back((counter, request));
        }
        let claim = Claim {
            node_id: node_id.clone(),
            epoch,
            boot,
            counter,
        };
        if let Err(e) = socket.send_to(&encode_claim(&claim, &keys), witness) {
            if let Some(suppressed) = failures.allow(Instant::now()) {
                log::warn!(
                    "witness {witness}: send failed: {e}{}",
                    suppressed_note(suppressed)
                );
            }
        }
    }
}

/// Who this node is on the witness protocol, for checking answers.
struct Me {
    node_id: String,
    boot: u64,
    keys: Arc<Keyring>,
    waiting: Waiting,
}

fn receive_loop(
    socket: UdpSocket,
    me: Me,
    inputs: QueueSender<Input>,
    stopping: Arc<AtomicBool>,
    base: Instant,
) {
    let mut rejects = Throttle::new(1, Duration::from_secs(10));
    let mut buf = [0u8; WITNESS_DATAGRAM_MAX_BYTES + 1];
    while !stopping.load(Ordering::Acquire) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            // A refused send (nothing listens at the witness address) surfaces here.
            Err(_) => continue,
        };
        let mut reject = |why: String| {
            if let Some(suppressed) = rejects.allow(Instant::now()) {
                log::warn!(
                    "witness: rejected an answer from {from}: {why}{}",
                    suppressed_note(suppressed)
                );
            }
        };
        let answer = match decode_answer(&buf[..len], &me.keys) {
            Ok(answer) => answer,
            Err(e) => {
                reject(e.to_string());
                continue;
            }
        };
        if answer.node_id != me.node_id || answer.boot != me.boot {
            reject("it answers another node or an earlier run of this one".into());
            continue;
        }
        let request = {
            let mut waiting = me.waiting.lock().expect("witness waiting lock");
            let found = waiting.iter().position(|&(c, _)| c == answer.counter);
            found
                .and_then(|i| waiting.remove(i))
                .map(|(_, request)| request)
        };
        let Some(request) = request else {
            // Answered already (a duplicate) or given up on: nothing waits for it.
            continue;
        };
        let (granted, epoch, lease_ms) = match answer.verdict {
            Verdict::Granted { epoch, lease_ms } => (true, epoch, lease_ms),
            Verdict::Refused { epoch, .. } => (false, epoch, 0),
        };
        let input = Input::WitnessAnswer {
            request,
            granted,
            epoch,
            lease_ms,
            mono_ms: base.elapsed().as_millis() as u64,
        };
        if inputs.send(input).is_err() {
            return;
        }
    }
}

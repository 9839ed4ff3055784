//! The replication link's byte stream, plain TCP or TLS, split into a reading half and a
//! writing half for the link's two threads.
//!
//! A rustls connection is one state for both directions, so its halves share it behind a
//! mutex that is never held across a socket call: the reader reads the socket unlocked,
//! then locks to decrypt; the writer locks to encrypt into its own buffer, then writes the
//! socket unlocked. Neither can stall the other however the peer behaves, and only the
//! writer thread writes to the socket (records rustls queues while reading, such as alerts
//! or key updates, go out with the writer's next frame; it sends one per beat interval).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::link_error::LinkError;

/// Bytes read from the socket per `read`.
const READ_CHUNK_BYTES: usize = 64 * 1024;

type Shared = Arc<Mutex<rustls::Connection>>;

fn lock(tls: &Shared) -> std::sync::MutexGuard<'_, rustls::Connection> {
    // A panic aborts the process (panic = "abort"), so the lock is never poisoned.
    tls.lock().expect("link TLS lock")
}

/// Runs the TLS handshake (if any) on `socket` and splits the stream. The caller sets the
/// socket's read timeout first: it bounds the handshake. A refused handshake says why, in
/// rustls's words (`invalid peer certificate: UnknownIssuer`, `received fatal alert: ...`).
pub fn establish(
    socket: TcpStream,
    tls: Option<rustls::Connection>,
) -> Result<(LinkReader, LinkWriter), LinkError> {
    let writer_socket = socket.try_clone().map_err(LinkError::io("try_clone"))?;
    let shared = match tls {
        None => None,
        Some(mut tls) => {
            let mut io = &socket;
            while tls.is_handshaking() {
                // Alerts for a failed handshake are sent inside `complete_io` before it fails.
                tls.complete_io(&mut io)
                    .map_err(|e| LinkError::Tls(crate::tls::explain_io(&e)))?;
            }
            Some(Arc::new(Mutex::new(tls)))
        }
    };
    Ok((
        LinkReader {
            socket,
            tls: shared.clone(),
            raw: vec![
                0;
                if shared.is_some() {
                    READ_CHUNK_BYTES
                } else {
                    0
                }
            ],
            raw_start: 0,
            raw_end: 0,
        },
        LinkWriter {
            socket: writer_socket,
            tls: shared,
            records: Vec::new(),
        },
    ))
}

/// The reading half.
pub struct LinkReader {
    socket: TcpStream,
    tls: Option<Shared>,
    /// Records read from the socket and not yet handed to rustls: `raw[raw_start..raw_end]`.
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
}

impl LinkReader {
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }
}

impl Read for LinkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.socket.read(buf);
        };
        loop {
            {
                let mut tls = lock(tls);
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.raw_start < self.raw_end {
                    // rustls takes what fits its buffer; the rest waits for the next turn,
                    // after the plaintext it made is read out (so its buffers stay bounded).
                    let taken = tls.read_tls(&mut &self.raw[self.raw_start..self.raw_end])?;
                    if taken == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS: the peer's records do not fit rustls's buffer",
                        ));
                    }
                    self.raw_start += taken;
                    tls.process_new_packets().map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS: {}", crate::tls::explain(&e)),
                        )
                    })?;
                    continue;
                }
            }
            let n = self.socket.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.raw_start = 0;
            self.raw_end = n;
        }
    }
}

/// The writing half.
pub struct LinkWriter {
    socket: TcpStream,
    tls: Option<Shared>,
    /// Encrypted records waiting for the socket (reused; bounded by rustls's buffer limit).
    records: Vec<u8>,
}

impl LinkWriter {
    /// The socket, for the link table's shutdown handle.
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.socket.write_all(bytes);
        };
        let mut rest = bytes;
        loop {
            self.records.clear();
            {
                let mut tls = lock(tls);
                while !rest.is_empty() {
                    // Takes at most what its outgoing buffer has room for.
                    let taken = tls.writer().write(rest)?;
                    if taken == 0 {
                        break;
                    }
                    rest = &rest[taken..];
                }
                while tls.wants_write() {
                    tls.write_tls(&mut self.records)?;
                }
            }
            if self.records.is_empty() && !rest.is_empty() {
                return Err(io::Error::other("TLS: the connection takes no more data"));
            }
            self.socket.write_all(&self.records)?;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

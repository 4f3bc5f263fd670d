//! Sessions over TCP: connecting and accepting with a deadline on the whole
//! handshake, counting the peers that fail it and refusing, for a while,
//! an address that keeps failing; and the rule that settles two
//! connections made at once between the same two nodes.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::session::{DistError, Handshake, Hello, Secret, Session};
use crate::pid::NodeId;

/// How long a whole handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Failed handshakes from one address within [`FAILURE_WINDOW`] after which
/// its connections are closed at once, unread, until the window passes.
pub const MAX_FAILURES: u32 = 5;

/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// A stream with a deadline on each read: the handshake as a whole.
struct Timed<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Connects to the node at `addr` and runs the handshake as its initiator
/// within `timeout`: the session, the peer's hello, and the stream (its read
/// timeout cleared).
pub fn connect(
    addr: SocketAddr,
    secret: &Secret,
    ours: Hello,
    max_frame: usize,
    timeout: Duration,
) -> Result<(Session, Hello, TcpStream), DistError> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| DistError::Io(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| DistError::Io(e.to_string()))?;
    let (hs, first) = Handshake::initiate(secret, ours, max_frame);
    let (session, peer) = hs.run(
        &mut Timed {
            stream: &mut stream,
            deadline,
        },
        Some(&first),
    )?;
    stream
        .set_read_timeout(None)
        .map_err(|e| DistError::Io(e.to_string()))?;
    Ok((session, peer, stream))
}

/// Accepts sessions on a TCP listener: each connection gets the whole
/// handshake within a deadline; failures are counted per address, and an
/// address over [`MAX_FAILURES`] within [`FAILURE_WINDOW`] is closed at once.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    secret: Secret,
    ours: Hello,
    max_frame: usize,
    timeout: Duration,
    failures: HashMap<IpAddr, (u32, Instant)>,
    refused: u64,
}

impl Acceptor {
    /// Accepts on `listener` as the node `ours`.
    pub fn new(listener: TcpListener, secret: Secret, ours: Hello, max_frame: usize) -> Acceptor {
        Acceptor {
            listener,
            secret,
            ours,
            max_frame,
            timeout: HANDSHAKE_TIMEOUT,
            failures: HashMap::new(),
            refused: 0,
        }
    }

    /// The deadline of a handshake (default [`HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Acceptor {
        self.timeout = timeout;
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections refused so far: failed handshakes, and those closed
    /// unread from an address over its failures.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Waits for the next connection and runs its handshake. `Err` for a
    /// connection refused (counted); the caller goes on accepting.
    pub fn accept(&mut self) -> Result<(Session, Hello, TcpStream), (SocketAddr, DistError)> {
        let (mut stream, peer) = loop {
            match self.listener.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let addr = self
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return Err((addr, DistError::Io(e.to_string())));
                }
            }
        };
        let now = Instant::now();
        self.failures
            .retain(|_, &mut (_, since)| now.duration_since(since) < FAILURE_WINDOW);
        if let Some(&(n, _)) = self.failures.get(&peer.ip())
            && n >= MAX_FAILURES
        {
            self.refused += 1;
            return Err((
                peer,
                DistError::Malformed(format!(
                    "{} failed {n} handshakes within {FAILURE_WINDOW:?}: closed unread",
                    peer.ip()
                )),
            ));
        }
        let deadline = now + self.timeout;
        let _ = stream.set_nodelay(true);
        let hs = Handshake::respond(&self.secret, self.ours.clone(), self.max_frame);
        let done = hs.run(
            &mut Timed {
                stream: &mut stream,
                deadline,
            },
            None,
        );
        match done {
            Ok((session, hello)) => {
                let _ = stream.set_read_timeout(None);
                Ok((session, hello, stream))
            }
            Err(e) => {
                self.refused += 1;
                let entry = self.failures.entry(peer.ip()).or_insert((0, now));
                entry.0 += 1;
                tracing::warn!(%peer, error = %e, "refused a distribution connection");
                Err((peer, e))
            }
        }
    }
}

/// Two nodes that connect to each other at the same time end up with two
/// sessions; both keep the same one: the one the node with the smaller id
/// initiated. `ours`: this node; `initiated_by_us`: whether this session is
/// the one this node initiated.
pub fn keep_session(ours: NodeId, theirs: NodeId, initiated_by_us: bool) -> bool {
    if ours < theirs {
        initiated_by_us
    } else {
        !initiated_by_us
    }
}

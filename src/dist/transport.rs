//! How sessions reach other nodes: a [`Transport`] makes byte streams to
//! and from addresses, and the session runs on top of them (the Noise
//! handshake, then sealed records), so a stream need not be secure itself.
//! [`Tcp`] is the built-in transport; an application composes its own (a
//! stream through a proxy, a wrapper that shapes or records traffic) by
//! implementing the three traits and setting
//! [`ClusterConfig::transport`](super::ClusterConfig::transport).
//!
//! On any transport: connecting and accepting with a deadline on the whole
//! handshake, counting the peers that fail it and refusing, for a while,
//! an address that keeps failing; and the rule that settles two
//! connections made at once between the same two nodes.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
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

/// A byte stream between two nodes, made by a [`Transport`].
///
/// A session reads on one thread and writes on another, each with its own
/// handle ([`try_clone`](Stream::try_clone)).
pub trait Stream: Read + Write + Send + 'static {
    /// Another handle on the same stream.
    fn try_clone(&self) -> io::Result<Box<dyn Stream>>;

    /// Ends both directions: a thread blocked reading or writing returns.
    fn shutdown(&self);

    /// The address of the other end, if the transport knows one: where
    /// failed handshakes are counted, and where a node that asks to be
    /// connected back is found when membership does not list it.
    fn peer_addr(&self) -> Option<SocketAddr>;

    /// Bounds each read (`None`: no bound); handshakes use it for their
    /// deadline.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

    /// Writes what the stream takes now, without waiting, and says how much.
    /// A stream that cannot tell keeps the default, `Ok(0)`: the session's
    /// writer thread writes it instead (one thread hand-off more per quiet
    /// message).
    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        Ok(0)
    }

    /// The socket under the stream, to hand a direct session between two
    /// processes over to one of them. A stream that is not a socket keeps
    /// the default, `None`: its processes then send through their nodes.
    fn into_fd(self: Box<Self>) -> Option<std::os::fd::OwnedFd> {
        None
    }
}

/// Where a [`Transport`] accepts streams from other nodes.
pub trait Listener: Send + 'static {
    /// Waits for the next stream.
    fn accept(&self) -> io::Result<Box<dyn Stream>>;

    /// The address it listens on (its port is the node's membership port
    /// too).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Makes the streams sessions run on: to a node's address, and from other
/// nodes.
pub trait Transport: fmt::Debug + Send + Sync + 'static {
    /// A stream to the node listening at `addr`, within `timeout`.
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Box<dyn Stream>>;

    /// Listens at `addr` (port 0: one the system picks).
    fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>>;
}

/// The built-in transport: TCP, with Nagle's algorithm off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Transport for Tcp {
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Box<dyn Stream>> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }

    fn listen(&self, addr: SocketAddr) -> io::Result<Box<dyn Listener>> {
        Ok(Box::new(TcpListener::bind(addr)?))
    }
}

impl Stream for TcpStream {
    fn try_clone(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(TcpStream::try_clone(self)?))
    }

    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        TcpStream::peer_addr(self).ok()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        match crate::sys::socket::send(self, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn into_fd(self: Box<Self>) -> Option<std::os::fd::OwnedFd> {
        Some(std::os::fd::OwnedFd::from(*self))
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> io::Result<Box<dyn Stream>> {
        loop {
            match TcpListener::accept(self) {
                Ok((stream, _)) => {
                    stream.set_nodelay(true)?;
                    return Ok(Box::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// A stream with a deadline on each read: the handshake as a whole.
struct Timed<'a> {
    stream: &'a mut dyn Stream,
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

/// A session made: the session, the peer's hello, and the stream it runs on.
pub type Established = (Session, Hello, Box<dyn Stream>);

/// Connects to the node at `addr` through `transport` and runs the
/// handshake as its initiator within `timeout`: the session, the peer's
/// hello, and the stream (its read timeout cleared).
///
/// What the peer sent right after the handshake may have come with its
/// last message: the session holds it already. Open the session's frames
/// once (`session.open(&[], &mut frames)`) before the first read.
pub fn connect(
    transport: &dyn Transport,
    addr: SocketAddr,
    secret: &Secret,
    ours: Hello,
    max_frame: usize,
    timeout: Duration,
) -> Result<Established, DistError> {
    let deadline = Instant::now() + timeout;
    let mut stream = transport
        .connect(addr, timeout)
        .map_err(|e| DistError::Io(e.to_string()))?;
    let (hs, first) = Handshake::initiate(secret, ours, max_frame);
    let (session, peer) = hs.run(
        &mut Timed {
            stream: &mut *stream,
            deadline,
        },
        Some(&first),
    )?;
    stream
        .set_read_timeout(None)
        .map_err(|e| DistError::Io(e.to_string()))?;
    Ok((session, peer, stream))
}

/// Accepts sessions on a listener: each connection gets the whole
/// handshake within a deadline; failures are counted per address, and an
/// address over [`MAX_FAILURES`] within [`FAILURE_WINDOW`] is closed at once
/// (streams whose transport knows no peer address are not counted).
pub struct Acceptor {
    listener: Box<dyn Listener>,
    secret: Secret,
    ours: Hello,
    max_frame: usize,
    timeout: Duration,
    failures: HashMap<IpAddr, (u32, Instant)>,
    refused: u64,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("ours", &self.ours)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Accepts on `listener` as the node `ours`.
    pub fn new(listener: Box<dyn Listener>, secret: Secret, ours: Hello, max_frame: usize) -> Acceptor {
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
    pub fn accept(&mut self) -> Result<Established, (SocketAddr, DistError)> {
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut stream = match self.listener.accept() {
            Ok(s) => s,
            Err(e) => {
                let addr = self.local_addr().unwrap_or(unknown);
                return Err((addr, DistError::Io(e.to_string())));
            }
        };
        let from = stream.peer_addr();
        let peer = from.unwrap_or(unknown);
        let now = Instant::now();
        self.failures
            .retain(|_, &mut (_, since)| now.duration_since(since) < FAILURE_WINDOW);
        if let Some(&(n, _)) = from.and_then(|a| self.failures.get(&a.ip()))
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
        let hs = Handshake::respond(&self.secret, self.ours.clone(), self.max_frame);
        let done = hs.run(
            &mut Timed {
                stream: &mut *stream,
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
                if let Some(from) = from {
                    self.failures.entry(from.ip()).or_insert((0, now)).0 += 1;
                }
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

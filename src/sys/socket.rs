//! `AF_UNIX` stream sockets: abstract addresses, socket pairs, accept with
//! peer credentials (`SO_PEERCRED`), non-blocking I/O and descriptor passing
//! (`SCM_RIGHTS`, see `unix(7)` and `cmsg(3)`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// OS pid of the peer when it connected.
    pub(crate) pid: i32,
    /// Effective user id of the peer.
    pub(crate) uid: u32,
}

fn new_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    Ok(net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?)
}

/// Creates a non-blocking listening socket bound to the abstract address `name`.
pub(crate) fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = new_socket(true)?;
    net::bind(&fd, &SocketAddrUnix::new_abstract_name(name)?)?;
    net::listen(&fd, libc::SOMAXCONN)?;
    Ok(fd)
}

/// Connects to the abstract address `name`. A non-blocking connect returns
/// `WouldBlock` when the listener's backlog is full.
pub(crate) fn connect_abstract(name: &[u8], nonblocking: bool) -> io::Result<OwnedFd> {
    let fd = new_socket(nonblocking)?;
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    loop {
        match net::connect(&fd, &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connected pair of stream sockets (close-on-exec, non-blocking).
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Accepts one pending connection (non-blocking, close-on-exec) if its peer
/// runs as `uid`: the one same-user rule of every listener of the runtime
/// (the node's, each process's, the zygote's). `Ok(None)` when none is
/// pending; `Ok(Some(Err(cred)))` when a peer of another user was refused
/// (its connection closed), with its credentials.
pub(crate) fn accept_same_user(listener: &OwnedFd, uid: u32) -> io::Result<Option<Result<OwnedFd, PeerCred>>> {
    Ok(accept(listener)?.map(|(fd, cred)| if cred.uid == uid { Ok(fd) } else { Err(cred) }))
}

/// Accepts one pending connection (non-blocking, close-on-exec) with its
/// peer's credentials; `Ok(None)` when none is pending.
fn accept(listener: &OwnedFd) -> io::Result<Option<(OwnedFd, PeerCred)>> {
    loop {
        match net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
            Ok(fd) => {
                let cred = peer_cred(&fd)?;
                return Ok(Some((fd, cred)));
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(None),
            // The peer gave up before we accepted: try the next one.
            Err(Errno::CONNABORTED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The credentials of the peer of a connected socket (`SO_PEERCRED`).
pub(crate) fn peer_cred(fd: &OwnedFd) -> io::Result<PeerCred> {
    let cred = net::sockopt::socket_peercred(fd)?;
    Ok(PeerCred {
        pid: cred.pid.as_raw_nonzero().get(),
        uid: cred.uid.as_raw(),
    })
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(fd, on)?)
}

/// Reads into `buf`; `Ok(0)` is end of stream, `WouldBlock` means no data now.
pub(crate) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes as much of `buf` as the socket takes now (`MSG_NOSIGNAL`, so a closed
/// peer is `BrokenPipe`, never `SIGPIPE`).
pub(crate) fn send(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        match net::send(&fd, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is ready for reading (or writing, with `write`) or the
/// deadline passes. Returns `false` on timeout.
pub(crate) fn wait_fd(fd: impl AsFd, write: bool, deadline: Option<Instant>) -> io::Result<bool> {
    let events = if write { PollFlags::OUT } else { PollFlags::IN };
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(false);
                }
                Some(Timespec::try_from(d - now).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                }))
            }
        };
        let mut pfd = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut pfd, timeout.as_ref()) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf`, waiting for room up to `deadline`. Used where the caller
/// must not go on before the bytes are in the kernel (a process's last words).
pub(crate) fn send_all(fd: &OwnedFd, mut buf: &[u8], deadline: Option<Instant>) -> io::Result<()> {
    while !buf.is_empty() {
        match send(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_fd(fd, true, deadline)? {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The most descriptors one message carries.
const MAX_FDS: usize = 16;

/// Sends all of `buf` with the descriptors `fds` attached (`SCM_RIGHTS`) to
/// its first byte, waiting for room; `buf` must be non-empty.
pub(crate) fn send_with_fds(fd: &OwnedFd, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    loop {
        match sendmsg_fds(fd, buf, fds, SendFlags::NOSIGNAL) {
            Ok(n) if n == buf.len() => return Ok(()),
            // The descriptors went with the first byte: the rest follows
            // alone, so that the stream stays whole.
            Ok(n) => return send_all(fd, &buf[n..], None),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_fd(fd, true, None)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt of [`send_with_fds`] that never waits: how much of `buf`
/// went (the descriptors with its first byte), or `WouldBlock`.
#[cfg(feature = "dist")]
pub(crate) fn send_with_fds_now(fd: &OwnedFd, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    sendmsg_fds(fd, buf, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

/// One `sendmsg(2)` of `buf` with `fds` (retried only if interrupted).
fn sendmsg_fds(fd: &OwnedFd, buf: &[u8], fds: &[BorrowedFd<'_>], flags: SendFlags) -> io::Result<usize> {
    assert!(!buf.is_empty(), "BUG: descriptors must travel with at least one byte");
    assert!(
        fds.len() <= MAX_FDS,
        "BUG: at most {MAX_FDS} descriptors in one message"
    );
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let iov = [IoSlice::new(buf)];
    loop {
        match net::sendmsg(fd, &iov, &mut control, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads into `buf` like [`read`], collecting descriptors passed with
/// `SCM_RIGHTS` into `fds` (close-on-exec).
pub(crate) fn recv_with_fds(fd: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let n = loop {
        match net::recvmsg(fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => break msg.bytes,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok(n)
}

/// Makes an idle TCP connection fail once its peer host stops answering
/// keepalive probes for about `dead` (gone, or cut off). A slow reader's
/// kernel still answers them; a connection with bytes in flight is left to
/// the kernel's retransmission limits (no `TCP_USER_TIMEOUT`: since Linux
/// 5.11 it also ends a connection whose receiver's window stays closed).
#[cfg(feature = "dist")]
pub(crate) fn fail_when_silent(fd: &OwnedFd, dead: std::time::Duration) -> io::Result<()> {
    use rustix::net::sockopt;
    let probe = (dead / 4).max(std::time::Duration::from_secs(1));
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, probe)?;
    sockopt::set_tcp_keepintvl(fd, probe)?;
    sockopt::set_tcp_keepcnt(fd, 3)?;
    Ok(())
}

/// Whether the other end of a connected stream socket closed it (an end
/// of stream is waiting), without taking anything from it.
#[cfg(feature = "dist")]
pub(crate) fn peer_closed(fd: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match net::recv(fd, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => return n == 0,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
}

/// Whether a connect or send error means the peer process no longer exists
/// (its listening socket or connection is closed).
pub(crate) fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) | Some(libc::ECONNRESET) | Some(libc::EPIPE)
    )
}

/// Whether `e` says the process (or the system) has no descriptor left.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Writes as much of `buf` as a pipe (or any descriptor) takes now.
pub(crate) fn write_fd(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        match rustix::io::write(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

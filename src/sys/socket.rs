//! `AF_UNIX` stream sockets: abstract addresses, socket pairs, accept with
//! peer credentials (`SO_PEERCRED`), non-blocking I/O and descriptor passing
//! (`SCM_RIGHTS`, see `unix(7)` and `cmsg(3)`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// OS pid of the peer when it connected.
    pub(crate) pid: i32,
    /// Effective user id of the peer.
    pub(crate) uid: u32,
}

fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // The first byte of sun_path stays 0: an abstract address.
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket name too long"));
    }
    for (dst, &src) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

fn new_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    let fd = syscall!(socket(libc::AF_UNIX, ty, 0))?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a non-blocking listening socket bound to the abstract address `name`.
pub(crate) fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = new_socket(true)?;
    let (addr, len) = abstract_addr(name)?;
    syscall!(bind(
        fd.as_raw_fd(),
        &addr as *const libc::sockaddr_un as *const libc::sockaddr,
        len
    ))?;
    syscall!(listen(fd.as_raw_fd(), libc::SOMAXCONN))?;
    Ok(fd)
}

/// Connects to the abstract address `name`. A non-blocking connect returns
/// `WouldBlock` when the listener's backlog is full.
pub(crate) fn connect_abstract(name: &[u8], nonblocking: bool) -> io::Result<OwnedFd> {
    let fd = new_socket(nonblocking)?;
    let (addr, len) = abstract_addr(name)?;
    loop {
        let r = syscall!(connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len
        ));
        match r {
            Ok(_) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connected pair of stream sockets (close-on-exec, non-blocking).
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: two fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
        let r = syscall!(accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ));
        match r {
            Ok(fd) => {
                // SAFETY: a fresh descriptor owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let cred = peer_cred(&fd)?;
                return Ok(Some((fd, cred)));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // The peer gave up before we accepted: try the next one.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The credentials of the peer of a connected socket (`SO_PEERCRED`).
pub(crate) fn peer_cred(fd: &OwnedFd) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        &mut cred as *mut libc::ucred as *mut libc::c_void,
        &mut len
    ))?;
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: &OwnedFd, on: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, flags)).map(drop)
}

/// Reads into `buf`; `Ok(0)` is end of stream, `WouldBlock` means no data now.
pub(crate) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `buf` as the socket takes now (`MSG_NOSIGNAL`, so a closed
/// peer is `BrokenPipe`, never `SIGPIPE`).
pub(crate) fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        let r = syscall!(send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        ));
        match r {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits until `fd` is ready for `events` (`POLLIN`/`POLLOUT` style) or the
/// deadline passes. Returns `false` on timeout.
pub(crate) fn wait_fd(fd: RawFd, write: bool, deadline: Option<Instant>) -> io::Result<bool> {
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(false);
                }
                (d - now).as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd { fd, events, revents: 0 };
        match syscall!(poll(&mut pfd, 1, timeout)) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
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
                if !wait_fd(fd.as_raw_fd(), true, deadline)? {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `buf` with the descriptors `fds` attached (`SCM_RIGHTS`). The whole of
/// `buf` goes in one message or the call fails; `buf` must be non-empty.
pub(crate) fn send_with_fds(fd: &OwnedFd, buf: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(!buf.is_empty(), "BUG: descriptors must travel with at least one byte");
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` writable, aligned bytes, enough
        // for one cmsghdr carrying `fds.len()` descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    loop {
        match syscall!(sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)) {
            Ok(n) if n as usize == buf.len() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short sendmsg with descriptors",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_fd(fd.as_raw_fd(), true, None)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads into `buf` like [`read`], collecting descriptors passed with
/// `SCM_RIGHTS` into `fds` (close-on-exec).
pub(crate) fn recv_with_fds(fd: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const MAX_FDS: usize = 16;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        match syscall!(recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC)) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed cmsghdrs; we walk them with the CMSG_* accessors only.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
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
        match syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len())) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

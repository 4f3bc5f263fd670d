//! The raw-syscall floors: the same work done with bare system calls.

use std::time::{Duration, Instant};

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

/// `iters` times: fork a child that `_exit`s at once, and `waitpid` it.
pub fn fork_exit_wait(iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: the child only calls `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        check(pid, "fork");
        let mut status = 0;
        // SAFETY: waits for our own child.
        check(unsafe { libc::waitpid(pid, &mut status, 0) }, "waitpid");
    }
    t.elapsed()
}

/// A forked echo process on one end of a stream socket pair.
pub struct Echo {
    fd: libc::c_int,
    pid: libc::pid_t,
}

impl Echo {
    /// Forks the echo process; `pin` pins both ends to one CPU.
    pub fn start(pin: Option<usize>) -> Echo {
        let mut fds = [0; 2];
        // SAFETY: plain socketpair into a local array.
        check(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) },
            "socketpair",
        );
        // SAFETY: the child only reads, writes and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if let Some(cpu) = pin {
                super::pin(cpu);
            }
            // SAFETY: closes our copy of the parent's end; echoes until EOF.
            unsafe {
                libc::close(fds[0]);
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = libc::read(fds[1], buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        libc::_exit(0);
                    }
                    let mut off = 0;
                    while off < n {
                        let w = libc::write(fds[1], buf.as_ptr().add(off as usize).cast(), (n - off) as usize);
                        if w <= 0 {
                            libc::_exit(0);
                        }
                        off += w;
                    }
                }
            }
        }
        check(pid, "fork");
        // SAFETY: closes the child's end in the parent.
        unsafe { libc::close(fds[1]) };
        Echo { fd: fds[0], pid }
    }

    /// `iters` round trips of `size` bytes.
    pub fn round_trips(&self, iters: u64, size: usize) -> Duration {
        let msg = vec![7u8; size];
        let mut buf = vec![0u8; size];
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: writes and reads our own socket with local buffers.
            unsafe {
                check(libc::write(self.fd, msg.as_ptr().cast(), size) as i32, "write");
                let mut got = 0;
                while got < size {
                    let n = libc::read(self.fd, buf.as_mut_ptr().add(got).cast(), size - got);
                    check(n as i32, "read");
                    got += n as usize;
                }
            }
        }
        t.elapsed()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // SAFETY: closing our end makes the child exit; then reap it.
        unsafe {
            libc::close(self.fd);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A forked sink that reads 64-byte frames in bulk and answers one byte when
/// it has read the count it was told.
pub struct Sink {
    fd: libc::c_int,
    pid: libc::pid_t,
}

impl Sink {
    /// Forks the sink.
    pub fn start() -> Sink {
        let mut fds = [0; 2];
        // SAFETY: plain socketpair into a local array.
        check(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) },
            "socketpair",
        );
        // SAFETY: the child only reads, writes and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: reads an 8-byte count, then that many 64-byte frames in
            // bulk, then answers; until EOF.
            unsafe {
                libc::close(fds[0]);
                let mut buf = vec![0u8; 65536];
                loop {
                    let mut count = [0u8; 8];
                    if libc::read(fds[1], count.as_mut_ptr().cast(), 8) != 8 {
                        libc::_exit(0);
                    }
                    let mut left = u64::from_le_bytes(count) * 64;
                    while left > 0 {
                        let n = libc::read(fds[1], buf.as_mut_ptr().cast(), buf.len().min(left as usize));
                        if n <= 0 {
                            libc::_exit(0);
                        }
                        left -= n as u64;
                    }
                    libc::write(fds[1], b"k".as_ptr().cast(), 1);
                }
            }
        }
        check(pid, "fork");
        // SAFETY: closes the child's end in the parent.
        unsafe { libc::close(fds[1]) };
        Sink { fd: fds[0], pid }
    }

    /// Streams `iters` 64-byte frames, 64 per `writev`, and waits for the ack.
    pub fn stream(&self, iters: u64) -> Duration {
        let frame = [5u8; 64];
        let iov: Vec<libc::iovec> = (0..64)
            .map(|_| libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: 64,
            })
            .collect();
        let t = Instant::now();
        // SAFETY: writes and reads our own socket with local buffers.
        unsafe {
            check(
                libc::write(self.fd, iters.to_le_bytes().as_ptr().cast(), 8) as i32,
                "write",
            );
            let mut left = iters;
            while left > 0 {
                let k = left.min(64) as usize;
                let mut want = k * 64;
                // A writev may be partial when the socket is full.
                let mut skip = 0usize;
                while want > 0 {
                    let first = skip / 64;
                    let mut local: Vec<libc::iovec> = iov[first..k].to_vec();
                    let into = skip % 64;
                    local[0].iov_base = (frame.as_ptr() as *mut u8).add(into).cast();
                    local[0].iov_len = 64 - into;
                    let n = check(
                        libc::writev(self.fd, local.as_ptr(), local.len() as i32) as i32,
                        "writev",
                    ) as usize;
                    want -= n;
                    skip += n;
                }
                left -= k as u64;
            }
            let mut ack = [0u8; 1];
            check(libc::read(self.fd, ack.as_mut_ptr().cast(), 1) as i32, "read");
        }
        t.elapsed()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // SAFETY: closing our end makes the child exit; then reap it.
        unsafe {
            libc::close(self.fd);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// `iters` times: a child that waits is `SIGKILL`ed; time from the kill to the
/// wake-up of a `poll` on its pidfd.
pub fn kill_to_pidfd_wakeup(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // SAFETY: the child only pauses.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: waits for a signal.
                unsafe { libc::pause() };
            }
        }
        check(pid, "fork");
        // SAFETY: pidfd of our own child, not yet waited for.
        let pidfd = check(
            unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32,
            "pidfd_open",
        );
        let t = Instant::now();
        // SAFETY: signals and polls our own child, then reaps it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut p = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            check(libc::poll(&mut p, 1, -1), "poll");
            total += t.elapsed();
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(pidfd);
        }
    }
    total
}

/// A small process, forked while the bench was still small, that measures
/// fork + `_exit` + `waitpid` on request: the floor of a tiny process after
/// the bench has grown.
pub struct TinyForker {
    to: libc::c_int,
    from: libc::c_int,
    pid: libc::pid_t,
}

impl TinyForker {
    /// Forks the helper (call before growing the heap).
    pub fn start() -> TinyForker {
        let mut a = [0; 2];
        let mut b = [0; 2];
        // SAFETY: pipes into local arrays; the child loops on requests.
        unsafe {
            check(libc::pipe(a.as_mut_ptr()), "pipe");
            check(libc::pipe(b.as_mut_ptr()), "pipe");
            let pid = libc::fork();
            if pid == 0 {
                libc::close(a[1]);
                libc::close(b[0]);
                loop {
                    let mut n = [0u8; 8];
                    if libc::read(a[0], n.as_mut_ptr().cast(), 8) != 8 {
                        libc::_exit(0);
                    }
                    let d = fork_exit_wait(u64::from_le_bytes(n));
                    let ns = (d.as_nanos() as u64).to_le_bytes();
                    libc::write(b[1], ns.as_ptr().cast(), 8);
                }
            }
            check(pid, "fork");
            libc::close(a[0]);
            libc::close(b[1]);
            TinyForker {
                to: a[1],
                from: b[0],
                pid,
            }
        }
    }

    /// `iters` fork + `_exit` + `waitpid` in the small process.
    pub fn run(&self, iters: u64) -> Duration {
        let mut ns = [0u8; 8];
        // SAFETY: our own pipes and local buffers.
        unsafe {
            libc::write(self.to, iters.to_le_bytes().as_ptr().cast(), 8);
            libc::read(self.from, ns.as_mut_ptr().cast(), 8);
        }
        Duration::from_nanos(u64::from_le_bytes(ns))
    }
}

impl Drop for TinyForker {
    fn drop(&mut self) {
        // SAFETY: closing the request pipe ends the helper; then reap it.
        unsafe {
            libc::close(self.to);
            libc::close(self.from);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

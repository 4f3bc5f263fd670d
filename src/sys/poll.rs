//! Readiness: epoll (level-triggered), eventfd wake-ups and one-shot timerfds.
//! See `epoll(7)`, `eventfd(2)` and `timerfd_create(2)`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Readable (or closed by the peer).
    Read,
    /// Writable (or closed by the peer).
    Write,
    /// Both.
    ReadWrite,
}

impl Interest {
    fn bits(self) -> u32 {
        let r = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        let w = libc::EPOLLOUT as u32;
        match self {
            Interest::Read => r,
            Interest::Write => w,
            Interest::ReadWrite => r | w,
        }
    }
}

/// One readiness event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    /// The token given at registration.
    pub(crate) token: Token,
    /// Readable, or the peer hung up, or an error is pending.
    pub(crate) readable: bool,
    /// Writable.
    pub(crate) writable: bool,
}

/// What a poll event is about: the one token type of every poll set in the
/// runtime. A kind (one byte: a family of descriptors, such as connections or
/// pidfds) and a number within it (a serial, an index); kind 0 holds the
/// single descriptors of a poll set (a listener, an eventfd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Token(u64);

impl Token {
    /// Bits of the number.
    const LOW: u64 = (1 << 56) - 1;

    /// The single descriptor numbered `n` in its poll set.
    pub(crate) const fn single(n: u64) -> Token {
        Token(n & Self::LOW)
    }

    /// Member `n` of the family `kind` (not 0).
    pub(crate) const fn new(kind: u8, n: u64) -> Token {
        Token(((kind as u64) << 56) | (n & Self::LOW))
    }

    /// Its family (0: a single descriptor).
    pub(crate) const fn kind(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// Its number within the family.
    pub(crate) const fn n(self) -> u64 {
        self.0 & Self::LOW
    }
}

/// An epoll instance.
#[derive(Debug)]
pub(crate) struct Epoll {
    /// The epoll descriptor.
    fd: OwnedFd,
}

impl Epoll {
    /// Creates an epoll instance (close-on-exec).
    pub(crate) fn new() -> io::Result<Epoll> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: Token, interest: Option<Interest>) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.map_or(0, Interest::bits),
            u64: token.0,
        };
        syscall!(epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev)).map(drop)
    }

    /// Registers `fd` under `token`.
    pub(crate) fn add(&self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, Some(interest))
    }

    /// Changes what `fd` waits for.
    pub(crate) fn modify(&self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, Some(interest))
    }

    /// Removes `fd`; a descriptor that is not registered is not an error.
    pub(crate) fn delete(&self, fd: RawFd) {
        // ENOENT/EBADF only mean there was nothing to remove.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, Token(0), None);
    }

    /// Waits for events up to `timeout` (`None`: forever) and appends them to
    /// `out`. An interrupted wait returns with no events.
    pub(crate) fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        const CAP: usize = 64;
        let mut raw = [libc::epoll_event { events: 0, u64: 0 }; CAP];
        let ms = match timeout {
            None => -1,
            // Round up so a short timeout does not become a busy loop.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        let n = match syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            raw.as_mut_ptr(),
            CAP as libc::c_int,
            ms
        )) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        for ev in &raw[..n] {
            let bits = ev.events;
            let hangup = bits & (libc::EPOLLHUP | libc::EPOLLRDHUP | libc::EPOLLERR) as u32 != 0;
            out.push(Event {
                token: Token(ev.u64),
                readable: bits & libc::EPOLLIN as u32 != 0 || hangup,
                writable: bits & libc::EPOLLOUT as u32 != 0,
            });
        }
        Ok(())
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An eventfd used to wake a thread blocked in epoll.
#[derive(Debug)]
pub(crate) struct EventFd {
    /// The eventfd descriptor (non-blocking).
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a non-blocking eventfd.
    pub(crate) fn new() -> io::Result<EventFd> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the eventfd readable.
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // EAGAIN means the counter is saturated: it is readable anyway.
        let _ = syscall!(write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8));
    }

    /// Resets the eventfd to not readable.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        let _ = syscall!(read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8));
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A one-shot monotonic timer descriptor.
#[derive(Debug)]
pub(crate) struct TimerFd {
    /// The timerfd descriptor (non-blocking).
    fd: OwnedFd,
}

impl TimerFd {
    /// Creates a disarmed timer.
    pub(crate) fn new() -> io::Result<TimerFd> {
        let fd = syscall!(timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK
        ))?;
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Arms the timer to fire once after `after` (a zero duration fires at
    /// once), replacing any earlier setting.
    pub(crate) fn set(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        syscall!(timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())).map(drop)
    }

    /// Whether the timer is set to fire.
    pub(crate) fn armed(&self) -> bool {
        // SAFETY: an all-zero itimerspec is a valid value for the kernel to
        // overwrite.
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        syscall!(timerfd_gettime(self.fd.as_raw_fd(), &mut spec))
            .is_ok_and(|_| spec.it_value.tv_sec != 0 || spec.it_value.tv_nsec != 0)
    }

    /// Stops the timer and forgets an expiry not yet read.
    pub(crate) fn disarm(&self) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        syscall!(timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())).map(drop)
    }

    /// Consumes an expiry so the timer is no longer readable.
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        let _ = syscall!(read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8));
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

//! Readiness: epoll (level-triggered), eventfd wake-ups and one-shot timerfds.
//! See `epoll(7)`, `eventfd(2)` and `timerfd_create(2)`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec};
use rustix::io::Errno;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_gettime, timerfd_settime,
};

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
    fn flags(self) -> EventFlags {
        let r = EventFlags::IN | EventFlags::RDHUP;
        let w = EventFlags::OUT;
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
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Registers `fd` under `token`.
    pub(crate) fn add(&self, fd: impl AsFd, token: Token, interest: Interest) -> io::Result<()> {
        Ok(epoll::add(&self.fd, fd, EventData::new_u64(token.0), interest.flags())?)
    }

    /// Changes what `fd` waits for.
    pub(crate) fn modify(&self, fd: impl AsFd, token: Token, interest: Interest) -> io::Result<()> {
        Ok(epoll::modify(
            &self.fd,
            fd,
            EventData::new_u64(token.0),
            interest.flags(),
        )?)
    }

    /// Removes `fd`; a descriptor that is not registered is not an error.
    pub(crate) fn delete(&self, fd: impl AsFd) {
        // ENOENT only means there was nothing to remove.
        let _ = epoll::delete(&self.fd, fd);
    }

    /// [`add`](Self::add) for a descriptor that another structure owns and
    /// keeps open while it is registered (a listener behind a lock, the
    /// control connection, the node's epoll), known here by its number.
    pub(crate) fn add_raw(&self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        // SAFETY: epoll_ctl only reads the number for the duration of the
        // call; a number closed meanwhile is EBADF, never undefined behaviour.
        self.add(unsafe { BorrowedFd::borrow_raw(fd) }, token, interest)
    }

    /// [`delete`](Self::delete) for a descriptor known by its number.
    pub(crate) fn delete_raw(&self, fd: RawFd) {
        // SAFETY: as in `add_raw`.
        self.delete(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Waits for events up to `timeout` (`None`: forever) and appends them to
    /// `out`. An interrupted wait returns with no events.
    pub(crate) fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        const CAP: usize = 64;
        let mut raw = [epoll::Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        }; CAP];
        // Whole milliseconds, rounded up, so a short timeout does not become a
        // busy loop (and the plain `epoll_pwait` serves it).
        let timeout = timeout.map(|d| {
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i64;
            Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            }
        });
        let n = match epoll::wait(&self.fd, &mut raw[..], timeout.as_ref()) {
            Ok(n) => n,
            Err(Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &raw[..n] {
            let bits = ev.flags;
            let hangup = bits.intersects(EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR);
            out.push(Event {
                token: Token(ev.data.u64()),
                readable: bits.contains(EventFlags::IN) || hangup,
                writable: bits.contains(EventFlags::OUT),
            });
        }
        Ok(())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
        Ok(EventFd {
            fd: rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    /// Makes the eventfd readable.
    pub(crate) fn notify(&self) {
        // EAGAIN means the counter is saturated: it is readable anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the eventfd to not readable.
    pub(crate) fn drain(&self) {
        let mut v = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut v);
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

const ZERO: Timespec = Timespec { tv_sec: 0, tv_nsec: 0 };

impl TimerFd {
    /// Creates a disarmed timer.
    pub(crate) fn new() -> io::Result<TimerFd> {
        Ok(TimerFd {
            fd: timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
            )?,
        })
    }

    /// Arms the timer to fire once after `after` (a zero duration fires at
    /// once), replacing any earlier setting.
    pub(crate) fn set(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: ZERO,
            it_value: Timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Whether the timer is set to fire.
    pub(crate) fn armed(&self) -> bool {
        timerfd_gettime(&self.fd).is_ok_and(|spec| spec.it_value != ZERO)
    }

    /// Stops the timer and forgets an expiry not yet read.
    pub(crate) fn disarm(&self) -> io::Result<()> {
        let spec = Itimerspec {
            it_interval: ZERO,
            it_value: ZERO,
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Consumes an expiry so the timer is no longer readable.
    pub(crate) fn drain(&self) {
        let mut v = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut v);
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

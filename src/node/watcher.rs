//! The exit watcher: the node thread that waits on every process's pidfd and
//! control connection, and on the shutdown signals.
//!
//! A pidfd becomes readable when its process has exited. The watcher then
//! reads the process's control connection to its end (the process's last
//! words are already there: a process writes them before `_exit`), takes the
//! wait status (`waitid` for the node's own children, the parent's report or
//! `PIDFD_GET_INFO` for the others), and the core turns the death into signals.
//!
//! The node's main thread polls the same events while it waits in a receive
//! (the watcher's epoll is nested in its own), and handles them itself when it
//! wakes first: a `Down` for the main thread then costs no hand-off between
//! threads. Both run [`process`] under the core's lock; level-triggered
//! readiness makes whichever comes second find nothing left to do.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::node::NodeShared;
use crate::node::control::{CONN, Control, PIDFD, STRANGER, TOKEN_CTL_LISTENER, TOKEN_KICK, TOKEN_SIGNALS};
use crate::sys::poll::Event;
use crate::sys::socket;

/// Starts the watcher thread.
pub(crate) fn start(node: &'static NodeShared) -> io::Result<()> {
    std::thread::Builder::new()
        .name("converge-node".into())
        .spawn(move || run(node))
        .map(drop)
}

fn run(node: &'static NodeShared) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        let timeout = {
            let mut core = node.control.lock();
            let mut t = if core.has_pending() {
                Some(Duration::from_millis(5))
            } else if core.strangers_to_scan() > 0 {
                Some(Duration::from_millis(20))
            } else {
                None
            };
            if let Some(at) = core.next_timer() {
                let left = at.saturating_duration_since(std::time::Instant::now());
                t = Some(t.map_or(left, |t| t.min(left)));
            }
            core.watcher_will_wake = t.is_some();
            t
        };
        if let Err(e) = node.epoll.wait(&mut events, timeout) {
            tracing::error!("the exit watcher's epoll_wait failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut core = node.control.lock();
        // The main thread may have handled these events already: take what is
        // still ready now, under the lock.
        if !events.is_empty() {
            events.clear();
            let _ = node.epoll.wait(&mut events, Some(Duration::ZERO));
            if events.is_empty() {
                continue;
            }
        }
        process(node, &mut core, &events);
        core.run_timers();
        // Look for orphans when the node is idle, or when many exits piled up.
        if events.is_empty() || core.strangers_to_scan() >= 64 {
            core.scan_strangers();
        }
        drop(core);
        node.changed.notify_all();
    }
}

/// Handles the node's ready events: accepts, control frames, exits.
pub(crate) fn process(node: &'static NodeShared, core: &mut Control, events: &[Event]) {
    for ev in events {
        match ev.token {
            TOKEN_CTL_LISTENER => core.accept_all(),
            TOKEN_KICK => {
                node.kick.drain();
                // The kick was meant for the watcher: if another thread took
                // it, the watcher may still sleep without a timeout, so the
                // next release kicks again.
                core.watcher_will_wake = false;
            }
            TOKEN_SIGNALS => {
                let mut buf = [0u8; 16];
                let n = node
                    .signals
                    .as_ref()
                    .map_or(0, |fd| socket::read(fd, &mut buf).unwrap_or(0));
                let signal = i32::from(buf[0]);
                if n > 0
                    && signal != 0
                    && node
                        .signalled
                        .compare_exchange(0, signal, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    shutdown_on_signal(node, signal);
                }
            }
            t => match t.kind() {
                CONN => {
                    if ev.writable {
                        core.on_conn_writable(t.n());
                    }
                    if ev.readable {
                        core.read_conn(t.n());
                    }
                }
                PIDFD => core.on_pidfd(t.n()),
                STRANGER => core.on_stranger(t.n()),
                _ => {}
            },
        }
    }
    if core.has_pending() {
        core.retry_pending();
    }
}

/// The main thread's receive found the node's events ready: handle them now.
pub(crate) fn process_now(node: &'static NodeShared) {
    let mut events = Vec::new();
    let mut core = node.control.lock();
    let _ = node.epoll.wait(&mut events, Some(Duration::ZERO));
    if events.is_empty() {
        return;
    }
    process(node, &mut core, &events);
    release(node, core);
    node.changed.notify_all();
}

/// Releases the process table after the main thread changed it: work left
/// for later (statuses to retry, orphans to look for, a port's kill at the
/// end of its shutdown time) is the watcher's, so make sure it is not
/// asleep without a timeout.
pub(crate) fn release(node: &NodeShared, mut core: crate::sync::MutexGuard<'_, Control>) {
    let kick =
        (core.has_pending() || core.strangers_to_scan() > 0 || core.next_timer().is_some()) && !core.watcher_will_wake;
    if kick {
        core.watcher_will_wake = true;
    }
    drop(core);
    if kick {
        node.kick.notify();
    }
}

/// `SIGINT` or `SIGTERM` reached the node: shut down in order, then end the
/// node with that signal, as it would have ended without a handler.
fn shutdown_on_signal(node: &'static NodeShared, signal: i32) {
    tracing::info!(signal, "shutting down on signal");
    let spawned = std::thread::Builder::new()
        .name("converge-shutdown".into())
        .spawn(move || {
            node.shutdown(node.shutdown_timeout);
            crate::sys::signal::die_by_signal(signal)
        });
    if spawned.is_err() {
        crate::sys::signal::die_by_signal(signal);
    }
}

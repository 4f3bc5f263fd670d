//! The exit watcher: the node thread that waits on every process's pidfd and
//! control connection, and on the shutdown signals.
//!
//! A pidfd becomes readable when its process has exited. The watcher then
//! reads the process's control connection to its end (the process's last
//! words are already there: a process writes them before `_exit`), takes the
//! wait status (`waitid` for the node's own children, the parent's report or
//! `PIDFD_GET_INFO` for the others), and the core turns the death into signals.

use std::io;
use std::time::Duration;

use crate::node::NodeShared;
use crate::node::core::{CONN_TAG, Core, PIDFD_TAG, STRANGER_TAG, TOKEN_CTL_LISTENER, TOKEN_KICK, TOKEN_SIGNALS};
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
    let mut signalled = false;
    loop {
        events.clear();
        let timeout = node.core.lock().has_pending().then(|| Duration::from_millis(5));
        if let Err(e) = node.epoll.wait(&mut events, timeout) {
            tracing::error!("the exit watcher's epoll_wait failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut core = node.core.lock();
        for ev in &events {
            match ev.token {
                TOKEN_CTL_LISTENER => core.accept_all(),
                TOKEN_KICK => node.kick.drain(),
                TOKEN_SIGNALS => {
                    let mut buf = [0u8; 16];
                    let n = node
                        .signals
                        .as_ref()
                        .map_or(0, |fd| socket::read(fd, &mut buf).unwrap_or(0));
                    if n > 0 && !signalled {
                        signalled = true;
                        let signal = i32::from(buf[0]);
                        shutdown_on_signal(node, signal);
                    }
                }
                t => match Core::token_kind(t) {
                    CONN_TAG => {
                        if ev.writable {
                            core.on_conn_writable(t);
                        }
                        if ev.readable {
                            core.read_conn(t);
                        }
                    }
                    PIDFD_TAG => core.on_pidfd(t & !(0xff << 56)),
                    STRANGER_TAG => core.on_stranger(t),
                    _ => {}
                },
            }
        }
        if core.has_pending() {
            core.retry_pending();
        }
        drop(core);
        node.changed.notify_all();
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

//! A port's pipes in its owner's receive path: standard output cut into
//! events (raw chunks, lines or `{packet, N}` packets), standard error as
//! events or log lines, standard input written without blocking.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{Inbox, Item, PORT, PORT_STDERR, PORT_STDIN, PORT_STDOUT, SCRATCH, State};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::sys::poll::{Interest, Token};
use crate::sys::socket;
use crate::wire::envelope::ToNode;
use crate::wire::port::{Framing, PortOutput, Stderr, port_cut};

/// A port's standard input is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// The pipes of a port this process owns, and their framing state.
#[derive(Debug)]
pub(crate) struct PortIo {
    /// The port.
    pid: Pid,
    /// Its standard output (read end), until its end.
    stdout: Option<OwnedFd>,
    /// Its standard error (read end), when separate or logged.
    stderr: Option<OwnedFd>,
    /// Its standard input (write end), until closed.
    stdin: Option<OwnedFd>,
    /// How standard output is cut.
    framing: Framing,
    /// What happens to standard error.
    stderr_mode: Stderr,
    /// Largest packet accepted.
    max_packet: usize,
    /// Bytes of standard output not yet cut into an event.
    partial: Vec<u8>,
    /// Bytes of standard error not yet logged (a partial line).
    stderr_partial: Vec<u8>,
    /// Input not yet written, from `stdin_off`.
    stdin_pending: Vec<u8>,
    /// Written part of `stdin_pending`.
    stdin_off: usize,
    /// Waiting for the input pipe to be writable.
    stdin_waiting: bool,
    /// Close the input once what is pending is written.
    close_input: bool,
    /// The internal monitor whose Down is the port's exit.
    pub(super) exit_ref: u64,
    /// Output broke the framing: it is not read further.
    broken: bool,
    /// Bytes of its output (and standard error) queued and not yet taken.
    pub(super) queued: usize,
    /// Its pipes are not read while too much of its output is queued.
    pub(super) paused: bool,
    /// Its pipes are not read while its owner holds its output.
    pub(super) held: bool,
}

/// Bytes of a port's output queued unread past which its pipes are not read
/// (the program then waits on a full pipe, as it would writing to a slow
/// reader), and below which they are read again.
pub(super) const PORT_QUEUE_HIGH: usize = 1 << 20;
pub(super) const PORT_QUEUE_LOW: usize = 256 << 10;

/// What an output event counts for in its port's queued bytes: what it
/// carries and what an event costs besides (so that a flood of empty lines
/// or packets is bounded too).
pub(super) fn output_bytes(output: &PortOutput) -> usize {
    const EVENT: usize = 64;
    match output {
        PortOutput::Data(b) | PortOutput::Packet(b) | PortOutput::Stderr(b) => b.len() + EVENT,
        PortOutput::Line { data, .. } => data.len() + EVENT,
        _ => 0,
    }
}

impl PortIo {
    #[allow(clippy::too_many_arguments)] // Every field is a distinct part of the port.
    pub(crate) fn new(
        pid: Pid,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        stdin: OwnedFd,
        framing: Framing,
        stderr_mode: Stderr,
        max_packet: usize,
        exit_ref: u64,
    ) -> PortIo {
        PortIo {
            pid,
            stdout: Some(stdout),
            stderr,
            stdin: Some(stdin),
            framing,
            stderr_mode,
            max_packet,
            partial: Vec::new(),
            stderr_partial: Vec::new(),
            stdin_pending: Vec::new(),
            stdin_off: 0,
            stdin_waiting: false,
            close_input: false,
            exit_ref,
            broken: false,
            queued: 0,
            paused: false,
            held: false,
        }
    }
}

impl Inbox {
    /// Polls a child's pidfd so that this process reaps it and reports its
    /// status to the node.
    /// Reads a port's output from now on.
    pub(crate) fn add_port(&self, serial: u64, port: PortIo) {
        self.state.lock().ports.insert(serial, port);
    }

    /// Forgets a port that did not start.
    pub(crate) fn remove_port(&self, serial: u64) {
        self.state.lock().ports.remove(&serial);
    }

    /// Forgets the port `serial` of `st` after its end: its pipes leave the
    /// poll set and close.
    pub(super) fn forget_port(&self, st: &mut State, serial: u64) {
        if let Some(p) = st.ports.remove(&serial) {
            for fd in [&p.stdout, &p.stderr, &p.stdin].into_iter().flatten() {
                self.unwatch(fd.as_raw_fd());
            }
        }
    }

    /// Starts reading a port's output, once the node knows the port: what
    /// the output may cause (a broken framing kills the port) must find it
    /// registered. Until then its exit still finds it (and reads it out).
    pub(crate) fn watch_port(&self, serial: u64) -> io::Result<()> {
        let st = self.state.lock();
        let Some(port) = st.ports.get(&serial) else {
            return Ok(());
        };
        let token = |pipe| Token::new(PORT, serial << 2 | pipe);
        if let Some(fd) = &port.stdout {
            self.epoll().add(fd, token(PORT_STDOUT), Interest::Read)?;
        }
        if let Some(fd) = &port.stderr {
            self.epoll().add(fd, token(PORT_STDERR), Interest::Read)?;
        }
        self.need_background();
        Ok(())
    }

    /// Holds (or lets go of) a port's output: while held, its pipes are not
    /// read and the program waits on them.
    pub(crate) fn port_hold(&self, serial: u64, hold: bool) {
        let mut st = self.state.lock();
        let Some(port) = st.ports.get_mut(&serial) else {
            return;
        };
        if port.held == hold {
            return;
        }
        port.held = hold;
        if hold {
            for fd in [&port.stdout, &port.stderr].into_iter().flatten() {
                self.unwatch(fd.as_raw_fd());
            }
        } else if !port.paused {
            st.resume.push(serial);
            self.resume_ports(&mut st);
        }
    }

    /// Reads again the pipes of the ports whose owner took enough of their
    /// queued output (listed by `State::take`), unless held.
    pub(super) fn resume_ports(&self, st: &mut State) {
        for serial in std::mem::take(&mut st.resume) {
            let Some(port) = st.ports.get(&serial).filter(|p| !p.held) else {
                continue;
            };
            let token = |pipe| Token::new(PORT, serial << 2 | pipe);
            for (fd, pipe) in [(&port.stdout, PORT_STDOUT), (&port.stderr, PORT_STDERR)] {
                if let Some(fd) = fd
                    && let Err(e) = self.epoll().add(fd, token(pipe), Interest::Read)
                    && e.kind() != io::ErrorKind::AlreadyExists
                {
                    tracing::warn!(port = %port.pid, error = %e, "a port's output cannot be read again");
                }
            }
            self.need_background();
        }
    }

    /// Writes to a port's input (or queues, in order, when the pipe is full).
    /// `Err(Closed)`: the port's input is closed (or the port is gone).
    pub(crate) fn port_write(&self, rt: &Runtime, serial: u64, bytes: &[u8]) -> Result<(), Closed> {
        let mut st = self.state.lock();
        let port = st.ports.get_mut(&serial).ok_or(Closed)?;
        if port.stdin.is_none() || port.close_input {
            return Err(Closed);
        }
        port.stdin_pending.extend_from_slice(bytes);
        self.port_flush_input(rt, &mut st, serial);
        Ok(())
    }

    /// Bytes given to a port's input and not yet written to its pipe.
    pub(crate) fn port_input_pending(&self, serial: u64) -> usize {
        let st = self.state.lock();
        st.ports.get(&serial).map_or(0, |p| p.stdin_pending.len() - p.stdin_off)
    }

    /// Closes a port's input once what is pending is written.
    pub(crate) fn port_close_input(&self, rt: &Runtime, serial: u64) {
        let mut st = self.state.lock();
        if let Some(port) = st.ports.get_mut(&serial) {
            port.close_input = true;
        }
        self.port_flush_input(rt, &mut st, serial);
    }

    /// Writes what a port's input pipe takes now.
    pub(super) fn port_flush_input(&self, _rt: &Runtime, st: &mut State, serial: u64) {
        let Some(port) = st.ports.get_mut(&serial) else {
            return;
        };
        let Some(fd) = &port.stdin else {
            return;
        };
        let token = Token::new(PORT, serial << 2 | PORT_STDIN);
        while port.stdin_off < port.stdin_pending.len() {
            match socket::write_fd(fd, &port.stdin_pending[port.stdin_off..]) {
                Ok(n) => port.stdin_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !port.stdin_waiting {
                        port.stdin_waiting = true;
                        let _ = self.epoll().add(fd, token, Interest::Write);
                        self.need_background();
                    }
                    return;
                }
                Err(_) => {
                    // The program closed its input: nothing more can go in.
                    port.stdin_pending.clear();
                    port.stdin_off = 0;
                    port.close_input = true;
                    break;
                }
            }
        }
        port.stdin_pending.clear();
        port.stdin_off = 0;
        if port.stdin_waiting {
            port.stdin_waiting = false;
            self.unwatch(fd.as_raw_fd());
        }
        if port.close_input {
            port.stdin = None;
        }
    }

    /// Reads a port's output pipe (standard output or error) and queues what
    /// it yields.
    pub(super) fn read_port(&self, rt: &Runtime, st: &mut State, serial: u64, pipe: u64, until_end: bool) {
        if st.scratch.len() < SCRATCH {
            st.scratch.resize(SCRATCH, 0);
        }
        loop {
            let State {
                ports, scratch, queue, ..
            } = &mut *st;
            let Some(port) = ports.get_mut(&serial) else {
                return;
            };
            let fd = if pipe == PORT_STDOUT {
                &port.stdout
            } else {
                &port.stderr
            };
            let Some(fd) = fd else {
                return;
            };
            let n = match socket::read(fd, scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => 0,
            };
            if n == 0 {
                // End of the pipe.
                let fd = if pipe == PORT_STDOUT {
                    port.stdout.take()
                } else {
                    port.stderr.take()
                };
                if let Some(fd) = fd {
                    self.unwatch(fd.as_raw_fd());
                }
                if pipe == PORT_STDOUT {
                    self.port_stdout(rt, port, queue, serial, &[], true);
                    queue.push_back(Item::Port {
                        port: serial,
                        output: PortOutput::Eof,
                    });
                } else {
                    port_stderr(port, queue, serial, &[], true);
                }
                return;
            }
            let data = &scratch[..n];
            if pipe == PORT_STDOUT {
                if !port.broken {
                    self.port_stdout(rt, port, queue, serial, data, false);
                }
            } else {
                port_stderr(port, queue, serial, data, false);
            }
            if !until_end && port.queued > PORT_QUEUE_HIGH {
                // Its owner is behind: the program waits on its pipe until
                // the owner takes some (then `resume_ports`). At its end, all
                // of it is read anyway.
                port.paused = true;
                for fd in [&port.stdout, &port.stderr].into_iter().flatten() {
                    self.unwatch(fd.as_raw_fd());
                }
                return;
            }
            if !until_end && n < scratch.len() {
                return;
            }
        }
    }

    /// The program of port `serial` ended and what its pipes held is read:
    /// the part of a line or packet its framing still holds is its last
    /// output, even when the end of a pipe is not seen yet (another process
    /// forked at that moment holds a copy of its write end for a while).
    pub(super) fn end_port_framing(&self, rt: &Runtime, st: &mut State, serial: u64) {
        let State { ports, queue, .. } = &mut *st;
        let Some(port) = ports.get_mut(&serial) else {
            return;
        };
        if port.stdout.is_some() && !port.broken {
            self.port_stdout(rt, port, queue, serial, &[], true);
        }
        if port.stderr.is_some() {
            port_stderr(port, queue, serial, &[], true);
        }
    }

    /// Queues the events fresh standard output of port `serial` makes (`end`:
    /// the pipe ended), and what follows if it broke its framing.
    fn port_stdout(
        &self,
        rt: &Runtime,
        port: &mut PortIo,
        queue: &mut VecDeque<Item>,
        serial: u64,
        data: &[u8],
        end: bool,
    ) {
        let (items, broken) = port_cut(port.framing, port.max_packet, &mut port.partial, data, end);
        port.queued += items.iter().map(output_bytes).sum::<usize>();
        queue.extend(items.into_iter().map(|output| Item::Port { port: serial, output }));
        if let Err(e) = broken {
            self.port_broken(rt, port, queue, serial, e);
        }
    }

    /// The port's output broke its framing: the owner gets
    /// [`PortOutput::Broken`] and counts it as undecodable, and the port ends
    /// with that reason (if it has not ended already).
    fn port_broken(&self, rt: &Runtime, port: &mut PortIo, queue: &mut VecDeque<Item>, serial: u64, why: String) {
        port.broken = true;
        tracing::warn!(port = %port.pid, "{why}");
        rt.slot().undecodable.fetch_add(1, Ordering::Relaxed);
        queue.push_back(Item::Port {
            port: serial,
            output: PortOutput::Broken(why.clone()),
        });
        rt.tell_node(&ToNode::ExitSignal {
            target: port.pid,
            reason: ExitReason::Error(why),
            untrappable: false,
        });
    }
}

/// Handles fresh standard error of a port, as its mode says.
fn port_stderr(port: &mut PortIo, queue: &mut VecDeque<Item>, serial: u64, data: &[u8], end: bool) {
    match port.stderr_mode {
        Stderr::Separate | Stderr::Merge => {
            if !data.is_empty() {
                port.queued += data.len() + 64;
                queue.push_back(Item::Port {
                    port: serial,
                    output: PortOutput::Stderr(data.to_vec()),
                });
            }
        }
        Stderr::Log => {
            port.stderr_partial.extend_from_slice(data);
            while let Some(i) = port.stderr_partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = port.stderr_partial.drain(..=i).collect();
                tracing::warn!(port = %port.pid, "{}", String::from_utf8_lossy(&line[..line.len() - 1]));
            }
            if end && !port.stderr_partial.is_empty() {
                let line = std::mem::take(&mut port.stderr_partial);
                tracing::warn!(port = %port.pid, "{}", String::from_utf8_lossy(&line));
            }
        }
    }
}

//! The zygote: a single-threaded process forked by `init()` before the node
//! starts any thread, while its heap is still small. It forks the processes
//! started with `spawn_fn`, so they get a clean image (no locks held by threads
//! that do not exist in the child, no copy of a large heap) however many
//! threads or how much memory the node has by then.
//!
//! It serves requests on its own abstract socket (any process of the node may
//! ask), hands each child's pidfd to the node, and reaps its children and
//! reports their statuses, like any parent. It stays single-threaded forever.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::node::child::{ChildOptions, ChildPlan, child_main};
use crate::node::runtime::{Runtime, Settings};
use crate::node::zygote_address;
use crate::process::Pid;
use crate::sys;
use crate::sys::poll::{Epoll, Interest};
use crate::sys::shared::SharedArea;
use crate::sys::text::{self, FnAddr};
use crate::wire::decode_exact;
use crate::wire::envelope::ToNode;
use crate::wire::frame::{self, Decoder, Kind};

/// What the zygote's children run: an entry point monomorphized for the
/// process's types, given the application's function and encoded arguments.
pub(crate) type Entry = fn(&'static Runtime, FnAddr, Vec<u8>) -> ExitReason;

/// A function to run in a new process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Call {
    /// The monomorphized [`Entry`].
    pub(crate) entry: FnAddr,
    /// The application's function.
    pub(crate) func: FnAddr,
    /// Its arguments, postcard-encoded.
    pub(crate) args: Vec<u8>,
}

/// A spawn request (its listening socket and control connection travel with
/// it as descriptors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The new process.
    pub(crate) pid: Pid,
    /// Its options.
    pub(crate) options: ChildOptions,
    /// What it runs.
    pub(crate) call: Call,
}

/// The zygote's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Response {
    Spawned { ospid: i32 },
    Failed(String),
}

/// What the zygote starts with.
#[derive(Debug)]
pub(crate) struct ZygoteSetup {
    /// The node's shared area.
    pub(crate) shared: &'static SharedArea,
    /// Node-wide settings.
    pub(crate) settings: Settings,
    /// Control connection to the node (for status reports).
    pub(crate) ctl: OwnedFd,
    /// Where spawn requests arrive.
    pub(crate) listener: OwnedFd,
    /// A read end of the node-death pipe.
    pub(crate) death_read: RawFd,
}

/// Forks the zygote. Call only while the caller is single-threaded.
pub(crate) fn start(setup: ZygoteSetup) -> io::Result<i32> {
    sys::process::fork_child(move || run(setup))
}

const TOKEN_LISTENER: u64 = 1;
const TOKEN_CTL: u64 = 2;
const CONN_TAG: u64 = 1 << 56;
const CHILD_TAG: u64 = 2 << 56;
const TAG_MASK: u64 = 0xff << 56;

/// A connection from a spawner.
struct Conn {
    fd: OwnedFd,
    decoder: Decoder,
    fds: Vec<OwnedFd>,
}

fn run(setup: ZygoteSetup) -> Infallible {
    let _ = sys::process::set_thread_name("converge-zygote");
    let armed = match sys::signal::arm_death_signal(setup.death_read) {
        Ok(fd) => fd,
        Err(_) => sys::process::exit_now(0),
    };
    let _ = sys::process::close_fds_except(&[setup.ctl.as_raw_fd(), setup.listener.as_raw_fd(), armed.as_raw_fd()]);
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(_) => sys::process::exit_now(1),
    };
    let _ = epoll.add(setup.listener.as_raw_fd(), TOKEN_LISTENER, Interest::Read);
    let _ = epoll.add(setup.ctl.as_raw_fd(), TOKEN_CTL, Interest::Read);
    let uid = sys::process::getuid();
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut children: HashMap<u64, (u64, OwnedFd)> = HashMap::new();
    let mut next = 0u64;
    let mut events = Vec::new();
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        events.clear();
        if epoll.wait(&mut events, None).is_err() {
            continue;
        }
        for ev in events.clone() {
            match ev.token {
                TOKEN_LISTENER => {
                    while let Ok(Some((fd, cred))) = sys::socket::accept(&setup.listener) {
                        if cred.uid != uid {
                            continue;
                        }
                        let token = CONN_TAG | next;
                        next += 1;
                        if epoll.add(fd.as_raw_fd(), token, Interest::Read).is_ok() {
                            conns.insert(
                                token,
                                Conn {
                                    fd,
                                    decoder: Decoder::default(),
                                    fds: Vec::new(),
                                },
                            );
                        }
                    }
                }
                TOKEN_CTL => {
                    // The node never writes to the zygote; end of stream means
                    // the node is gone (the armed signal kills us anyway).
                    match sys::socket::read(&setup.ctl, &mut scratch) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Ok(0) | Err(_) => sys::process::exit_now(0),
                        Ok(_) => {}
                    }
                }
                t if t & TAG_MASK == CONN_TAG => {
                    let Some(conn) = conns.get_mut(&t) else { continue };
                    let n = match sys::socket::recv_with_fds(&conn.fd, &mut scratch, &mut conn.fds) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => 0,
                    };
                    if n == 0 {
                        epoll.delete(conn.fd.as_raw_fd());
                        conns.remove(&t);
                        continue;
                    }
                    let mut requests = Vec::new();
                    let ok = conn
                        .decoder
                        .feed(&scratch[..n], 1 << 24, |kind, body| {
                            requests.push((kind, decode_exact::<Request>(body)));
                            true
                        })
                        .is_ok();
                    for (kind, req) in requests {
                        let mut spawned = None;
                        let response = match (kind, req) {
                            (Kind::Ctl, Ok(req)) if conn.fds.len() >= 2 => {
                                let mut fds = conn.fds.drain(..2);
                                let listener = fds.next().expect("BUG: two descriptors");
                                let ctl = fds.next().expect("BUG: two descriptors");
                                drop(fds);
                                match fork_one(&setup, armed.as_raw_fd(), req, listener, ctl) {
                                    Ok((serial, ospid, ctl)) => {
                                        spawned = Some((serial, ospid, ctl));
                                        Response::Spawned { ospid }
                                    }
                                    Err(e) => Response::Failed(e.to_string()),
                                }
                            }
                            (_, Err(e)) => Response::Failed(format!("undecodable request: {e}")),
                            _ => Response::Failed("request without its descriptors".into()),
                        };
                        // Answer first: the spawner goes on while the pidfd
                        // travels to the node.
                        let mut buf = Vec::new();
                        let _ = frame::push(&mut buf, Kind::Ctl, &response);
                        let _ = sys::socket::send_all(&conn.fd, &buf, None);
                        if let Some((serial, ospid, ctl)) = spawned {
                            match announce(serial, ospid, ctl) {
                                Ok(pidfd) => {
                                    let token = CHILD_TAG | next;
                                    next += 1;
                                    let _ = epoll.add(pidfd.as_raw_fd(), token, Interest::Read);
                                    children.insert(token, (serial, pidfd));
                                }
                                Err(e) => eprintln!("converge-zygote: handing over a pidfd failed: {e}"),
                            }
                        }
                    }
                    if !ok {
                        epoll.delete(conn.fd.as_raw_fd());
                        conns.remove(&t);
                    }
                }
                t if t & TAG_MASK == CHILD_TAG => {
                    let Some((serial, pidfd)) = children.get(&t) else {
                        continue;
                    };
                    if let Ok(Some(status)) = sys::process::pidfd_try_wait(pidfd) {
                        let mut buf = Vec::new();
                        let _ = frame::push(
                            &mut buf,
                            Kind::Ctl,
                            &ToNode::ChildExited {
                                serial: *serial,
                                status,
                            },
                        );
                        let _ = sys::socket::send_all(&setup.ctl, &buf, None);
                        epoll.delete(pidfd.as_raw_fd());
                        children.remove(&t);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Forks one child for `req`; returns its serial, OS pid and a copy of its
/// control connection (for [`announce`]).
fn fork_one(
    setup: &ZygoteSetup,
    death: RawFd,
    req: Request,
    listener: OwnedFd,
    ctl: OwnedFd,
) -> io::Result<(u64, i32, OwnedFd)> {
    let ctl_copy = ctl.try_clone()?;
    let serial = req.pid.serial();
    let plan = ChildPlan {
        pid: req.pid,
        shared: setup.shared,
        settings: setup.settings.clone(),
        listener,
        ctl,
        death_read: death,
        options: req.options,
        keep_fds: Vec::new(),
        announce_pidfd: false,
    };
    let call = req.call;
    let ospid = sys::process::fork_child(move || child_main(plan, move |rt| run_entry(rt, call)))?;
    Ok((serial, ospid, ctl_copy))
}

/// Hands the child's pidfd to the node (on the child's own control
/// connection) and returns it, to reap the child. The zygote has not waited
/// for the child yet, so its OS pid cannot have been reused.
fn announce(serial: u64, ospid: i32, ctl: OwnedFd) -> io::Result<OwnedFd> {
    let pidfd = sys::process::pidfd_open(ospid)?;
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &ToNode::Pidfd { serial, ospid }).expect("BUG: control frames always encode");
    sys::socket::send_with_fds(&ctl, &buf, &[pidfd.as_raw_fd()])?;
    Ok(pidfd)
}

fn run_entry(rt: &'static Runtime, call: Call) -> ExitReason {
    match text::restore::<Entry>(call.entry) {
        Some(entry) => entry(rt, call.func, call.args),
        None => ExitReason::Error("spawn_fn: the entry point is not a function of this executable".into()),
    }
}

/// Sends `req` to the zygote with `fds` and waits for the new process's OS pid.
pub(crate) fn request(rt: &'static Runtime, req: &Request, fds: &[RawFd]) -> Result<i32, String> {
    let mut conn = rt.zygote.lock();
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, req).map_err(|e| e.to_string())?;
    let mut last_error = String::new();
    for _attempt in 0..2 {
        if conn.is_none() {
            match sys::socket::connect_abstract(&zygote_address(rt.pid().node()), false) {
                Ok(c) => *conn = Some(c),
                Err(e) => return Err(format!("cannot reach the zygote: {e}")),
            }
        }
        let c = conn.as_ref().expect("BUG: connected above");
        if let Err(e) = sys::socket::send_with_fds(c, &buf, fds) {
            last_error = e.to_string();
            *conn = None;
            continue;
        }
        match read_response(c) {
            Ok(Response::Spawned { ospid }) => return Ok(ospid),
            Ok(Response::Failed(e)) => return Err(e),
            Err(e) => {
                last_error = e.to_string();
                *conn = None;
            }
        }
    }
    Err(last_error)
}

fn read_response(c: &OwnedFd) -> io::Result<Response> {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = sys::socket::read(c, &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the zygote closed the connection",
            ));
        }
        let mut out = None;
        decoder
            .feed(&buf[..n], 1 << 20, |_, body| {
                out = Some(decode_exact::<Response>(body));
                false
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(r) = out {
            return r.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

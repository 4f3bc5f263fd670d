//! The zygote: a single-threaded process forked by `init()` before the node
//! starts any thread, while its heap is still small. It forks the processes
//! started with `spawn_fn`, so they get a clean image (no locks held by threads
//! that do not exist in the child, no copy of a large heap) however many
//! threads or how much memory the node has by then.
//!
//! It serves requests on its own abstract socket (any process of the node may
//! ask), hands each child's pidfd to the node, and reaps its children and
//! reports their statuses, like any parent. It stays single-threaded forever.
//!
//! It also starts every port (external program), as Erlang's `erl_child_setup`
//! does: a single-threaded parent can move the new process into the port's
//! cgroup between fork and exec, so nothing the program starts escapes it, and
//! it outlives the node by a moment to take the ports' groups down with it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::child::{ChildOptions, ChildPlan, child_main};
use crate::runtime::zygote::{Ask, Call, Entry, PortRequest, Request, Response};
use crate::runtime::{Runtime, Settings};
use crate::sys;
use crate::sys::cgroup::PortCgroup;
use crate::sys::poll::{Epoll, Interest, Token};
use crate::sys::shared::SharedArea;
use crate::sys::text;
use crate::wire::decode_exact;
use crate::wire::envelope::{ToNode, ToProcess};
use crate::wire::frame::{self, Decoder, Kind};

/// What the zygote starts with.
#[derive(Debug)]
pub(crate) struct ZygoteSetup {
    /// The node.
    pub(crate) node: crate::pid::NodeId,
    /// The node's shared area.
    pub(crate) shared: &'static SharedArea,
    /// Node-wide settings.
    pub(crate) settings: &'static Settings,
    /// Control connection to the node (for status reports).
    pub(crate) ctl: OwnedFd,
    /// Where spawn requests arrive.
    pub(crate) listener: OwnedFd,
    /// A read end of the node-death pipe.
    pub(crate) death_read: RawFd,
}

/// Forks the zygote. Call only while the caller is single-threaded.
pub(crate) fn start(setup: ZygoteSetup) -> io::Result<i32> {
    // The node's program name, for the names of the processes the zygote
    // forks (read before the zygote names itself).
    let _ = PROGRAM.set(
        std::fs::read_to_string("/proc/self/comm")
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default(),
    );
    sys::process::fork_child(move || run(setup))
}

/// The node's program name (its `comm`).
static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The name `ps` shows for a process the zygote forks in `role` unless
/// `Builder::name` gives one: the program's name and the role, within the
/// kernel's 15 bytes ("myserver:fn").
fn role_name(role: &str) -> String {
    let program = PROGRAM.get().map_or("converge", String::as_str);
    let room = 15usize.saturating_sub(role.len() + 1);
    let mut cut = program.len().min(room);
    while !program.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}:{role}", &program[..cut])
}

const TOKEN_LISTENER: Token = Token::single(1);
const TOKEN_CTL: Token = Token::single(2);
const TOKEN_DEATH: Token = Token::single(3);
const TOKEN_SIGCHLD: Token = Token::single(4);
const TOKEN_SPARE: Token = Token::single(5);
/// Kind of connections' tokens.
const CONN: u8 = 1;
/// Kind of children's pidfds' tokens.
const CHILD: u8 = 2;

/// A child of the zygote.
struct Child {
    serial: u64,
    ospid: i32,
    pidfd: OwnedFd,
    /// A port's OS pid (its process group id), killed with it.
    port: Option<i32>,
    /// A port's cgroup, killed with it, then used again.
    cgroup: Option<PortCgroup>,
    /// A scheduler's slot, given to its replacement.
    scheduler: Option<usize>,
}

/// The ports' cgroups, under the node's: made once and used again, as making
/// and removing a cgroup costs more than starting a small program.
struct Cgroups {
    /// The node's cgroup for ports (none: ports get none).
    root: Option<String>,
    /// Empty, ready for a new port.
    free: Vec<PortCgroup>,
    /// Killed with their port, maybe not empty yet.
    draining: Vec<PortCgroup>,
    next: u64,
}

impl Cgroups {
    /// A cgroup for a new port, if the node has them.
    fn take(&mut self) -> Option<PortCgroup> {
        let root = self.root.as_deref()?;
        for cg in std::mem::take(&mut self.draining) {
            match cg.populated() {
                Some(false) => self.free.push(cg),
                Some(true) => self.draining.push(cg),
                // Gone bad: forgotten.
                None => cg.remove(),
            }
        }
        if let Some(cg) = self.free.pop() {
            return Some(cg);
        }
        self.next += 1;
        crate::sys::cgroup::create_port(root, self.next)
    }

    /// A port's leader is gone: kill what it left in its cgroup (even what
    /// left its process group), and use the cgroup again once it is empty.
    fn release(&mut self, cg: PortCgroup) {
        // Most ports leave nothing behind: their cgroup is free at once
        // (reading `cgroup.events` costs less than a kill the kernel must
        // walk the cgroup for).
        match cg.populated() {
            Some(false) => self.free.push(cg),
            Some(true) => {
                cg.kill();
                self.draining.push(cg);
            }
            // Gone bad: forgotten.
            None => cg.remove(),
        }
    }
}

/// A connection from a spawner.
struct Conn {
    fd: OwnedFd,
    decoder: Decoder,
    fds: Vec<OwnedFd>,
}

fn run(setup: ZygoteSetup) -> Infallible {
    run_with(setup, Vec::new(), Decoder::default())
}

/// The zygote, with frames from the node already read (by a spare taking
/// over) handled first.
fn run_with(setup: ZygoteSetup, early: Vec<ToProcess>, mut ctl_decoder: Decoder) -> Infallible {
    let _ = sys::process::set_thread_name("converge-zygote");
    // The zygote outlives the node by a moment: it watches the death pipe
    // itself (it is not killed by it) to take the ports' process groups down
    // when the node dies.
    let _ = sys::process::close_fds_except(&[setup.ctl.as_raw_fd(), setup.listener.as_raw_fd(), setup.death_read]);
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(_) => sys::process::exit_now(1),
    };
    let _ = epoll.add(&setup.listener, TOKEN_LISTENER, Interest::Read);
    let _ = epoll.add(&setup.ctl, TOKEN_CTL, Interest::Read);
    let _ = epoll.add_raw(setup.death_read, TOKEN_DEATH, Interest::Read);
    // What its children leave behind when they end (a port's descendants
    // that left its process group, a raw fork inside a process) comes back
    // to the zygote, which reaps it.
    let _ = sys::process::set_child_subreaper();
    let sigchld = sys::signal::child_signals().ok();
    if let Some(fd) = &sigchld {
        let _ = epoll.add(fd, TOKEN_SIGCHLD, Interest::Read);
    }
    // A threaded node can never fork a clean zygote again: keep a spare, a
    // fork of this one, to take over should this one die.
    let mut spare = fork_spare(&setup, &epoll);
    let uid = sys::process::getuid();
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut children: HashMap<Token, Child> = HashMap::new();
    let mut pool = Pool::default();
    let mut cgroups = Cgroups {
        root: setup.settings.cgroup.clone(),
        free: Vec::new(),
        draining: Vec::new(),
        next: 0,
    };
    let mut next = 0u64;
    let mut events = Vec::new();
    let mut scratch = vec![0u8; 16 * 1024];
    // What processes left behind and the node adopted: killed if it dies.
    let mut strays: Vec<OwnedFd> = Vec::new();
    for frame in early {
        if let ToProcess::ReplaceScheduler { slot, was_ready } = frame {
            replace_scheduler(&setup, &epoll, &mut next, &mut pool, &mut children, slot, was_ready);
        }
    }
    loop {
        events.clear();
        if epoll.wait(&mut events, None).is_err() {
            continue;
        }
        let mut orphans_may_have_ended = false;
        for ev in events.clone() {
            match ev.token {
                TOKEN_LISTENER => {
                    while let Ok(Some(accepted)) = sys::socket::accept_same_user(&setup.listener, uid) {
                        let Ok(fd) = accepted else {
                            continue;
                        };
                        let token = Token::new(CONN, next);
                        next += 1;
                        if epoll.add(&fd, token, Interest::Read).is_ok() {
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
                TOKEN_DEATH => guardian(&setup, &children, &strays, &mut ctl_decoder),
                // After the rest: its own children's statuses go out first.
                TOKEN_SIGCHLD => orphans_may_have_ended = true,
                TOKEN_SPARE => {
                    // The spare died: reap it, and fork another.
                    if let Some(fd) = spare.take() {
                        epoll.delete(&fd);
                        let _ = sys::process::pidfd_try_wait(&fd);
                    }
                    spare = fork_spare(&setup, &epoll);
                }
                TOKEN_CTL => {
                    // The node asks for schedulers to be replaced; end of
                    // stream means the node is gone (the armed signal kills
                    // us anyway).
                    let n = match sys::socket::read(&setup.ctl, &mut scratch) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Ok(0) | Err(_) => guardian(&setup, &children, &strays, &mut ctl_decoder),
                        Ok(n) => n,
                    };
                    let mut frames = Vec::new();
                    let _ = ctl_decoder.feed(&scratch[..n], 1 << 20, |kind, body| {
                        if kind == Kind::Ctl {
                            frames.push(decode_exact::<ToProcess>(body));
                        }
                        true
                    });
                    for frame in frames {
                        match frame {
                            Ok(ToProcess::ReplaceScheduler { slot, was_ready }) => {
                                replace_scheduler(&setup, &epoll, &mut next, &mut pool, &mut children, slot, was_ready);
                            }
                            Ok(ToProcess::Stray { ospid }) => keep_stray(&mut strays, ospid),
                            _ => {}
                        }
                    }
                }
                t if t.kind() == CONN => {
                    let Some(conn) = conns.get_mut(&t) else { continue };
                    let n = match sys::socket::recv_with_fds(&conn.fd, &mut scratch, &mut conn.fds) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => 0,
                    };
                    if n == 0 {
                        epoll.delete(&conn.fd);
                        conns.remove(&t);
                        continue;
                    }
                    let mut requests = Vec::new();
                    let ok = conn
                        .decoder
                        .feed(&scratch[..n], 1 << 24, |kind, body| {
                            requests.push((kind, decode_exact::<Ask>(body)));
                            true
                        })
                        .is_ok();
                    for (kind, ask) in requests {
                        let mut spawned = None;
                        let response = match (kind, ask) {
                            (Kind::Ctl, Ok(Ask::SpawnPort(req)))
                                if conn.fds.len() >= 2 + req.separate_stderr as usize =>
                            {
                                let n = 2 + req.separate_stderr as usize;
                                let fds: Vec<OwnedFd> = conn.fds.drain(..n).collect();
                                let mut cgroup = cgroups.take();
                                let (reg, shutdown_ms) = (req.reg.clone(), req.shutdown_ms);
                                let mut started = start_port(&req, &fds, cgroup.as_ref());
                                if started.is_err() && cgroup.as_ref().is_some_and(|cg| cg.populated().is_none()) {
                                    // Its cgroup went bad (removed from outside):
                                    // forgotten, and a fresh one tried.
                                    cgroup = cgroups.take();
                                    started = start_port(&req, &fds, cgroup.as_ref());
                                }
                                drop(fds);
                                match started {
                                    Ok(mut child) => {
                                        child.cgroup = cgroup;
                                        let ospid = child.port.expect("BUG: a port has its group");
                                        let registered = register_port(&setup, &child, reg, shutdown_ms);
                                        let token = Token::new(CHILD, next);
                                        next += 1;
                                        let _ = epoll.add(&child.pidfd, token, Interest::Read);
                                        if let Err(e) = registered {
                                            // Nobody would ever stop it.
                                            eprintln!("converge-zygote: registering a port failed: {e}");
                                            let _ = sys::process::pidfd_signal_group(
                                                &child.pidfd,
                                                ospid,
                                                sys::process::SIGKILL,
                                            );
                                        }
                                        children.insert(token, child);
                                        Response::SpawnedPort { ospid }
                                    }
                                    Err(e) => {
                                        // Used again once empty.
                                        if let Some(cg) = cgroup {
                                            cgroups.release(cg);
                                        }
                                        Response::PortFailed {
                                            errno: e.raw_os_error(),
                                            message: e.to_string(),
                                        }
                                    }
                                }
                            }
                            (Kind::Ctl, Ok(Ask::StartPool)) => {
                                if !pool.started {
                                    pool.started = true;
                                    for slot in 0..setup.settings.pool.classes.iter().map(|c| c.1).sum() {
                                        if let Some((token, child)) = start_scheduler(&setup, &epoll, &mut next, slot) {
                                            children.insert(token, child);
                                        }
                                    }
                                }
                                Response::PoolStarted(children.values().filter(|c| c.scheduler.is_some()).count())
                            }
                            (Kind::Ctl, Ok(Ask::Spawn(req))) if conn.fds.len() >= 2 => {
                                let req = *req;
                                let mut fds = conn.fds.drain(..2);
                                let listener = fds.next().expect("BUG: two descriptors");
                                let ctl = fds.next().expect("BUG: two descriptors");
                                drop(fds);
                                match fork_one(&setup, req, listener, ctl) {
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
                            match watch_child(&epoll, &mut next, serial, ospid, ctl, None) {
                                Ok((token, child)) => {
                                    children.insert(token, child);
                                }
                                Err(e) => eprintln!("converge-zygote: handing over a pidfd failed: {e}"),
                            }
                        }
                    }
                    if !ok {
                        epoll.delete(&conn.fd);
                        conns.remove(&t);
                    }
                }
                t if t.kind() == CHILD => {
                    let Some(child) = children.get(&t) else {
                        continue;
                    };
                    if let Some(group) = child.port {
                        // Nothing of a port's group outlives it. Signal the
                        // group before reaping its leader, while its id cannot
                        // be reused.
                        let _ = sys::process::pidfd_signal_group(&child.pidfd, group, sys::process::SIGKILL);
                    }
                    if let Ok(Some(status)) = sys::process::pidfd_try_wait(&child.pidfd) {
                        let mut buf = Vec::new();
                        let _ = frame::push(
                            &mut buf,
                            Kind::Ctl,
                            &ToNode::ChildExited {
                                serial: child.serial,
                                status,
                            },
                        );
                        let _ = sys::socket::send_all(&setup.ctl, &buf, None);
                        epoll.delete(&child.pidfd);
                        // A scheduler is replaced when the node asks (it
                        // also asks for those this zygote did not start).
                        let Some(child) = children.remove(&t) else { continue };
                        if let Some(cg) = child.cgroup {
                            cgroups.release(cg);
                        }
                    }
                }
                _ => {}
            }
        }
        // At once: an orphan left unreaped when this zygote dies goes to the
        // node, which looks only in the process groups of processes that
        // ended since (a port's stray, long after its port).
        if orphans_may_have_ended {
            if let Some(fd) = &sigchld {
                sys::signal::drain_signals(fd);
            }
            // Most are the zygote's own children, reaped above through
            // their pidfds: look through its children (a read of /proc) only
            // when one still waits to be reaped. One that ends after this
            // look raises another SIGCHLD (drained before it).
            if sys::process::any_child_ended() {
                reap_adopted(&children);
            }
        }
    }
}

/// Forks the zygote's spare, watched through its pidfd.
fn fork_spare(setup: &ZygoteSetup, epoll: &Epoll) -> Option<OwnedFd> {
    let copy = (|| {
        Ok::<_, io::Error>(ZygoteSetup {
            node: setup.node,
            shared: setup.shared,
            settings: setup.settings,
            ctl: setup.ctl.try_clone()?,
            listener: setup.listener.try_clone()?,
            death_read: setup.death_read,
        })
    })();
    let forked = copy.and_then(|copy| sys::process::fork_child(move || spare_main(copy)));
    match forked.and_then(sys::process::pidfd_open) {
        Ok(fd) => {
            let _ = epoll.add(&fd, TOKEN_SPARE, Interest::Read);
            Some(fd)
        }
        Err(e) => {
            eprintln!("converge-zygote: forking a spare failed: {e}");
            None
        }
    }
}

/// The spare: registers with the node on a connection of its own, waits to
/// be told to take over, then runs as the zygote (with the listener it
/// shares with the zygote it replaces). It ends with the node.
fn spare_main(mut setup: ZygoteSetup) -> Infallible {
    let _ = sys::process::set_thread_name("converge-spare");
    // Nothing of the zygote's (requesters' connections, ports' pipes) is the
    // spare's to hold.
    let _ = sys::process::close_fds_except(&[setup.ctl.as_raw_fd(), setup.listener.as_raw_fd(), setup.death_read]);
    match wait_to_take_over(&setup) {
        Ok((ctl, after, decoder)) => {
            setup.ctl = ctl;
            run_with(setup, after, decoder)
        }
        Err(_) => sys::process::exit_now(0),
    }
}

/// Registers the spare and waits for `TakeOver`; gives its connection to
/// the node and the frames that came after `TakeOver`.
fn wait_to_take_over(setup: &ZygoteSetup) -> io::Result<(OwnedFd, Vec<ToProcess>, Decoder)> {
    use std::sync::atomic::Ordering;
    let serial = setup.shared.next_serial.fetch_add(1, Ordering::AcqRel);
    let ctl = sys::socket::connect_abstract(&setup.node.node_address(), false)?;
    let ospid = sys::process::getpid();
    let pidfd = sys::process::pidfd_open(ospid)?;
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &ToNode::ZygoteSpare { serial, ospid })
        .expect("BUG: control frames always encode");
    sys::socket::send_with_fds(&ctl, &buf, &[std::os::fd::AsFd::as_fd(&pidfd)])?;
    drop(pidfd);
    let epoll = Epoll::new()?;
    epoll.add(&ctl, TOKEN_CTL, Interest::Read)?;
    epoll.add_raw(setup.death_read, TOKEN_DEATH, Interest::Read)?;
    let mut decoder = Decoder::default();
    let mut scratch = vec![0u8; 4096];
    let mut events = Vec::new();
    loop {
        events.clear();
        if epoll.wait(&mut events, None).is_err() {
            continue;
        }
        for ev in &events {
            if ev.token == TOKEN_DEATH {
                return Err(io::Error::other("the node is gone"));
            }
            let n = sys::socket::read(&ctl, &mut scratch)?;
            if n == 0 {
                return Err(io::Error::other("the node is gone"));
            }
            let mut take_over = false;
            let mut after = Vec::new();
            let _ = decoder.feed(&scratch[..n], 1 << 20, |kind, body| {
                if kind == Kind::Ctl
                    && let Ok(frame) = decode_exact::<ToProcess>(body)
                {
                    if take_over {
                        after.push(frame);
                    } else {
                        take_over = frame == ToProcess::TakeOver;
                    }
                }
                true
            });
            if take_over {
                // The decoder too: a frame may be cut where this read ended.
                return Ok((ctl, after, decoder));
            }
        }
    }
}

/// Forks one child for `req`; returns its serial, OS pid and a copy of its
/// control connection (for [`announce`]).
fn fork_one(setup: &ZygoteSetup, req: Request, listener: OwnedFd, ctl: OwnedFd) -> io::Result<(u64, i32, OwnedFd)> {
    let ctl_copy = ctl.try_clone()?;
    let serial = req.pid.serial();
    let plan = ChildPlan {
        pid: req.pid,
        shared: setup.shared,
        settings: setup.settings,
        listener,
        ctl,
        death: sys::signal::death_description(setup.death_read)?,
        options: req.options,
        keep_fds: Vec::new(),
        announce_pidfd: false,
    };
    let call = req.call;
    // Made once, here: the child reads it, where it would otherwise format
    // it (code and heap pages it would have to fault in).
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let name = NAME.get_or_init(|| role_name("fn")).as_str();
    let ospid = sys::process::fork_child(move || {
        // Builder::name, applied in child_main, replaces it.
        let _ = sys::process::set_thread_name(name);
        child_main(plan, move |rt| run_entry(rt, call))
    })?;
    Ok((serial, ospid, ctl_copy))
}

/// Hands the child's pidfd to the node (on the child's own control
/// connection) and returns it, to reap the child. The zygote has not waited
/// for the child yet, so its OS pid cannot have been reused. The send fails
/// only if the node closed the connection (the registration was withdrawn
/// or refused): the node waits for nothing of the child then, which is not
/// watched, and is reaped unreported with the adopted orphans.
fn announce(serial: u64, ospid: i32, ctl: OwnedFd) -> io::Result<OwnedFd> {
    let pidfd = sys::process::pidfd_open(ospid)?;
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &ToNode::Pidfd { serial, ospid }).expect("BUG: control frames always encode");
    sys::socket::send_with_fds(&ctl, &buf, &[std::os::fd::AsFd::as_fd(&pidfd)])?;
    Ok(pidfd)
}

/// The zygote's view of the scheduler pool.
#[derive(Default)]
struct Pool {
    started: bool,
    /// Per slot: schedulers that died before they were ready, in a row.
    failed_starts: HashMap<usize, u32>,
}

impl Pool {
    /// The scheduler of `slot` died (`was_ready`: it had started): whether
    /// to start another. A slot whose schedulers keep dying before they are
    /// ready (a failing `scheduler_init`) is given up after a few tries.
    fn replace(&mut self, slot: usize, was_ready: bool) -> bool {
        let failed = self.failed_starts.entry(slot).or_default();
        if was_ready {
            *failed = 0;
        } else {
            *failed += 1;
        }
        if *failed > 5 {
            eprintln!("converge-zygote: the scheduler of slot {slot} keeps dying before it is ready; not replaced");
            return false;
        }
        true
    }
}

/// Hands a forked child's pidfd to the node ([`announce`]) and watches it:
/// its token and its entry.
fn watch_child(
    epoll: &Epoll,
    next: &mut u64,
    serial: u64,
    ospid: i32,
    ctl: OwnedFd,
    scheduler: Option<usize>,
) -> io::Result<(Token, Child)> {
    let pidfd = announce(serial, ospid, ctl)?;
    let token = Token::new(CHILD, *next);
    *next += 1;
    let _ = epoll.add(&pidfd, token, Interest::Read);
    let child = Child {
        serial,
        ospid,
        pidfd,
        port: None,
        cgroup: None,
        scheduler,
    };
    Ok((token, child))
}

/// The node asks for the scheduler of `slot` to be replaced (`was_ready`:
/// the one that died had started).
fn replace_scheduler(
    setup: &ZygoteSetup,
    epoll: &Epoll,
    next: &mut u64,
    pool: &mut Pool,
    children: &mut HashMap<Token, Child>,
    slot: u32,
    was_ready: bool,
) {
    if pool.replace(slot as usize, was_ready)
        && let Some((token, child)) = start_scheduler(setup, epoll, next, slot as usize)
    {
        children.insert(token, child);
    }
}

/// Forks the scheduler of `slot`, registered with the node as the runtime's
/// own, and watches it.
fn start_scheduler(setup: &ZygoteSetup, epoll: &Epoll, next: &mut u64, slot: usize) -> Option<(Token, Child)> {
    match fork_scheduler(setup, slot) {
        Ok((serial, ospid, ctl)) => match watch_child(epoll, next, serial, ospid, ctl, Some(slot)) {
            Ok(watched) => Some(watched),
            Err(e) => {
                eprintln!("converge-zygote: handing over a scheduler's pidfd failed: {e}");
                None
            }
        },
        Err(e) => {
            eprintln!("converge-zygote: starting a scheduler failed: {e}");
            None
        }
    }
}

fn fork_scheduler(setup: &ZygoteSetup, slot: usize) -> io::Result<(u64, i32, OwnedFd)> {
    use std::sync::atomic::Ordering;
    let pool = &setup.settings.pool;
    let class = pool.class_of(slot).expect("BUG: slots come from the classes");
    let name = format!("scheduler-{}-{}", pool.classes[class].0, slot - pool.slots(class).start);
    let serial = setup.shared.next_serial.fetch_add(1, Ordering::AcqRel);
    let pid = Pid::new(setup.node, serial);
    let listener = sys::socket::listen_abstract(&pid.address())?;
    let ctl = sys::socket::connect_abstract(&setup.node.node_address(), false)?;
    let death = sys::signal::death_description(setup.death_read)?;
    let reg = crate::wire::envelope::Registration {
        serial,
        parent: crate::pid::ZYGOTE_SERIAL,
        name: Some(name.clone()),
        link: false,
        monitors: Vec::new(),
        trap_exits: false,
        cpu_limited: false,
        memory_limited: false,
        leave_strays: false,
        reaper: Some(crate::pid::ZYGOTE_SERIAL),
        scheduler: Some(slot as u32),
    };
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &ToNode::Register(reg)).expect("BUG: control frames always encode");
    sys::socket::send_all(&ctl, &buf, None)?;
    let ctl_copy = ctl.try_clone()?;
    let plan = ChildPlan {
        pid,
        shared: setup.shared,
        settings: setup.settings,
        listener,
        ctl,
        death,
        options: ChildOptions {
            name: Some(name),
            ..ChildOptions::default()
        },
        keep_fds: Vec::new(),
        announce_pidfd: false,
    };
    let ospid = sys::process::fork_child(move || child_main(plan, move |rt| crate::pool::scheduler::run(rt, slot)))?;
    Ok((serial, ospid, ctl_copy))
}

/// Reaps the adopted orphans that have ended (the zygote's own children are
/// reaped by their pidfds, and reported).
fn reap_adopted(children: &HashMap<Token, Child>) {
    let ours: std::collections::HashSet<i32> = children.values().map(|c| c.ospid).collect();
    for pid in crate::sys::proc_fs::children_of_self() {
        if !ours.contains(&pid) {
            sys::process::reap_if_exited(pid);
        }
    }
}

/// Hands a port to the node: its registration and its pidfd.
fn register_port(
    setup: &ZygoteSetup,
    child: &Child,
    reg: crate::wire::envelope::Registration,
    shutdown_ms: u64,
) -> io::Result<()> {
    let ospid = child.port.expect("BUG: a port has its group");
    let msg = ToNode::Port {
        reg,
        ospid,
        port: crate::wire::envelope::PortInfo {
            shutdown_ms,
            cgroup: child.cgroup.as_ref().map(|cg| cg.path.clone()),
        },
    };
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &msg).expect("BUG: control frames always encode");
    sys::socket::send_with_fds(&setup.ctl, &buf, &[std::os::fd::AsFd::as_fd(&child.pidfd)])
}

/// Starts a port's program in its own process group (and cgroup, if it has
/// one) with the descriptors `fds` as its standard streams.
fn start_port(req: &PortRequest, fds: &[OwnedFd], cgroup: Option<&PortCgroup>) -> io::Result<Child> {
    let serial = req.reg.serial;
    let mut fds = fds.iter();
    let stdin = fds.next().expect("BUG: counted by the caller");
    let stdout = fds.next().expect("BUG: counted by the caller");
    let stderr = fds.next();
    let program = sys::process::Program::new(
        &req.program,
        req.arg0.as_deref(),
        &req.args,
        &req.env,
        req.cwd.as_deref(),
    )?;
    let stdio = [
        stdin.as_fd(),
        stdout.as_fd(),
        stderr.map_or(stdout.as_fd(), |e| e.as_fd()),
    ];
    // Its own process group: the port is killed as a group. In its cgroup
    // before it runs: nothing it starts escapes it.
    let (ospid, pidfd) = sys::process::spawn_program(&program, stdio, cgroup.map(PortCgroup::procs))?;
    Ok(Child {
        serial,
        ospid,
        pidfd,
        port: Some(ospid),
        // The caller's, set once it knows the port runs.
        cgroup: None,
        scheduler: None,
    })
}

/// Keeps a pidfd of stray `ospid`, which the node adopted, to kill it if the
/// node dies. The node's child is opened only: a pid the node reaped (and
/// that was used again) by then has another parent, and is left alone.
fn keep_stray(strays: &mut Vec<OwnedFd>, ospid: i32) {
    strays.retain(|fd| !sys::process::pidfd_ended(fd));
    let Ok(fd) = sys::process::pidfd_open(ospid) else {
        return;
    };
    let node = sys::proc_fs::parent_of(sys::process::getpid());
    if node.is_some() && sys::proc_fs::parent_of(ospid) == node {
        strays.push(fd);
    }
}

/// The strays the node told of just before it died, still unread on the
/// control connection. Their parent is no longer the node (they were
/// reparented at its death), so it cannot be checked: an instant after the
/// node's death their pids are still theirs.
fn strays_told_last(setup: &ZygoteSetup, ctl: &mut Decoder) -> Vec<OwnedFd> {
    let mut ospids = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sys::socket::read(&setup.ctl, &mut buf) {
        if n == 0 {
            break;
        }
        let _ = ctl.feed(&buf[..n], 1 << 20, |kind, body| {
            if kind == Kind::Ctl
                && let Ok(ToProcess::Stray { ospid }) = decode_exact::<ToProcess>(body)
            {
                ospids.push(ospid);
            }
            true
        });
    }
    ospids
        .into_iter()
        .filter_map(|p| sys::process::pidfd_open(p).ok())
        .collect()
}

/// The node is gone: kill every port's process group (and the ports'
/// cgroups) and the strays the node had adopted, then end.
fn guardian(setup: &ZygoteSetup, children: &HashMap<Token, Child>, strays: &[OwnedFd], ctl: &mut Decoder) -> ! {
    for fd in strays.iter().chain(&strays_told_last(setup, ctl)) {
        let _ = sys::process::pidfd_send_signal(fd, sys::process::SIGKILL);
    }
    for child in children.values() {
        if let Some(group) = child.port {
            let _ = sys::process::pidfd_signal_group(&child.pidfd, group, sys::process::SIGKILL);
        }
    }
    if let Some(cg) = &setup.settings.cgroup {
        crate::sys::cgroup::kill_and_remove(cg);
    }
    if let Some(memory) = &setup.settings.memory {
        memory.remove_all();
    }
    sys::process::exit_now(0)
}

fn run_entry(rt: &'static Runtime, call: Call) -> ExitReason {
    match text::restore::<Entry>(call.entry) {
        Some(entry) => entry(rt, call.func, call.args),
        None => ExitReason::Error("spawn_fn: the entry point is not a function of this executable".into()),
    }
}

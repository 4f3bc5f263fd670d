//! Starting a process: from a closure (a fork of the caller) or from a function
//! pointer (a fork of the zygote).
//!
//! The spawner allocates the serial (one atomic add in the shared area), binds
//! the new process's listening socket (so its address works as soon as `spawn`
//! returns) and announces it to the node before the fork, with the links and
//! monitors that must exist from its first instant (`spawn_link` and
//! `spawn_monitor` are atomic). After the fork the spawner hands the node a
//! pidfd of the child; a child spawned from inside a process also sends its
//! own, so the node learns of it even if its spawner is killed at that moment.

use std::os::fd::{OwnedFd, RawFd};

use crate::error::{SpawnError, SpawnErrorKind};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::child::{ChildOptions, ChildPlan, child_main};
use crate::sys;
use crate::wire::envelope::{Registration, ToNode};
use crate::wire::frame::{self, Kind};

/// What to start, besides its body.
#[derive(Debug)]
pub(crate) struct Spec<'a> {
    /// Options applied in the child.
    pub(crate) options: &'a ChildOptions,
    /// Descriptors to keep open in the child.
    pub(crate) keep_fds: &'a [RawFd],
    /// Link with the spawner.
    pub(crate) link: bool,
    /// Monitors the spawner places: (reference, internal).
    pub(crate) monitors: Vec<(u64, bool)>,
    /// Trap exits from the start.
    pub(crate) trap_exits: bool,
}

/// A process that has an address and a registration, not yet a body.
struct Prepared {
    pid: Pid,
    listener: OwnedFd,
    /// The child's control connection.
    ctl_child: OwnedFd,
    /// In a process: our own copy of the child's control connection, to
    /// hand its pidfd over (or withdraw it) after the fork.
    ctl_copy: Option<OwnedFd>,
}

/// Registers the process about to start, before it exists. `reaper`: the
/// process that will reap it, if not its parent; `pidfd_follows`: in the
/// node, the spawner attaches the pidfd after the fork.
fn prepare(
    rt: &'static Runtime,
    spec: &Spec<'_>,
    reaper: Option<u64>,
    pidfd_follows: bool,
) -> Result<Prepared, SpawnError> {
    if let Some(node) = rt.node()
        && !node.accepting()
    {
        return Err(SpawnError::new(SpawnErrorKind::ShuttingDown));
    }
    let serial = rt
        .shared()
        .next_serial
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let pid = Pid::new(rt.pid().node(), serial);
    // Messages sent before the process runs are counted as waiting.
    rt.shared().slot(serial).arrivals.open(serial);
    let listener = sys::socket::listen_abstract(&pid.address())?;
    let reg = Registration {
        serial,
        parent: rt.pid().serial(),
        name: spec.options.name.clone(),
        link: spec.link,
        monitors: spec.monitors.clone(),
        trap_exits: spec.trap_exits,
        cpu_limited: spec.options.cpu_seconds.is_some(),
        memory_limited: spec.options.memory_bytes.is_some(),
        leave_strays: spec.options.leave_strays,
        reaper,
        scheduler: None,
    };
    let (ctl_child, ctl_copy) = if let Some(node) = rt.node() {
        let (ours, child) = sys::socket::socketpair()?;
        node.register(reg, ours, pidfd_follows)?;
        (child, None)
    } else {
        // Announce the process on a connection of its own, before it exists:
        // by the time anyone else can know its Pid, the node can read this.
        let c = match sys::socket::connect_abstract(&pid.node().node_address(), true) {
            Ok(c) => c,
            // The node's backlog is full: wait for room.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let c = sys::socket::connect_abstract(&pid.node().node_address(), false)?;
                sys::socket::set_nonblocking(&c, true)?;
                c
            }
            Err(e) => return Err(e.into()),
        };
        let mut buf = Vec::with_capacity(128);
        frame::push(&mut buf, Kind::Ctl, &ToNode::Register(reg)).expect("BUG: control frames always encode");
        sys::socket::send_all(&c, &buf, None)?;
        let copy = c.try_clone()?;
        (c, Some(copy))
    };
    Ok(Prepared {
        pid,
        listener,
        ctl_child,
        ctl_copy,
    })
}

/// Tells the node to forget a registration whose process never started.
fn withdraw(rt: &'static Runtime, serial: u64, ctl_copy: Option<&OwnedFd>) {
    if let Some(node) = rt.node() {
        node.withdraw(serial);
    } else if let Some(c) = ctl_copy {
        let mut buf = Vec::new();
        let _ = frame::push(&mut buf, Kind::Ctl, &ToNode::Withdraw { serial });
        let _ = sys::socket::send_all(c, &buf, None);
    }
}

/// Forks the calling process; the child runs `body` in a fresh runtime.
pub(crate) fn spawn_closure(
    rt: &'static Runtime,
    spec: Spec<'_>,
    body: impl FnOnce(&'static Runtime) -> ExitReason,
) -> Result<Pid, SpawnError> {
    let death = sys::signal::death_description(rt.death_fd())?;
    let Prepared {
        pid,
        listener,
        ctl_child,
        ctl_copy,
    } = prepare(rt, &spec, None, true)?;
    let serial = pid.serial();
    let plan = ChildPlan {
        pid,
        shared: rt.shared(),
        settings: rt.settings(),
        listener,
        ctl: ctl_child,
        death,
        options: spec.options.clone(),
        keep_fds: spec.keep_fds.to_vec(),
        announce_pidfd: rt.node().is_none(),
    };
    let forked = sys::process::fork_child(move || child_main(plan, body));
    let ospid = match forked {
        Ok(ospid) => ospid,
        Err(e) => {
            withdraw(rt, serial, ctl_copy.as_ref());
            return Err(e.into());
        }
    };
    // The plan's descriptors (listener, connection, death description) were
    // closed here as the fork returned: at the descriptor limit, this open
    // still finds a free one.
    let pidfd = sys::process::pidfd_open(ospid)?;
    match ctl_copy {
        None => {
            let node = rt.node().expect("BUG: only the node registers locally");
            node.attach_pidfd(serial, pidfd, ospid);
        }
        Some(ctl) => {
            // The child announces its pidfd too (in case this process dies
            // first), so the node may already have taken its end from the
            // zombie and closed the connection: a failed send loses nothing.
            let msg = ToNode::Pidfd { serial, ospid };
            if let Err(e) = rt.tell_node_with_fds(&ctl, &msg, &[std::os::fd::AsFd::as_fd(&pidfd)]) {
                tracing::debug!(%pid, "the node did not take the new process's pidfd: {e}");
            }
            // We are its parent: we reap it and report its status.
            rt.inbox.add_child(serial, pidfd)?;
            rt.ensure_background();
        }
    }
    tracing::trace!(%pid, ospid, "spawned");
    Ok(pid)
}

/// Asks the zygote to fork a process that runs `call`.
pub(crate) fn spawn_from_zygote(
    rt: &'static Runtime,
    spec: Spec<'_>,
    call: crate::runtime::zygote::Call,
) -> Result<Pid, SpawnError> {
    // The zygote and the child send the pidfd on the connection itself.
    let Prepared {
        pid,
        listener,
        ctl_child,
        ctl_copy,
    } = prepare(rt, &spec, Some(crate::pid::ZYGOTE_SERIAL), false)?;
    let request = crate::runtime::zygote::Request {
        pid,
        options: spec.options.clone(),
        call,
    };
    match crate::runtime::zygote::request(rt, &request, vec![listener, ctl_child]) {
        Ok(_ospid) => Ok(pid),
        Err(e) => {
            withdraw(rt, pid.serial(), ctl_copy.as_ref());
            Err(SpawnError::new(SpawnErrorKind::Zygote(e)))
        }
    }
}

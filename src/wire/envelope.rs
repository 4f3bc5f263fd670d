//! What frames carry: the hello that opens a data connection, and the control
//! protocol between a process and its node (requests up, signals and replies
//! down).

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::pid::{Pid, ProcessInfo};
use crate::sys::process::WaitStatus;

/// First frame on a data connection: who sends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The sending process.
    pub(crate) from: Pid,
    /// The actor the connection's messages are for, when the listener is the
    /// scheduler hosting it.
    pub(crate) to: Option<u64>,
}

/// A new process, announced to the node by its spawner before the fork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Registration {
    /// The new process's serial.
    pub(crate) serial: u64,
    /// The spawner's serial.
    pub(crate) parent: u64,
    /// Name for `ps` and `process_info`.
    pub(crate) name: Option<String>,
    /// Link the new process with its spawner (`spawn_link`).
    pub(crate) link: bool,
    /// Monitors the spawner places on it: (reference, internal).
    pub(crate) monitors: Vec<(u64, bool)>,
    /// Start trapping exits.
    pub(crate) trap_exits: bool,
    /// The process has a CPU time limit (`SIGXCPU` means `CpuLimit`).
    pub(crate) cpu_limited: bool,
    /// The process has a memory limit.
    pub(crate) memory_limited: bool,
    /// The process that reaps it, when it is not the spawner (the zygote).
    pub(crate) reaper: Option<u64>,
    /// A scheduler of the pool (runtime machinery: not listed, not stopped by
    /// a shutdown), in this slot.
    pub(crate) scheduler: Option<u32>,
    /// What it starts by itself (its process group) may outlive the node.
    pub(crate) leave_strays: bool,
}

#[cfg(test)]
impl Registration {
    /// A registration of `serial` by `parent` with no option set.
    pub(crate) fn plain(serial: u64, parent: u64) -> Registration {
        Registration {
            serial,
            parent,
            name: None,
            link: false,
            monitors: Vec::new(),
            trap_exits: false,
            cpu_limited: false,
            memory_limited: false,
            reaper: None,
            scheduler: None,
            leave_strays: false,
        }
    }
}

/// What the node keeps about a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PortInfo {
    /// Time between `SIGTERM` and `SIGKILL` when the port is shut down.
    pub(crate) shutdown_ms: u64,
    /// The port's cgroup, where the node has them. The zygote owns it (kills
    /// it when it reaps the port, then uses it again); the node kills it only
    /// once the zygote is gone.
    pub(crate) cgroup: Option<String>,
}

/// A control frame from a process to its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToNode {
    /// A port the sender started; its pidfd travels with this frame.
    Port {
        /// Its registration (the sender is its owner).
        reg: Registration,
        /// Its OS pid (the leader of its process group).
        ospid: i32,
        /// Port specifics.
        port: PortInfo,
    },
    /// A new process (first frame of the new process's control connection).
    Register(Registration),
    /// The pidfd of a process travels with this frame (`SCM_RIGHTS`).
    Pidfd {
        /// The process's serial.
        serial: u64,
        /// Its OS pid.
        ospid: i32,
    },
    /// The spawn of `serial` failed after its registration was sent: forget it.
    Withdraw {
        /// The serial that was never used.
        serial: u64,
    },
    /// Link the sender with `target`; answered with `Done` or `NoProc`.
    Link {
        /// Request id for the reply.
        request: u64,
        /// The other process.
        target: Pid,
    },
    /// Remove the link between the sender and `target`.
    Unlink {
        /// The other process.
        target: Pid,
    },
    /// The sender monitors `target`.
    Monitor {
        /// The sender's reference for this monitor.
        reference: u64,
        /// The Down goes to the runtime (a call or a join), not to the mailbox.
        internal: bool,
        /// The monitored process.
        target: Pid,
    },
    /// Place a monitor on the process registered as `name` now, which its
    /// `Down` names; a name nobody holds is a `Down` with `NoProc` at once.
    MonitorName {
        /// The sender's reference for it.
        reference: u64,
        /// The registered name.
        name: String,
    },
    /// Remove a monitor the sender placed. With a request id, answered with
    /// `Demonitored` after every `Down` the node sent before it.
    Demonitor {
        /// Where the answer goes, when one is wanted.
        request: Option<u64>,
        /// The reference given to `Monitor`.
        reference: u64,
    },
    /// Turn exit trapping on or off; answered with `Done`.
    TrapExits {
        /// Request id for the reply.
        request: u64,
        /// Trap or not.
        on: bool,
    },
    /// An exit signal from the sender to `target` (`Mailbox::exit`, `kill`).
    ExitSignal {
        /// The process the signal is for.
        target: Pid,
        /// Its reason.
        reason: ExitReason,
        /// `kill`: cannot be trapped.
        untrappable: bool,
    },
    /// Register `pid` under `name`; answered with `Done`, `NameTaken` or `NoProc`.
    RegisterName {
        /// Request id for the reply.
        request: u64,
        /// The name.
        name: String,
        /// The process.
        pid: Pid,
    },
    /// Remove a registered name.
    UnregisterName {
        /// The name.
        name: String,
    },
    /// Look a name up; answered with `Pid`.
    Whereis {
        /// Request id for the reply.
        request: u64,
        /// The name.
        name: String,
    },
    /// Ask for a process's status; answered with `Info`.
    Info {
        /// Request id for the reply.
        request: u64,
        /// The process.
        pid: Pid,
    },
    /// The sender reaped one of its children.
    ChildExited {
        /// The child's serial.
        serial: u64,
        /// Its wait status.
        status: WaitStatus,
    },
    /// The sender is about to `_exit(0)` with this reason.
    LastWords {
        /// The reason.
        reason: ExitReason,
    },
    /// A task for the pool's queue of class `class` (no scheduler of the
    /// class was idle): the node hands it to the next one that is.
    Enqueue {
        /// The class's index.
        class: u32,
        /// The task's id (a scheduler claims its slot with it).
        task: u64,
        /// The reference the submitter waits on: a `Down` with it says the
        /// scheduler the task was handed to died.
        reference: u64,
        /// The message for the scheduler: fingerprint and body.
        message: Vec<u8>,
    },
    /// The sending scheduler (of slot `slot`) is idle while tasks wait.
    Idle {
        /// Its slot.
        slot: u32,
    },
    /// A new actor hosted by scheduler `host` (the sender is its parent):
    /// the node registers it, then hands `start` to the host.
    SpawnActor {
        /// Its registration.
        reg: Registration,
        /// The serial of the scheduler that runs it.
        host: u64,
        /// A name to register it under (taken: it ends at once).
        register: Option<String>,
        /// The message that starts it on the host: fingerprint and body.
        start: Vec<u8>,
    },
    /// An actor of the sending scheduler ended with `reason`.
    ActorExit {
        /// The actor.
        actor: u64,
        /// Its exit reason.
        reason: ExitReason,
    },
    /// The zygote's hot spare, ready to take over (first frame of its own
    /// connection; its pidfd travels with it).
    ZygoteSpare {
        /// The serial it took.
        serial: u64,
        /// Its OS pid.
        ospid: i32,
    },
    /// A request made by an actor of the sending scheduler, as that actor.
    ForActor {
        /// The actor.
        actor: u64,
        /// The request, a `ToNode` encoded on its own: decoded only after
        /// this frame, so that no frame nests without bound.
        msg: Vec<u8>,
    },
    /// A monitor that a process of another node places on `target` here
    /// (from the node's own cluster only).
    MonitorFor {
        /// The watcher, on another node.
        watcher: Pid,
        /// Its reference.
        reference: u64,
        /// For the watcher's runtime (call/join), not its mailbox.
        internal: bool,
        /// The process watched.
        target: Pid,
    },
    /// The `Down` of a monitor placed on a process of another node, for the
    /// watcher `watcher` here (from the node's own cluster only).
    RemoteDown {
        /// The watcher's serial.
        watcher: u64,
        /// Its reference.
        reference: u64,
        /// For the watcher's runtime (call/join), not its mailbox.
        internal: bool,
        /// The process that ended.
        pid: Pid,
        /// Why.
        reason: ExitReason,
    },
    /// A link between `target` here and `remote` on another node (from the
    /// node's own cluster only).
    LinkFor {
        /// The process on the other node.
        remote: Pid,
        /// The process here.
        target: Pid,
    },
    /// The link between `target` here and `remote` is gone (from the
    /// node's own cluster only).
    UnlinkFor {
        /// The process on the other node.
        remote: Pid,
        /// The process here.
        target: Pid,
    },
    /// An exit signal from `from`, of another node, linked to `target` here
    /// (from the node's own cluster only).
    RemoteExit {
        /// The linked process here.
        target: u64,
        /// The process that ended (or `NoConnection`: whose node was lost).
        from: Pid,
        /// Why.
        reason: ExitReason,
    },
    /// An exit signal (`exit`, `kill`) that `from`, of another node, sends
    /// to `target` here (from the node's own cluster only).
    ExitSignalFor {
        /// The sender, on another node.
        from: Pid,
        /// The process here.
        target: Pid,
        /// The reason.
        reason: ExitReason,
        /// A kill, which no process traps.
        untrappable: bool,
    },
    /// A frame for a process of another node, sent by the sender (feature
    /// `dist`: the node passes it to its cluster, on the sender's channel).
    Remote {
        /// The process it is for.
        to: Pid,
        /// The frame's kind (a message or a reply).
        kind: u8,
        /// The frame's body.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A direct session from the sender to `to`, of another node, is
    /// wanted (feature `dist`): the node opens it and hands it over with
    /// [`ToProcess::DirectReady`], or answers [`ToProcess::DirectRefused`].
    #[cfg(feature = "dist")]
    Direct {
        /// The process of another node.
        to: Pid,
    },
    /// A direct session of the sender to a process of `node` was over its
    /// cap: the session between the two nodes is torn down too
    /// (`NoConnection` across it).
    #[cfg(feature = "dist")]
    Backlogged {
        /// The other node.
        node: crate::pid::NodeId,
    },
    /// From the node's cluster (its main program only): the session with
    /// `node` was lost; every process here closes its direct sessions to
    /// processes of `node` ([`ToProcess::NodeLost`]).
    #[cfg(feature = "dist")]
    NodeLost {
        /// The other node.
        node: crate::pid::NodeId,
    },
    /// From the node's cluster (its main program only): the fence of
    /// `from`, of another node, for process `to` here, after what `from`
    /// sent it through the nodes and the signals about `from` before it
    /// ([`ToProcess::Fence`]).
    #[cfg(feature = "dist")]
    Fence {
        /// The sender, of another node.
        from: Pid,
        /// The receiver's serial.
        to: u64,
        /// The session it is for ([`Keys::id`](crate::dist::Keys)), as in
        /// the frame.
        session: u64,
    },
}

impl ToNode {
    /// `msg`, made by `actor`.
    pub(crate) fn for_actor(actor: u64, msg: &ToNode) -> ToNode {
        ToNode::ForActor {
            actor,
            msg: postcard::to_stdvec(msg).expect("BUG: control frames always encode"),
        }
    }
}

/// A control frame from the node to a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToProcess {
    /// A monitored process is gone.
    Down {
        /// The monitor's reference.
        reference: u64,
        /// For the runtime (a call or a join), not for the mailbox.
        internal: bool,
        /// The process that is gone.
        pid: Pid,
        /// Its exit reason.
        reason: ExitReason,
        /// The registered name it was monitored by, if it was.
        name: Option<String>,
    },
    /// An exit signal, delivered as a message because the process traps exits.
    Exit {
        /// Where the signal comes from.
        from: Pid,
        /// Its reason.
        reason: ExitReason,
    },
    /// The answer to a request.
    Reply {
        /// The request id.
        request: u64,
        /// The answer.
        reply: NodeReply,
    },
    /// A message handed on by the node (a queued task): fingerprint and
    /// body, as in a message frame.
    Message(Vec<u8>),
    /// A frame for an actor this scheduler hosts.
    ForActor {
        /// The actor.
        actor: u64,
        /// The frame.
        msg: Box<ToProcess>,
    },
    /// To the zygote's spare: the zygote is gone, be the zygote.
    TakeOver,
    /// To the zygote: the scheduler `serial` of slot `slot` ended; start
    /// another.
    /// To the zygote: the node adopted `ospid`, left behind by a process
    /// that ended; the zygote kills it if the node dies.
    Stray {
        /// Its OS pid (the node's child until the node reaps it).
        ospid: i32,
    },
    ReplaceScheduler {
        /// The slot.
        slot: u32,
        /// It had become ready (a scheduler that dies before it is ready
        /// counts toward giving the slot up).
        was_ready: bool,
    },
    /// End an actor this scheduler hosts, with `reason` (killed, or an
    /// exit signal it does not trap).
    KillActor {
        /// The actor.
        actor: u64,
        /// Its exit reason.
        reason: ExitReason,
    },
    /// The direct session asked for to `to` is open: its socket travels
    /// with this frame. Send the fence through the node, then use it.
    #[cfg(feature = "dist")]
    DirectReady {
        /// The process of another node.
        to: Pid,
        /// The session's keys (only `send` is used).
        keys: crate::dist::Keys,
        /// Most bytes it may hold unwritten (the cluster's `max_queued`).
        max_queued: u64,
    },
    /// The session between this node and `node` was lost: close the direct
    /// sessions to its processes (the fence of one may have been lost with
    /// it), and send through the nodes again.
    #[cfg(feature = "dist")]
    NodeLost {
        /// The other node.
        node: crate::pid::NodeId,
    },
    /// No direct session to `to`: keep sending through the node.
    #[cfg(feature = "dist")]
    DirectRefused {
        /// The process of another node.
        to: Pid,
    },
    /// A direct session from `from`, of another node: its socket travels
    /// with this frame. Answer on it at once (the sender waits for that
    /// before it uses the session), and read it once `from`'s fence comes.
    #[cfg(feature = "dist")]
    DirectFrom {
        /// The sender, of another node.
        from: Pid,
        /// The session's keys.
        keys: crate::dist::Keys,
    },
    /// The fence of `from`'s direct session `session`, in line with the
    /// signals about it (it came in line with its frames first): the
    /// session is read from here on, and the signals after this wait for
    /// its end.
    #[cfg(feature = "dist")]
    Fence {
        /// The sender, of another node.
        from: Pid,
        /// The session it is for, as in its frame.
        session: u64,
    },
}

/// The node's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum NodeReply {
    /// Done.
    Done,
    /// The process does not exist.
    NoProc,
    /// The name is held by another process.
    NameTaken,
    /// The result of `Whereis`.
    Pid(Option<Pid>),
    /// The result of `Info`.
    Info(Option<ProcessInfo>),
    /// The result of `Demonitor`: whether the monitor was still in place
    /// (no `Down` had been sent for it).
    Demonitored(bool),
}

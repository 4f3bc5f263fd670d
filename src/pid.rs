//! A process's identity ([`Pid`], [`NodeId`]) and the plain values that
//! describe a process ([`ProcessInfo`], [`ProcessState`], [`Overflow`]).
//! Nothing here knows how processes run: every layer may use these.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Serial of the node's main thread.
pub(crate) const MAIN_SERIAL: u64 = 1;
/// Serial of the zygote.
pub(crate) const ZYGOTE_SERIAL: u64 = 2;
/// First serial handed out to processes.
pub(crate) const FIRST_SERIAL: u64 = 3;

/// The id of a node: 128 random bits chosen by `init()`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(u128);

impl NodeId {
    /// The abstract socket name of the node's control listener.
    pub(crate) fn node_address(&self) -> Vec<u8> {
        format!("converge/{self}/node").into_bytes()
    }

    /// The abstract socket name of the node's zygote.
    pub(crate) fn zygote_address(&self) -> Vec<u8> {
        format!("converge/{self}/zygote").into_bytes()
    }

    pub(crate) fn from_bytes(b: [u8; 16]) -> NodeId {
        NodeId(u128::from_le_bytes(b))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:08x}..)", (self.0 >> 96) as u32)
    }
}

/// A process id: the node's id and a serial unique on that node.
///
/// The OS pid is only an attribute ([`ProcessInfo::os_pid`]): a `Pid` is never
/// reused, so it cannot be confused with a later process that got the same OS
/// pid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid {
    node: NodeId,
    serial: u64,
}

impl Pid {
    pub(crate) fn new(node: NodeId, serial: u64) -> Pid {
        Pid { node, serial }
    }

    /// The node the process runs on.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The process's serial on its node.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The abstract socket name of the process's mailbox.
    pub(crate) fn address(&self) -> Vec<u8> {
        format!("converge/{}/{}", self.node, self.serial).into_bytes()
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{:08x}.{}>", (self.node.0 >> 96) as u32, self.serial)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<&Pid> for Pid {
    fn from(p: &Pid) -> Pid {
        *p
    }
}

/// What a bounded mailbox does with a message that arrives when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Overflow {
    /// Drop the message that arrived.
    DropNewest,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

/// What a process is doing, as far as the node can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u32)]
#[non_exhaustive]
pub enum ProcessState {
    /// Forked, its runtime not started yet.
    Starting = 0,
    /// Running its code.
    Running = 1,
    /// Blocked in a receive (or a call, or a join).
    Waiting = 2,
    /// Ending: flushing its messages, or exited and not yet reaped.
    Exiting = 3,
}

impl ProcessState {
    pub(crate) fn from_u32(v: u32) -> ProcessState {
        match v {
            1 => ProcessState::Running,
            2 => ProcessState::Waiting,
            3 => ProcessState::Exiting,
            _ => ProcessState::Starting,
        }
    }
}

/// The status of a process, from [`process_info`](crate::process_info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// The process.
    pub pid: Pid,
    /// Its OS pid, once known.
    pub os_pid: Option<i32>,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// The process that spawned it.
    pub parent: Option<Pid>,
    /// What it is doing.
    pub state: ProcessState,
    /// Messages and signals waiting for it, as Erlang's
    /// `message_queue_len`: those in its queue and those written to its
    /// connections that it has not read yet (counted as senders write them
    /// and as it takes them; a message a sender still holds, because this
    /// process reads slowly, counts once it is written).
    pub queue_len: u64,
    /// The bytes of the messages among them (their encoded size).
    pub queue_bytes: u64,
    /// Resident memory, in bytes.
    pub memory: Option<u64>,
    /// Messages dropped because its bounded mailbox was full.
    pub dropped: u64,
    /// Frames it received that could not be decoded.
    pub undecodable: u64,
    /// Connections it refused or cut (another user, oversized frame).
    pub refused: u64,
    /// Whether it traps exits.
    pub trap_exits: bool,
    /// The processes linked to it.
    pub links: Vec<Pid>,
    /// How many monitors watch it.
    pub monitors: usize,
    /// The names registered to it.
    pub registered_names: Vec<String>,
}

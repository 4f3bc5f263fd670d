//! Monitors: one-way, stackable watches that deliver exactly one [`Down`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::inbox::Item;
use crate::wire::envelope::{NodeReply, ToNode};

/// The reference of one monitor. Each `monitor` call gets its own, and its own
/// `Down`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MonitorRef {
    owner: u64,
    id: u64,
}

impl MonitorRef {
    pub(crate) fn new(owner: u64, id: u64) -> MonitorRef {
        MonitorRef { owner, id }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}.{}>", self.owner, self.id)
    }
}

impl fmt::Display for MonitorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A monitored process is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    /// The monitor this is the `Down` of.
    pub reference: MonitorRef,
    /// The process that is gone.
    pub pid: Pid,
    /// Why it ended (`NoProc` if it was gone before the monitor was set).
    pub reason: ExitReason,
    /// The registered name the monitor was placed by
    /// ([`Ctx::monitor_name`](crate::Ctx::monitor_name)), as Erlang's
    /// `{Name, Node}`. For a name nobody held, `pid` is no process's.
    pub name: Option<String>,
}

/// Places a monitor on `target` from the process of `rt`.
pub(crate) fn monitor(rt: &Runtime, target: Pid) -> MonitorRef {
    let reference = rt.next_ref();
    rt.tell_node(&ToNode::Monitor {
        reference,
        internal: false,
        target,
    });
    MonitorRef::new(rt.sender().serial(), reference)
}

/// Places a monitor on the process registered as `name` now.
pub(crate) fn monitor_name(rt: &Runtime, name: &str) -> MonitorRef {
    let reference = rt.next_ref();
    rt.tell_node(&ToNode::MonitorName {
        reference,
        name: name.to_string(),
    });
    MonitorRef::new(rt.sender().serial(), reference)
}

/// Removes a monitor; no `Down` for it is received after this returns (one
/// already on its way is removed). Whether the monitor was still in place:
/// `false` when its `Down` had been sent (and is now removed), or the
/// reference is not a monitor of this process.
pub(crate) fn demonitor(rt: &'static Runtime, reference: MonitorRef) -> bool {
    let answer = rt.ask_node_in_order(|request| ToNode::Demonitor {
        request: Some(request),
        reference: reference.id(),
    });
    // Every Down the node sent before its answer is queued now.
    rt.inbox
        .lock()
        .take_first(|it| matches!(it, Item::Down(d) if d.reference == reference));
    matches!(answer, Some(NodeReply::Demonitored(true)))
}

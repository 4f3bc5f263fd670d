//! Links: bidirectional, and the exit signals that travel through them.

use serde::{Deserialize, Serialize};

use crate::error::LinkError;
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::wire::envelope::{NodeReply, ToNode};

/// An exit signal received as a message, because the process traps exits: a
/// linked process ended (`from` is it), or another process called
/// [`Mailbox::exit`](crate::Mailbox::exit) on this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitSignal {
    /// Where the signal comes from.
    pub from: Pid,
    /// Its reason.
    pub reason: ExitReason,
}

/// Links the process of `rt` with `target`.
pub(crate) fn link(rt: &'static Runtime, target: Pid) -> Result<(), LinkError> {
    match rt.ask_node(|request| ToNode::Link { request, target }) {
        Some(NodeReply::Done) => Ok(()),
        _ => Err(LinkError(target)),
    }
}

/// Removes the link between the process of `rt` and `target`.
pub(crate) fn unlink(rt: &Runtime, target: Pid) {
    rt.tell_node(&ToNode::Unlink { target });
}

/// Turns exit trapping on or off for the process of `rt`.
pub(crate) fn trap_exits(rt: &'static Runtime, on: bool) {
    let _ = rt.ask_node(|request| ToNode::TrapExits { request, on });
}

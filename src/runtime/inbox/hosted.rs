//! The queues of the lightweight actors a scheduler hosts, as its receive
//! path fills them.

use std::collections::{HashMap, VecDeque};

use super::{Inbox, Item};
use crate::exit::ExitReason;

/// The queue of an actor this process (a scheduler) hosts.
#[derive(Debug, Default)]
pub(crate) struct ActorQueue {
    /// Its messages and signals, in arrival order.
    pub(crate) items: VecDeque<Item>,
    /// It runs (messages may arrive before it starts).
    pub(crate) started: bool,
    /// It is in `ready`.
    pub(crate) in_ready: bool,
}

/// The actors a scheduler hosts, as the receive path sees them.
#[derive(Debug, Default)]
pub(crate) struct Hosted {
    /// Queues by actor serial.
    pub(crate) queues: HashMap<u64, ActorQueue>,
    /// Started actors with something queued, in the order they became so.
    pub(crate) ready: VecDeque<u64>,
    /// Actors to end: the node killed them, or sent them an exit signal
    /// they do not trap.
    pub(crate) kills: Vec<(u64, ExitReason)>,
    /// Actors that ended here (what still arrives for them is dropped).
    pub(crate) ended: std::collections::HashSet<u64>,
}

impl Hosted {
    /// Queues `item` for `actor`.
    pub(crate) fn push(&mut self, actor: u64, item: Item) {
        if self.ended.contains(&actor) {
            return;
        }
        let q = self.queues.entry(actor).or_default();
        q.items.push_back(item);
        if q.started && !q.in_ready {
            q.in_ready = true;
            self.ready.push_back(actor);
        }
    }
}

impl Inbox {
    /// Forgets an actor this process hosted, which ended: its queue, and
    /// the connections of its senders (they see it closed, as with a process
    /// that is gone). `false` if it had ended already.
    pub(crate) fn end_actor(&self, actor: u64, shared: &crate::sys::shared::SharedArea) -> bool {
        let mut st = self.state.lock();
        if !st.hosted.ended.insert(actor) {
            return false;
        }
        st.hosted.queues.remove(&actor);
        st.hosted.ready.retain(|&a| a != actor);
        let tokens: Vec<crate::sys::poll::Token> = st
            .conns
            .iter()
            .filter(|(_, c)| c.tenant == Some(actor))
            .map(|(&t, _)| t)
            .collect();
        for t in tokens {
            self.close_conn(&mut st, t);
        }
        if st.hosted.ended.len() > 4096 {
            // Keep only those the node has not finalized yet (their slot
            // still names them): later connections to the others are refused
            // by the slot check.
            st.hosted.ended.retain(|&a| shared.slot(a).is(a));
        }
        true
    }
}

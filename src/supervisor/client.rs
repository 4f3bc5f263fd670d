//! A handle on a running supervisor: the requests of OTP's `supervisor`
//! module (start, terminate, restart and delete a child, list them, stop).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::exit::ExitReason;
use crate::mailbox::{Ctx, Mailbox, ReplyTo};
use crate::pid::Pid;
use crate::runtime;

use super::{ChildInfo, ChildSpec, FOREVER, Request, SupervisorError};

/// A running supervisor: its [`Pid`] and its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SupervisorRef {
    pub(super) pid: Pid,
}

impl SupervisorRef {
    /// The supervisor running as `pid` (for example a child of kind
    /// [`ChildKind::Supervisor`](super::ChildKind::Supervisor)). Requests to a process that is not a
    /// supervisor fail.
    pub fn from_pid(pid: Pid) -> SupervisorRef {
        SupervisorRef { pid }
    }

    /// The supervisor's process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    fn call<R: DeserializeOwned>(&self, make: impl FnOnce(ReplyTo<R>) -> Request) -> Result<R, SupervisorError> {
        match Mailbox::<Request>::from_pid(self.pid).call(make, FOREVER) {
            Ok(r) => Ok(r),
            Err(CallError::Exited(reason)) => Err(SupervisorError::Failed(reason)),
            Err(e) => Err(SupervisorError::Call(e.to_string())),
        }
    }

    /// Adds a child and starts it (after the others).
    pub fn start_child(&self, spec: ChildSpec) -> Result<Pid, SupervisorError> {
        if let Some(id) = spec.closure_inside() {
            return Err(SupervisorError::NotPortable(id.to_string()));
        }
        self.call(|r| Request::StartChild(spec, r))?
    }

    /// Stops a child (by its [`Shutdown`](super::Shutdown)) and keeps its spec, to restart or
    /// delete it later (a [`Restart::Temporary`](super::Restart::Temporary) child is forgotten).
    pub fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|r| Request::TerminateChild(id.to_string(), r))?
    }

    /// Starts a stopped child again.
    pub fn restart_child(&self, id: &str) -> Result<Pid, SupervisorError> {
        self.call(|r| Request::RestartChild(id.to_string(), r))?
    }

    /// Forgets a stopped child.
    pub fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|r| Request::DeleteChild(id.to_string(), r))?
    }

    /// The children, in start order.
    pub fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(Request::WhichChildren)
    }

    /// Stops the children (in reverse order) and the supervisor, which exits
    /// `Normal`; returns once it has.
    pub fn stop(&self) -> Result<(), SupervisorError> {
        let rt = runtime::current().ok_or(SupervisorError::NotInitialized)?;
        let me: Ctx<()> = Ctx::new(rt);
        let down = me.monitor(self.pid);
        match self.call(Request::Stop) {
            Ok(()) | Err(SupervisorError::Failed(ExitReason::Normal)) => {
                let _ = me.recv_down(down);
                Ok(())
            }
            Err(e) => {
                me.demonitor(down);
                Err(e)
            }
        }
    }
}

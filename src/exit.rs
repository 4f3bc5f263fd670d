//! Exit reasons: why a process ended, as every link and monitor sees it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sys::process::{SIGKILL, signal_name};

/// Why a process ended.
///
/// Exactly one reason is observed for every exit, by every link and monitor.
/// `docs/semantics.md` (the [`semantics`](crate::semantics) module) gives the
/// rule for each edge case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitReason {
    /// The process finished: its closure returned `Ok(())` (or `()`), or it
    /// called `std::process::exit(0)`. A `Normal` exit does not propagate
    /// through links.
    Normal,
    /// The closure returned `Err(e)`; the text is `e.to_string()`.
    Error(String),
    /// The closure panicked; the text is the panic message.
    Panic(String),
    /// The process ended itself, or was ended by an exit signal, with a reason
    /// of the application's choosing.
    Exit(String),
    /// The process was asked to shut down (by its supervisor, or by the node
    /// shutting down) and did.
    Shutdown,
    /// The process was killed: `SIGKILL`, from [`Mailbox::kill`](crate::Mailbox::kill)
    /// or from outside.
    Killed,
    /// The process was terminated by a signal other than `SIGKILL`.
    Signal {
        /// The signal number (`SIGSEGV` is 11, `SIGABRT` 6, `SIGTERM` 15).
        signal: i32,
        /// Whether the kernel wrote a core dump (depends on `RLIMIT_CORE` and
        /// `/proc/sys/kernel/core_pattern`).
        core_dumped: bool,
    },
    /// The process exited with a non-zero exit code (`std::process::exit(3)`,
    /// or an external program's exit status).
    Code(i32),
    /// The process did not exist (a monitor or link set up after it was gone).
    NoProc,
    /// The connection to the process's node was lost.
    NoConnection,
    /// The process went over its memory limit.
    MemoryLimit,
    /// The process went over its CPU time limit.
    CpuLimit,
}

impl ExitReason {
    /// Whether this is a `Normal` exit.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal)
    }

    /// The reason for a process terminated by `signal`.
    pub(crate) fn from_signal(signal: i32, core_dumped: bool) -> ExitReason {
        if signal == SIGKILL {
            ExitReason::Killed
        } else {
            ExitReason::Signal { signal, core_dumped }
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Error(e) => write!(f, "error: {e}"),
            ExitReason::Panic(m) => write!(f, "panicked: {m}"),
            ExitReason::Exit(r) => write!(f, "exit: {r}"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Signal { signal, core_dumped } => {
                match signal_name(*signal) {
                    Some(name) => write!(f, "terminated by {name}")?,
                    None => write!(f, "terminated by signal {signal}")?,
                }
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            ExitReason::Code(c) => write!(f, "exit code {c}"),
            ExitReason::NoProc => f.write_str("no such process"),
            ExitReason::NoConnection => f.write_str("connection to node lost"),
            ExitReason::MemoryLimit => f.write_str("memory limit exceeded"),
            ExitReason::CpuLimit => f.write_str("cpu time limit exceeded"),
        }
    }
}

/// What a process closure can return: `()`, `Result<(), E>` with a displayable
/// error, or an [`ExitReason`] chosen by the process.
pub trait IntoExitReason {
    /// The exit reason this value stands for.
    fn into_exit_reason(self) -> ExitReason;
}

impl IntoExitReason for () {
    fn into_exit_reason(self) -> ExitReason {
        ExitReason::Normal
    }
}

impl IntoExitReason for ExitReason {
    fn into_exit_reason(self) -> ExitReason {
        self
    }
}

impl<E: fmt::Display> IntoExitReason for Result<(), E> {
    fn into_exit_reason(self) -> ExitReason {
        match self {
            Ok(()) => ExitReason::Normal,
            Err(e) => ExitReason::Error(e.to_string()),
        }
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

//! How an ended process's exit reason is decided: one pure function of what
//! the table knows of its end (see `docs/semantics.md`, "Exit reasons").

use crate::exit::ExitReason;
use crate::sys::process::{SIGABRT, SIGKILL, SIGXCPU, WaitStatus};

/// What a process's memory limit says of its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryEnd {
    /// Nothing: no limit, or its cgroup saw no OOM kill at the limit.
    Nothing,
    /// The kernel's OOM killer ended it at its cgroup's limit.
    OomKilled,
    /// Its limit is `RLIMIT_DATA`: an allocation past it aborts the process,
    /// so an abort is taken for the limit (approximate: an abort for another
    /// reason reads the same).
    DataRlimit,
}

/// Everything the reason of an ended process depends on.
#[derive(Debug, Clone, Default)]
pub(crate) struct End<'a> {
    /// Its wait status (none: it never ran, or only its last words are known).
    pub(crate) status: Option<WaitStatus>,
    /// The reason it sent before `_exit(0)`.
    pub(crate) last_words: Option<&'a ExitReason>,
    /// The reason the node killed it for (only recorded while it was alive).
    pub(crate) kill_reason: Option<&'a ExitReason>,
    /// For an actor, the reason its host reported.
    pub(crate) actor_exit: Option<&'a ExitReason>,
    /// It is a port (an external program: the node stops it with `SIGTERM`).
    pub(crate) port: bool,
    /// It had a CPU time limit (`SIGXCPU` means `CpuLimit`).
    pub(crate) cpu_limited: bool,
    /// What its memory limit says.
    pub(crate) memory: Option<MemoryEnd>,
}

/// The exit reason of an ended process.
pub(crate) fn reason_of(end: &End<'_>) -> ExitReason {
    if let Some(r) = end.actor_exit {
        return r.clone();
    }
    let memory = end.memory.unwrap_or(MemoryEnd::Nothing);
    match end.status {
        Some(WaitStatus::Signaled { signal, core_dumped }) => {
            if signal == SIGKILL || (end.port && end.kill_reason.is_some()) {
                // Killed by the node for a reason of its own, or by the
                // kernel at the memory limit, or by anyone else.
                end.kill_reason.cloned().unwrap_or(if memory == MemoryEnd::OomKilled {
                    ExitReason::MemoryLimit
                } else {
                    ExitReason::Killed
                })
            } else if signal == SIGXCPU && end.cpu_limited {
                ExitReason::CpuLimit
            } else if signal == SIGABRT && memory == MemoryEnd::DataRlimit {
                ExitReason::MemoryLimit
            } else {
                ExitReason::from_signal(signal, core_dumped)
            }
        }
        Some(WaitStatus::Exited(0)) => end.last_words.cloned().unwrap_or(ExitReason::Normal),
        Some(WaitStatus::Exited(code)) => ExitReason::Code(code),
        None => end.last_words.cloned().unwrap_or(ExitReason::NoProc),
    }
}

/// A short name for counting exits by kind.
pub(crate) fn kind_name(r: &ExitReason) -> &'static str {
    match r {
        ExitReason::Normal => "normal",
        ExitReason::Error(_) => "error",
        ExitReason::Panic(_) => "panic",
        ExitReason::Exit(_) => "exit",
        ExitReason::Shutdown => "shutdown",
        ExitReason::Killed => "killed",
        ExitReason::Signal { .. } => "signal",
        ExitReason::Code(_) => "code",
        ExitReason::NoProc => "noproc",
        ExitReason::NoConnection => "noconnection",
        ExitReason::MemoryLimit => "memory_limit",
        ExitReason::CpuLimit => "cpu_limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::process::{SIGSEGV, SIGTERM};

    fn signaled(signal: i32) -> Option<WaitStatus> {
        Some(WaitStatus::Signaled {
            signal,
            core_dumped: false,
        })
    }

    #[test]
    fn exit_code_zero_is_normal_unless_last_words_say_otherwise() {
        let end = End {
            status: Some(WaitStatus::Exited(0)),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::Normal);
        let words = ExitReason::Error("bad".into());
        let end = End {
            last_words: Some(&words),
            ..end
        };
        assert_eq!(reason_of(&end), words);
    }

    #[test]
    fn a_non_zero_code_is_the_code_whatever_the_last_words() {
        let words = ExitReason::Panic("p".into());
        let end = End {
            status: Some(WaitStatus::Exited(3)),
            last_words: Some(&words),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::Code(3));
    }

    #[test]
    fn sigkill_is_killed_or_the_nodes_own_reason_or_the_memory_limit() {
        let end = End {
            status: signaled(SIGKILL),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::Killed);
        let shutdown = ExitReason::Shutdown;
        let by_node = End {
            kill_reason: Some(&shutdown),
            ..end.clone()
        };
        assert_eq!(reason_of(&by_node), ExitReason::Shutdown);
        let oom = End {
            memory: Some(MemoryEnd::OomKilled),
            ..end.clone()
        };
        assert_eq!(reason_of(&oom), ExitReason::MemoryLimit);
        // The node's reason wins over the cgroup's verdict: it killed first.
        let both = End {
            kill_reason: Some(&shutdown),
            ..oom
        };
        assert_eq!(reason_of(&both), ExitReason::Shutdown);
    }

    #[test]
    fn other_signals_keep_their_number_and_core_flag() {
        let end = End {
            status: Some(WaitStatus::Signaled {
                signal: SIGSEGV,
                core_dumped: true,
            }),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::from_signal(SIGSEGV, true));
        // A kill reason only names a SIGKILL (a port's SIGTERM excepted).
        let killed = ExitReason::Killed;
        let end = End {
            kill_reason: Some(&killed),
            ..end
        };
        assert_eq!(reason_of(&end), ExitReason::from_signal(SIGSEGV, true));
    }

    #[test]
    fn a_port_stopped_by_the_node_has_the_nodes_reason_whatever_the_signal() {
        let shutdown = ExitReason::Shutdown;
        let end = End {
            status: signaled(SIGTERM),
            kill_reason: Some(&shutdown),
            port: true,
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::Shutdown);
        let unasked = End {
            kill_reason: None,
            ..end
        };
        assert_eq!(reason_of(&unasked), ExitReason::from_signal(SIGTERM, false));
    }

    #[test]
    fn sigxcpu_is_the_cpu_limit_only_where_there_is_one() {
        let end = End {
            status: signaled(SIGXCPU),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::from_signal(SIGXCPU, false));
        let limited = End {
            cpu_limited: true,
            ..end
        };
        assert_eq!(reason_of(&limited), ExitReason::CpuLimit);
    }

    #[test]
    fn an_abort_is_the_memory_limit_only_under_rlimit_data() {
        let end = End {
            status: signaled(SIGABRT),
            ..End::default()
        };
        assert_eq!(reason_of(&end), ExitReason::from_signal(SIGABRT, false));
        let cgroup = End {
            memory: Some(MemoryEnd::OomKilled),
            ..end.clone()
        };
        assert_eq!(reason_of(&cgroup), ExitReason::from_signal(SIGABRT, false));
        let rlimit = End {
            memory: Some(MemoryEnd::DataRlimit),
            ..end
        };
        assert_eq!(reason_of(&rlimit), ExitReason::MemoryLimit);
    }

    #[test]
    fn no_status_is_noproc_unless_last_words_came() {
        assert_eq!(reason_of(&End::default()), ExitReason::NoProc);
        let words = ExitReason::Exit("bye".into());
        let end = End {
            last_words: Some(&words),
            ..End::default()
        };
        assert_eq!(reason_of(&end), words);
    }

    #[test]
    fn an_actor_has_the_reason_its_host_reported() {
        let words = ExitReason::Panic("step".into());
        let end = End {
            actor_exit: Some(&words),
            status: signaled(SIGKILL),
            ..End::default()
        };
        assert_eq!(reason_of(&end), words);
    }
}

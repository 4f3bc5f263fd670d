//! The first moments of a new process: a standard signal state, its own
//! process group, the node-death signal armed, every inherited descriptor
//! closed but its own, its options applied, and a fresh runtime. Then its body
//! runs, and whatever happens the process ends with `_exit`.

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exit::{ExitReason, panic_message};
use crate::pid::{Overflow, Pid};
use crate::runtime::{self, Runtime, Settings};
use crate::sys;
use crate::sys::shared::SharedArea;
use crate::wire::envelope::ToNode;

/// Options applied in the new process (they travel to the zygote too).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChildOptions {
    /// Name for `ps -o comm` / `top` and `process_info`.
    pub(crate) name: Option<String>,
    /// CPUs the process may run on.
    pub(crate) cpus: Option<Vec<usize>>,
    /// Start from an empty environment.
    pub(crate) env_clear: bool,
    /// Environment changes, in order (`None` removes).
    pub(crate) env: Vec<(OsString, Option<OsString>)>,
    /// Working directory.
    pub(crate) cwd: Option<PathBuf>,
    /// Mailbox bound and overflow policy.
    pub(crate) bound: Option<(usize, Overflow)>,
    /// `RLIMIT_CPU` in seconds.
    pub(crate) cpu_seconds: Option<u64>,
    /// `RLIMIT_DATA` in bytes.
    pub(crate) data_bytes: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub(crate) open_files: Option<u64>,
    /// Memory limit in bytes (a cgroup's, or `RLIMIT_DATA`).
    pub(crate) memory_bytes: Option<u64>,
    /// What it starts by itself may outlive the node.
    pub(crate) leave_strays: bool,
}

/// Everything a new process needs to start its runtime.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    /// The new process.
    pub(crate) pid: Pid,
    /// The node's shared area.
    pub(crate) shared: &'static SharedArea,
    /// Node-wide settings.
    pub(crate) settings: &'static Settings,
    /// Its listening socket, bound by the spawner.
    pub(crate) listener: OwnedFd,
    /// Its control connection to the node.
    pub(crate) ctl: OwnedFd,
    /// Its own description of the node-death pipe, to arm.
    pub(crate) death: OwnedFd,
    /// Options to apply.
    pub(crate) options: ChildOptions,
    /// Descriptors the application asked to keep.
    pub(crate) keep_fds: Vec<RawFd>,
    /// Send our own pidfd to the node (its spawner is not the node).
    pub(crate) announce_pidfd: bool,
}

/// Runs in the new process; never returns.
pub(crate) fn child_main(plan: ChildPlan, body: impl FnOnce(&'static Runtime) -> ExitReason) -> Infallible {
    let armed = match sys::signal::arm_death_signal(plan.death, !plan.options.leave_strays) {
        Ok(fd) => fd,
        // The node is already gone: nobody is left to run for.
        Err(_) => sys::process::exit_now(1),
    };
    let mut keep = vec![plan.listener.as_raw_fd(), plan.ctl.as_raw_fd(), armed.as_raw_fd()];
    keep.extend_from_slice(&plan.keep_fds);
    if let Err(e) = sys::process::close_fds_except(&keep) {
        eprintln!("converge: closing inherited descriptors failed: {e}");
    }
    let setup_error = apply_options(&plan.options, plan.settings, plan.pid.serial());
    let rt = match Runtime::new(
        plan.pid,
        plan.shared,
        plan.settings,
        plan.listener,
        plan.ctl,
        armed,
        None,
        plan.options.bound,
    ) {
        Ok(rt) => runtime::install(rt),
        Err(e) => {
            eprintln!("converge: starting the process runtime failed: {e}");
            sys::process::exit_now(101)
        }
    };
    if plan.announce_pidfd
        && let Ok(pidfd) = sys::process::pidfd_open(sys::process::getpid())
    {
        let msg = ToNode::Pidfd {
            serial: plan.pid.serial(),
            ospid: sys::process::getpid(),
        };
        let _ = rt.tell_node_with_fds(rt.ctl_fd(), &msg, &[std::os::fd::AsFd::as_fd(&pidfd)]);
    }
    // The descriptor limit comes last, once the runtime has the descriptors
    // it makes on first use: at the limit it still receives and sends.
    let setup_error = setup_error.or_else(|| {
        let n = plan.options.open_files?;
        let made = rt.inbox.make_descriptors();
        made.and_then(|()| sys::process::set_rlimit(sys::process::Resource::OpenFiles, n, n))
            .err()
            .map(|e| format!("setting the open files limit failed: {e}"))
    });
    if let Some(e) = setup_error {
        rt.finish(ExitReason::Error(e));
    }
    let reason = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(rt))) {
        Ok(reason) => reason,
        Err(payload) => ExitReason::Panic(panic_message(&*payload)),
    };
    rt.finish(reason)
}

/// Applies the options; returns a description of the first that failed.
fn apply_options(o: &ChildOptions, settings: &Settings, serial: u64) -> Option<String> {
    if let Some(bytes) = o.memory_bytes {
        // First, so that what the process allocates from here on counts.
        let entered = match &settings.memory {
            Some(cgroups) => cgroups.enter(serial, bytes),
            None => sys::process::set_rlimit(sys::process::Resource::DataBytes, bytes, bytes),
        };
        if let Err(e) = entered {
            return Some(format!("setting the memory limit of {bytes} bytes failed: {e}"));
        }
    }
    if let Some(name) = &o.name {
        let _ = sys::process::set_thread_name(name);
    }
    if let Some(cpus) = &o.cpus
        && let Err(e) = sys::process::set_affinity(cpus)
    {
        return Some(format!("setting CPU affinity {cpus:?} failed: {e}"));
    }
    if o.env_clear {
        sys::process::clear_env_in_child();
    }
    for (k, v) in &o.env {
        sys::process::set_env_in_child(k, v.as_deref());
    }
    if let Some(dir) = &o.cwd
        && let Err(e) = std::env::set_current_dir(dir)
    {
        return Some(format!("changing directory to {} failed: {e}", dir.display()));
    }
    use sys::process::Resource;
    for (res, v) in [
        (Resource::CpuSeconds, o.cpu_seconds.map(|s| (s, s + 1))),
        (Resource::DataBytes, o.data_bytes.map(|b| (b, b))),
    ] {
        if let Some((soft, hard)) = v
            && let Err(e) = sys::process::set_rlimit(res, soft, hard)
        {
            return Some(format!("setting {res:?} limit failed: {e}"));
        }
    }
    None
}

//! What other nodes may start here: functions registered by name (an
//! allowlist: nothing else can be started remotely), each taking its
//! arguments postcard-encoded.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exit::IntoExitReason;
use crate::mailbox::Ctx;
use crate::pid::Pid;
use crate::sync::Mutex;

/// Starts a registered function with encoded arguments: its process, or why
/// not.
type Starter = std::sync::Arc<dyn Fn(&[u8]) -> Result<Pid, SpawnRefused> + Send + Sync>;

fn registry() -> &'static Mutex<HashMap<String, Starter>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Starter>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Why another node's request to start a process was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnRefused {
    /// No function of that name is registered there.
    #[error("nothing named {0:?} may be started there")]
    NotRegistered(String),
    /// The arguments do not decode as the function's.
    #[error("the arguments of {name:?} do not decode: {why}")]
    BadArguments {
        /// The function.
        name: String,
        /// The decoder's error.
        why: String,
    },
    /// The process could not be started there.
    #[error("starting {name:?} failed: {why}")]
    Failed {
        /// The function.
        name: String,
        /// Why.
        why: String,
    },
    /// No answer: the node is not in the cluster, or its session was lost.
    #[error("no answer from the node: {0}")]
    NoConnection(String),
}

/// Registers `f` as `name`: another node of the cluster may start it here
/// with [`Cluster::spawn_on`](super::Cluster::spawn_on), with arguments of
/// type `A`; the process's mailbox takes `M`. Only registered functions can
/// be started from another node. Registering a name again replaces it.
///
/// ```no_run
/// use converge::Ctx;
/// fn counter(ctx: Ctx<u64>, start: u64) {
///     let mut n = start;
///     while let Ok(add) = ctx.recv() {
///         n += add;
///     }
/// }
/// converge::dist::spawnable("counter", counter);
/// ```
pub fn spawnable<M, A, R>(name: &str, f: fn(Ctx<M>, A) -> R)
where
    M: Serialize + DeserializeOwned + 'static,
    A: DeserializeOwned + Send + 'static,
    R: IntoExitReason + 'static,
{
    let owned = name.to_string();
    let starter: Starter = std::sync::Arc::new(move |args: &[u8]| {
        let bad = |why: String| SpawnRefused::BadArguments {
            name: owned.clone(),
            why,
        };
        let (args, rest): (A, &[u8]) = postcard::take_from_bytes(args).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes past the arguments", rest.len())));
        }
        crate::process::spawn(move |ctx: Ctx<M>| f(ctx, args))
            .map(|m| m.pid())
            .map_err(|e| SpawnRefused::Failed {
                name: owned.clone(),
                why: e.to_string(),
            })
    });
    registry().lock().insert(name.to_string(), starter);
}

/// Starts the function registered as `name` with `args` (for a request from
/// another node).
pub(crate) fn start(name: &str, args: &[u8]) -> Result<Pid, SpawnRefused> {
    // Not under the lock: the new process is forked from this thread.
    let starter = registry()
        .lock()
        .get(name)
        .cloned()
        .ok_or_else(|| SpawnRefused::NotRegistered(name.to_string()))?;
    starter(args)
}

/// Why a task run on another node gave no value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteTaskError {
    /// No task of that name is registered there.
    #[error("no task named {0:?} may be run there")]
    NotRegistered(String),
    /// The arguments do not decode as the task's there, or its value not as
    /// the caller's type here.
    #[error("the arguments or value of {name:?} do not decode: {why}")]
    BadArguments {
        /// The task.
        name: String,
        /// The decoder's error.
        why: String,
    },
    /// The task panicked there.
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The scheduler running it there died: its exit reason.
    #[error("the scheduler running the task died: {0}")]
    Crashed(crate::ExitReason),
    /// It could not run there, or not within its time.
    #[error("the task {name:?} failed there: {why}")]
    Failed {
        /// The task.
        name: String,
        /// Why.
        why: String,
    },
    /// No answer: the node is not in the cluster, its session was lost, or
    /// the answer did not come in time.
    #[error("no answer from the node: {0}")]
    NoConnection(String),
}

/// Runs a registered task with encoded arguments on this node's pool,
/// waiting up to a time: its encoded value.
type TaskRunner = std::sync::Arc<dyn Fn(&[u8], std::time::Duration) -> Result<Vec<u8>, RemoteTaskError> + Send + Sync>;

fn tasks() -> &'static Mutex<HashMap<String, TaskRunner>> {
    static TASKS: OnceLock<Mutex<HashMap<String, TaskRunner>>> = OnceLock::new();
    TASKS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers `f` as the task `name`: another node of the cluster may run it
/// on this node's scheduler pool with
/// [`Cluster::run_task`](super::Cluster::run_task), with arguments of type
/// `A`, for a value of type `R`. Only registered tasks can be run from
/// another node. Registering a name again replaces it.
///
/// ```no_run
/// fn square(n: u64) -> u64 {
///     n * n
/// }
/// converge::dist::task("square", square);
/// ```
pub fn task<A, R>(name: &str, f: fn(A) -> R)
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let owned = name.to_string();
    let runner: TaskRunner = std::sync::Arc::new(move |args: &[u8], timeout| {
        let bad = |why: String| RemoteTaskError::BadArguments {
            name: owned.clone(),
            why,
        };
        let (args, rest): (A, &[u8]) = postcard::take_from_bytes(args).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes past the arguments", rest.len())));
        }
        let failed = |e: crate::pool::TaskError| match e {
            crate::pool::TaskError::Panicked(m) => RemoteTaskError::Panicked(m),
            crate::pool::TaskError::Crashed(reason) => RemoteTaskError::Crashed(reason),
            other => RemoteTaskError::Failed {
                name: owned.clone(),
                why: other.to_string(),
            },
        };
        let mut task = crate::pool::submit(f, args).map_err(failed)?;
        let value = match task.join_timeout(timeout) {
            Ok(v) => v,
            Err(e) => {
                if e == crate::pool::TaskError::Timeout {
                    task.cancel();
                }
                return Err(failed(e));
            }
        };
        postcard::to_stdvec(&value).map_err(|e| bad(e.to_string()))
    });
    tasks().lock().insert(name.to_string(), runner);
}

/// Runs the task registered as `name` with `args` (for a request from
/// another node), within `timeout`.
pub(crate) fn run_task(name: &str, args: &[u8], timeout: std::time::Duration) -> Result<Vec<u8>, RemoteTaskError> {
    let runner = tasks()
        .lock()
        .get(name)
        .cloned()
        .ok_or_else(|| RemoteTaskError::NotRegistered(name.to_string()))?;
    runner(args, timeout)
}

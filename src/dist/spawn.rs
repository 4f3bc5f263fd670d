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

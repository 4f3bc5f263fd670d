//! Convergent jobs: many small agents computing one decision over a shared
//! context, round after round, until nothing changes.
//!
//! A [`Job`] declares its keys, each with a [`Join`] (set union, max,
//! "newer supersedes", one value, a partial order): facts only grow in
//! meaning, so a job over finite values reaches a fixed point. Values the
//! join cannot order stay side by side as a conflict until an aggregation
//! agent resolves it with a declared [`Rule`]; the merge never picks one
//! silently. Confidence is fixed point ([`Confidence`]), and the context has
//! a canonical encoding and hash, so "a round that changed nothing" is
//! exact.
//!
//! Each round, the agents whose inputs changed, of the lowest tier that has
//! any, run at once, each isolated: a function on the scheduler pool, or a
//! program as a port (JSON lines; any language). A crash, a panic, an `Err`
//! or a timeout is that agent's failure, with its exit reason, never the
//! job's. Their effects are then merged serially in agent order, then
//! emission order, so the outcome and the trace's bytes do not depend on
//! which agent finished first. Tools, the job's unreliable dependencies,
//! are called by its broker as agents ask: a timeout, retries with backoff
//! and seeded jitter, a circuit breaker counted in rounds; every answer and
//! failure is in the trace.
//!
//! The [`Outcome`] is `Converged` only at a fixed point where every required
//! agent succeeded and every required key holds an answer; otherwise
//! `Partial`, with what is missing and the context as of the last merge (an
//! anytime answer), or `Failed` when the context oscillates. After each
//! merge a [`Checkpoint`] can be taken (or written to a file), from which a
//! job resumes without running again what was merged; [`Job::replay`] runs a
//! [`Trace`] again and reports where a changed agent diverges.
//!
//! ```no_run
//! use converge::job::{Agent, Effects, Input, Job};
//!
//! fn double(input: Input) -> Result<Effects, String> {
//!     let mut out = Effects::new();
//!     for n in input.new_values::<u64>("n") {
//!         if n < 100 {
//!             out.put("n", &(n * 2));
//!         }
//!     }
//!     Ok(out)
//! }
//!
//! converge::init().unwrap();
//! let mut job = Job::new("doubling");
//! job.union::<u64>("n");
//! job.input("n", &3u64);
//! job.agent(Agent::new("double", double).reads(&["n"]));
//! let result = job.run().unwrap();
//! assert!(result.outcome.is_converged());
//! assert_eq!(result.context.values::<u64>("n"), [3, 6, 12, 24, 48, 96, 192]);
//! ```

mod agent;
mod context;
mod run;
mod tool;
mod trace;

#[cfg(test)]
mod tests;

pub use agent::{Agent, AgentFn, Effect, Effects, Input};
pub use context::{Change, Confidence, Context, Fact, FactRef, Join, KeyState, Resolution, Rule, Source, Value};
pub use run::{
    AgentFailure, Checkpoint, Inject, Job, JobError, JobFailure, JobResult, JobRun, KeyDecl, Outcome, ReplayDivergence,
    Stop, run_all,
};
pub use tool::{CallRecord, Tool, ToolFailure};
pub use trace::{AgentRecord, AgentResult, MergeRecord, RoundRecord, Trace};

/// Stable hashes (BLAKE2s), the same on every machine and every build.
mod hash {
    use blake2::{Blake2s256, Digest};

    pub(crate) fn long(bytes: &[u8]) -> [u8; 32] {
        Blake2s256::digest(bytes).into()
    }

    pub(crate) fn short(bytes: &[u8]) -> u64 {
        let h = long(bytes);
        u64::from_le_bytes(h[..8].try_into().expect("BUG: a digest has 32 bytes"))
    }
}

//! The scheduler pool: pre-forked scheduler processes that run tasks and
//! host lightweight actors.
//!
//! At `init()` the zygote forks the schedulers (one per CPU by default, in the
//! default class, plus the classes of [`Config::scheduler_class`]), and forks
//! a replacement whenever one dies, so a scheduler is always a clean image of
//! this executable. A task is a plain function `fn(A) -> R` and its encoded
//! arguments: [`submit`] hands it to an idle scheduler of its class, or to
//! the node's queue of the class, from which idle schedulers pull; and
//! [`Task::join`] gives its value or why there is none. A class of `n`
//! schedulers runs at most `n` of its tasks at once.
//! [`map`] runs a function over an iterator in batches, results in order.
//!
//! Schedulers also host lightweight [`Actor`]s: many per scheduler, each with
//! a `Pid` like any process, stepped one event at a time.
//!
//! Delivery is at most once: a task that was running when its scheduler died
//! fails with that scheduler's exit reason ([`TaskError::Crashed`]), unless it
//! is [`retryable`](Task::retryable); a task handed to the dead scheduler
//! that had not started is sent to another one.
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let _node = converge::init()?;
//! let task = converge::pool::submit(square, 12)?;
//! assert_eq!(task.join()?, 144);
//! let squares: Vec<u64> = converge::pool::map(square, 0..1_000).collect::<Result<_, _>>()?;
//! assert_eq!(squares[999], 998_001);
//! # Ok(()) }
//! ```
//!
//! [`Config::scheduler_class`]: crate::Config::scheduler_class

pub(crate) mod actor;
pub(crate) mod scheduler;
mod task;

pub use actor::{Actor, ActorBuilder, ActorCtx, ActorStats, actor_stats, spawn_actor};
pub use task::{DEFAULT_CLASS, Map, Progress, Task, TaskError, map, progress, schedulers, submit, submit_to};

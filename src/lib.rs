//! An Erlang-style actor runtime in which every process is a real Linux
//! process.
//!
//! Spawn processes from closures, send them typed messages through mailboxes
//! that are plain serializable values, link and monitor them: every process
//! exit is observed, exactly once, with the right reason, however the process
//! died (returned, panicked, was killed, segfaulted, called `exit`).
//!
//! # Hello, world!
//!
//! ```
//! use converge::{Ctx, ExitReason};
//! use std::time::Duration;
//!
//! fn main() -> Result<(), converge::Error> {
//!     let node = converge::init()?; // first thing in main, before any thread
//!     let (echo, watch) = converge::spawn_monitor(|ctx: Ctx<String>| {
//!         let text = ctx.recv()?;
//!         println!("{text}");
//!         Ok::<_, converge::RecvError>(())
//!     })?;
//!     echo.send("hello, world".to_string())?;
//!     let down = node.ctx::<()>().recv_down_timeout(watch, Duration::from_secs(5))?;
//!     assert_eq!(down.reason, ExitReason::Normal);
//!     Ok(())
//! }
//! ```
//!
//! # Processes
//!
//! [`init()`] turns the calling process into the *node*. [`spawn`] forks the
//! caller and runs a closure in the child, which ends with an [`ExitReason`]
//! derived from what the closure returns (see [`IntoExitReason`]), or
//! [`ExitReason::Panic`] if it panics. [`spawn_fn`] starts a process from the
//! zygote instead (a clean image forked at `init()`), for callers with many
//! threads or a large heap. [`spawn_join`] is the process version of
//! `std::thread::spawn`:
//!
//! ```
//! # fn main() -> Result<(), converge::Error> {
//! # let node = converge::init()?;
//! let handle = converge::spawn_join(|_ctx: converge::Ctx<()>| (1..=10u64).product::<u64>())?;
//! assert_eq!(handle.join()?, 3_628_800);
//! # Ok(()) }
//! ```
//!
//! # Messages
//!
//! A [`Mailbox<M>`] is the typed address of a process: `Copy`, serializable,
//! and it can travel inside messages. Messages are encoded with postcard and
//! carry a fingerprint of their type: a message of the wrong type is counted as
//! undecodable, never decoded into a wrong value. [`Ctx<M>`] receives:
//! `recv`, `recv_timeout`, `try_recv`, selective `recv_matching`, and
//! `recv_event` for messages and signals in arrival order. [`Mailbox::call`]
//! is request/reply with a timeout and a monitor on the callee.
//!
//! ```
//! # use converge::{Ctx, Event};
//! # fn main() -> Result<(), converge::Error> {
//! # let node = converge::init()?;
//! let doubler = converge::spawn(|ctx: Ctx<(u32, converge::Mailbox<u32>)>| {
//!     while let Ok((n, reply)) = ctx.recv() {
//!         let _ = reply.send(n * 2);
//!     }
//! })?;
//! let me = node.ctx::<u32>();
//! doubler.send((21, me.mailbox()))?;
//! assert_eq!(me.recv()?, 42);
//! # doubler.kill();
//! # Ok(()) }
//! ```
//!
//! # Links and monitors
//!
//! [`Ctx::monitor`] gives exactly one [`Down`] per call. A link ([`spawn_link`],
//! [`Ctx::link`]) makes an abnormal exit travel both ways; a process that
//! [traps exits](Ctx::trap_exits) receives it as an [`Event::Exit`] instead of
//! ending. The node's main thread always traps exits.
//!
//! ```
//! # use converge::{Ctx, Event, ExitReason};
//! # fn main() -> Result<(), converge::Error> {
//! # let node = converge::init()?;
//! let child = converge::spawn_link(|_ctx: Ctx<()>| -> Result<(), String> { Err("boom".into()) })?;
//! match node.ctx::<()>().recv_event()? {
//!     Event::Exit(e) => assert_eq!((e.from, e.reason), (child.pid(), ExitReason::Error("boom".into()))),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! | --- | --- |
//! | (none) | the local runtime: processes, mailboxes, links, monitors, names |
//!
//! The guarantees, and what is not guaranteed, are stated in [`semantics`].
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "cli")]
pub mod daemon;
#[cfg(feature = "dist")]
pub mod dist;
mod error;
mod exit;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod job;
mod link;
mod mailbox;
mod monitor;
mod node;
mod pid;
pub mod pool;
pub mod port;
mod process;
mod runtime;
pub mod supervisor;
mod sync;
mod sys;
mod wire;

#[doc = include_str!("../docs/semantics.md")]
pub mod semantics {}

pub use error::{
    CallError, Error, InitError, InitErrorKind, JoinError, JoinErrorKind, LinkError, RecvError, RecvTimeoutError,
    RegisterError, SendError, SendErrorKind, SpawnError, SpawnErrorKind, TryRecvError, TrySendError,
};
pub use exit::{ExitReason, IntoExitReason};
pub use link::ExitSignal;
pub use mailbox::{Ctx, Event, Mailbox, QueueInfo, ReplyTo, TypeCount};
pub use monitor::{Down, MonitorRef};
pub use node::{Config, Node, NodeStats, init};

pub use pid::{NodeId, Overflow, Pid, ProcessInfo, ProcessState};
pub use process::{
    Builder, JoinHandle, MemoryLimiter, flush, process_info, register, self_pid, spawn, spawn_fn, spawn_join,
    spawn_link, spawn_monitor, unregister, whereis,
};
pub use wire::{DecodeError, FrameError};

//! Error types. Hot-path errors (send, receive) are small enums that give the
//! message back; the rest are opaque structs over a private kind.

use std::fmt;
use std::io;

use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::wire::DecodeError;

/// Any error of this crate, for applications that propagate with `?`. It
/// keeps the error it was made from: its `Display` and `source()` are that
/// error's own.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] ErrorInner);

impl Error {
    /// Wraps an error of a module above this one (ports, supervisors, the
    /// pool), which names its own `From` impl: this file imports nothing
    /// from above it.
    pub(crate) fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error(ErrorInner::Other(Box::new(e)))
    }
}

#[derive(Debug, thiserror::Error)]
enum ErrorInner {
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Send(SendErrorKind),
    #[error(transparent)]
    Recv(#[from] RecvError),
    #[error(transparent)]
    RecvTimeout(#[from] RecvTimeoutError),
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

macro_rules! into_error {
    ($($t: ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error(ErrorInner::from(e))
            }
        }
    )*};
}
into_error!(
    InitError,
    SpawnError,
    RecvError,
    RecvTimeoutError,
    CallError,
    JoinError,
    LinkError,
    RegisterError,
    io::Error
);

impl<M> From<SendError<M>> for Error {
    fn from(e: SendError<M>) -> Error {
        Error(ErrorInner::Send(e.kind))
    }
}

/// `init()` could not turn the calling process into a node.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct InitError {
    kind: InitErrorKind,
}

/// What went wrong in `init()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitErrorKind {
    /// `init()` was called after the process had started other threads. It must
    /// be the first thing `main` does, because the node forks its zygote before
    /// any thread exists.
    #[error("converge::init() must be called before any thread is started ({threads} threads running)")]
    Threaded {
        /// How many threads were running.
        threads: usize,
    },
    /// `init()` was called a second time in this process.
    #[error("converge::init() was already called in this process")]
    AlreadyInitialized,
    /// A system call failed while setting up the node.
    #[error("setting up the node failed: {0}")]
    Io(#[source] io::Error),
    /// The configuration cannot be met.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl InitError {
    pub(crate) fn new(kind: InitErrorKind) -> InitError {
        InitError { kind }
    }

    /// What went wrong.
    pub fn kind(&self) -> &InitErrorKind {
        &self.kind
    }
}

impl From<io::Error> for InitError {
    fn from(e: io::Error) -> InitError {
        InitError::new(InitErrorKind::Io(e))
    }
}

/// A process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct SpawnError {
    kind: SpawnErrorKind,
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnErrorKind {
    /// `converge::init()` has not been called in this program.
    #[error("converge::init() has not been called")]
    NotInitialized,
    /// The node is shutting down and starts no new processes.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The zygote could not start the process.
    #[error("the zygote could not start the process: {0}")]
    Zygote(String),
    /// The arguments could not be encoded.
    #[error("encoding the arguments failed: {0}")]
    Encode(String),
    /// A system call failed (fork, socket, pidfd).
    #[error("spawning failed: {0}")]
    Io(#[source] io::Error),
}

impl SpawnError {
    pub(crate) fn new(kind: SpawnErrorKind) -> SpawnError {
        SpawnError { kind }
    }

    /// Why the process could not be started.
    pub fn kind(&self) -> &SpawnErrorKind {
        &self.kind
    }
}

impl From<io::Error> for SpawnError {
    fn from(e: io::Error) -> SpawnError {
        SpawnError::new(SpawnErrorKind::Io(e))
    }
}

/// A message could not be sent; the message is given back.
///
/// Sending to a process that has exited is not an error (the message is
/// dropped, as in Erlang): these are the errors the caller can fix.
#[derive(thiserror::Error)]
#[error("{kind}")]
pub struct SendError<M> {
    msg: M,
    kind: SendErrorKind,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The encoded message is over the node's size limit.
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The node's limit (`Config::max_message_size`).
        limit: usize,
    },
    /// The message could not be encoded with postcard.
    #[error("encoding the message failed: {0}")]
    Encode(String),
    /// `converge::init()` has not been called in this program.
    #[error("converge::init() has not been called")]
    NotInitialized,
    /// The sending process has no descriptor left for a connection to a new
    /// peer (`EMFILE`/`ENFILE`), and none of its idle connections could be
    /// closed to make room. Nothing was sent: close descriptors (or raise
    /// [`Builder::open_files_limit`](crate::Builder::open_files_limit)) and
    /// send again.
    #[error("no descriptor left to connect to the receiver: {0}")]
    NoDescriptor(String),
    /// Connecting to the receiver failed for another reason of the system
    /// (its socket exists but refuses in an unexpected way). Nothing was sent.
    #[error("connecting to the receiver failed: {0}")]
    Io(String),
}

impl<M> SendError<M> {
    pub(crate) fn new(msg: M, kind: SendErrorKind) -> SendError<M> {
        SendError { msg, kind }
    }

    /// Why the send failed.
    pub fn kind(&self) -> &SendErrorKind {
        &self.kind
    }

    /// Whether the message was over the size limit.
    pub fn is_too_large(&self) -> bool {
        matches!(self.kind, SendErrorKind::TooLarge { .. })
    }

    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        self.msg
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `try_send` did not send the message; the message is given back.
#[derive(thiserror::Error)]
pub enum TrySendError<M> {
    /// The connection's kernel buffer is full: `send` would have queued the
    /// message in this process's memory.
    #[error("sending on a full connection")]
    Full(M),
    /// The message cannot be sent at all.
    #[error(transparent)]
    Failed(SendError<M>),
}

impl<M> TrySendError<M> {
    /// Whether the connection was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m) => m,
            TrySendError::Failed(e) => e.into_inner(),
        }
    }
}

impl<M> fmt::Debug for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// `recv` cannot return: the runtime of this process is gone (the node has shut
/// down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receiving after the node has shut down")]
pub struct RecvError;

/// `recv_timeout` returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// Nothing arrived before the timeout.
    #[error("timed out waiting on receive")]
    Timeout,
    /// The node has shut down.
    #[error("receiving after the node has shut down")]
    Disconnected,
}

/// `try_recv` returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued.
    #[error("receiving on an empty mailbox")]
    Empty,
    /// The node has shut down.
    #[error("receiving after the node has shut down")]
    Disconnected,
}

impl From<RecvError> for RecvTimeoutError {
    fn from(_: RecvError) -> RecvTimeoutError {
        RecvTimeoutError::Disconnected
    }
}

/// A `call` did not get its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply before the timeout.
    #[error("call timed out")]
    Timeout,
    /// The callee exited (or did not exist: `NoProc`) before replying.
    #[error("callee exited before replying: {0}")]
    Exited(ExitReason),
    /// The request could not be sent.
    #[error("sending the request failed: {0}")]
    Send(SendErrorKind),
    /// The reply did not decode as the expected type.
    #[error("reply did not decode: {0}")]
    Decode(DecodeError),
}

/// A `join` did not give the process's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct JoinError {
    kind: JoinErrorKind,
}

/// Why a `join` did not give the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinErrorKind {
    /// The process did not finish before the timeout (it is still running).
    #[error("join timed out")]
    Timeout,
    /// The process ended without returning a value.
    #[error("process exited: {0}")]
    Exited(ExitReason),
    /// The returned value did not decode.
    #[error("returned value did not decode: {0}")]
    Decode(DecodeError),
}

impl JoinError {
    pub(crate) fn new(kind: JoinErrorKind) -> JoinError {
        JoinError { kind }
    }

    /// Why the join failed.
    pub fn kind(&self) -> &JoinErrorKind {
        &self.kind
    }

    /// Whether the timeout passed first.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, JoinErrorKind::Timeout)
    }

    /// The exit reason, if the process ended without a value.
    pub fn reason(&self) -> Option<&ExitReason> {
        match &self.kind {
            JoinErrorKind::Exited(r) => Some(r),
            _ => None,
        }
    }

    /// The panic message, if the process panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            JoinErrorKind::Exited(ExitReason::Panic(m)) => Some(m),
            _ => None,
        }
    }
}

/// A link could not be made: the other process does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot link to {0}: no such process")]
pub struct LinkError(pub Pid);

/// A name could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Another live process holds the name.
    #[error("the name {0:?} is already registered")]
    Taken(String),
    /// The process to register does not exist.
    #[error("cannot register {0}: no such process")]
    NoProc(Pid),
}

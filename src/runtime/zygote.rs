//! Asking the zygote (any process may): to fork a `spawn_fn` process, or to
//! start a port. The zygote itself, which serves these requests, is the
//! node's (`node/zygote.rs`); what travels between them is defined here.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::Runtime;
use crate::runtime::child::ChildOptions;
use crate::sys;
use crate::sys::text::FnAddr;
use crate::wire::decode_exact;
use crate::wire::frame::{self, Decoder, Kind};

/// What the zygote's children run: an entry point monomorphized for the
/// process's types, given the application's function and encoded arguments.
pub(crate) type Entry = fn(&'static Runtime, FnAddr, Vec<u8>) -> ExitReason;

/// A function to run in a new process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Call {
    /// The monomorphized [`Entry`].
    pub(crate) entry: FnAddr,
    /// The application's function.
    pub(crate) func: FnAddr,
    /// Its arguments, postcard-encoded.
    pub(crate) args: Vec<u8>,
}

/// A spawn request (its listening socket and control connection travel with
/// it as descriptors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The new process.
    pub(crate) pid: Pid,
    /// Its options.
    pub(crate) options: ChildOptions,
    /// What it runs.
    pub(crate) call: Call,
}

/// A port to start: everything resolved by its owner (environment, working
/// directory), so that the program sees what it would had the owner started
/// it. Its standard input, output and (if separate) error travel along as
/// descriptors, in that order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PortRequest {
    /// The port's registration (its owner is the parent), which the zygote
    /// hands to the node with the pidfd before it answers: a port exists for
    /// the node as soon as it runs, whatever happens to its owner.
    pub(crate) reg: crate::wire::envelope::Registration,
    /// Time between `SIGTERM` and `SIGKILL` when the port is shut down.
    pub(crate) shutdown_ms: u64,
    /// The program, as the owner named it.
    pub(crate) program: Vec<u8>,
    pub(crate) args: Vec<Vec<u8>>,
    pub(crate) arg0: Option<Vec<u8>>,
    /// The whole environment.
    pub(crate) env: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) cwd: Option<Vec<u8>>,
    /// Standard error has a descriptor of its own (else it is the output's).
    pub(crate) separate_stderr: bool,
}

impl PortRequest {
    /// Whether a string of it holds a nul byte: no program can be given it.
    pub(crate) fn has_nul(&self) -> bool {
        let nul = |b: &[u8]| b.contains(&0);
        nul(&self.program)
            || self.args.iter().any(|a| nul(a))
            || self.arg0.as_deref().is_some_and(nul)
            || self.env.iter().any(|(k, v)| nul(k) || nul(v))
            || self.cwd.as_deref().is_some_and(nul)
    }
}

/// What the zygote is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// Fork a process (its listener and control connection travel along).
    Spawn(Box<Request>),
    /// Start a port.
    SpawnPort(Box<PortRequest>),
    /// Start the scheduler pool (once the node can register them).
    StartPool,
}

/// The zygote's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    Spawned {
        ospid: i32,
    },
    /// The port runs (and the node knows it).
    SpawnedPort {
        ospid: i32,
    },
    /// Starting the program failed with this OS error.
    PortFailed {
        errno: Option<i32>,
        message: String,
    },
    Failed(String),
    /// The pool runs: this many schedulers.
    PoolStarted(usize),
}

/// Sends `req` to the zygote with `fds` and waits for the new process's OS pid.
pub(crate) fn request(rt: &'static Runtime, req: &Request, fds: Vec<OwnedFd>) -> Result<i32, String> {
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &Ask::Spawn(Box::new(req.clone()))).map_err(|e| e.to_string())?;
    match ask(rt, &buf, fds)? {
        Response::Spawned { ospid } => Ok(ospid),
        Response::Failed(e) | Response::PortFailed { message: e, .. } => Err(e),
        Response::SpawnedPort { .. } | Response::PoolStarted(_) => Err("the zygote answered out of turn".into()),
    }
}

/// Asks the zygote to start a port with `fds` as its standard streams; gives
/// its OS pid. The error is the OS error of the start, or why the zygote
/// could not be asked.
///
/// `fds` are dropped as soon as they are on their way: the program must be
/// the only holder of its pipes' other ends (else no end of output is seen),
/// and its exit may be handled (by another thread) before the answer comes.
pub(crate) fn spawn_port(rt: &'static Runtime, req: &PortRequest, fds: Vec<OwnedFd>) -> Result<i32, io::Error> {
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &Ask::SpawnPort(Box::new(req.clone())))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let response = ask(rt, &buf, fds).map_err(io::Error::other)?;
    match response {
        Response::SpawnedPort { ospid } => Ok(ospid),
        Response::PortFailed { errno: Some(code), .. } => Err(io::Error::from_raw_os_error(code)),
        Response::PortFailed { message, .. } | Response::Failed(message) => Err(io::Error::other(message)),
        _ => Err(io::Error::other("the zygote answered out of turn")),
    }
}

/// Sends one framed request with descriptors and waits for the answer;
/// `fds` are dropped once the request (and they) are on their way. A broken
/// connection is made again, and the request sent again if it had not left.
fn ask(rt: &'static Runtime, buf: &[u8], fds: Vec<OwnedFd>) -> Result<Response, String> {
    let mut conn = rt.zygote.lock();
    let mut last_error = String::new();
    let mut fds = Some(fds);
    for _attempt in 0..2 {
        let Some(to_send) = &fds else {
            // The zygote may have acted on it: not twice.
            break;
        };
        if conn.is_none() {
            match sys::socket::connect_abstract(&rt.pid().node().zygote_address(), false) {
                Ok(c) => *conn = Some(c),
                Err(e) => return Err(format!("cannot reach the zygote: {e}")),
            }
        }
        let c = conn.as_ref().expect("BUG: connected above");
        let borrowed: Vec<BorrowedFd<'_>> = to_send.iter().map(AsFd::as_fd).collect();
        if let Err(e) = sys::socket::send_with_fds(c, buf, &borrowed) {
            last_error = e.to_string();
            *conn = None;
            continue;
        }
        // On their way: the zygote holds its own copies now.
        fds = None;
        match read_response(c) {
            Ok(r) => return Ok(r),
            Err(e) => {
                last_error = e.to_string();
                *conn = None;
            }
        }
    }
    Err(last_error)
}

fn read_response(c: &OwnedFd) -> io::Result<Response> {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    let mut fds = Vec::new();
    loop {
        let n = sys::socket::recv_with_fds(c, &mut buf, &mut fds)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the zygote closed the connection",
            ));
        }
        let mut out = None;
        decoder
            .feed(&buf[..n], 1 << 20, |_, body| {
                out = Some(decode_exact::<Response>(body));
                false
            })
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(r) = out {
            return r.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Asks the zygote to start the scheduler pool.
pub(crate) fn start_pool(rt: &'static Runtime) -> Result<usize, String> {
    let mut buf = Vec::new();
    frame::push(&mut buf, Kind::Ctl, &Ask::StartPool).map_err(|e| e.to_string())?;
    match ask(rt, &buf, Vec::new())? {
        Response::PoolStarted(n) => Ok(n),
        Response::Failed(e) | Response::PortFailed { message: e, .. } => Err(e),
        _ => Err("the zygote answered out of turn".into()),
    }
}

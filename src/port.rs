//! Ports: external programs run as processes.
//!
//! A port is an executable started by a process (its *owner*), which sends it
//! input and receives its output as [`PortOutput`] events, framed as chosen:
//! raw chunks, lines, or length-prefixed packets compatible with Erlang's
//! `{packet, N}`. A port has a [`Pid`]: it can be monitored, linked, registered
//! and killed like any process, and its exit status becomes its
//! [`ExitReason`] (`Normal` for 0, `Code(n)`, or the signal that killed it).
//!
//! The program is started by the node's zygote (a small single-threaded
//! process, like Erlang's `erl_child_setup`) with no shim process, in a process
//! group of its own and, where the node can make one, a cgroup of its own,
//! entered before the program runs. It sees the owner's environment and
//! working directory, as if the owner had started it. Killing the port, its
//! owner ending, or the node dying (even by `SIGKILL`: the zygote watches for
//! it) kills the whole group, and the cgroup catches what left the group with
//! `setsid`: no program or its children outlive them. A program that cannot be
//! executed is a spawn error.
//!
//! [`stdio`] helps write the other side of a port in Rust.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{RecvError, RecvTimeoutError, TryRecvError};
use crate::exit::ExitReason;
use crate::pid::Pid;
use crate::runtime::inbox::{Item, PortIo};
use crate::runtime::{self, Runtime};
use crate::wire::envelope::Registration;

pub mod stdio;

pub use crate::wire::port::{Framing, PortOutput, Stderr};

/// A port could not be started, or written to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// The program could not be executed (missing, not executable, ...).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `converge::init()` has not been called in this program.
    #[error("converge::init() has not been called")]
    NotInitialized,
    /// The node is shutting down and starts no new processes.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The framing does not allow this input (a packet too long for its
    /// length prefix, an invalid prefix size).
    #[error("{0}")]
    Framing(String),
    /// The port's input is closed (or the port is gone).
    #[error("the port's input is closed")]
    Closed,
    /// A system call failed.
    #[error("port I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl From<PortError> for crate::Error {
    fn from(e: PortError) -> crate::Error {
        crate::Error::other(e)
    }
}

/// Options for a port.
///
/// ```no_run
/// # fn main() -> Result<(), converge::Error> {
/// use converge::port::{Framing, PortBuilder, PortOutput};
/// let node = converge::init()?;
/// let port = PortBuilder::new("/bin/sh")
///     .args(["-c", "echo hello; echo world"])
///     .framing(Framing::Lines { max: 1024 })
///     .spawn()
///     .unwrap();
/// while let Ok(event) = port.recv() {
///     match event {
///         PortOutput::Line { data, .. } => println!("{}", String::from_utf8_lossy(&data)),
///         PortOutput::Exit(reason) => { println!("{reason}"); break }
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortBuilder {
    program: PathBuf,
    args: Vec<OsString>,
    arg0: Option<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    framing: Framing,
    stderr: Stderr,
    max_packet: usize,
    shutdown: Duration,
    link: bool,
    name: Option<String>,
}

impl PortBuilder {
    /// A port running `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl AsRef<Path>) -> PortBuilder {
        PortBuilder {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            arg0: None,
            env: Vec::new(),
            env_clear: false,
            cwd: None,
            framing: Framing::Raw,
            stderr: Stderr::Separate,
            max_packet: 64 << 20,
            shutdown: Duration::from_secs(5),
            link: false,
            name: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> PortBuilder {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> PortBuilder {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// The program's `argv[0]` (default: the program path).
    pub fn arg0(mut self, arg0: impl AsRef<OsStr>) -> PortBuilder {
        self.arg0 = Some(arg0.as_ref().to_os_string());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> PortBuilder {
        self.env
            .push((key.as_ref().to_os_string(), Some(value.as_ref().to_os_string())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> PortBuilder {
        self.env.push((key.as_ref().to_os_string(), None));
        self
    }

    /// Starts from an empty environment.
    pub fn env_clear(mut self) -> PortBuilder {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// The program's working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> PortBuilder {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// How output is cut into events (default [`Framing::Raw`]).
    pub fn framing(mut self, framing: Framing) -> PortBuilder {
        self.framing = framing;
        self
    }

    /// What happens to standard error (default [`Stderr::Separate`]).
    pub fn stderr(mut self, stderr: Stderr) -> PortBuilder {
        self.stderr = stderr;
        self
    }

    /// The longest packet accepted from the program (default 64 MiB); a longer
    /// one ends the port with an `Error` reason.
    pub fn max_packet(mut self, bytes: usize) -> PortBuilder {
        self.max_packet = bytes;
        self
    }

    /// Time between `SIGTERM` and `SIGKILL` when the port is shut down
    /// (default 5 s; `Duration::MAX`: no `SIGKILL`, wait as long as it takes).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> PortBuilder {
        self.shutdown = timeout;
        self
    }

    /// Links the port with its owner: an abnormal end of the program (a
    /// non-zero exit code, a signal) then travels to the owner as an exit
    /// signal. Without a link the owner only gets [`PortOutput::Exit`].
    pub fn link(mut self, on: bool) -> PortBuilder {
        self.link = on;
        self
    }

    /// A name for `process_info` (default: the program's file name).
    pub fn name(mut self, name: impl Into<String>) -> PortBuilder {
        self.name = Some(name.into());
        self
    }

    fn check_framing(&self) -> Result<(), PortError> {
        match self.framing {
            Framing::Packet(1 | 2 | 4) | Framing::Raw => Ok(()),
            Framing::Packet(n) => Err(PortError::Framing(format!(
                "packet length prefix of {n} bytes: use 1, 2 or 4"
            ))),
            Framing::Lines { max: 0 } => Err(PortError::Framing("a line maximum of 0 bytes".into())),
            Framing::Lines { .. } => Ok(()),
        }
    }

    /// What the zygote needs to start the program as if this process did:
    /// this process's environment and working directory, resolved now.
    fn request(&self, reg: Registration) -> crate::runtime::zygote::PortRequest {
        use std::os::unix::ffi::OsStrExt;
        let bytes = |s: &OsStr| s.as_bytes().to_vec();
        let mut env: std::collections::BTreeMap<OsString, OsString> = if self.env_clear {
            Default::default()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in &self.env {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        let cwd = match &self.cwd {
            Some(dir) if dir.is_absolute() => Some(dir.clone()),
            Some(dir) => std::env::current_dir().map_or_else(|_| Some(dir.clone()), |here| Some(here.join(dir))),
            None => std::env::current_dir().ok(),
        };
        crate::runtime::zygote::PortRequest {
            reg,
            // Duration::MAX (wait as long as it takes) saturates.
            shutdown_ms: u64::try_from(self.shutdown.as_millis()).unwrap_or(u64::MAX),
            program: bytes(self.program.as_os_str()),
            args: self.args.iter().map(|a| bytes(a)).collect(),
            arg0: self.arg0.as_deref().map(bytes),
            env: env.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
            cwd: cwd.map(|d| bytes(d.as_os_str())),
            separate_stderr: !matches!(self.stderr, Stderr::Merge),
        }
    }

    /// Starts the program; the calling process is its owner.
    pub fn spawn(&self) -> Result<Port, PortError> {
        self.check_framing()?;
        let rt = runtime::current().ok_or(PortError::NotInitialized)?;
        if let Some(node) = rt.node()
            && !node.accepting()
        {
            return Err(PortError::ShuttingDown);
        }
        let serial = rt
            .shared()
            .next_serial
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let pid = Pid::new(rt.pid().node(), serial);
        let exit_ref = rt.next_ref();
        let reg = Registration {
            serial,
            parent: rt.pid().serial(),
            name: Some(self.name.clone().unwrap_or_else(|| {
                self.program.file_name().map_or_else(
                    || self.program.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })),
            link: self.link,
            monitors: vec![(exit_ref, true)],
            trap_exits: false,
            cpu_limited: false,
            memory_limited: false,
            leave_strays: false,
            // The zygote started it and reaps it.
            reaper: Some(crate::pid::ZYGOTE_SERIAL),
            scheduler: None,
        };
        let request = self.request(reg);
        if request.has_nul() {
            // As `std::process::Command` says it, before anything starts.
            return Err(PortError::Spawn {
                program: self.program.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a nul byte in the program's name, an argument, the environment or the directory",
                ),
            });
        }
        let (in_r, in_w) = io::pipe()?;
        let (out_r, out_w) = io::pipe()?;
        let err = match self.stderr {
            Stderr::Merge => None,
            Stderr::Separate | Stderr::Log => Some(io::pipe()?),
        };
        let (err_r, err_w) = err.map_or((None, None), |(r, w)| (Some(OwnedFd::from(r)), Some(OwnedFd::from(w))));
        // The program's ends, in order: input, output, error.
        let mut fds: Vec<OwnedFd> = vec![in_r.into(), out_w.into()];
        fds.extend(err_w);
        let out: OwnedFd = out_r.into();
        let stdin: OwnedFd = in_w.into();
        for fd in [Some(&out), err_r.as_ref(), Some(&stdin)].into_iter().flatten() {
            crate::sys::socket::set_nonblocking(fd, true)?;
        }
        // Known to the inbox before it runs (its exit may come as soon as it
        // does), read only once the node knows it (a broken framing kills it
        // through the node): the zygote registers it before answering.
        rt.inbox.add_port(
            serial,
            PortIo::new(
                pid,
                out,
                err_r,
                stdin,
                self.framing,
                self.stderr,
                self.max_packet,
                exit_ref,
            ),
        );
        // Its ends go to the zygote; only the program holds them afterwards.
        let spawned = crate::runtime::zygote::spawn_port(rt, &request, fds);
        let ospid = match spawned {
            Ok(ospid) => ospid,
            Err(source) => {
                rt.inbox.remove_port(serial);
                return Err(PortError::Spawn {
                    program: self.program.clone(),
                    source,
                });
            }
        };
        rt.inbox.watch_port(serial)?;
        rt.ensure_background();
        tracing::debug!(port = %pid, ospid, program = %self.program.display(), "port started");
        Ok(Port {
            pid,
            ospid,
            framing: self.framing,
            rt,
        })
    }
}

/// A running external program, held by its owner (the process that started
/// it). Only the owner sends it input and receives its output; other
/// processes address it by its [`Pid`].
///
/// Dropping the handle leaves the program running; it ends with its owner.
pub struct Port {
    pid: Pid,
    ospid: i32,
    framing: Framing,
    rt: &'static Runtime,
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Port({}, os pid {})", self.pid, self.ospid)
    }
}

impl Port {
    /// The port's process id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The program's OS pid.
    pub fn os_pid(&self) -> i32 {
        self.ospid
    }

    /// Writes `data` to the program's standard input, framed as the port's
    /// framing says (a length prefix for packets). Never blocks: when the pipe
    /// is full the bytes wait, in order, in this process.
    pub fn send(&self, data: &[u8]) -> Result<(), PortError> {
        let framed;
        let bytes = match self.framing {
            Framing::Packet(n) => {
                framed = stdio::frame(n, data).map_err(PortError::Framing)?;
                &framed[..]
            }
            _ => data,
        };
        self.rt
            .inbox
            .port_write(self.rt, self.pid.serial(), bytes)
            .map_err(|_closed| PortError::Closed)
    }

    /// Writes `line` and a newline.
    pub fn send_line(&self, line: &str) -> Result<(), PortError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.rt
            .inbox
            .port_write(self.rt, self.pid.serial(), &bytes)
            .map_err(|_closed| PortError::Closed)
    }

    /// Holds the program's output (`true`) or lets it go (`false`): while
    /// held, its pipes are not read and the program waits on them, as on a
    /// slow reader; what was read already still comes. For an owner that
    /// passes the output on and must not take more than its own reader
    /// takes. (Output queued unread is bounded anyway: past 1 MiB a port's
    /// pipes wait for its owner to take some.)
    pub fn hold_output(&self, hold: bool) {
        self.rt.inbox.port_hold(self.pid.serial(), hold);
    }

    /// Bytes given to [`send`](Port::send) that the program's input pipe has
    /// not taken yet (they wait, in order, in this process). A sender that
    /// must not outrun the program waits while this is large.
    pub fn input_pending(&self) -> usize {
        self.rt.inbox.port_input_pending(self.pid.serial())
    }

    /// Closes the program's standard input (after what was sent is written):
    /// the program reads end of file.
    pub fn close_input(&self) {
        self.rt.inbox.port_close_input(self.rt, self.pid.serial());
    }

    /// Waits for the next event of this port (other items stay queued).
    pub fn recv(&self) -> Result<PortOutput, RecvError> {
        self.wait(None).map_err(|_| RecvError)
    }

    /// Waits up to `timeout` for the next event of this port.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<PortOutput, RecvTimeoutError> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Takes the next event of this port if one is waiting.
    pub fn try_recv(&self) -> Result<PortOutput, TryRecvError> {
        match self.wait(Some(Instant::now())) {
            Ok(o) => Ok(o),
            Err(RecvTimeoutError::Timeout) => Err(TryRecvError::Empty),
            Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
        }
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<PortOutput, RecvTimeoutError> {
        let serial = self.pid.serial();
        let got = self.rt.inbox.pump(self.rt, deadline, |st| {
            match st.take_first(|it| matches!(it, Item::Port { port, .. } if *port == serial)) {
                Some(Item::Port { output, .. }) => Some(output),
                _ => None,
            }
        });
        match got {
            Some(o) => Ok(o),
            None if self.rt.inbox.lock().disconnected => Err(RecvTimeoutError::Disconnected),
            None => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Sends `signal` to the program's process group (as a shell forwards
    /// Ctrl-C to a job). The port ends with the program's own status: for
    /// one that dies of the signal, `Signal { signal, .. }`. Call it while
    /// the port runs (before its `Exit` is received): its group id is its
    /// process id, which the system may give to another process once the
    /// port has ended.
    pub fn signal(&self, signal: i32) -> Result<(), PortError> {
        crate::sys::process::kill_group(self.ospid, signal).map_err(PortError::Io)
    }

    /// Kills the program and its process group at once (`SIGKILL`); the port
    /// ends `Killed`.
    pub fn kill(&self) {
        crate::mailbox::Mailbox::<()>::from_pid(self.pid).kill();
    }

    /// Stops the program in order: `SIGTERM` to its process group, `SIGKILL`
    /// when its shutdown timeout is up. A program that stops on `SIGTERM`
    /// ends `Shutdown`; one that has to be killed ends `Killed`; one that
    /// exits by itself keeps its own status.
    pub fn shutdown(&self) {
        crate::mailbox::Mailbox::<()>::from_pid(self.pid).exit(ExitReason::Shutdown);
    }
}

//! The protocol between the `converge` command and a node daemon
//! (`converge node`) on the same host (feature `cli`): frames over the
//! daemon's Unix socket, which only its own user can use.
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes of
//! a postcard-encoded [`Request`] (client to daemon) or [`Reply`] (daemon to
//! client). The length is checked against [`MAX_FRAME`] before anything is
//! allocated for the frame.
//!
//! A run is one connection: the client sends [`Request::Run`], then its
//! standard input as [`Request::Input`] chunks and [`Request::InputEnd`],
//! and the signals it receives as [`Request::Signal`]; the daemon answers
//! [`Reply::Started`], the program's output as [`Reply::Stdout`] and
//! [`Reply::Stderr`] chunks as they come, and one [`Reply::Exit`], or one
//! [`Reply::Failed`] when it could not start (before [`Reply::Started`],
//! or after it for a run on another node, whose program is looked up
//! there). A client that goes away
//! before the end stops its program, as a shell's job ends with its
//! terminal.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::ExitReason;

/// The largest frame either side accepts (a chunk of output is far
/// smaller; a listing of a large cluster fits).
pub const MAX_FRAME: usize = 16 << 20;

/// Bytes of input a client sends a run and the program has not taken yet,
/// at most: it reads no more of its own input until [`Reply::InputTaken`]
/// says the program took some (so `yes | converge run -- sleep 9` holds
/// about this much, not all `yes` writes).
pub const INPUT_WINDOW: u64 = 1 << 20;

/// Where a program runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// On the daemon's own node.
    Here,
    /// On the named node of the cluster.
    On(String),
    /// On the node with most free slots, not one of `avoid` while another
    /// will do (where a job already failed). When none has a free slot:
    /// the daemon's own node, or, with [`RunSpec::wait_for_slot`], the
    /// first node to have one.
    Anywhere {
        /// Nodes to pass over.
        avoid: Vec<String>,
    },
}

/// A program to run, as the client resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Where.
    pub placement: Placement,
    /// The program as the user named it (its `argv[0]`).
    pub program: Vec<u8>,
    /// Its arguments.
    pub args: Vec<Vec<u8>>,
    /// The client's environment: the program's on this host (another
    /// node's program has that node's environment).
    pub env_base: Vec<(Vec<u8>, Vec<u8>)>,
    /// Variables set with `--env`, on any node.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// `--workdir`, if given.
    pub workdir: Option<Vec<u8>>,
    /// The client's working directory (the program's on this host when no
    /// `--workdir` is given).
    pub cwd: Vec<u8>,
    /// `--timeout`, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Between the `SIGTERM` of a stop and its `SIGKILL`, in milliseconds.
    pub kill_after_ms: u64,
    /// Whether a program named by a path is sent to another node (by
    /// content hash) rather than taken from that node's file system.
    pub ship: bool,
    /// Whether the run waits, queued at the daemon, for a node with a free
    /// slot ([`Placement::Anywhere`] only).
    pub wait_for_slot: bool,
    /// What the run is part of, for `ps`: runs of one group are one row
    /// there (the latest, with its restarts and the exit before it).
    pub label: Option<Label>,
}

/// What a run is part of (a supervised server's successive runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// What started it (`supervise`).
    pub kind: String,
    /// The group its runs share.
    pub group: u64,
    /// Runs of the group before this one.
    pub restarts: u32,
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a program (the connection is then that run's).
    Run(Box<RunSpec>),
    /// Bytes of the run's standard input.
    Input(Vec<u8>),
    /// The end of the run's standard input.
    InputEnd,
    /// A signal for the program's process group.
    Signal(i32),
    /// Stop the program in order: `SIGTERM` to its group, `SIGKILL` after
    /// the run's `kill_after_ms`.
    Stop,
    /// The nodes of the cluster, with their slots and load.
    Nodes,
    /// The processes the daemons of the cluster run for their clients.
    Ps,
}

/// A node as `converge nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// Its name.
    pub name: String,
    /// Where its sessions are accepted (none for a node outside any
    /// cluster).
    pub addr: Option<String>,
    /// Whether it is the node asked.
    pub here: bool,
    /// Whether the node asked has a session open to it.
    pub connected: bool,
    /// Programs it runs at once.
    pub slots: Option<u32>,
    /// Programs it runs now.
    pub busy: Option<u32>,
    /// Programs waiting there for a slot.
    pub queued: Option<u32>,
}

/// How a process listed by `converge ps` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Running.
    Running,
    /// Ended on its own with status 0.
    Exited,
    /// Ended on its own with another status, or could not start.
    Failed,
    /// Ended by something outside it: killed, a signal, its node lost
    /// (`NoConnection`), a timeout.
    Interrupted,
}

impl State {
    /// Where a process that ended so stands.
    pub fn of(reason: &ExitReason) -> State {
        match reason {
            ExitReason::Normal => State::Exited,
            ExitReason::Killed | ExitReason::Signal { .. } | ExitReason::NoConnection | ExitReason::Shutdown => {
                State::Interrupted
            }
            _ => State::Failed,
        }
    }

    /// Its name in listings.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
        }
    }
}

/// A process as `converge ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRow {
    /// The node it runs on.
    pub node: String,
    /// The node that owns it (where it was submitted).
    pub owner: String,
    /// Its converge process id.
    pub pid: String,
    /// Its operating-system process id on its node (0 before it started).
    pub os_pid: i32,
    /// What started it (`run`).
    pub kind: String,
    /// The command line.
    pub command: String,
    /// How it stands.
    pub state: State,
    /// Milliseconds since it started (to its end, once it ended).
    pub uptime_ms: u64,
    /// Times it was restarted.
    pub restarts: u32,
    /// Why it ended, once it did.
    pub last_exit: Option<ExitReason>,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The program started there.
    Started {
        /// The node it runs on.
        node: String,
        /// Its converge process id.
        pid: String,
    },
    /// Bytes of its standard output.
    Stdout(Vec<u8>),
    /// Bytes of its standard error.
    Stderr(Vec<u8>),
    /// It ended.
    Exit {
        /// Why.
        reason: ExitReason,
        /// Whether the run's `--timeout` stopped it.
        timed_out: bool,
    },
    /// It could not be run: the status the command exits with and why, in
    /// one line.
    Failed {
        /// The status (`126`, `127`, `125`).
        code: u8,
        /// Why.
        why: String,
    },
    /// The nodes.
    Nodes(Vec<NodeRow>),
    /// The processes.
    Ps(Vec<ProcessRow>),
    /// The program took this many more bytes of the input sent to it. The
    /// daemon sends `InputTaken(0)` right after `Started` to say it tells
    /// this; a client that heard it keeps at most [`INPUT_WINDOW`] bytes
    /// sent and not taken.
    InputTaken(u64),
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ended at a frame boundary.
    #[error("the connection closed")]
    Closed,
    /// Reading failed, or the stream ended inside a frame.
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
    /// Its length is over [`MAX_FRAME`] (nothing was allocated for it).
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Its bytes do not decode.
    #[error("an undecodable frame: {0}")]
    Undecodable(String),
}

/// Writes `value` as one frame.
pub fn write_frame<T: Serialize>(to: &mut impl Write, value: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(value).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a frame of {} bytes is over the limit",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    to.write_all(&frame)
}

/// Reads one frame and decodes it as `T`.
pub fn read_frame<T: for<'de> Deserialize<'de>>(from: &mut impl Read) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match from.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    from.read_exact(&mut body)?;
    decode(&body)
}

/// Decodes a frame's body, all of it.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(FrameError::Undecodable(format!("{} bytes past the value", rest.len()))),
        Err(e) => Err(FrameError::Undecodable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused_before_allocation() {
        let mut buf = Vec::new();
        let req = Request::Run(Box::new(RunSpec {
            placement: Placement::On("beta".into()),
            program: b"./x".to_vec(),
            args: vec![b"a b".to_vec()],
            env_base: vec![(b"K".to_vec(), b"V".to_vec())],
            env: vec![],
            workdir: None,
            cwd: b"/".to_vec(),
            timeout_ms: Some(5),
            kill_after_ms: 10,
            ship: true,
            wait_for_slot: false,
            label: None,
        }));
        write_frame(&mut buf, &req).unwrap();
        write_frame(&mut buf, &Request::InputEnd).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), req);
        assert_eq!(read_frame::<Request>(&mut r).unwrap(), Request::InputEnd);
        assert!(matches!(read_frame::<Request>(&mut r), Err(FrameError::Closed)));
        // A length past the limit: refused from the prefix alone.
        let mut huge = &[0xffu8, 0xff, 0xff, 0xff][..];
        assert!(matches!(read_frame::<Request>(&mut huge), Err(FrameError::TooLarge(_))));
        // Cut inside a frame; garbage; trailing bytes.
        assert!(matches!(read_frame::<Request>(&mut &buf[..6]), Err(FrameError::Io(_))));
        let mut junk = &[0, 0, 0, 2, 0xff, 0xff][..];
        assert!(matches!(
            read_frame::<Request>(&mut junk),
            Err(FrameError::Undecodable(_))
        ));
        let mut long = &[0, 0, 0, 3, 2, 0, 0][..];
        assert!(matches!(
            read_frame::<Request>(&mut long),
            Err(FrameError::Undecodable(_))
        ));
    }

    #[cfg(feature = "fuzzing")]
    #[test]
    fn the_fuzz_entry_takes_any_bytes() {
        let mut real = Vec::new();
        write_frame(&mut real, &Reply::Stdout(vec![7; 40])).unwrap();
        write_frame(
            &mut real,
            &Reply::Exit {
                reason: ExitReason::Killed,
                timed_out: true,
            },
        )
        .unwrap();
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0xff; 64], vec![0, 0, 0, 1, 9]];
        inputs.extend((0..real.len()).map(|n| real[..n].to_vec()));
        for data in inputs {
            crate::fuzzing::daemon_frame(&data);
        }
    }

    #[test]
    fn states_of_exit_reasons() {
        assert_eq!(State::of(&ExitReason::Normal), State::Exited);
        assert_eq!(State::of(&ExitReason::Code(3)), State::Failed);
        assert_eq!(State::of(&ExitReason::Killed), State::Interrupted);
        assert_eq!(State::of(&ExitReason::NoConnection), State::Interrupted);
    }
}

//! The `converge` command: programs run as ports of a converge node, with
//! the exit statuses and flags that `timeout`, GNU parallel and supervisord
//! users know.

mod client;
mod node;
mod parallel;
mod run;
mod supervise;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Exit status of `converge run` when converge itself failed (a bad flag
/// value, no node), as `timeout` uses 125.
pub(crate) const FAILED: u8 = 125;

#[derive(Parser)]
#[command(
    name = "converge",
    version,
    about = "Run programs as supervised processes of a converge node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one program and exit as it did (its code; 128+N for signal N;
    /// 124 when it timed out; 126 not executable; 127 not found; 125 when
    /// converge failed).
    Run(run::RunArgs),
    /// Run a command for each argument, N at a time, as GNU parallel does
    /// (its job log, --resume, --retries, --timeout, --halt and exit
    /// statuses: the number of failed jobs, 255 for a usage error).
    Parallel(parallel::ParallelArgs),
    /// Keep a server running: restarts with backoff, start failures within
    /// --startsecs, a restart limit past which it gives up with the
    /// server's last status (as supervisord's FATAL).
    Supervise(supervise::SuperviseArgs),
    /// Run a node daemon: `run`, `nodes` and `ps` of this user talk to it,
    /// and with --listen it is a member of a cluster, where programs run on
    /// whichever node has room.
    Node(node::NodeArgs),
    /// The nodes of the cluster, with their slots and load.
    Nodes(client::NodesArgs),
    /// The programs the cluster's nodes run for their clients, and those
    /// that ended lately.
    Ps(client::PsArgs),
}

/// A duration as `timeout` reads one: a number (fractions allowed) with an
/// optional unit, `s` (default), `m`, `h` or `d`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => return Err(format!("invalid time unit in {s:?} (s, m, h or d)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid time interval {s:?}"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("invalid time interval {s:?}"));
    }
    Duration::try_from_secs_f64(n * scale).map_err(|_| format!("invalid time interval {s:?}"))
}

/// The node of one command: signals are the command's to handle (the node
/// does not stop on them) and there is no scheduler pool to start.
pub(crate) fn embedded_node() -> Result<converge::Node, String> {
    converge::Config::new()
        .handle_signals(false)
        .schedulers(0)
        .init()
        .map_err(|e| format!("starting the node: {e}"))
}

/// Delivers `signals` to the node's main program as `i32` messages, so that
/// its event loop sees them among the ports' events; the handle stops it.
pub(crate) fn signals_as_messages<M>(
    node: &converge::Node,
    signals: &[i32],
    wrap: fn(i32) -> M,
) -> Result<signal_hook::iterator::Handle, String>
where
    M: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let mut signals = signal_hook::iterator::Signals::new(signals).map_err(|e| e.to_string())?;
    let handle = signals.handle();
    let me = node.mailbox::<M>();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if me.send(wrap(signal)).is_err() {
                return;
            }
        }
    });
    Ok(handle)
}

/// A port of `program` with its arguments, raw output, standard error
/// apart, in `workdir` with `env` added.
pub(crate) fn program_port(
    path: &std::path::Path,
    command: &[std::ffi::OsString],
    workdir: Option<&std::path::Path>,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> converge::port::PortBuilder {
    let (program, rest) = command.split_first().expect("BUG: clap requires a program");
    let mut builder = converge::port::PortBuilder::new(path)
        .arg0(program)
        .args(rest)
        .framing(converge::port::Framing::Raw)
        .stderr(converge::port::Stderr::Separate);
    if let Some(dir) = workdir {
        builder = builder.current_dir(dir);
    }
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                // Usage errors of `run` are converge's failures (125), as
                // `timeout` reports its own.
                _ if std::env::args().nth(1).as_deref() == Some("run") => ExitCode::from(FAILED),
                // GNU parallel's usage errors exit 255.
                _ if std::env::args().nth(1).as_deref() == Some("parallel") => ExitCode::from(parallel::USAGE),
                _ => ExitCode::from(2),
            };
        }
    };
    match cli.command {
        Command::Run(args) => match run::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("converge run: {e}");
                ExitCode::from(FAILED)
            }
        },
        Command::Supervise(args) => match supervise::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("converge supervise: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Node(args) => match node::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("converge node: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Nodes(args) => client::nodes(args).unwrap_or_else(|(code, e)| {
            eprintln!("converge nodes: {e}");
            ExitCode::from(code)
        }),
        Command::Ps(args) => client::ps(args).unwrap_or_else(|(code, e)| {
            eprintln!("converge ps: {e}");
            ExitCode::from(code)
        }),
        Command::Parallel(args) => match parallel::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("converge parallel: {e}");
                ExitCode::from(parallel::USAGE)
            }
        },
    }
}

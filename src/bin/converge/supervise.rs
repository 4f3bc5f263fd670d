//! `converge supervise`: keeps a server running, as supervisord does: a
//! start that dies within `--startsecs` is a start failure, retried
//! `--startretries` times in a row before giving up (FATAL); a server that
//! started is restarted per `--restart`, within `--max-restarts`; restarts
//! back off from 100 ms, doubling to 30 s, and the backoff resets after a
//! stable run. Stopping (SIGTERM, SIGINT) sends TERM to the server's whole
//! group and KILL after `--stop-timeout`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use converge::port::PortOutput;
use converge::{Event, ExitReason, RecvTimeoutError};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};

use crate::run::{resolve, status};

const EXAMPLES: &str = "Examples:
  converge supervise -- ./server --port 8080
  converge supervise --restart transient --startsecs 5 --max-restarts 5/60s -- worker
  converge supervise --stop-timeout 30s --env RUST_LOG=info -- ./server";

/// The first wait before a restart, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long (and past --startsecs) resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub(crate) struct SuperviseArgs {
    /// `permanent`: restart whenever the server ends; `transient`: only when
    /// it fails (not after exit code 0).
    #[arg(long, value_enum, default_value = "permanent")]
    restart: Restart,
    /// At most N restarts within T (`5/10s`) of a server that had started;
    /// past it, give up and exit with the server's last status.
    #[arg(long, value_name = "N/T", value_parser = parse_intensity, default_value = "5/10s")]
    max_restarts: Intensity,
    /// How long the server must stay up to count as started (supervisord's
    /// startsecs); a shorter run is a start failure.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "1")]
    startsecs: Duration,
    /// Start failures in a row retried before giving up (supervisord's
    /// startretries).
    #[arg(long, value_name = "N", default_value_t = 3)]
    startretries: u32,
    /// Time between TERM and KILL when the server is stopped.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "10s")]
    stop_timeout: Duration,
    /// The server's working directory.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Sets a variable in the server's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = crate::run::parse_env)]
    env: Vec<(OsString, OsString)>,
    /// The server and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "SERVER")]
    command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Restart {
    Permanent,
    Transient,
}

/// At most `restarts` within `period`.
#[derive(Debug, Clone, Copy)]
struct Intensity {
    restarts: usize,
    period: Duration,
}

fn parse_intensity(s: &str) -> Result<Intensity, String> {
    let (n, t) = s.split_once('/').ok_or_else(|| format!("{s:?} is not N/T (5/10s)"))?;
    Ok(Intensity {
        restarts: n.parse().map_err(|_| format!("{n:?} is not a number of restarts"))?,
        period: crate::parse_duration(t)?,
    })
}

fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "converge supervise: {line}");
}

fn describe(reason: &ExitReason) -> String {
    match reason {
        ExitReason::Normal => "exit code 0".into(),
        ExitReason::Code(c) => format!("exit code {c}"),
        ExitReason::Signal {
            signal,
            core_dumped: true,
        } => format!("signal {signal} (core dumped)"),
        ExitReason::Signal { signal, .. } => format!("signal {signal}"),
        ExitReason::Killed => "killed (signal 9)".into(),
        other => other.to_string(),
    }
}

/// What a wait ended with.
enum Woken {
    Exited(ExitReason),
    /// SIGTERM or SIGINT: stop; SIGHUP: restart now.
    Signal(i32),
    TimeUp,
    /// The node stopped under us.
    NodeGone,
}

pub(crate) fn run(args: SuperviseArgs) -> Result<ExitCode, String> {
    let program = args.command.first().expect("BUG: clap requires a server");
    let path = match resolve(Path::new(program), args.workdir.as_deref()) {
        Ok(p) => p,
        Err((code, why)) => {
            log(&why);
            return Ok(ExitCode::from(code));
        }
    };
    let node = crate::embedded_node()?;
    let stop_forwarding = crate::signals_as_messages(&node, &[SIGINT, SIGTERM, SIGHUP], |s| s)?;
    let ctx = node.ctx::<i32>();
    let builder = crate::program_port(&path, &args.command, args.workdir.as_deref(), &args.env)
        .shutdown_timeout(args.stop_timeout);
    let shown = PathBuf::from(program).display().to_string();
    let mut backoff = FIRST_BACKOFF;
    let mut start_failures = 0u32;
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let code = 'supervise: loop {
        let started = Instant::now();
        let spawned = builder.spawn();
        // A start that fails (the program being replaced, no memory) is a
        // start failure, as supervisord counts one.
        let reason = match &spawned {
            Ok(port) => {
                port.close_input();
                log(&format!("started {shown} (os pid {})", port.os_pid()));
                None
            }
            Err(e) => {
                log(&format!("starting {shown} failed: {e}"));
                Some(ExitReason::Error(e.to_string()))
            }
        };
        // The server's output passes through until it ends or we are told
        // to stop.
        let mut stopping: Option<i32> = None;
        let reason = match (reason, spawned) {
            (Some(failed), _) => failed,
            (None, Err(_)) => unreachable!("BUG: a failed spawn has a reason"),
            (None, Ok(port)) => loop {
                match wait(&ctx, None) {
                    Woken::NodeGone => break 'supervise 1,
                    Woken::Exited(reason) => break reason,
                    Woken::Signal(SIGHUP) => {
                        log("SIGHUP: restarting the server");
                        port.shutdown();
                        stopping.get_or_insert(SIGHUP);
                    }
                    Woken::Signal(signal) => {
                        log(&format!("signal {signal}: stopping the server"));
                        port.shutdown();
                        stopping = Some(signal);
                    }
                    Woken::TimeUp => {}
                }
            },
        };
        let ran = started.elapsed();
        log(&format!(
            "{shown} ended: {} after {:.3} s",
            describe(&reason),
            ran.as_secs_f64()
        ));
        match stopping {
            Some(SIGHUP) => {
                backoff = FIRST_BACKOFF;
                continue;
            }
            // Stopped on request: 0, or 137 when it had to be killed.
            Some(_) => {
                break if matches!(reason, ExitReason::Killed) {
                    128 + 9
                } else {
                    0
                };
            }
            None => {}
        }
        let last = status(&reason);
        let failed = !matches!(reason, ExitReason::Normal);
        if ran < args.startsecs {
            start_failures += 1;
            if start_failures > args.startretries {
                log(&format!(
                    "FATAL: {shown} exited too quickly {start_failures} times in a row (--startsecs {:?}); giving up",
                    args.startsecs
                ));
                break last;
            }
            log(&format!(
                "start failure {start_failures} of {} allowed; restarting in {backoff:?}",
                args.startretries
            ));
        } else {
            start_failures = 0;
            if args.restart == Restart::Transient && !failed {
                log(&format!("{shown} exited normally; not restarted (--restart transient)"));
                break 0;
            }
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > args.max_restarts.period)
            {
                restarts.pop_front();
            }
            if restarts.len() >= args.max_restarts.restarts {
                log(&format!(
                    "FATAL: more than {} restarts in {:?} (--max-restarts); giving up",
                    args.max_restarts.restarts, args.max_restarts.period
                ));
                break last;
            }
            restarts.push_back(now);
            if ran >= STABLE {
                backoff = FIRST_BACKOFF;
            }
            log(&format!("restarting in {backoff:?}"));
        }
        // The backoff, during which a stop still stops.
        let until = Instant::now() + backoff;
        loop {
            match wait(&ctx, Some(until)) {
                Woken::TimeUp => break,
                Woken::Signal(SIGHUP) => break,
                Woken::Signal(signal) => {
                    log(&format!("signal {signal}: not restarting"));
                    break 'supervise 0;
                }
                Woken::Exited(_) => {}
                Woken::NodeGone => break 'supervise 1,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    stop_forwarding.close();
    node.shutdown(Duration::from_secs(1));
    Ok(ExitCode::from(code))
}

/// Passes the server's output through until its end, a signal, or `until`.
fn wait(ctx: &converge::Ctx<i32>, until: Option<Instant>) -> Woken {
    loop {
        let timeout = until.map_or(Duration::from_secs(3600), |u| {
            u.saturating_duration_since(Instant::now())
        });
        match ctx.recv_event_timeout(timeout) {
            Ok(Event::Port { output, .. }) => match output {
                PortOutput::Data(bytes) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes).and_then(|()| out.flush());
                }
                PortOutput::Stderr(bytes) => {
                    let _ = std::io::stderr().write_all(&bytes);
                }
                PortOutput::Exit(reason) => return Woken::Exited(reason),
                _ => {}
            },
            Ok(Event::Message(signal)) => return Woken::Signal(signal),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                if until.is_some_and(|u| Instant::now() >= u) {
                    return Woken::TimeUp;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Woken::NodeGone,
        }
    }
}

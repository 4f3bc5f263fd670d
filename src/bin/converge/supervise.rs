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
use converge::daemon::{Label, Placement, Reply, Request, RunSpec, read_frame, write_frame};
use converge::port::{Port, PortOutput};
use converge::{Event, ExitReason, RecvTimeoutError};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};

use crate::run::{resolve, status};

const EXAMPLES: &str = "Examples:
  converge supervise -- ./server --port 8080
  converge supervise --restart transient --startsecs 5 --max-restarts 5/60s -- worker
  converge supervise --stop-timeout 30s --env RUST_LOG=info -- ./server
  converge supervise --anywhere -- ./server   # on the cluster, moved when its node is lost";

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
    #[command(flatten)]
    place: crate::client::Where,
    /// The server and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "SERVER")]
    command: Vec<OsString>,
}

/// What the loop receives: signals, and what the node daemon says of the
/// server's run `instance`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Msg {
    Signal(i32),
    Daemon {
        instance: u64,
        reply: Reply,
    },
    /// The connection of run `instance` to the daemon broke.
    Lost {
        instance: u64,
    },
}

/// One run of the server: a port of this command's node, or a run of the
/// node daemon.
enum Instance {
    Port(Port),
    Daemon(std::os::unix::net::UnixStream),
}

impl Instance {
    /// TERM to its group, KILL after the stop timeout.
    fn stop(&self) {
        match self {
            Instance::Port(p) => p.shutdown(),
            Instance::Daemon(stream) => {
                let _ = write_frame(&mut &*stream, &Request::Stop);
            }
        }
    }
}

/// Where the server runs: ports here, or runs of a node daemon.
enum Backend {
    Here(converge::port::PortBuilder),
    Daemon {
        name: String,
        spec: RunSpec,
        group: u64,
        instance: u64,
        /// The node its last run was lost with.
        lost_on: Option<String>,
        /// The node its current run is on.
        on: Option<String>,
    },
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
    /// The program is not there, or cannot run, where it was placed: this
    /// status, at once.
    NotRunnable(u8),
}

pub(crate) fn run(args: SuperviseArgs) -> Result<ExitCode, String> {
    let program = args.command.first().expect("BUG: clap requires a server");
    let daemon = args.place.daemon()?.map(|(name, _)| name);
    let mut backend = match daemon {
        Some(name) => Backend::Daemon {
            spec: daemon_spec(&args)?,
            name,
            group: rand_group(),
            instance: 0,
            lost_on: None,
            on: None,
        },
        None => {
            let path = match resolve(Path::new(program), args.workdir.as_deref()) {
                Ok(p) => p,
                Err((code, why)) => {
                    log(&why);
                    return Ok(ExitCode::from(code));
                }
            };
            Backend::Here(
                crate::program_port(&path, &args.command, args.workdir.as_deref(), &args.env)
                    .shutdown_timeout(args.stop_timeout),
            )
        }
    };
    let node = crate::embedded_node()?;
    let stop_forwarding = crate::signals_as_messages(&node, &[SIGINT, SIGTERM, SIGHUP], Msg::Signal)?;
    let ctx = node.ctx::<Msg>();
    let shown = PathBuf::from(program).display().to_string();
    let mut backoff = FIRST_BACKOFF;
    let mut start_failures = 0u32;
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut runs = 0u32;
    let code = 'supervise: loop {
        let started = Instant::now();
        let spawned = start(&mut backend, &ctx, runs, &shown);
        runs += 1;
        // A start that fails (the program being replaced, no memory, no
        // node) is a start failure, as supervisord counts one; a program
        // that is not there or cannot run is FATAL at once.
        let reason = match &spawned {
            Ok(_) => None,
            Err(Failure::Fatal(code, why)) => {
                log(&format!("FATAL: {why}"));
                break 'supervise *code;
            }
            Err(Failure::Start(e)) => {
                log(&format!("starting {shown} failed: {e}"));
                Some(ExitReason::Error(e.clone()))
            }
        };
        // The server's output passes through until it ends or we are told
        // to stop.
        let mut stopping: Option<i32> = None;
        let reason = match (reason, spawned) {
            (Some(failed), _) => failed,
            (None, Err(_)) => unreachable!("BUG: a failed spawn has a reason"),
            (None, Ok(instance)) => loop {
                match wait(&ctx, &mut backend, None) {
                    Woken::NodeGone => break 'supervise 1,
                    Woken::Exited(reason) => break reason,
                    Woken::NotRunnable(code) => break 'supervise code,
                    Woken::Signal(SIGHUP) => {
                        log("SIGHUP: restarting the server");
                        instance.stop();
                        stopping.get_or_insert(SIGHUP);
                    }
                    Woken::Signal(signal) => {
                        log(&format!("signal {signal}: stopping the server"));
                        instance.stop();
                        stopping = Some(signal);
                    }
                    Woken::TimeUp => {}
                }
            },
        };
        if let (ExitReason::NoConnection, Backend::Daemon { lost_on, on, .. }) = (&reason, &mut backend) {
            // Placed elsewhere next time, when it may go anywhere.
            *lost_on = on.take();
        }
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
            match wait(&ctx, &mut backend, Some(until)) {
                Woken::TimeUp => break,
                Woken::Signal(SIGHUP) => break,
                Woken::Signal(signal) => {
                    log(&format!("signal {signal}: not restarting"));
                    break 'supervise 0;
                }
                Woken::Exited(_) | Woken::NotRunnable(_) => {}
                Woken::NodeGone => break 'supervise 1,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    stop_forwarding.close();
    node.shutdown(Duration::from_secs(1));
    Ok(ExitCode::from(code))
}

/// How a start failed.
enum Failure {
    /// Retried as a start failure.
    Start(String),
    /// Given up at once with this status (a program that is not there or
    /// cannot run).
    Fatal(u8, String),
}

/// A group id for the server's runs, unique enough on this host.
fn rand_group() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(b)
}

/// The run the daemon is asked for each start.
fn daemon_spec(args: &SuperviseArgs) -> Result<RunSpec, String> {
    let mut spec = crate::client::run_spec(
        args.place.placement(),
        &args.command,
        &args.env,
        args.workdir.as_deref(),
    )?;
    spec.kill_after_ms = crate::client::millis(args.stop_timeout);
    Ok(spec)
}

/// Starts a run of the server.
fn start(backend: &mut Backend, ctx: &converge::Ctx<Msg>, runs: u32, shown: &str) -> Result<Instance, Failure> {
    match backend {
        Backend::Here(builder) => {
            let port = builder.spawn().map_err(|e| Failure::Start(e.to_string()))?;
            port.close_input();
            log(&format!("started {shown} (os pid {})", port.os_pid()));
            Ok(Instance::Port(port))
        }
        Backend::Daemon {
            name,
            spec,
            group,
            instance,
            lost_on,
            on,
        } => {
            let mut spec = spec.clone();
            spec.label = Some(Label {
                kind: "supervise".into(),
                group: *group,
                restarts: runs,
            });
            if let (Placement::Anywhere { avoid }, Some(lost)) = (&mut spec.placement, lost_on.as_ref()) {
                avoid.push(lost.clone());
            }
            let failed = |e: std::io::Error| Failure::Start(format!("node {name}: {e}"));
            let mut stream = crate::client::connect(name).map_err(Failure::Start)?;
            write_frame(&mut stream, &Request::Run(Box::new(spec))).map_err(failed)?;
            write_frame(&mut stream, &Request::InputEnd).map_err(failed)?;
            // The first answer: started, or why not.
            match read_frame::<Reply>(&mut stream) {
                Ok(Reply::Started { node, pid }) => {
                    log(&format!("started {shown} on node {node} ({pid})"));
                    *on = Some(node);
                }
                Ok(Reply::Failed { code, why }) if code == 126 || code == 127 => return Err(Failure::Fatal(code, why)),
                Ok(Reply::Failed { why, .. }) => return Err(Failure::Start(why)),
                Ok(other) => return Err(Failure::Start(format!("node {name}: unexpected answer {other:?}"))),
                Err(e) => return Err(Failure::Start(format!("node {name}: {e}"))),
            }
            *instance += 1;
            let this = *instance;
            let from = stream.try_clone().map_err(failed)?;
            crate::client::forward_replies(
                from,
                ctx.mailbox(),
                move |reply| Msg::Daemon { instance: this, reply },
                Msg::Lost { instance: this },
            );
            Ok(Instance::Daemon(stream))
        }
    }
}

/// Passes the server's output through until its end, a signal, or `until`.
fn wait(ctx: &converge::Ctx<Msg>, backend: &mut Backend, until: Option<Instant>) -> Woken {
    let current = match backend {
        Backend::Daemon { instance, .. } => *instance,
        Backend::Here(_) => 0,
    };
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
            Ok(Event::Message(Msg::Signal(signal))) => return Woken::Signal(signal),
            Ok(Event::Message(Msg::Daemon { instance, reply })) if instance == current => match reply {
                Reply::Stdout(bytes) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes).and_then(|()| out.flush());
                }
                Reply::Stderr(bytes) => {
                    let _ = std::io::stderr().write_all(&bytes);
                }
                Reply::Exit { reason, .. } => return Woken::Exited(reason),
                // A program missing on another node is found there: given
                // up on at once, as at home.
                Reply::Failed { code, why } if code == 126 || code == 127 => {
                    log(&format!("FATAL: {why}"));
                    return Woken::NotRunnable(code);
                }
                Reply::Failed { code, why } => {
                    log(&why);
                    return Woken::Exited(ExitReason::Code(i32::from(code)));
                }
                _ => {}
            },
            Ok(Event::Message(Msg::Lost { instance })) if instance == current => {
                return Woken::Exited(ExitReason::NoConnection);
            }
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

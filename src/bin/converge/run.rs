//! `converge run`: one program as a port, its input passed through, its
//! output and errors streamed apart, signals forwarded to its process group,
//! and the exit status a shell or `timeout` would give.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use converge::ExitReason;
use converge::daemon::{FrameError, INPUT_WINDOW, Reply, Request, read_frame, write_frame};
use converge::port::{Port, PortOutput};
use signal_hook::consts::signal::{SIGINT, SIGTERM};

/// The status when the program timed out (as `timeout`'s).
const TIMED_OUT: u8 = 124;
/// The status for a program that cannot be executed (a shell's).
const NOT_EXECUTABLE: u8 = 126;
/// The status for a program that is not found (a shell's).
const NOT_FOUND: u8 = 127;

/// `converge run [--timeout D] [--kill-after D] [--workdir D] [--env K=V] -- program args`.
const EXAMPLES: &str = "Examples:
  converge run --timeout 30s -- ./check.sh
  converge run --on beta -- ./build.sh release     # sent to beta by content hash
  converge run --anywhere --env RUST_LOG=info -- ./job
  tar cf - src | converge run --on beta -- tar xf - -C /tmp/copy";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub(crate) struct RunArgs {
    /// Stop the program after this long (`10`, `1.5s`, `2m`, `1h`, `1d`):
    /// `SIGTERM` to its process group, then `SIGKILL` after --kill-after;
    /// the status is then 124 (137 when it had to be killed).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    timeout: Option<Duration>,
    /// How long a program stopped (on timeout) has between `SIGTERM` and
    /// `SIGKILL`.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "5s")]
    kill_after: Duration,
    /// The program's working directory.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Sets a variable in the program's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(OsString, OsString)>,
    #[command(flatten)]
    place: crate::client::Where,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

pub(crate) fn parse_env(s: &str) -> Result<(OsString, OsString), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Why a program cannot start, as a shell says it, with its status.
/// A path with a `/` is taken from `workdir` (where the program runs) when
/// one is given, and made absolute; a bare name is looked up in this
/// program's `PATH`.
pub(crate) fn resolve(program: &Path, workdir: Option<&Path>) -> Result<PathBuf, (u8, String)> {
    resolve_in(program, workdir, std::env::var_os("PATH").as_deref())
}

/// [`resolve`] with the `PATH` of the environment the program runs in.
pub(crate) fn resolve_in(
    program: &Path,
    workdir: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, (u8, String)> {
    let shown = program.display();
    if let Some(dir) = workdir
        && !dir.is_dir()
    {
        return Err((crate::FAILED, format!("{}: not a directory", dir.display())));
    }
    let found = if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        let at = match workdir {
            Some(dir) if program.is_relative() => dir.join(program),
            _ => program.to_path_buf(),
        };
        let at = std::path::absolute(&at).unwrap_or(at);
        at.exists().then_some(at)
    } else {
        path_var.and_then(|paths| {
            std::env::split_paths(paths)
                .map(|dir| dir.join(program))
                .find(|p| {
                    p.metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
                .or_else(|| {
                    std::env::split_paths(paths)
                        .map(|dir| dir.join(program))
                        .find(|p| p.is_file())
                })
        })
    };
    let Some(path) = found else {
        return Err((NOT_FOUND, format!("{shown}: command not found")));
    };
    let meta = path.metadata().map_err(|e| (NOT_FOUND, format!("{shown}: {e}")))?;
    if meta.is_dir() {
        return Err((NOT_EXECUTABLE, format!("{shown}: Is a directory")));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err((NOT_EXECUTABLE, format!("{shown}: Permission denied")));
    }
    Ok(path)
}

/// The status a shell gives for a program that ended so.
pub(crate) fn status(reason: &ExitReason) -> u8 {
    match reason {
        ExitReason::Normal => 0,
        ExitReason::Code(c) => *c as u8,
        ExitReason::Signal { signal, .. } => 128 + *signal as u8,
        ExitReason::Killed => 128 + 9,
        ExitReason::Shutdown => 128 + SIGTERM as u8,
        _ => crate::FAILED,
    }
}

pub(crate) fn run(args: RunArgs) -> Result<ExitCode, String> {
    if let Some((name, stream)) = args.place.daemon()? {
        return via_daemon(&name, stream, &args).map(ExitCode::from);
    }
    let program = args.command.first().expect("BUG: clap requires a program");
    let path = match resolve(Path::new(program), args.workdir.as_deref()) {
        Ok(p) => p,
        Err((code, why)) => {
            eprintln!("converge run: {why}");
            return Ok(ExitCode::from(code));
        }
    };
    // Signals are forwarded to the program, not handled by the node, and
    // there is no pool to start.
    let node = crate::embedded_node()?;
    let builder =
        crate::program_port(&path, &args.command, args.workdir.as_deref(), &args.env).shutdown_timeout(args.kill_after);
    let port = Arc::new(builder.spawn().map_err(|e| e.to_string())?);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    let forward = signals.handle();
    {
        let port = Arc::clone(&port);
        std::thread::spawn(move || {
            for signal in signals.forever() {
                let _ = port.signal(signal);
            }
        });
    }
    {
        let port = Arc::clone(&port);
        std::thread::spawn(move || pass_input(&port));
    }
    let code = wait(&port, args.timeout.map(|t| Instant::now() + t))?;
    forward.close();
    drop(port);
    node.shutdown(Duration::from_secs(1));
    Ok(ExitCode::from(code))
}

/// Standard input to the program, then end of file; no more of it read
/// while the program has not taken [`INPUT_WINDOW`] bytes of what it was
/// given.
fn pass_input(port: &Port) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Looked at often at first, then less often while the program takes
        // nothing.
        let mut look = Duration::from_millis(5);
        while port.input_pending() as u64 >= INPUT_WINDOW {
            std::thread::sleep(look);
            look = (look * 2).min(Duration::from_millis(200));
        }
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if port.send(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    port.close_input();
}

/// Stops a program at its deadline, from a thread of its own: whatever the
/// thread that relays its output is doing then (blocked on a reader that
/// does not read, or kept busy by a flood of output). Dropping it before
/// the deadline cancels it.
pub(crate) struct Watchdog {
    cancel: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    /// Calls `stop` at `deadline` (never, with none), unless dropped first.
    pub(crate) fn new(deadline: Option<Instant>, stop: impl FnOnce() + Send + 'static) -> Watchdog {
        let cancel = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(deadline) = deadline {
            let (cancel, fired) = (Arc::clone(&cancel), Arc::clone(&fired));
            std::thread::spawn(move || {
                let (lock, wake) = &*cancel;
                let mut cancelled = lock.lock().unwrap();
                while !*cancelled {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        fired.store(true, std::sync::atomic::Ordering::Release);
                        drop(cancelled);
                        stop();
                        return;
                    }
                    cancelled = wake.wait_timeout(cancelled, left).unwrap().0;
                }
            });
        }
        Watchdog { cancel, fired }
    }

    /// Whether the deadline came.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.cancel.0.lock().unwrap() = true;
        self.cancel.1.notify_all();
    }
}

/// Streams the program's output until it ends; its status.
fn wait(port: &Arc<Port>, deadline: Option<Instant>) -> Result<u8, String> {
    let watchdog = {
        let port = Arc::clone(port);
        Watchdog::new(deadline, move || port.shutdown())
    };
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    loop {
        match port.recv() {
            Ok(PortOutput::Data(bytes)) => {
                // A closed standard output (`| head`) is not the program's
                // business: it gets SIGPIPE or EPIPE on its own writes.
                let _ = out.write_all(&bytes).and_then(|()| out.flush());
            }
            Ok(PortOutput::Stderr(bytes)) => {
                let _ = err.write_all(&bytes).and_then(|()| err.flush());
            }
            Ok(PortOutput::Exit(reason)) => return code_of(&reason, watchdog.fired()),
            Ok(_) => {}
            Err(_) => return Err("the node stopped".into()),
        }
    }
}

/// The status for a program that ended so.
fn code_of(reason: &ExitReason, timed_out: bool) -> Result<u8, String> {
    Ok(match (timed_out, reason) {
        (true, ExitReason::Killed) => 128 + 9,
        (true, _) => TIMED_OUT,
        (false, ExitReason::NoConnection) => {
            return Err("the node running the program was lost (NoConnection)".into());
        }
        (false, r) => status(r),
    })
}

/// Runs the program through the node daemon `name`: placed by it, its
/// output streamed back, this command's input and signals passed on.
fn via_daemon(name: &str, mut stream: UnixStream, args: &RunArgs) -> Result<u8, String> {
    let mut spec = crate::client::run_spec(
        args.place.placement(),
        &args.command,
        &args.env,
        args.workdir.as_deref(),
    )?;
    spec.timeout_ms = args.timeout.map(crate::client::millis);
    spec.kill_after_ms = crate::client::millis(args.kill_after);
    let lost = |e: FrameError| format!("node {name}: {e}");
    write_frame(&mut stream, &Request::Run(Box::new(spec))).map_err(|e| format!("node {name}: {e}"))?;
    match read_frame::<Reply>(&mut stream).map_err(lost)? {
        Reply::Started { .. } => {}
        Reply::Failed { code, why } => {
            eprintln!("converge run: {why}");
            return Ok(code);
        }
        other => return Err(format!("node {name}: unexpected answer {other:?}")),
    }
    let writer = Arc::new(std::sync::Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    let forward = signals.handle();
    {
        let writer = Arc::clone(&writer);
        std::thread::spawn(move || {
            for signal in signals.forever() {
                let _ = write_frame(&mut *writer.lock().unwrap(), &Request::Signal(signal));
            }
        });
    }
    // Input sent and not yet taken by the program: at most INPUT_WINDOW,
    // once the daemon has said it tells what the program takes (an older
    // one does not, and would be waited for forever).
    let in_flight = Arc::new((std::sync::Mutex::new(0u64), std::sync::Condvar::new()));
    let told = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let writer = Arc::clone(&writer);
        let in_flight = Arc::clone(&in_flight);
        let told = Arc::clone(&told);
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                {
                    let (lock, taken) = &*in_flight;
                    let mut n = lock.lock().unwrap();
                    while *n >= INPUT_WINDOW && told.load(std::sync::atomic::Ordering::Acquire) {
                        n = taken.wait(n).unwrap();
                    }
                }
                let request = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => Request::InputEnd,
                    Ok(n) => {
                        *in_flight.0.lock().unwrap() += n as u64;
                        Request::Input(buf[..n].to_vec())
                    }
                };
                let end = request == Request::InputEnd;
                if write_frame(&mut *writer.lock().unwrap(), &request).is_err() || end {
                    return;
                }
            }
        });
    }
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let code = loop {
        match read_frame::<Reply>(&mut stream) {
            Ok(Reply::Stdout(b)) => {
                let _ = out.write_all(&b).and_then(|()| out.flush());
            }
            Ok(Reply::Stderr(b)) => {
                let _ = err.write_all(&b).and_then(|()| err.flush());
            }
            Ok(Reply::InputTaken(n)) => {
                told.store(true, std::sync::atomic::Ordering::Release);
                let (lock, taken) = &*in_flight;
                let mut left = lock.lock().unwrap();
                *left = left.saturating_sub(n);
                taken.notify_all();
            }
            Ok(Reply::Exit { reason, timed_out }) => break code_of(&reason, timed_out),
            Ok(Reply::Failed { code, why }) => {
                eprintln!("converge run: {why}");
                break Ok(code);
            }
            Ok(_) => {}
            Err(FrameError::Closed) => break Err(format!("node {name} stopped")),
            Err(e) => break Err(lost(e)),
        }
    };
    forward.close();
    code
}

//! Finding this user's node daemon, and the commands that only ask one:
//! `converge nodes` and `converge ps`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use converge::daemon::{NodeRow, ProcessRow, Reply, Request, State, read_frame, write_frame};

/// Where this user's daemons keep their sockets: `CONVERGE_RUNTIME_DIR`,
/// else `$XDG_RUNTIME_DIR/converge`, else `/tmp/converge-UID`.
pub(crate) fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVERGE_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("converge");
    }
    std::env::temp_dir().join(format!("converge-{}", rustix::process::geteuid().as_raw()))
}

/// Makes `dir` (mode 0700) if it is missing, and checks that it is this
/// user's and no one else's: the sockets in it are the only door to the
/// daemons.
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!("{}: owned by another user", dir.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: others may use it (mode {:o}); it must be 0700",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// The socket of the daemon of node `name`.
pub(crate) fn socket_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Whether `name` can be a node's name (and so a file name of its own in
/// the runtime directory).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.')
}

/// Whether the runtime directory is this user's only, without making it.
fn dir_is_private(dir: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: not a directory of this user's only (mode 0700): refusing to talk to a node through it",
            dir.display()
        ));
    }
    Ok(())
}

/// Connects to the daemon of node `name`, and checks that it runs as this
/// user (a socket in a directory others could write is not trusted, nor a
/// daemon of another user): the client sends it its environment and input.
pub(crate) fn connect(name: &str) -> Result<UnixStream, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a node name"));
    }
    dir_is_private(&runtime_dir())?;
    let path = socket_path(name);
    let stream = UnixStream::connect(&path)
        .map_err(|e| format!("no node named {name:?} runs here ({}: {e})", path.display()))?;
    match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) if cred.uid == rustix::process::geteuid() => Ok(stream),
        Ok(_) => Err(format!("{}: the node there runs as another user", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The daemon to ask: the one named by `--node` or `CONVERGE_NODE`, else
/// the only one running for this user; `None` when none runs.
pub(crate) fn find(named: Option<&str>) -> Result<Option<(String, UnixStream)>, String> {
    let named = named
        .map(str::to_owned)
        .or_else(|| std::env::var("CONVERGE_NODE").ok().filter(|n| !n.is_empty()));
    if let Some(name) = named {
        return connect(&name).map(|s| Some((name, s)));
    }
    let dir = runtime_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    dir_is_private(&dir)?;
    let mut running = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
        else {
            continue;
        };
        // A socket left by a daemon that was killed refuses: not running.
        if UnixStream::connect(&path).is_ok() {
            running.push((name.to_owned(), connect(name)?));
        }
    }
    running.sort_by(|a, b| a.0.cmp(&b.0));
    match running.len() {
        0 => Ok(None),
        1 => Ok(running.pop()),
        _ => Err(format!(
            "several nodes run ({}): choose one with --node NAME or CONVERGE_NODE",
            running.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The status of `nodes` and `ps` when the node to ask is not clear (a
/// usage error).
pub(crate) const USAGE: u8 = 2;

/// Where a program runs: the daemon to ask and the node it places the
/// program on (`run` and `supervise`).
#[derive(Args, Debug)]
pub(crate) struct Where {
    /// Run it on this node of the cluster (needs a running `converge node`).
    #[arg(long, value_name = "NODE", conflicts_with = "anywhere")]
    pub(crate) on: Option<String>,
    /// Run it on the node with most free slots (this one when it is alone,
    /// or when no node daemon runs); a supervised server runs on another
    /// after its node is lost.
    #[arg(long)]
    pub(crate) anywhere: bool,
    /// The node daemon to ask (default: the only one running for this user;
    /// also CONVERGE_NODE). Without one, the program runs on a node started
    /// for this command.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
}

impl Where {
    /// The daemon to go through, if one runs (`--on` needs one).
    pub(crate) fn daemon(&self) -> Result<Option<(String, UnixStream)>, String> {
        match find(self.node.as_deref())? {
            None if self.on.is_some() => Err("--on needs a running node daemon (`converge node`)".into()),
            found => Ok(found),
        }
    }

    /// Where the daemon places the program.
    pub(crate) fn placement(&self) -> converge::daemon::Placement {
        match (&self.on, self.anywhere) {
            (Some(node), _) => converge::daemon::Placement::On(node.clone()),
            (None, true) => converge::daemon::Placement::Anywhere { avoid: Vec::new() },
            (None, false) => converge::daemon::Placement::Here,
        }
    }
}

/// A run of `command` for the daemon to place as `placement`: this
/// client's environment and directory, `env` added, in `workdir` if given;
/// no timeout, no kill delay, a path shipped, no wait for a slot, no label
/// (callers set what differs).
pub(crate) fn run_spec(
    placement: converge::daemon::Placement,
    command: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    workdir: Option<&Path>,
) -> Result<converge::daemon::RunSpec, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = |s: &std::ffi::OsStr| s.as_bytes().to_vec();
    let (program, rest) = command.split_first().ok_or("no program")?;
    let cwd = std::env::current_dir().map_err(|e| format!("the working directory: {e}"))?;
    Ok(converge::daemon::RunSpec {
        placement,
        program: bytes(program),
        args: rest.iter().map(|a| bytes(a)).collect(),
        env_base: std::env::vars_os().map(|(k, v)| (bytes(&k), bytes(&v))).collect(),
        env: env.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
        workdir: workdir.map(|w| bytes(w.as_os_str())),
        cwd: bytes(cwd.as_os_str()),
        timeout_ms: None,
        kill_after_ms: 0,
        ship: true,
        wait_for_slot: false,
        label: None,
    })
}

/// Milliseconds of `d`, saturating.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Passes the daemon's replies about a run on `from` to `to` (as `wrap`
/// makes them), from a thread of their own, until the run's last one; `lost`
/// when the connection breaks first.
pub(crate) fn forward_replies<M>(
    mut from: UnixStream,
    to: converge::Mailbox<M>,
    wrap: impl Fn(Reply) -> M + Send + 'static,
    lost: M,
) where
    M: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    std::thread::spawn(move || {
        loop {
            match read_frame::<Reply>(&mut from) {
                Ok(reply) => {
                    let last = matches!(reply, Reply::Exit { .. } | Reply::Failed { .. });
                    if to.send(wrap(reply)).is_err() || last {
                        return;
                    }
                }
                Err(_) => {
                    let _ = to.send(lost);
                    return;
                }
            }
        }
    });
}

/// Asks the daemon one question and reads its one answer; the status and
/// the reason when it cannot.
fn ask(named: Option<&str>, request: &Request) -> Result<Reply, (u8, String)> {
    let Some((name, mut stream)) = find(named).map_err(|e| (USAGE, e))? else {
        return Err((1, "no node runs for this user (start one with `converge node`)".into()));
    };
    write_frame(&mut stream, request).map_err(|e| (1, format!("node {name}: {e}")))?;
    read_frame(&mut stream).map_err(|e| (1, format!("node {name}: {e}")))
}

/// `converge nodes [--node NAME] [--json]`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  converge nodes\n  converge nodes --node alpha --json | jq .busy")]
pub(crate) struct NodesArgs {
    /// The node to ask (default: the only one running; also CONVERGE_NODE).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// One JSON object per node, a line each.
    #[arg(long)]
    json: bool,
}

/// `converge ps [--node NAME] [--json]`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  converge ps\n  converge ps --json | jq 'select(.interrupted)'\n  CONVERGE_NODE=alpha converge ps"
)]
pub(crate) struct PsArgs {
    /// The node to ask (default: the only one running; also CONVERGE_NODE).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// One JSON object per process, a line each.
    #[arg(long)]
    json: bool,
}

fn opt(n: Option<u32>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

pub(crate) fn nodes(args: NodesArgs) -> Result<ExitCode, (u8, String)> {
    let rows = match ask(args.node.as_deref(), &Request::Nodes)? {
        Reply::Nodes(rows) => rows,
        other => return Err((1, format!("unexpected answer {other:?}"))),
    };
    let mut out = std::io::stdout().lock();
    let r = if args.json {
        rows.iter().try_for_each(|row| writeln!(out, "{}", node_json(row)))
    } else {
        writeln!(
            out,
            "{:<16} {:<22} {:>5} {:>5} {:>6}  STATE",
            "NODE", "ADDRESS", "SLOTS", "BUSY", "QUEUED"
        )
        .and_then(|()| {
            rows.iter().try_for_each(|r| {
                let state = if r.here {
                    "this node"
                } else if r.connected {
                    "connected"
                } else {
                    "member"
                };
                writeln!(
                    out,
                    "{:<16} {:<22} {:>5} {:>5} {:>6}  {state}",
                    r.name,
                    r.addr.as_deref().unwrap_or("-"),
                    opt(r.slots),
                    opt(r.busy),
                    opt(r.queued)
                )
            })
        })
    };
    quiet_pipe(r)
}

fn node_json(r: &NodeRow) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "addr": r.addr,
        "here": r.here,
        "connected": r.connected,
        "slots": r.slots,
        "busy": r.busy,
        "queued": r.queued,
    })
}

pub(crate) fn ps(args: PsArgs) -> Result<ExitCode, (u8, String)> {
    let rows = match ask(args.node.as_deref(), &Request::Ps)? {
        Reply::Ps(rows) => rows,
        other => return Err((1, format!("unexpected answer {other:?}"))),
    };
    let mut out = std::io::stdout().lock();
    let r = if args.json {
        rows.iter().try_for_each(|row| writeln!(out, "{}", process_json(row)))
    } else {
        writeln!(
            out,
            "{:<12} {:<14} {:>8} {:<9} {:<11} {:>9} {:>8}  {:<14} COMMAND",
            "NODE", "PID", "OS PID", "KIND", "STATE", "UPTIME", "RESTARTS", "LAST EXIT"
        )
        .and_then(|()| {
            rows.iter().try_for_each(|r| {
                writeln!(
                    out,
                    "{:<12} {:<14} {:>8} {:<9} {:<11} {:>9} {:>8}  {:<14} {}",
                    r.node,
                    r.pid,
                    r.os_pid,
                    r.kind,
                    r.state.name(),
                    uptime(r.uptime_ms),
                    r.restarts,
                    r.last_exit.as_ref().map_or_else(|| "-".into(), |e| e.to_string()),
                    r.command
                )
            })
        })
    };
    quiet_pipe(r)
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn process_json(r: &ProcessRow) -> serde_json::Value {
    serde_json::json!({
        "node": r.node,
        "owner": r.owner,
        "pid": r.pid,
        "os_pid": r.os_pid,
        "kind": r.kind,
        "command": r.command,
        "state": r.state.name(),
        "interrupted": r.state == State::Interrupted,
        "uptime_ms": r.uptime_ms,
        "restarts": r.restarts,
        "last_exit": r.last_exit.as_ref().map(|e| e.to_string()),
    })
}

/// A reader that went away (`| head`) is not an error.
fn quiet_pipe(r: std::io::Result<()>) -> Result<ExitCode, (u8, String)> {
    match r.and_then(|()| std::io::stdout().flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::from(141)),
        Err(e) => Err((1, e.to_string())),
    }
}

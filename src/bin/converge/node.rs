//! `converge node`: a node daemon. Local clients (`converge run`, `nodes`,
//! `ps`) talk to it over a Unix socket in a directory only its user can
//! enter, and the socket checks each peer's user too. With `--listen` it is
//! a member of a cluster: programs run on other nodes by name or wherever
//! there is room, their output streamed back, and its load advertised
//! through membership.
//!
//! The node where a program is submitted owns it: it keeps its state and
//! answers `ps` for it. A program running for another node is linked with
//! that node's daemon, so it ends when its owner goes (as GNU parallel's
//! jobs end with it) or when the session to the owner is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use clap::Args;
use converge::daemon::{
    FrameError, NodeRow, Placement, ProcessRow, Reply, Request, RunSpec, State, read_frame, write_frame,
};
use converge::dist::{Cluster, ClusterConfig, Load, Secret};
use converge::port::{Port, PortOutput};
use converge::{Ctx, Event, ExitReason, Mailbox, MonitorRef, Pid};
use serde::{Deserialize, Serialize};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};

/// The name the daemon's main program is registered under on its node.
const DAEMON: &str = "converge";
/// The function other nodes start here to run a program for them.
const RUNNER: &str = "converge.run";
/// Ended runs kept for `ps`.
const HISTORY: usize = 64;
/// The largest program shipped to another node.
const MAX_SHIPPED: usize = 32 << 20;
/// How long an answer from another node is waited for.
const ASK: Duration = Duration::from_secs(5);
/// How often what a program took of its input is looked at while some
/// is outstanding: this often at first, then less and less often while it
/// takes nothing, down to [`INPUT_LOOK_MAX`].
const INPUT_LOOK: Duration = Duration::from_millis(5);
const INPUT_LOOK_MAX: Duration = Duration::from_millis(200);

/// `converge node [--name N] [--listen ADDR] [--join ADDR] [--secret-file F] [--slots N]`.
const EXAMPLES: &str = "Examples:
  converge node --name laptop
  converge node --name alpha --listen 10.0.0.1:7373 --secret-file /etc/converge/secret
  converge node --name beta --listen 10.0.0.2:7373 --join 10.0.0.1:7373 \\
      --secret-file /etc/converge/secret --slots 8 --log-json";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub(crate) struct NodeArgs {
    /// The node's name, unique in its cluster and among this user's nodes
    /// on this host (default: the host's name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Join a cluster: sessions (TCP) and membership (UDP) on this address,
    /// same port (`0.0.0.0:7373`; port 0 picks one). Needs --secret-file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A member of the cluster to join through (repeatable; any member will
    /// do: the others are learnt from it).
    #[arg(long, value_name = "HOST:PORT")]
    join: Vec<String>,
    /// The cluster's shared secret (at least 16 bytes; the file must not be
    /// readable by others).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Programs run at once that the node advertises room for (default: the
    /// number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    slots: Option<u32>,
    /// Logs as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// What the daemon's main program receives: from its own threads, from the
/// runners it started on other nodes, and from other daemons.
#[derive(Debug, Serialize, Deserialize)]
enum ToDaemon {
    /// Start the local run `id` (its port is waiting in `pending`).
    Start { id: u64 },
    /// Watch the process running `id` on another node.
    Watch { id: u64, pid: Pid },
    /// A runner here runs a program for another node: count it.
    Hosting { pid: Pid },
    /// A signal for the daemon itself.
    Signal(i32),
    /// The program of `id` started there with this OS pid, run by `runner`.
    Began { id: u64, runner: Pid, os_pid: i32 },
    /// Output of `id`.
    Output { id: u64, stderr: bool, bytes: Vec<u8> },
    /// `id` ended.
    Ended { id: u64, reason: ExitReason },
    /// `id` could not start.
    NotRun { id: u64, code: u8, why: String },
    /// Another daemon asks for the runs this one owns.
    PsAsk { id: u64, reply: Mailbox<ToDaemon> },
    /// Its answer.
    PsRows { id: u64, rows: Vec<ProcessRow> },
    /// The program of `id` took `n` more bytes of its input.
    InputTaken { id: u64, n: u64 },
}

/// What a runner on another node receives from the run's owner.
#[derive(Debug, Serialize, Deserialize)]
enum RunIn {
    Input(Vec<u8>),
    InputEnd,
    Signal(i32),
    /// Stop it in order (a timeout): TERM, then KILL after its kill-after.
    Stop,
    /// Kill it (its client went away).
    Kill,
    /// Hold its output (`true`: the client is behind) or let it go.
    Hold(bool),
}

/// The program of a run on another node.
#[derive(Debug, Serialize, Deserialize)]
enum Program {
    /// Looked up in that node's `PATH`.
    Named(Vec<u8>),
    /// A local file, sent to that node's cache by content hash (its bytes
    /// only the first time that node is sent it).
    Shipped {
        name: Vec<u8>,
        hash: [u8; 32],
        bytes: Option<Vec<u8>>,
    },
}

/// A run started on another node (the arguments of [`RUNNER`]).
#[derive(Debug, Serialize, Deserialize)]
struct RemoteRun {
    id: u64,
    owner: Mailbox<ToDaemon>,
    program: Program,
    args: Vec<Vec<u8>>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    workdir: Option<Vec<u8>>,
    kill_after_ms: u64,
}

/// What the main program tells the thread of a run's client.
enum Relay {
    Started {
        port: Option<Arc<Port>>,
        pid: Pid,
    },
    Out {
        stderr: bool,
        bytes: Vec<u8>,
    },
    Ended(ExitReason),
    NotRun(u8, String),
    InputTaken(u64),
    /// The client gave its program more input: look at what it took.
    Nudge,
    Rows(Vec<ProcessRow>),
}

/// A run this node owns, for `ps`.
struct Job {
    node: String,
    pid: Option<Pid>,
    os_pid: i32,
    command: String,
    started: Instant,
    ended: Option<(Instant, ExitReason)>,
    /// What it is part of (`run` alone).
    label: Option<converge::daemon::Label>,
    /// How the run of its group before it ended.
    before: Option<ExitReason>,
}

#[derive(Default)]
struct Jobs {
    running: HashMap<u64, Job>,
    history: VecDeque<Job>,
}

impl Jobs {
    /// Keeps an ended run for `ps` (the last [`HISTORY`] of them).
    fn keep(&mut self, job: Job) {
        self.history.push_back(job);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// The daemon's state, shared by its threads.
struct Daemon {
    name: String,
    slots: u32,
    /// Taken at the end, to leave the cluster before the node stops.
    cluster: Mutex<Option<Arc<Cluster>>>,
    me: Mailbox<ToDaemon>,
    next: AtomicU64,
    routes: Mutex<HashMap<u64, mpsc::Sender<Relay>>>,
    /// The output of each run on its way to its client, by run.
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
    pending: Mutex<HashMap<u64, converge::port::PortBuilder>>,
    jobs: Mutex<Jobs>,
    /// Runs started here for other nodes (their runners), and local runs.
    hosted: Mutex<HashSet<Pid>>,
    /// Runs this node owns, by the node they were placed on (counted from
    /// placement to their end: advertised loads lag behind).
    placed: Mutex<HashMap<String, u32>>,
    /// Notified when a run ends: queued runs look for a slot again.
    capacity: std::sync::Condvar,
    /// Runs waiting here for a slot anywhere.
    queued: AtomicU64,
    /// Programs already in another node's cache: (incarnation, hash).
    shipped: Mutex<HashSet<(converge::NodeId, [u8; 32])>>,
}

/// Where the runners of this node keep shipped programs.
static CACHE: OnceLock<PathBuf> = OnceLock::new();

fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match name.trim().split('.').next() {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => "node".to_owned(),
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colors only on a terminal, and never with NO_COLOR set.
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colors);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub(crate) fn run(args: NodeArgs) -> Result<ExitCode, String> {
    let name = args.name.clone().unwrap_or_else(host_name);
    if !crate::client::valid_name(&name) {
        return Err(format!("{name:?} is not a node name"));
    }
    if args.listen.is_none() && !args.join.is_empty() {
        return Err("--join needs --listen (and --secret-file)".into());
    }
    let secret = match (&args.listen, &args.secret_file) {
        (Some(_), Some(file)) => Some(Secret::from_file(file).map_err(|e| e.to_string())?),
        (Some(_), None) => return Err("--listen needs --secret-file (the cluster's shared secret)".into()),
        (None, _) => None,
    };
    let dir = crate::client::runtime_dir();
    crate::client::private_dir(&dir)?;
    let socket = crate::client::socket_path(&name);
    if UnixStream::connect(&socket).is_ok() {
        return Err(format!("a node named {name:?} already runs ({})", socket.display()));
    }
    // Left by a daemon that was killed.
    let _ = std::fs::remove_file(&socket);
    // Programs shipped here belong to this incarnation (the senders keep
    // track per incarnation): a fresh cache, removed at the end.
    let cache = dir.join(format!("{name}.cache"));
    let _ = std::fs::remove_dir_all(&cache);
    crate::client::private_dir(&cache)?;
    let _ = CACHE.set(cache.clone());
    init_logs(args.log_json);

    let node = converge::Config::new()
        .handle_signals(false)
        .schedulers(0)
        .init()
        .map_err(|e| format!("starting the node: {e}"))?;
    converge::dist::spawnable(RUNNER, runner);
    let cluster = match (args.listen, secret) {
        (Some(listen), Some(secret)) => {
            let cluster =
                Cluster::start(&node, ClusterConfig::new(name.clone(), listen, secret)).map_err(|e| e.to_string())?;
            for seed in &args.join {
                let addr = seed
                    .to_socket_addrs()
                    .map_err(|e| format!("--join {seed}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--join {seed}: no address"))?;
                cluster.join(addr);
            }
            tracing::info!(node = %name, addr = %cluster.local_addr(), "listening");
            Some(cluster)
        }
        _ => None,
    };
    let listener = UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    let ctx = node.ctx::<ToDaemon>();
    ctx.trap_exits(true);
    ctx.register(DAEMON).map_err(|e| e.to_string())?;
    let daemon = Arc::new(Daemon {
        name: name.clone(),
        slots: args.slots.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        }),
        cluster: Mutex::new(cluster.map(Arc::new)),
        me: ctx.mailbox(),
        next: AtomicU64::new(1),
        routes: Mutex::new(HashMap::new()),
        flows: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        jobs: Mutex::new(Jobs::default()),
        hosted: Mutex::new(HashSet::new()),
        placed: Mutex::new(HashMap::new()),
        capacity: std::sync::Condvar::new(),
        queued: AtomicU64::new(0),
        shipped: Mutex::new(HashSet::new()),
    });
    daemon.advertise();
    // SIGINT, SIGTERM and SIGHUP stop the daemon (its programs with it).
    let signals = crate::signals_as_messages(&node, &[SIGINT, SIGTERM, SIGHUP], ToDaemon::Signal)?;
    {
        let daemon = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("converge-node-accept".into())
            .spawn(move || accept(&daemon, &listener))
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(node = %name, socket = %socket.display(), slots = daemon.slots, "node running");
    let stopped_by = main_loop(&daemon, &ctx);
    signals.close();
    tracing::info!(node = %name, signal = stopped_by, "stopping");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_dir_all(&cache);
    // The others see this node leave at once, not after its silence.
    drop(daemon.cluster.lock().unwrap().take());
    node.shutdown(Duration::from_secs(10));
    Ok(ExitCode::SUCCESS)
}

/// Takes the main program's events until a signal stops the daemon; the
/// signal.
fn main_loop(daemon: &Daemon, ctx: &Ctx<ToDaemon>) -> i32 {
    let mut ports: HashMap<Pid, u64> = HashMap::new();
    let mut watches: HashMap<MonitorRef, u64> = HashMap::new();
    let mut hosted: HashMap<MonitorRef, Pid> = HashMap::new();
    loop {
        let Ok(event) = ctx.recv_event() else {
            return 0;
        };
        match event {
            Event::Message(ToDaemon::Signal(signal)) => return signal,
            Event::Message(ToDaemon::Start { id }) => {
                let Some(builder) = daemon.pending.lock().unwrap().remove(&id) else {
                    continue;
                };
                match builder.spawn() {
                    Ok(port) => {
                        ports.insert(port.pid(), id);
                        daemon.began(id, Some(port.pid()), port.os_pid());
                        daemon.relay(
                            id,
                            Relay::Started {
                                pid: port.pid(),
                                port: Some(Arc::new(port)),
                            },
                        );
                    }
                    Err(e) => daemon.not_run(id, crate::FAILED, e.to_string()),
                }
            }
            Event::Message(ToDaemon::Watch { id, pid }) => {
                watches.insert(ctx.monitor(pid), id);
            }
            Event::Message(ToDaemon::Hosting { pid }) => {
                hosted.insert(ctx.monitor(pid), pid);
                daemon.hosted.lock().unwrap().insert(pid);
                daemon.advertise();
            }
            // A run given up on here (its start timed out, its client
            // went): nothing may run for it there.
            Event::Message(ToDaemon::Began { id, runner, os_pid }) if !daemon.began(id, None, os_pid) => {
                let _ = Mailbox::<RunIn>::from_pid(runner).send(RunIn::Kill);
            }
            Event::Message(ToDaemon::Began { .. }) => {}
            Event::Message(ToDaemon::Output { id, stderr, bytes }) => daemon.relay(id, Relay::Out { stderr, bytes }),
            Event::Message(ToDaemon::Ended { id, reason }) => daemon.ended(id, reason),
            Event::Message(ToDaemon::NotRun { id, code, why }) => daemon.not_run(id, code, why),
            Event::Message(ToDaemon::InputTaken { id, n }) => daemon.relay(id, Relay::InputTaken(n)),
            Event::Message(ToDaemon::PsAsk { id, reply }) => {
                let _ = reply.send(ToDaemon::PsRows {
                    id,
                    rows: daemon.own_rows(),
                });
            }
            Event::Message(ToDaemon::PsRows { id, rows }) => daemon.relay(id, Relay::Rows(rows)),
            Event::Port { port, output } => {
                let Some(&id) = ports.get(&port) else { continue };
                match output {
                    PortOutput::Data(bytes) => daemon.relay(id, Relay::Out { stderr: false, bytes }),
                    PortOutput::Stderr(bytes) => daemon.relay(id, Relay::Out { stderr: true, bytes }),
                    PortOutput::Exit(reason) => {
                        ports.remove(&port);
                        daemon.ended(id, reason);
                    }
                    _ => {}
                }
            }
            Event::Down(down) => {
                if let Some(id) = watches.remove(&down.reference) {
                    // After the runner's own `Ended`, when it sent one.
                    daemon.ended(id, down.reason);
                } else if let Some(pid) = hosted.remove(&down.reference) {
                    daemon.hosted.lock().unwrap().remove(&pid);
                    daemon.advertise();
                }
            }
            Event::Exit(_) => {}
            Event::Undecodable(e) => tracing::warn!(error = %e, "an undecodable message"),
            _ => {}
        }
    }
}

impl Daemon {
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.lock().unwrap().clone()
    }

    fn relay(&self, id: u64, relay: Relay) {
        if let Relay::Out { bytes, .. } = &relay {
            let flow = self.flows.lock().unwrap().get(&id).cloned();
            if let Some(flow) = flow {
                flow.add(bytes.len());
            }
        }
        if let Some(to) = self.routes.lock().unwrap().get(&id) {
            let _ = to.send(relay);
        }
    }

    fn busy(&self) -> u32 {
        let mine = self.placed.lock().unwrap().get(&self.name).copied().unwrap_or(0);
        self.busy_with(mine)
    }

    /// Busy slots here with `mine` runs of this node's own running here.
    fn busy_with(&self, mine: u32) -> u32 {
        let hosted = u32::try_from(self.hosted.lock().unwrap().len()).unwrap_or(u32::MAX);
        mine.saturating_add(hosted)
    }

    fn advertise(&self) {
        if let Some(cluster) = self.cluster() {
            let queued = u32::try_from(self.queued.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
            cluster.advertise_load(Load::new(self.slots, self.busy(), queued));
        }
    }

    /// Notes where run `id` runs; false when it is not running here (any
    /// more).
    fn began(&self, id: u64, pid: Option<Pid>, os_pid: i32) -> bool {
        match self.jobs.lock().unwrap().running.get_mut(&id) {
            Some(job) => {
                job.pid = pid.or(job.pid);
                // The runner's own word may come first.
                if os_pid != 0 {
                    job.os_pid = os_pid;
                }
                true
            }
            None => false,
        }
    }

    /// `id` ended: kept for `ps`, told to its client (once).
    fn ended(&self, id: u64, reason: ExitReason) {
        let mut jobs = self.jobs.lock().unwrap();
        let Some(mut job) = jobs.running.remove(&id) else {
            return;
        };
        tracing::info!(run = id, node = %job.node, command = %job.command, reason = %reason, "ended");
        job.ended = Some((Instant::now(), reason.clone()));
        jobs.keep(job);
        drop(jobs);
        self.relay(id, Relay::Ended(reason));
    }

    /// A run placed again elsewhere: its row here goes; how the run before
    /// it in its group ended, which the next row keeps.
    fn forget_job(&self, id: u64) -> Option<ExitReason> {
        self.jobs.lock().unwrap().running.remove(&id).and_then(|j| j.before)
    }

    /// The row of `id` shows how the run before it ended.
    fn carry_before(&self, id: u64, before: Option<ExitReason>) {
        if let Some(job) = self.jobs.lock().unwrap().running.get_mut(&id)
            && job.before.is_none()
        {
            job.before = before;
        }
    }

    fn not_run(&self, id: u64, code: u8, why: String) {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(mut job) = jobs.running.remove(&id) {
            job.ended = Some((Instant::now(), ExitReason::Code(i32::from(code))));
            job.before = None;
            jobs.keep(job);
        }
        drop(jobs);
        self.relay(id, Relay::NotRun(code, why));
    }

    /// The runs this node owns, running and recently ended.
    fn own_rows(&self) -> Vec<ProcessRow> {
        let jobs = self.jobs.lock().unwrap();
        let now = Instant::now();
        let mut running: Vec<(&u64, &Job)> = jobs.running.iter().collect();
        running.sort_by_key(|(id, _)| **id);
        jobs.history
            .iter()
            .chain(running.into_iter().map(|(_, j)| j))
            .map(|job| {
                let (end, state, last) = match &job.ended {
                    Some((at, reason)) => (*at, State::of(reason), Some(reason.clone())),
                    None => (now, State::Running, job.before.clone()),
                };
                ProcessRow {
                    node: job.node.clone(),
                    owner: self.name.clone(),
                    pid: job.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    os_pid: job.os_pid,
                    kind: job.label.as_ref().map_or_else(|| "run".into(), |l| l.kind.clone()),
                    command: job.command.clone(),
                    state,
                    uptime_ms: end.duration_since(job.started).as_millis() as u64,
                    restarts: job.label.as_ref().map_or(0, |l| l.restarts),
                    last_exit: last,
                }
            })
            .collect()
    }

    /// The runs of every daemon of the cluster (those that answer in time).
    fn ps(&self) -> Vec<ProcessRow> {
        let mut rows = self.own_rows();
        let Some(cluster) = self.cluster() else {
            return rows;
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.routes.lock().unwrap().insert(id, tx);
        let mut asked = 0;
        for node in cluster.nodes() {
            if let Some(pid) = cluster.whereis(&node.name, DAEMON, Duration::from_secs(1)) {
                let ask = ToDaemon::PsAsk { id, reply: self.me };
                if Mailbox::<ToDaemon>::from_pid(pid).send(ask).is_ok() {
                    asked += 1;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while asked > 0 {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Relay::Rows(more)) => {
                    rows.extend(more);
                    asked -= 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.routes.lock().unwrap().remove(&id);
        rows
    }

    fn node_rows(&self) -> Vec<NodeRow> {
        let mut rows = vec![NodeRow {
            name: self.name.clone(),
            addr: self.cluster().map(|c| c.local_addr().to_string()),
            here: true,
            connected: true,
            slots: Some(self.slots),
            busy: Some(self.busy()),
            queued: Some(u32::try_from(self.queued.load(Ordering::Relaxed)).unwrap_or(u32::MAX)),
        }];
        if let Some(cluster) = self.cluster() {
            rows.extend(cluster.nodes().into_iter().map(|n| NodeRow {
                name: n.name,
                addr: Some(n.addr.to_string()),
                here: false,
                connected: n.connected,
                slots: n.load.map(|l| l.slots),
                busy: n.load.map(|l| l.busy),
                queued: n.load.map(|l| l.queued),
            }));
        }
        rows
    }

    /// Chooses the node of a run (`None` for this one) and counts the run
    /// there until [`release`](Daemon::release). A run that may go anywhere
    /// goes to the node with most free slots (this one on a tie), passing
    /// over those it should avoid while another will do; with none free it
    /// runs here, or waits for a slot when it is to.
    fn reserve(&self, spec: &RunSpec, unreachable: &[String], client: &UnixStream) -> Result<Option<String>, String> {
        let target = match &spec.placement {
            Placement::Here => None,
            Placement::On(name) if *name == self.name => None,
            Placement::On(name) => {
                let Some(cluster) = self.cluster() else {
                    return Err(format!("no node named {name:?}: node {} is in no cluster", self.name));
                };
                if !cluster.nodes().iter().any(|n| n.name == *name) {
                    return Err(format!("no node named {name:?} in the cluster"));
                }
                Some(name.clone())
            }
            Placement::Anywhere { avoid } => {
                return self
                    .reserve_anywhere(avoid, unreachable, spec.wait_for_slot, client)
                    .ok_or_else(|| "the client went away while its run waited for a slot".to_string());
            }
        };
        let name = target.clone().unwrap_or_else(|| self.name.clone());
        *self.placed.lock().unwrap().entry(name).or_default() += 1;
        self.advertise();
        Ok(target)
    }

    /// `None` when the client went away while its run waited.
    /// Nodes in `unreachable` (which did not answer this run) are never
    /// chosen; those in `avoid` only while another will do.
    fn reserve_anywhere(
        &self,
        avoid: &[String],
        unreachable: &[String],
        wait: bool,
        client: &UnixStream,
    ) -> Option<Option<String>> {
        let mut queued = false;
        let mut placed = self.placed.lock().unwrap();
        let chosen = loop {
            // (free slots, whether it is this node, name)
            let here = placed.get(&self.name).copied().unwrap_or(0);
            let mut candidates = vec![(self.slots.saturating_sub(self.busy_with(here)), true, self.name.clone())];
            if let Some(cluster) = self.cluster() {
                candidates.extend(cluster.nodes().into_iter().filter_map(|n| {
                    let load = n.load?;
                    let mine = placed.get(&n.name).copied().unwrap_or(0);
                    Some((load.slots.saturating_sub(load.busy.max(mine)), false, n.name))
                }));
            }
            candidates.retain(|c| !unreachable.contains(&c.2));
            if candidates.iter().any(|c| !avoid.contains(&c.2)) {
                candidates.retain(|c| !avoid.contains(&c.2));
            }
            let best = candidates
                .into_iter()
                .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| b.2.cmp(&a.2)));
            match best {
                Some((free, _, name)) if free > 0 => break Some(name),
                _ if !wait => break Some(self.name.clone()),
                _ if hung_up(client) => break None,
                _ => {}
            }
            if !queued {
                queued = true;
                self.queued.fetch_add(1, Ordering::Relaxed);
                drop(placed);
                self.advertise();
                placed = self.placed.lock().unwrap();
            }
            // Woken by a run's end here; loads heard by gossip are looked
            // at again after a while.
            placed = self.capacity.wait_timeout(placed, Duration::from_millis(50)).unwrap().0;
        };
        if let Some(chosen) = &chosen {
            *placed.entry(chosen.clone()).or_default() += 1;
        }
        drop(placed);
        if queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        self.advertise();
        chosen.map(|c| (c != self.name).then_some(c))
    }

    /// A run placed on `node` (`None`: this one) ended.
    fn release(&self, node: Option<&str>) {
        let name = node.unwrap_or(&self.name);
        {
            let mut placed = self.placed.lock().unwrap();
            if let Some(n) = placed.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    placed.remove(name);
                }
            }
        }
        self.capacity.notify_all();
        self.advertise();
    }

    fn add_job(&self, id: u64, node: &str, spec: &RunSpec) {
        let mut jobs = self.jobs.lock().unwrap();
        // A group's runs are one row: the latest, with how the one before
        // it ended.
        let mut before = None;
        if let Some(label) = &spec.label {
            jobs.history.retain(|j| match (&j.label, &j.ended) {
                (Some(l), Some((_, reason))) if l.group == label.group => {
                    before = Some(reason.clone());
                    false
                }
                _ => true,
            });
        }
        jobs.running.insert(
            id,
            Job {
                node: node.to_owned(),
                pid: None,
                os_pid: 0,
                command: command_line(spec),
                started: Instant::now(),
                ended: None,
                label: spec.label.clone(),
                before,
            },
        );
    }
}

fn accept(daemon: &Arc<Daemon>, listener: &UnixListener) {
    let me = rustix::process::geteuid();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred) if cred.uid == me => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid.as_raw(), "a client of another user: refused");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a client without credentials: refused");
                continue;
            }
        }
        let daemon = Arc::clone(daemon);
        let _ = std::thread::Builder::new()
            .name("converge-node-client".into())
            .spawn(move || serve(&daemon, stream));
    }
}

/// Whether the client closed its side (it went away, or gave the run up).
fn hung_up(client: &UnixStream) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(client, PollFlags::RDHUP)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    rustix::event::poll(&mut fds, Some(&now)).is_ok()
        && fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// One client connection.
fn serve(daemon: &Daemon, mut stream: UnixStream) {
    let request = match read_frame::<Request>(&mut stream) {
        Ok(r) => r,
        Err(FrameError::Closed) => return,
        Err(e) => {
            tracing::warn!(error = %e, "a client's request: refused");
            return;
        }
    };
    let r = match request {
        Request::Nodes => write_frame(&mut stream, &Reply::Nodes(daemon.node_rows())),
        Request::Ps => write_frame(&mut stream, &Reply::Ps(daemon.ps())),
        Request::Run(spec) => {
            run_for(daemon, *spec, stream);
            Ok(())
        }
        other => write_frame(
            &mut stream,
            &Reply::Failed {
                code: crate::FAILED,
                why: format!("{other:?} before a run"),
            },
        ),
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "a client went away");
    }
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn command_line(spec: &RunSpec) -> String {
    std::iter::once(&spec.program)
        .chain(&spec.args)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the run goes once started: its port here, or its runner there.
enum Running {
    Here(Arc<Port>),
    There(Mailbox<RunIn>),
}

/// A run's output between its program and its client: relayed and not yet
/// written to the client, at most about [`OUTPUT_HIGH`]. Past it the
/// program's output is held (it waits on its pipe) until the client has
/// taken it down to [`OUTPUT_LOW`].
#[derive(Default)]
struct Flow {
    outstanding: AtomicU64,
    /// Whether the output is held; decided and told under this lock, so the
    /// program hears holds and releases in the order they were decided.
    held: Mutex<bool>,
    running: std::sync::OnceLock<Arc<Running>>,
}

const OUTPUT_HIGH: u64 = 1 << 20;
const OUTPUT_LOW: u64 = 256 << 10;

impl Flow {
    /// `n` bytes relayed.
    fn add(&self, n: usize) {
        self.outstanding.fetch_add(n as u64, Ordering::AcqRel);
        self.settle();
    }

    /// `n` bytes written to the client.
    fn sub(&self, n: usize) {
        let _ = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
            Some(o.saturating_sub(n as u64))
        });
        self.settle();
    }

    /// Holds or releases the output as what is outstanding says. A release
    /// the program could not be told of is tried again next time.
    fn settle(&self) {
        let Some(running) = self.running.get() else {
            return;
        };
        let mut held = self.held.lock().unwrap();
        let now = self.outstanding.load(Ordering::Acquire);
        if !*held && now > OUTPUT_HIGH {
            *held = running.hold_output(true);
        } else if *held && now < OUTPUT_LOW {
            *held = !running.hold_output(false);
        }
    }
}

impl Running {
    /// Whether the program was told.
    fn hold_output(&self, hold: bool) -> bool {
        match self {
            Running::Here(p) => {
                p.hold_output(hold);
                true
            }
            Running::There(r) => r.send(RunIn::Hold(hold)).is_ok(),
        }
    }

    fn input(&self, request: Request) {
        match (self, request) {
            (Running::Here(p), Request::Input(b)) => {
                let _ = p.send(&b);
            }
            (Running::Here(p), Request::InputEnd) => p.close_input(),
            (Running::Here(p), Request::Signal(n)) => {
                let _ = p.signal(n);
            }
            (Running::There(r), Request::Input(b)) => {
                let _ = r.send(RunIn::Input(b));
            }
            (Running::There(r), Request::InputEnd) => {
                let _ = r.send(RunIn::InputEnd);
            }
            (Running::There(r), Request::Signal(n)) => {
                let _ = r.send(RunIn::Signal(n));
            }
            (running, Request::Stop) => running.stop(),
            _ => {}
        }
    }

    fn stop(&self) {
        match self {
            Running::Here(p) => p.shutdown(),
            Running::There(r) => {
                let _ = r.send(RunIn::Stop);
            }
        }
    }

    fn kill(&self) {
        match self {
            Running::Here(p) => p.kill(),
            Running::There(r) => {
                let _ = r.send(RunIn::Kill);
            }
        }
    }
}

/// A run for a client: placed, started, its input passed on and its output
/// streamed back until it ends.
fn run_for(daemon: &Daemon, spec: RunSpec, mut stream: UnixStream) {
    let mut id = daemon.next.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = mpsc::channel();
    let flow = Arc::new(Flow::default());
    daemon.flows.lock().unwrap().insert(id, Arc::clone(&flow));
    daemon.routes.lock().unwrap().insert(id, tx.clone());
    // How the run before this one of its group ended, kept across placings.
    let mut before = None;
    // A run that may go anywhere is placed again when the node chosen does
    // not answer (it died, or its session is lost, before membership says
    // so): on another node, or here at last.
    let mut unreachable = Vec::new();
    let (target, result) = loop {
        let target = match daemon.reserve(&spec, &unreachable, &stream) {
            Ok(target) => target,
            Err(why) => {
                daemon.routes.lock().unwrap().remove(&id);
                daemon.flows.lock().unwrap().remove(&id);
                let _ = write_frame(
                    &mut stream,
                    &Reply::Failed {
                        code: crate::FAILED,
                        why,
                    },
                );
                return;
            }
        };
        let anywhere = matches!(spec.placement, Placement::Anywhere { .. });
        match start(daemon, id, &spec, target.clone(), &rx, anywhere) {
            Err(NotStarted::Unreachable(node, why)) => {
                tracing::warn!(%node, %why, "the node chosen for a run did not answer: placed again");
                daemon.release(target.as_deref());
                unreachable.push(node);
                // Under a new id: if the request got there after all, what
                // runs for the old one is refused when it says it began, and
                // its output goes nowhere.
                before = before.or(daemon.forget_job(id));
                daemon.routes.lock().unwrap().remove(&id);
                daemon.flows.lock().unwrap().remove(&id);
                id = daemon.next.fetch_add(1, Ordering::Relaxed);
                (tx, rx) = mpsc::channel();
                flow.outstanding.store(0, Ordering::Release);
                daemon.flows.lock().unwrap().insert(id, Arc::clone(&flow));
                daemon.routes.lock().unwrap().insert(id, tx.clone());
            }
            Err(NotStarted::Failed(code, why)) => break (target, Err((code, why))),
            Ok(started) => break (target, Ok(started)),
        }
    };
    let running = match result {
        Ok((node, pid, running)) => {
            if before.is_some() {
                daemon.carry_before(id, before);
            }
            let started = Reply::Started {
                node,
                pid: pid.to_string(),
            };
            // Then, to say this daemon tells what the program takes of its
            // input (a client keeps its window only with one that does).
            if write_frame(&mut stream, &started).is_err() || write_frame(&mut stream, &Reply::InputTaken(0)).is_err() {
                running.kill();
            }
            running
        }
        Err((code, why)) => {
            daemon.routes.lock().unwrap().remove(&id);
            daemon.flows.lock().unwrap().remove(&id);
            daemon.release(target.as_deref());
            let _ = write_frame(&mut stream, &Reply::Failed { code, why });
            return;
        }
    };
    let running = Arc::new(running);
    let _ = flow.running.set(Arc::clone(&running));
    // Input given to a program here, for telling the client what it took
    // (a runner on another node tells it itself).
    let sent = Arc::new(AtomicU64::new(0));
    let mut reported = 0u64;
    // Looked at often while the program takes its input, less and less
    // while it does not.
    let mut look = INPUT_LOOK;
    // The client's input and signals; its going away kills the program.
    if let Ok(mut from) = stream.try_clone() {
        let running = Arc::clone(&running);
        let sent = Arc::clone(&sent);
        let nudge = tx.clone();
        let _ = std::thread::Builder::new()
            .name("converge-node-input".into())
            .spawn(move || {
                loop {
                    match read_frame::<Request>(&mut from) {
                        Ok(request) => {
                            let n = match &request {
                                Request::Input(b) => b.len() as u64,
                                _ => 0,
                            };
                            running.input(request);
                            if n > 0 {
                                sent.fetch_add(n, Ordering::Release);
                                let _ = nudge.send(Relay::Nudge);
                            }
                        }
                        Err(_) => {
                            running.kill();
                            return;
                        }
                    }
                }
            });
    }
    let deadline = spec.timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    // From a thread of its own: this one may be blocked on a client that
    // does not read, or kept busy by a program's flood of output.
    let watchdog = {
        let running = Arc::clone(&running);
        crate::run::Watchdog::new(deadline, move || running.stop())
    };
    let mut client_gone = false;
    loop {
        let mut wait = Duration::from_secs(3600);
        if let Running::Here(port) = &*running {
            // What the program took since the last look, told while some
            // is outstanding.
            let given = sent.load(Ordering::Acquire);
            let taken = given.saturating_sub(port.input_pending() as u64);
            if taken > reported {
                if !client_gone && write_frame(&mut stream, &Reply::InputTaken(taken - reported)).is_err() {
                    client_gone = true;
                    running.kill();
                }
                reported = taken;
                look = INPUT_LOOK;
            } else {
                look = (look * 2).min(INPUT_LOOK_MAX);
            }
            if given > reported {
                wait = wait.min(look);
            }
        }
        let reply = match rx.recv_timeout(wait) {
            Ok(Relay::Out { stderr: false, bytes }) => Reply::Stdout(bytes),
            Ok(Relay::Out { stderr: true, bytes }) => Reply::Stderr(bytes),
            Ok(Relay::InputTaken(n)) => Reply::InputTaken(n),
            Ok(Relay::Ended(reason)) => {
                let timed_out = watchdog.fired();
                let _ = write_frame(&mut stream, &Reply::Exit { reason, timed_out });
                break;
            }
            Ok(Relay::NotRun(code, why)) => {
                let _ = write_frame(&mut stream, &Reply::Failed { code, why });
                break;
            }
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let out = match &reply {
            Reply::Stdout(b) | Reply::Stderr(b) => b.len(),
            _ => 0,
        };
        if !client_gone && write_frame(&mut stream, &reply).is_err() {
            client_gone = true;
            running.kill();
        }
        if out > 0 {
            flow.sub(out);
        }
    }
    daemon.routes.lock().unwrap().remove(&id);
    daemon.flows.lock().unwrap().remove(&id);
    daemon.release(target.as_deref());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Why a run did not start.
enum NotStarted {
    /// The status and reason it ends with.
    Failed(u8, String),
    /// The node it was placed on did not answer (only when it may be placed
    /// again): nothing of it is left.
    Unreachable(String, String),
}

impl From<(u8, String)> for NotStarted {
    fn from((code, why): (u8, String)) -> NotStarted {
        NotStarted::Failed(code, why)
    }
}

/// Starts a run where it is placed: the node's name, its process, and how
/// to reach it; or why it could not start. With `may_move`, a node that
/// does not answer is `Unreachable`, for the caller to place the run again.
fn start(
    daemon: &Daemon,
    id: u64,
    spec: &RunSpec,
    target: Option<String>,
    rx: &mpsc::Receiver<Relay>,
    may_move: bool,
) -> Result<(String, Pid, Running), NotStarted> {
    match target {
        None => {
            let workdir = spec.workdir.as_deref().map(|w| Path::new(os(w)));
            let cwd = Path::new(os(&spec.cwd));
            let base = workdir.map_or(cwd.to_path_buf(), |w| cwd.join(w));
            let path_var = spec.env_base.iter().find(|(k, _)| k == b"PATH").map(|(_, v)| os(v));
            let program = Path::new(os(&spec.program));
            let path = crate::run::resolve_in(program, Some(&base), path_var)?;
            let command: Vec<std::ffi::OsString> = std::iter::once(&spec.program)
                .chain(&spec.args)
                .map(|a| os(a).to_owned())
                .collect();
            // The client's environment, then its --env (the later wins).
            let mut builder = crate::program_port(&path, &command, Some(&base), &[])
                .env_clear()
                .shutdown_timeout(Duration::from_millis(spec.kill_after_ms));
            for (k, v) in spec.env_base.iter().chain(&spec.env) {
                builder = builder.env(os(k), os(v));
            }
            daemon.add_job(id, &daemon.name, spec);
            daemon.pending.lock().unwrap().insert(id, builder);
            daemon
                .me
                .send(ToDaemon::Start { id })
                .map_err(|e| (crate::FAILED, e.to_string()))?;
            match rx.recv() {
                Ok(Relay::Started { port: Some(port), pid }) => Ok((daemon.name.clone(), pid, Running::Here(port))),
                Ok(Relay::NotRun(code, why)) => Err(NotStarted::Failed(code, why)),
                _ => Err(NotStarted::Failed(crate::FAILED, "the node stopped".into())),
            }
        }
        Some(node) => {
            let cluster = daemon
                .cluster()
                .ok_or_else(|| (crate::FAILED, "the node left its cluster".to_string()))?;
            let program = ship(daemon, &cluster, &node, spec)?;
            let run = RemoteRun {
                id,
                owner: daemon.me,
                program,
                args: spec.args.clone(),
                env: spec.env.clone(),
                workdir: spec.workdir.clone(),
                kill_after_ms: spec.kill_after_ms,
            };
            daemon.add_job(id, &node, spec);
            // Time for the program's bytes too, at a slow link's pace.
            let shipped = match &run.program {
                Program::Shipped { bytes: Some(b), .. } => b.len() as u64,
                _ => 0,
            };
            let ask = ASK + Duration::from_secs(shipped >> 20);
            let pid = match cluster.spawn_on(&node, RUNNER, &run, ask) {
                Ok(pid) => pid,
                Err(e @ converge::dist::SpawnRefused::NoConnection(_)) if may_move => {
                    return Err(NotStarted::Unreachable(node, e.to_string()));
                }
                Err(e) => {
                    daemon.not_run(id, crate::FAILED, e.to_string());
                    return Err(NotStarted::Failed(crate::FAILED, format!("node {node}: {e}")));
                }
            };
            daemon.began(id, Some(pid), 0);
            let _ = daemon.me.send(ToDaemon::Watch { id, pid });
            if let Program::Shipped { hash, .. } = &run.program
                && let Some(n) = cluster.nodes().into_iter().find(|n| n.name == node)
            {
                daemon.shipped.lock().unwrap().insert((n.id, *hash));
            }
            Ok((node, pid, Running::There(Mailbox::from_pid(pid))))
        }
    }
}

/// The program of a run on another node: a path is a local file, sent by
/// content hash (its bytes only if that node has not been sent it); a bare
/// name is looked up there.
fn ship(daemon: &Daemon, cluster: &Cluster, node: &str, spec: &RunSpec) -> Result<Program, (u8, String)> {
    if !spec.ship || !spec.program.contains(&b'/') {
        return Ok(Program::Named(spec.program.clone()));
    }
    let cwd = Path::new(os(&spec.cwd));
    let path = crate::run::resolve_in(Path::new(os(&spec.program)), Some(cwd), None)?;
    let meta = std::fs::metadata(&path).map_err(|e| (crate::FAILED, format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_SHIPPED as u64 {
        return Err((
            crate::FAILED,
            format!(
                "{}: {} bytes, too large to send to another node",
                path.display(),
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| (crate::FAILED, format!("{}: {e}", path.display())))?;
    let hash: [u8; 32] = Blake2s256::digest(&bytes).into();
    let incarnation = cluster.nodes().into_iter().find(|n| n.name == node).map(|n| n.id);
    let known = incarnation.is_some_and(|i| daemon.shipped.lock().unwrap().contains(&(i, hash)));
    Ok(Program::Shipped {
        name: spec.program.clone(),
        hash,
        bytes: (!known).then_some(bytes),
    })
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A shipped program in this node's cache: stored if its bytes came (and
/// match their hash), found if not.
fn cached(name: &[u8], hash: &[u8; 32], bytes: Option<&[u8]>) -> Result<PathBuf, (u8, String)> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let dir = CACHE
        .get()
        .ok_or_else(|| (crate::FAILED, "this node has no program cache".to_string()))?;
    let path = dir.join(hex(hash));
    if let Some(bytes) = bytes {
        let got: [u8; 32] = Blake2s256::digest(bytes).into();
        if got != *hash {
            return Err((crate::FAILED, format!("{shown}: its bytes do not match their hash")));
        }
        if !path.exists() {
            let tmp = dir.join(format!(".{}.{}", hex(hash), std::process::id()));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.set_permissions(std::fs::Permissions::from_mode(0o700))?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                (crate::FAILED, format!("{shown}: caching it: {e}"))
            })?;
        }
    }
    if path.exists() {
        Ok(path)
    } else {
        Err((crate::FAILED, format!("{shown}: not in the program cache of this node")))
    }
}

/// Runs a program for another node (started by it with [`RUNNER`]): its
/// output to the owner as it comes, its input and signals from it. Linked
/// with the owner's daemon: the program ends when the owner or the session
/// to it is gone.
fn runner(ctx: Ctx<RunIn>, run: RemoteRun) {
    let owner = run.owner;
    ctx.trap_exits(true);
    if ctx.link(owner.pid()).is_err() {
        return;
    }
    if let Some(daemon) = converge::whereis(DAEMON) {
        let _ = Mailbox::<ToDaemon>::from_pid(daemon).send(ToDaemon::Hosting { pid: ctx.pid() });
    }
    let not_run = |(code, why): (u8, String)| {
        let _ = owner.send(ToDaemon::NotRun { id: run.id, code, why });
    };
    let workdir = run.workdir.as_deref().map(|w| Path::new(os(w)).to_path_buf());
    let (path, shown) = match &run.program {
        Program::Named(name) => (
            crate::run::resolve(Path::new(os(name)), workdir.as_deref()),
            name.clone(),
        ),
        Program::Shipped { name, hash, bytes } => (cached(name, hash, bytes.as_deref()), name.clone()),
    };
    let path = match path {
        Ok(p) => p,
        Err(e) => return not_run(e),
    };
    let command: Vec<std::ffi::OsString> = std::iter::once(&shown)
        .chain(&run.args)
        .map(|a| os(a).to_owned())
        .collect();
    let env: Vec<_> = run
        .env
        .iter()
        .map(|(k, v)| (os(k).to_owned(), os(v).to_owned()))
        .collect();
    let port = match crate::program_port(&path, &command, workdir.as_deref(), &env)
        .shutdown_timeout(Duration::from_millis(run.kill_after_ms))
        .spawn()
    {
        Ok(p) => p,
        Err(e) => return not_run((crate::FAILED, e.to_string())),
    };
    let _ = owner.send(ToDaemon::Began {
        id: run.id,
        runner: ctx.pid(),
        os_pid: port.os_pid(),
    });
    // Input given to the program, and how much of it the owner was told
    // the program took.
    let (mut given, mut told) = (0u64, 0u64);
    let mut look = INPUT_LOOK;
    loop {
        let event = if given > told {
            match ctx.recv_event_timeout(look) {
                Ok(e) => Some(e),
                Err(converge::RecvTimeoutError::Timeout) => None,
                Err(_) => return,
            }
        } else {
            match ctx.recv_event() {
                Ok(e) => Some(e),
                Err(_) => return,
            }
        };
        let taken = given.saturating_sub(port.input_pending() as u64);
        if taken > told {
            let _ = owner.send(ToDaemon::InputTaken {
                id: run.id,
                n: taken - told,
            });
            told = taken;
            look = INPUT_LOOK;
        } else {
            look = (look * 2).min(INPUT_LOOK_MAX);
        }
        let Some(event) = event else {
            continue;
        };
        match event {
            Event::Message(RunIn::Input(bytes)) => {
                // Counted taken even when the program's input is closed: it
                // takes no more, and the client must not wait for it.
                let _ = port.send(&bytes);
                given += bytes.len() as u64;
                look = INPUT_LOOK;
            }
            Event::Message(RunIn::InputEnd) => port.close_input(),
            Event::Message(RunIn::Signal(n)) => {
                let _ = port.signal(n);
            }
            Event::Message(RunIn::Stop) => port.shutdown(),
            Event::Message(RunIn::Kill) => port.kill(),
            Event::Message(RunIn::Hold(hold)) => port.hold_output(hold),
            Event::Port { output, .. } => match output {
                PortOutput::Data(bytes) => {
                    let _ = owner.send(ToDaemon::Output {
                        id: run.id,
                        stderr: false,
                        bytes,
                    });
                }
                PortOutput::Stderr(bytes) => {
                    let _ = owner.send(ToDaemon::Output {
                        id: run.id,
                        stderr: true,
                        bytes,
                    });
                }
                PortOutput::Exit(reason) => {
                    let _ = owner.send(ToDaemon::Ended { id: run.id, reason });
                    return;
                }
                _ => {}
            },
            // The owner's daemon, or the session to it, is gone: the
            // program goes with this runner.
            Event::Exit(signal) if signal.from == owner.pid() => {
                port.kill();
                return;
            }
            _ => {}
        }
    }
}

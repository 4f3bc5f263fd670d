//! Helpers shared by the integration tests.
//!
//! libtest runs every test on a spawned thread, but `converge::init()` must run
//! before any thread exists; so each test binary has `harness = false` and a
//! `main` that calls [`run`], which initializes the node first and then runs
//! the tests with libtest-mimic, one at a time. After each test it checks that
//! the test left no process behind: no live converge process, no zombie.
//!
//! A test that needs a node of its own (to kill it, to send it `SIGINT`, to
//! call `init()` wrongly) re-executes the test binary with `CONVERGE_HELPER`
//! set: [`run`] then runs the named helper instead of the tests.
//!
//! Many tests make processes panic on purpose and check the exit reason that
//! follows. Their panic reports (with a backtrace where `RUST_BACKTRACE` asks
//! for one) go to a log file rather than to the terminal; the part of it
//! written during a test is printed when that test fails. Panics of the test
//! binary's own main process print as usual.
#![allow(dead_code)] // Each test binary uses a different part of these helpers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use converge::{Ctx, ExitReason, IntoExitReason, Node};
use libtest_mimic::{Arguments, Failed, Trial};

/// Environment variable naming the helper to run instead of the tests.
pub const HELPER: &str = "CONVERGE_HELPER";

/// Environment variable naming the file where the panic reports of processes
/// go (set by the test binary, inherited by its helpers).
const PANIC_LOG: &str = "CONVERGE_TEST_PANIC_LOG";

/// Sends the panic reports of every process but the calling one (and the
/// helpers it starts) to a log file: the processes a test spawns inherit the
/// hook by fork. Returns the file's path, and whether this call made it.
fn quiet_process_panics() -> (std::path::PathBuf, bool) {
    let (path, own) = match std::env::var_os(PANIC_LOG) {
        Some(p) => (std::path::PathBuf::from(p), false),
        None => {
            let p = std::env::temp_dir().join(format!("converge-test-panics-{}.log", std::process::id()));
            let _ = std::fs::remove_file(&p);
            // SAFETY: no other thread exists yet (this runs
            // before init(), which must come before any thread).
            unsafe { std::env::set_var(PANIC_LOG, &p) };
            (p, true)
        }
    };
    let main = std::process::id();
    let default = std::panic::take_hook();
    let log = path.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::process::id() == main {
            return default(info);
        }
        let report = format!(
            "process {} panicked: {info}\n{}\n",
            std::process::id(),
            std::backtrace::Backtrace::capture()
        );
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log);
        match file {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(&mut f, report.as_bytes());
            }
            Err(_) => eprint!("{report}"),
        }
    }));
    (path, own)
}

/// The panic reports of processes written to `log` since `from` (a length).
fn panic_reports_since(log: &std::path::Path, from: u64) -> String {
    let all = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(all.get(from as usize..).unwrap_or_default()).into_owned()
}

fn log_len(log: &std::path::Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

static NODE: OnceLock<Node> = OnceLock::new();

/// The test binary's node.
pub fn node() -> &'static Node {
    NODE.get().expect("BUG: util::run initializes the node first")
}

/// Makes `node` the one [`node`] returns (in a helper with a node of its own).
pub fn install_node(node: Node) {
    assert!(NODE.set(node).is_ok(), "a node is already installed");
}

/// A test: its name and its body.
pub type Test = (&'static str, fn());

/// A helper: its name and its body (it runs in a process of its own).
pub type Helper = (&'static str, fn());

/// Runs `tests` (or the helper named in `CONVERGE_HELPER`) and exits.
pub fn run(tests: &[Test], helpers: &[Helper]) -> ! {
    run_with(converge::Config::new(), tests, helpers)
}

/// Like [`run`], with the node configured by `config`.
pub fn run_with(config: converge::Config, tests: &[Test], helpers: &[Helper]) -> ! {
    run_skipping(config, tests, helpers, |_| None)
}

/// Like [`run_with`]; a test for which `skip` (asked once the node runs)
/// gives a reason is reported ignored, with the reason on standard error.
pub fn run_skipping(
    config: converge::Config,
    tests: &[Test],
    helpers: &[Helper],
    skip: fn(&str) -> Option<String>,
) -> ! {
    let (log, own_log) = quiet_process_panics();
    if let Ok(name) = std::env::var(HELPER) {
        let helper = helpers
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no helper named {name}"));
        (helper.1)();
        std::process::exit(0);
    }
    let n = config.init().expect("init() must succeed as the first call in main");
    let _ = NODE.set(n);
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            let skipped = skip(name);
            if let Some(why) = &skipped {
                eprintln!("{name}: SKIPPED: {why}");
            }
            let log = log.clone();
            Trial::test(name, move || {
                let from = log_len(&log);
                let result = run_one(name, f);
                if result.is_err() {
                    let reports = panic_reports_since(&log, from);
                    if !reports.is_empty() {
                        eprintln!("---- panics in the processes of {name} ----\n{reports}");
                    }
                }
                result
            })
            .with_ignored_flag(skipped.is_some())
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    node().shutdown(Duration::from_secs(5));
    if own_log {
        let _ = std::fs::remove_file(&log);
    }
    conclusion.exit()
}

fn run_one(name: &'static str, f: fn()) -> Result<(), Failed> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("test {name} is still running after 120 s: aborting");
            std::process::abort();
        })
    };
    let outcome = std::panic::catch_unwind(f);
    let leftovers = check_no_leftovers();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    if outcome.is_err() {
        drop_leftover_events(name);
    }
    match (outcome, leftovers) {
        (Err(p), _) => Err(Failed::from(panic_text(&*p))),
        (Ok(()), Err(e)) => Err(Failed::from(e)),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// A test that failed midway may leave messages and events (the `Down` of
/// a process it was still waiting for) in the main thread's mailbox: they
/// are dropped, so that the next test is not failed by them.
fn drop_leftover_events(name: &str) {
    let me = node().ctx::<()>();
    let mut dropped = 0;
    while dropped < 100_000 && me.try_recv_event().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        eprintln!("{name}: {dropped} leftover events dropped from the main thread's mailbox");
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}

/// Waits (bounded) until the test's processes are gone and no zombie is left;
/// kills and reports whatever is left.
fn check_no_leftovers() -> Result<(), String> {
    let node = node();
    let gone = wait_until(Duration::from_secs(10), || node.processes().is_empty());
    if !gone {
        let left = node.processes();
        for pid in &left {
            converge::Mailbox::<()>::from_pid(*pid).kill();
        }
        wait_until(Duration::from_secs(5), || node.processes().is_empty());
        return Err(format!("the test left {} processes running: {left:?}", left.len()));
    }
    // Every converge process is finalized (reaped by the node) by now, so a
    // zombie left is a stranger: a process of a helper node that this node
    // adopted as subreaper when the helper died. The node leaves unknown
    // children alone (they may be the application's own); the harness reaps
    // them so that one test's helpers do not count against the next.
    let no_zombies = wait_until(Duration::from_secs(5), || {
        for z in zombie_children() {
            // SAFETY: waiting for one specific child with WNOHANG; no status
            // is stolen from the node, whose processes are all reaped already.
            unsafe {
                libc::waitpid(z, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
        zombie_children().is_empty()
    });
    if !no_zombies {
        let named: Vec<String> = zombie_children().into_iter().map(describe_zombie).collect();
        return Err(format!("the test left zombies: {}", named.join("; ")));
    }
    Ok(())
}

/// OS pids of this process's children that are zombies.
pub fn zombie_children() -> Vec<i32> {
    children().into_iter().filter(|&p| os_state(p) == Some('Z')).collect()
}

/// A zombie child described from `/proc`: its OS pid, name, process group,
/// and how it ended (its wait status, decoded).
pub fn describe_zombie(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let comm = stat
        .find('(')
        .zip(stat.rfind(')'))
        .map_or("?", |(a, b)| &stat[a + 1..b]);
    // Fields after the name, from field 3 (state) on.
    let rest: Vec<&str> = stat
        .rfind(')')
        .map_or(Vec::new(), |b| stat[b + 2..].split(' ').collect());
    let field = |n: usize| rest.get(n - 3).copied().unwrap_or("?");
    let ended = match field(52).trim().parse::<i32>() {
        Ok(status) if status & 0x7f == 0 => format!("exit code {}", (status >> 8) & 0xff),
        Ok(status) => format!(
            "signal {}{}",
            status & 0x7f,
            if status & 0x80 != 0 { " (core dumped)" } else { "" }
        ),
        Err(_) => "unknown".into(),
    };
    format!("pid {pid} ({comm}, process group {}, {ended})", field(5))
}

/// OS pids of this process's children.
pub fn children() -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// The state letter of an OS process (`None`: it does not exist).
pub fn os_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Whether an OS process exists and is not a zombie.
pub fn os_alive(pid: i32) -> bool {
    matches!(os_state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How long tests wait for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Spawns `f` monitored and returns its exit reason.
pub fn exit_reason<M, F, R>(f: F) -> ExitReason
where
    M: serde::Serialize + serde::de::DeserializeOwned,
    F: FnOnce(Ctx<M>) -> R,
    R: IntoExitReason,
{
    let (_mb, r) = converge::spawn_monitor(f).expect("spawn");
    node()
        .ctx::<()>()
        .recv_down_timeout(r, PATIENCE)
        .expect("a Down within the patience")
        .reason
}

/// A command that re-runs this test binary as the helper `name`.
pub fn helper(name: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.env(HELPER, name);
    c.stdout(Stdio::piped());
    c
}

/// A running helper whose stdout is read line by line as `key value...`.
pub struct HelperProcess {
    /// The helper's OS process.
    pub child: Child,
    lines: BufReader<std::process::ChildStdout>,
    /// Lines read so far, by their first word.
    pub seen: HashMap<String, Vec<String>>,
}

impl HelperProcess {
    /// Starts `cmd` (from [`helper`]).
    pub fn start(mut cmd: Command) -> HelperProcess {
        let mut child = cmd.spawn().expect("start helper");
        let out = child.stdout.take().expect("piped stdout");
        HelperProcess {
            child,
            lines: BufReader::new(out),
            seen: HashMap::new(),
        }
    }

    /// Reads lines until one starts with `key`; returns the rest of it.
    pub fn expect(&mut self, key: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("read helper output");
            assert!(n > 0, "helper ended before printing {key:?}; saw {:?}", self.seen);
            let line = line.trim_end().to_string();
            let (k, rest) = line.split_once(' ').unwrap_or((&line, ""));
            self.seen.entry(k.to_string()).or_default().push(rest.to_string());
            if k == key {
                return rest.to_string();
            }
        }
    }

    /// Reads what is left of the output.
    pub fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut line = String::new();
        while self.lines.read_line(&mut line).unwrap_or(0) > 0 {
            out.push(line.trim_end().to_string());
            line.clear();
        }
        out
    }

    /// Waits up to `timeout` for the helper to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Turns core dumps off for the calling process (one about to crash on
/// purpose).
pub fn no_core_dumps() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain setrlimit on this process.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &lim);
    }
}

/// Prints a `key value` line for the test reading a helper's output.
pub fn say(key: &str, value: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{key} {value}");
    let _ = out.flush();
}

/// A fresh directory of this test process under the system's temporary
/// directory (the caller removes it).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("converge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

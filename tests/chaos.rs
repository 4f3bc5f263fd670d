//! Chaos: a supervision tree of closure processes, pool actors and ports,
//! with a chaos loop ending its OS processes in varied ways for a bounded
//! time (`CONVERGE_CHAOS_SECS`, 5 s by default): SIGKILL and SIGTERM from
//! outside, a segfault, an abort, an exit code and a panic from inside,
//! schedulers, the zygote and supervisors too (never the node). What must
//! hold:
//!
//! - every death gives exactly one `Down` per monitor, with the reason that
//!   matches how the chaos loop ended it (`Killed` for one that died with its
//!   supervisor or scheduler, `Shutdown` at the end);
//! - every worker's stream of sequence numbers, to the collector and to each
//!   actor, arrives in order and without a gap: all of it between a worker and
//!   a receiver that stayed alive, a prefix from a worker that was killed;
//! - at the end the tree is back to full strength and no zombie is left.
//!
//! The figures (deaths by kind, restarts, messages checked) are printed.

mod util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use converge::pool::{self, Actor, ActorBuilder, ActorCtx};
use converge::port::PortBuilder;
use converge::supervisor::{ChildSpec, ChildState, Strategy, Supervisor, SupervisorRef};
use converge::{Config, Ctx, Event, ExitReason, Mailbox, MonitorRef, Pid};
use serde::{Deserialize, Serialize};
use util::{HelperProcess, PATIENCE, helper, node, say, wait_until};

const WORKERS: usize = 4;
const ACTORS: usize = 3;
const PORTS: usize = 2;

fn main() {
    if std::env::var_os("CHAOS_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("converge=debug")
            .with_writer(std::io::stderr)
            .init();
    }
    util::run_with(
        Config::new().schedulers(2),
        &[
            ("chaos_in_a_supervision_tree", chaos_in_a_supervision_tree),
            (
                "a_node_killed_in_chaos_leaves_nothing",
                a_node_killed_in_chaos_leaves_nothing,
            ),
        ],
        &[("tree_in_chaos", helper_tree_in_chaos)],
    )
}

/// What tree members tell the collector (the test's main thread).
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// A new incarnation.
    Hello(Pid),
    /// The next number of a worker's stream.
    Seq(Pid, u64),
    /// A worker's last number, when asked to finish.
    Last(Pid, u64),
    /// An actor got a worker's number.
    Relay(Pid, Pid, u64),
}

/// What the chaos loop (or the end) tells a worker.
#[derive(Debug, Serialize, Deserialize)]
enum Order {
    /// A worker's numbered message to an actor, which reports it.
    Num(Pid, u64),
    Panic,
    Segv,
    Exit(i32),
    Abort,
    Finish,
}

fn worker(ctx: Ctx<Order>, collector: Mailbox<Report>) {
    let me = ctx.pid();
    collector.send(Report::Hello(me)).unwrap();
    for n in 0.. {
        collector.send(Report::Seq(me, n)).unwrap();
        // The same number to each actor of the tree that is registered now.
        for k in 0..ACTORS {
            if let Some(actor) = converge::whereis(&format!("actor-{k}")) {
                Mailbox::<Order>::from_pid(actor).send(Order::Num(me, n)).unwrap();
            }
        }
        match ctx.recv_timeout(Duration::from_millis(2)) {
            Ok(Order::Panic) => panic!("chaos"),
            Ok(Order::Segv) => {
                util::no_core_dumps();
                // SAFETY: none: a write through a null pointer, on purpose.
                unsafe { std::ptr::null_mut::<u8>().write_volatile(1) }
            }
            Ok(Order::Exit(code)) => std::process::exit(code),
            Ok(Order::Abort) => {
                util::no_core_dumps();
                std::process::abort()
            }
            Ok(Order::Finish) => {
                collector.send(Report::Last(me, n)).unwrap();
                let _ = ctx.recv();
                return;
            }
            Ok(Order::Num(..)) | Err(_) => {}
        }
    }
}

/// An actor member: says hello, reports the workers' numbers it gets,
/// panics when told.
struct Member {
    collector: Mailbox<Report>,
}

impl Actor for Member {
    type Msg = Order;
    type Args = Mailbox<Report>;

    fn start(collector: Mailbox<Report>, ctx: &mut ActorCtx<'_, Order>) -> Member {
        collector.send(Report::Hello(ctx.pid())).unwrap();
        Member { collector }
    }

    fn handle(&mut self, event: Event<Order>, ctx: &mut ActorCtx<'_, Order>) {
        if let Event::Message(Order::Num(from, n)) = event {
            self.collector.send(Report::Relay(ctx.pid(), from, n)).unwrap();
        } else if let Event::Message(Order::Panic) = event {
            panic!("chaos");
        }
    }
}

/// The collector's view.
#[derive(Default)]
struct Collector {
    /// Next number expected, per worker incarnation.
    next: HashMap<Pid, u64>,
    /// Next number expected from a worker at an actor: (actor, worker) →
    /// number, from the first one that actor incarnation got.
    relayed: HashMap<(Pid, Pid), u64>,
    /// Monitors placed: reference → pid.
    monitors: HashMap<MonitorRef, Pid>,
    /// Downs received: monitor → pid and reason.
    downs: HashMap<MonitorRef, (Pid, ExitReason)>,
    /// Last numbers of workers told to finish.
    last: HashMap<Pid, u64>,
    messages: u64,
}

impl Collector {
    fn handle(&mut self, event: Event<Report>) {
        match event {
            Event::Message(Report::Hello(pid)) => {
                let r = node().ctx::<()>().monitor(pid);
                self.monitors.insert(r, pid);
                self.next.insert(pid, 0);
            }
            Event::Message(Report::Seq(pid, n)) => {
                let next = self.next.get_mut(&pid).expect("a number before its sender's hello");
                assert_eq!(n, *next, "{pid}: number {n} where {next} was due");
                *next += 1;
                self.messages += 1;
            }
            Event::Message(Report::Last(pid, n)) => {
                self.last.insert(pid, n);
            }
            Event::Message(Report::Relay(actor, from, n)) => {
                let next = self.relayed.entry((actor, from)).or_insert(n);
                assert_eq!(n, *next, "{from} to {actor}: number {n} where {next} was due");
                *next += 1;
                self.messages += 1;
            }
            Event::Down(d) => {
                let pid = self.monitors.remove(&d.reference).expect("one Down per monitor");
                assert_eq!(pid, d.pid);
                self.downs.insert(d.reference, (pid, d.reason));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Handles events until `done` holds (or the patience runs out).
    fn until(&mut self, what: &str, done: impl FnMut(&Collector) -> bool) {
        assert!(self.within_patience(done), "waited too long for {what}");
    }

    /// Handles events until `done` holds: `false` if the patience ran out.
    fn within_patience(&mut self, mut done: impl FnMut(&Collector) -> bool) -> bool {
        let me = node().ctx::<Report>();
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(e) = me.recv_event_timeout(Duration::from_millis(20)) {
                self.handle(e);
            }
        }
        true
    }

    /// Handles what is already there.
    fn drain(&mut self) {
        let me = node().ctx::<Report>();
        while let Ok(e) = me.try_recv_event() {
            self.handle(e);
        }
    }

    fn alive(&self) -> Vec<Pid> {
        self.monitors.values().copied().collect()
    }

    fn ended(&self, pid: Pid) -> bool {
        self.downs.values().any(|(p, _)| *p == pid)
    }

    /// Monitors `pid` for the chaos loop.
    fn watch(&mut self, pid: Pid) -> MonitorRef {
        let r = node().ctx::<()>().monitor(pid);
        self.monitors.insert(r, pid);
        r
    }
}

/// Where a process that did not end as told stands: the node's view, and the
/// kernel's view of it and of its parent (state, wait channel, each thread's
/// system call).
fn diagnose(target: Pid, os: Option<i32>) -> String {
    let proc_view = |pid: i32| {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        let stat = read("stat");
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .map(|t| {
                        let tid = t.file_name().to_string_lossy().into_owned();
                        let f = |n: &str| {
                            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{n}"))
                                .unwrap_or_default()
                                .trim()
                                .to_string()
                        };
                        format!("{tid} [{}] wchan {} syscall {}", f("comm"), f("wchan"), f("syscall"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!("stat {:?}; threads {threads:?}; stack {:?}", stat.trim(), read("stack"))
    };
    let mut out = format!("process_info {:?}; os pid {os:?}", converge::process_info(target));
    if let Some(os) = os {
        out += &format!("; it: {}", proc_view(os));
        let ppid = std::fs::read_to_string(format!("/proc/{os}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            out += &format!("; its parent {ppid}: {}", proc_view(ppid));
        }
    }
    out
}

/// The reason of a process ended by `signal` (no core: the chaos turns core
/// dumps off).
fn signalled(signal: i32) -> ExitReason {
    ExitReason::Signal {
        signal,
        core_dumped: false,
    }
}

fn os_pid(pid: Pid) -> Option<i32> {
    converge::process_info(pid).and_then(|i| i.os_pid)
}

fn zygote() -> Option<i32> {
    util::children().into_iter().find(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "converge-zygote")
            && util::os_state(pid).is_some_and(|s| s != 'Z')
    })
}

fn signal(ospid: i32, sig: i32) -> bool {
    // SAFETY: plain kill(2) of a process of this node.
    unsafe { libc::kill(ospid, sig) == 0 }
}

/// A small deterministic generator (xorshift), seeded from the clock; the
/// seed is printed so that a run can be repeated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn running(sup: &SupervisorRef) -> Vec<Pid> {
    sup.which_children()
        .map(|c| {
            c.into_iter()
                .filter(|c| c.state == ChildState::Running)
                .filter_map(|c| c.pid)
                .collect()
        })
        .unwrap_or_default()
}

fn chaos_in_a_supervision_tree() {
    let secs: u64 = std::env::var("CONVERGE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = std::env::var("CONVERGE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            now.as_nanos() as u64 | 1
        });
    let mut rng = Rng(seed);
    eprintln!("chaos seed {seed}");
    let collector = node().ctx::<Report>().mailbox();
    let top = tree(collector);
    let sup = |id: &str| -> Option<SupervisorRef> {
        let c = top.which_children().ok()?;
        let pid = c.into_iter().find(|c| c.id == id)?.pid?;
        Some(SupervisorRef::from_pid(pid))
    };
    let mut c = Collector::default();
    c.until("the tree to start", |c| c.next.len() >= WORKERS + ACTORS);

    let restarts0 = node().stats().restarts;
    let mut deaths: BTreeMap<&str, u64> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last_zygote_kill = Instant::now();
    let zygote_pace = Duration::from_millis(
        std::env::var("CONVERGE_CHAOS_ZYGOTE_PACE_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000),
    );
    // The processes the loop ended itself, with their reasons.
    let mut acted: HashMap<Pid, ExitReason> = HashMap::new();
    while Instant::now() < end {
        c.drain();
        let what = rng.below(11);
        let watched: MonitorRef;
        // The target, how it is ended, the reason its Down must give.
        let (kind, target, reason): (&str, Pid, ExitReason) = match what {
            0..=5 => {
                let Some(w) = sup("workers").map(|s| running(&s)).filter(|w| !w.is_empty()) else {
                    continue;
                };
                let pid = w[rng.below(w.len())];
                if c.ended(pid) {
                    // Ended already; its supervisor has not restarted it yet.
                    continue;
                }
                let mb = Mailbox::<Order>::from_pid(pid);
                watched = c.watch(pid);
                match what {
                    0 => {
                        let Some(os) = os_pid(pid) else { continue };
                        signal(os, libc::SIGKILL);
                        ("worker SIGKILL", pid, ExitReason::Killed)
                    }
                    1 => {
                        let Some(os) = os_pid(pid) else { continue };
                        signal(os, libc::SIGTERM);
                        ("worker SIGTERM", pid, signalled(libc::SIGTERM))
                    }
                    2 => {
                        mb.send(Order::Abort).unwrap();
                        ("worker abort", pid, signalled(libc::SIGABRT))
                    }
                    3 => {
                        mb.send(Order::Exit(3)).unwrap();
                        ("worker exit code", pid, ExitReason::Code(3))
                    }
                    4 => {
                        mb.send(Order::Segv).unwrap();
                        ("worker segfault", pid, signalled(libc::SIGSEGV))
                    }
                    _ => {
                        mb.send(Order::Panic).unwrap();
                        ("worker panic", pid, ExitReason::Panic("chaos".into()))
                    }
                }
            }
            6 => {
                let Some(a) = sup("actors").map(|s| running(&s)).filter(|a| !a.is_empty()) else {
                    continue;
                };
                let pid = a[rng.below(a.len())];
                if c.ended(pid) {
                    continue;
                }
                watched = c.watch(pid);
                Mailbox::<Order>::from_pid(pid).send(Order::Panic).unwrap();
                ("actor panic", pid, ExitReason::Panic("chaos".into()))
            }
            7 => {
                let Some(p) = sup("ports").map(|s| running(&s)).filter(|p| !p.is_empty()) else {
                    continue;
                };
                let pid = p[rng.below(p.len())];
                let Some(os) = os_pid(pid) else { continue };
                let r = node().ctx::<()>().monitor(pid);
                signal(os, libc::SIGKILL);
                let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
                assert_eq!(down.reason, ExitReason::Killed, "port");
                *deaths.entry("port SIGKILL").or_default() += 1;
                continue;
            }
            8 => {
                let s = pool::schedulers();
                if s.is_empty() {
                    continue;
                }
                let (_, pid) = s[rng.below(s.len())];
                let Some(os) = os_pid(pid) else { continue };
                let r = node().ctx::<()>().monitor(pid);
                signal(os, libc::SIGKILL);
                assert_eq!(
                    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
                    ExitReason::Killed
                );
                *deaths.entry("scheduler SIGKILL").or_default() += 1;
                continue;
            }
            9 => {
                // The zygote at most once a second by default
                // (`CONVERGE_CHAOS_ZYGOTE_PACE_MS`).
                if last_zygote_kill.elapsed() < zygote_pace {
                    continue;
                }
                last_zygote_kill = Instant::now();
                let Some(old) = zygote() else { continue };
                signal(old, libc::SIGKILL);
                assert!(
                    wait_until(PATIENCE, || zygote().is_some_and(|z| z != old)),
                    "no zygote took over from {old}: children {:?}",
                    util::children()
                        .into_iter()
                        .map(|p| (
                            p,
                            std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default(),
                            util::os_state(p)
                        ))
                        .collect::<Vec<_>>()
                );
                *deaths.entry("zygote SIGKILL").or_default() += 1;
                continue;
            }
            _ => {
                let id = ["workers", "actors", "ports"][rng.below(3)];
                let Some(s) = sup(id) else { continue };
                let r = node().ctx::<()>().monitor(s.pid());
                Mailbox::<()>::from_pid(s.pid()).kill();
                assert_eq!(
                    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
                    ExitReason::Killed
                );
                *deaths.entry("supervisor kill").or_default() += 1;
                continue;
            }
        };
        if std::env::var_os("CHAOS_TRACE").is_some() {
            eprintln!("chaos: {kind} {target}");
        }
        let r = watched;
        if !c.within_patience(|c| c.downs.contains_key(&r)) {
            panic!(
                "waited too long for the Down of {kind} of {target}: {}",
                diagnose(target, os_pid(target))
            );
        }
        if c.downs[&r].1 == ExitReason::NoProc {
            // It was gone before the monitor (with its scheduler, say).
            *deaths.entry("gone before the action").or_default() += 1;
            continue;
        }
        assert_eq!(c.downs[&r].1, reason, "{kind} of {target}");
        acted.insert(target, reason);
        *deaths.entry(kind).or_default() += 1;
    }

    // Back to full strength.
    assert!(
        wait_until(PATIENCE, || {
            c.drain();
            let full = |id: &str, n: usize| sup(id).is_some_and(|s| running(&s).len() == n);
            full("workers", WORKERS) && full("actors", ACTORS) && full("ports", PORTS) && pool::schedulers().len() == 2
        }),
        "the tree is not back to full strength: top {:?}, workers {:?}, actors {:?}, ports {:?}, schedulers {:?}",
        top.which_children()
            .map(|c| c.into_iter().map(|c| (c.id, c.pid, c.state)).collect::<Vec<_>>()),
        sup("workers").map(|s| s
            .which_children()
            .map(|c| c.into_iter().map(|c| (c.pid, c.state, c.last_exit)).collect::<Vec<_>>())),
        sup("actors").map(|s| s
            .which_children()
            .map(|c| c.into_iter().map(|c| (c.pid, c.state, c.last_exit)).collect::<Vec<_>>())),
        sup("ports").map(|s| s
            .which_children()
            .map(|c| c.into_iter().map(|c| (c.pid, c.state, c.last_exit)).collect::<Vec<_>>())),
        pool::schedulers()
    );
    // The live workers' streams arrive whole.
    let live = running(&sup("workers").unwrap());
    for &w in &live {
        Mailbox::<Order>::from_pid(w).send(Order::Finish).unwrap();
    }
    c.until("the live workers' last numbers", |c| {
        live.iter().all(|w| c.last.contains_key(w))
    });
    c.until("the live workers' streams", |c| {
        live.iter().all(|w| c.next[w] == c.last[w] + 1)
    });
    // ... and so do their streams to the live actors (from the first number
    // each actor incarnation got: one that came up after a worker's last
    // number has none from it).
    let actors = running(&sup("actors").unwrap());
    c.until("the streams between live workers and live actors", |c| {
        live.iter().all(|w| {
            actors
                .iter()
                .all(|a| c.relayed.get(&(*a, *w)).is_none_or(|next| *next == c.last[w] + 1))
        })
    });
    assert!(
        actors
            .iter()
            .any(|a| live.iter().any(|w| c.relayed.contains_key(&(*a, *w)))),
        "some live worker reached some live actor"
    );
    let restarts = node().stats().restarts - restarts0;
    // Everything ends: one Down for each monitor left.
    let left: HashSet<Pid> = c.alive().into_iter().collect();
    top.stop().unwrap();
    c.until("the tree to end", |c| left.iter().all(|p| c.ended(*p)));
    assert!(c.monitors.is_empty());
    // Every monitor of a process the loop ended (the collector's, from its
    // hello, too) got the same reason; every other death came with a
    // supervisor or a scheduler that was killed (the exit signal `Killed`),
    // or with the end of the tree (`Shutdown`). A monitor placed when the
    // process was already gone (its hello read late) says `NoProc`.
    let wrong: Vec<&(Pid, ExitReason)> = c
        .downs
        .values()
        .filter(|(pid, reason)| {
            *reason != ExitReason::NoProc
                && match acted.get(pid) {
                    Some(expected) => reason != expected,
                    None => !matches!(reason, ExitReason::Killed | ExitReason::Shutdown),
                }
        })
        .collect();
    assert!(wrong.is_empty(), "Downs with reasons that do not match: {wrong:?}");
    assert!(
        wait_until(PATIENCE, || util::zombie_children().is_empty()),
        "zombies left: {}",
        util::zombie_children()
            .into_iter()
            .map(util::describe_zombie)
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "chaos: seed {seed}, {secs} s: deaths {deaths:?}, {restarts} restarts, {} incarnations, {} messages checked",
        c.downs.len(),
        c.messages
    );
}

/// The tree: supervisors of workers, actors and ports under a top one.
fn tree(collector: Mailbox<Report>) -> SupervisorRef {
    let workers = (0..WORKERS).fold(
        Supervisor::new(Strategy::OneForOne).intensity(u32::MAX, Duration::from_secs(1)),
        |s, i| {
            s.child(ChildSpec::new(format!("worker-{i}"), move |ctx: Ctx<Order>| {
                worker(ctx, collector)
            }))
        },
    );
    let actors = (0..ACTORS).fold(
        Supervisor::new(Strategy::OneForOne).intensity(u32::MAX, Duration::from_secs(1)),
        |s, i| {
            s.child(ChildSpec::actor::<Member>(
                format!("actor-{i}"),
                ActorBuilder::new().register(format!("actor-{i}")),
                collector,
            ))
        },
    );
    let ports = (0..PORTS).fold(
        Supervisor::new(Strategy::OneForOne).intensity(u32::MAX, Duration::from_secs(1)),
        |s, i| {
            s.child(ChildSpec::port(
                format!("port-{i}"),
                // A program with a child in its process group.
                PortBuilder::new("/bin/sh").args(["-c", "sleep 1000 & exec sleep 1000"]),
            ))
        },
    );
    Supervisor::new(Strategy::OneForOne)
        .intensity(u32::MAX, Duration::from_secs(1))
        .child(ChildSpec::supervisor("workers", workers))
        .child(ChildSpec::supervisor("actors", actors))
        .child(ChildSpec::supervisor("ports", ports))
        .spawn()
        .unwrap()
}

/// Every OS process below `root`.
fn descendants(root: i32) -> Vec<i32> {
    let parent_of = |pid: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
    };
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !found.contains(&p) && parent_of(p).is_some_and(|q| found.contains(&q)) {
                found.push(p);
                grew = true;
            }
        }
    }
    found.retain(|&p| p != root);
    found
}

/// A node with the tree, in chaos (its members killed and restarted) until
/// it is killed itself; it prints the OS pids of everything it runs.
fn helper_tree_in_chaos() {
    let node = Config::new().schedulers(2).init().unwrap();
    let top = tree(node.ctx::<Report>().mailbox());
    let workers = || {
        top.which_children()
            .ok()
            .and_then(|c| c.into_iter().find(|c| c.id == "workers")?.pid)
            .map(SupervisorRef::from_pid)
    };
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && workers().is_none_or(|w| running(&w).len() < WORKERS) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Chaos for a while: workers killed, restarted.
    for _ in 0..20 {
        if let Some(w) = workers().map(|w| running(&w)).filter(|w| !w.is_empty()) {
            Mailbox::<()>::from_pid(w[0]).kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = descendants(std::process::id() as i32);
    say("pids", format!("{pids:?}"));
    // Chaos goes on until the node is killed.
    loop {
        if let Some(w) = workers().map(|w| running(&w)).filter(|w| !w.is_empty()) {
            Mailbox::<()>::from_pid(w[0]).kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The live processes whose environment carries `token` (a process started
/// by the helper node, or by its processes, inherits it).
fn carrying(token: &str) -> Vec<(i32, String)> {
    let needle = format!("CONVERGE_CHAOS_TOKEN={token}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| util::os_alive(p))
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(|p| {
            (
                p,
                std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default(),
            )
        })
        .collect()
}

fn a_node_killed_in_chaos_leaves_nothing() {
    let token = format!("{}-{:?}", std::process::id(), Instant::now());
    let mut cmd = helper("tree_in_chaos");
    cmd.env("CONVERGE_CHAOS_TOKEN", &token);
    let mut h = HelperProcess::start(cmd);
    let line = h.expect("pids");
    let pids: Vec<i32> = line
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter_map(|p| p.parse().ok())
        .collect();
    // Workers, actors' schedulers, ports and their children, the zygote and
    // its spare.
    assert!(pids.len() >= WORKERS + 2 * PORTS + 4, "{pids:?}");
    let marked = carrying(&token);
    assert!(
        pids.iter().any(|p| marked.iter().any(|m| m.0 == *p)) && marked.iter().any(|m| m.0 == h.child.id() as i32),
        "the token marks the helper's processes: {marked:?}"
    );
    // Killed in the middle of its chaos: whatever it runs at that instant
    // (found by the token, not by an earlier list) ends within 2 s.
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    if !wait_until(Duration::from_secs(2), || carrying(&token).is_empty()) {
        let survivors = carrying(&token);
        for &(p, _) in &survivors {
            signal(p, libc::SIGKILL);
        }
        panic!("survivors of the killed node: {survivors:?}");
    }
}

//! Load and leaks: a sustained mix of work (processes spawned and ended,
//! messages, tasks, actors, names) for `CONVERGE_LOAD_SECS` seconds (5 by
//! default; the long run uses 30 or more), after which the private resident
//! memory and the open descriptors of the node and of the runtime's own
//! processes (the schedulers, the zygote) must be where they were after
//! warming up, and memory must not still be climbing in the second half. The
//! figures are printed so that runs can be compared. A second test runs the
//! same check on a node that leaks on purpose, and expects it to fail.

mod util;

use std::time::{Duration, Instant};

use converge::pool::{self, Actor, ActorBuilder, ActorCtx};
use converge::{Config, Ctx, Event, ExitReason, Mailbox};
use util::{PATIENCE, node, wait_until};

fn main() {
    util::run_with(
        Config::new().schedulers(2),
        &[
            ("sustained_load_leaves_no_leak", sustained_load_leaves_no_leak),
            ("the_leak_check_catches_a_leak", the_leak_check_catches_a_leak),
        ],
        &[("leaky_load", helper_leaky_load)],
    )
}

fn square(x: u64) -> u64 {
    x * x
}

/// An actor that echoes each number to where it was told.
struct Echo(Mailbox<u64>);

impl Actor for Echo {
    type Msg = u64;
    type Args = Mailbox<u64>;

    fn start(to: Mailbox<u64>, _: &mut ActorCtx<'_, u64>) -> Echo {
        Echo(to)
    }

    fn handle(&mut self, event: Event<u64>, _: &mut ActorCtx<'_, u64>) {
        if let Event::Message(n) = event {
            self.0.send(n).unwrap();
        }
    }
}

/// What one round did.
#[derive(Default, Debug)]
struct Done {
    spawned: u64,
    messages: u64,
    tasks: u64,
    actors: u64,
}

/// One round of everything, all of it awaited.
fn round(done: &mut Done) {
    let me = node().ctx::<u64>();
    let out = me.mailbox();
    // Processes that send and end, monitored.
    let mut refs = Vec::new();
    for p in 0..10u64 {
        let (_, r) = converge::spawn_monitor(move |_: Ctx<()>| {
            for i in 0..100 {
                out.send(p * 1000 + i).unwrap();
            }
        })
        .unwrap();
        refs.push(r);
    }
    for _ in 0..1000 {
        me.recv_timeout(PATIENCE).unwrap();
    }
    for r in refs {
        assert_eq!(
            node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
            ExitReason::Normal
        );
    }
    done.spawned += 10;
    done.messages += 1000;
    // A named, linked worker that is told to fail, with a trapping parent.
    let (w, r) = converge::spawn_monitor(|ctx: Ctx<u64>| -> Result<(), String> {
        ctx.register("load-worker").unwrap();
        let n = ctx.recv().map_err(|e| e.to_string())?;
        Err(format!("failed at {n}"))
    })
    .unwrap();
    assert!(wait_until(PATIENCE, || converge::whereis("load-worker").is_some()));
    w.send(7).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    done.spawned += 1;
    // Tasks.
    let tasks: Vec<_> = (0..20u64).map(|i| pool::submit(square, i).unwrap()).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.join(), Ok((i * i) as u64));
    }
    done.tasks += 20;
    // Actors: started, used, killed.
    for i in 0..5u64 {
        let (a, r) = ActorBuilder::new().spawn_monitor::<Echo>(out).unwrap();
        a.send(i).unwrap();
        assert_eq!(me.recv_timeout(PATIENCE).unwrap(), i);
        a.kill();
        assert_eq!(
            node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
            ExitReason::Killed
        );
    }
    done.actors += 5;
}

/// Resident private memory (KiB) and open descriptors of process `pid`
/// ("self" for the node). The node's shared area (a status slot per serial,
/// touched as serials are handed out, 4 MiB at most) is resident shared
/// memory, not counted.
fn footprint_of(pid: &str) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let anon = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (anon, fds)
}

fn footprint() -> (u64, usize) {
    footprint_of("self")
}

/// The runtime's own processes: the schedulers and the zygote (OS pids).
fn runtime_processes() -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = pool::schedulers()
        .into_iter()
        .filter_map(|(slot, pid)| Some((format!("scheduler {slot}"), converge::process_info(pid)?.os_pid?)))
        .collect();
    out.extend(
        util::children()
            .into_iter()
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "converge-zygote"))
            .map(|p| ("zygote".to_string(), p)),
    );
    out
}

/// How much private memory (KiB) may move over a run that started at
/// `rss0`: what the allocator settles at, not something that grows with the
/// work done (64 bytes kept per process would be 2 MiB over a 30 s run).
fn allowed(rss0: u64) -> u64 {
    rss0 / 10 + 1024
}

/// Leaked on purpose by `leaky_load`, per round.
static LEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn sustained_load_leaves_no_leak() {
    let secs: u64 = std::env::var("CONVERGE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut done = Done::default();
    // Warm up: every cache, connection and buffer in use reaches its size.
    let warm = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm {
        round(&mut done);
    }
    let settled = || wait_until(PATIENCE, || node().processes().is_empty());
    assert!(settled());
    let (rss0, fds0) = footprint();
    let runtime0: Vec<(String, i32, (u64, usize))> = runtime_processes()
        .into_iter()
        .map(|(what, p)| (what, p, footprint_of(&p.to_string())))
        .collect();
    assert!(runtime0.len() >= 3, "two schedulers and the zygote: {runtime0:?}");
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        round(&mut done);
        let leak = LEAK.load(std::sync::atomic::Ordering::Relaxed);
        if leak > 0 {
            std::hint::black_box(Box::leak(vec![1u8; leak].into_boxed_slice()));
        }
        rounds += 1;
        if rounds % 20 == 0 {
            samples.push(footprint().0);
        }
    }
    assert!(settled());
    let (rss1, fds1) = footprint();
    let peak = samples.iter().copied().max().unwrap_or(rss1);
    let quarter = samples.len() / 4;
    println!(
        "private rss by quarter (KiB): {:?}",
        (0..4)
            .filter_map(|q| samples.get(q * quarter))
            .chain(samples.last())
            .collect::<Vec<_>>()
    );
    println!(
        "load: {secs} s, {rounds} rounds: {} processes, {} messages, {} tasks, {} actors; \
         node private rss {rss0} -> {rss1} KiB (peak {peak}), fds {fds0} -> {fds1}",
        done.spawned, done.messages, done.tasks, done.actors
    );
    assert!(fds1 <= fds0, "the node holds {} more descriptors", fds1 - fds0);
    assert!(
        rss1 <= rss0 + allowed(rss0),
        "the node grew from {rss0} to {rss1} KiB over {rounds} rounds"
    );
    // Still climbing in the second half: what a leak looks like on a long
    // run, where the total allowance would hide a small one.
    if let (Some(&mid), Some(&last)) = (samples.get(samples.len() / 2), samples.last()) {
        assert!(
            last <= mid + allowed(rss0) / 2,
            "the node grew from {mid} to {last} KiB in the second half"
        );
    }
    for (what, p, (rss0, fds0)) in runtime0 {
        let (rss1, fds1) = footprint_of(&p.to_string());
        println!("{what}: private rss {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}");
        assert!(fds1 <= fds0, "the {what} holds {} more descriptors", fds1 - fds0);
        assert!(
            rss1 <= rss0 + allowed(rss0),
            "the {what} grew from {rss0} to {rss1} KiB"
        );
    }
}

/// A node that keeps 64 KiB per round: the check above must fail on it. The
/// number of rounds in its 2 s depends on the machine's speed (50 to 150
/// here): at 16 KiB a slow run leaked less than the allowance of about
/// 1 MiB and passed.
fn helper_leaky_load() {
    LEAK.store(64 << 10, std::sync::atomic::Ordering::Relaxed);
    let n = Config::new().schedulers(2).init().unwrap();
    util::install_node(n);
    sustained_load_leaves_no_leak();
}

fn the_leak_check_catches_a_leak() {
    let mut cmd = util::helper("leaky_load");
    cmd.env("CONVERGE_LOAD_SECS", "2");
    cmd.stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the leaky run passed the leak check");
    assert!(
        stderr.contains("the node grew from"),
        "it failed for another reason: {stderr}"
    );
}

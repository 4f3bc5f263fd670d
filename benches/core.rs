//! The core's costs against the raw system calls underneath, measured in the
//! same run with floor and converge samples interleaved. Ends with one
//! `ratio NAME: X.XX (floor F, converge C)` line per figure (converge's time
//! per operation over the floor's: 1.00 is the floor, lower is better) and the
//! private memory of an idle process.
//!
//! Run with `cargo bench --bench core` (`CI=1` for a short run).

mod common;

use std::time::{Duration, Instant};

use common::floor;
use converge::{Builder, Ctx, Mailbox, Node};

fn main() {
    let node = converge::init().expect("init() first, before criterion starts threads");
    // Measured before the heap grows: the floor of a tiny process's fork.
    let tiny = floor::TinyForker::start();
    let mut c = common::criterion();

    spawn_down(&mut c, &node, "spawn_down");
    // Both ends pinned, the floor's and converge's alike: on one core, and
    // on two. Unpinned, a round trip is bimodal (the two ends land on one
    // core or on two, and the floor and converge may land differently): for
    // information only.
    rtt(&mut c, &node, "rtt_16_samecore", 16, Some((0, 0)));
    rtt(&mut c, &node, "rtt_1k_samecore", 1024, Some((0, 0)));
    if cpus() > 1 {
        rtt(&mut c, &node, "rtt_16_crosscore", 16, Some((0, 1)));
        rtt(&mut c, &node, "rtt_1k_crosscore", 1024, Some((0, 1)));
    }
    rtt(&mut c, &node, "rtt_16", 16, None);
    rtt(&mut c, &node, "rtt_1k", 1024, None);
    send_dead(&mut c, &node);
    throughput(&mut c, &node);
    kill_down(&mut c, &node);
    uss(&node);
    {
        let _heap = common::touched_heap(200);
        spawn_down(&mut c, &node, "spawn_down_200mb");
    }
    {
        let _heap = common::touched_heap(1024);
        spawn_fn_1gb(&mut c, &node, &tiny);
    }
    drop(tiny);
    c.final_summary();
    common::print_results();
    node.shutdown(Duration::from_secs(5));
}

/// Spawn a closure that returns at once, monitored, until its Down arrives.
fn spawn_down(c: &mut criterion::Criterion, node: &Node, name: &str) {
    common::compare(c, name, floor::fork_exit_wait, |iters| {
        let t = Instant::now();
        for _ in 0..iters {
            let (_p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
            node.ctx::<()>().recv_down(r).unwrap();
        }
        t.elapsed()
    });
}

/// A byte payload, encoded as bytes (one copy), not as a sequence of `u8`.
type Bytes = serde_bytes::ByteBuf;

/// A process that sends every message back.
fn echo(ctx: Ctx<(Bytes, Mailbox<Bytes>)>) {
    while let Ok((m, back)) = ctx.recv() {
        back.send(m).unwrap();
    }
}

/// Round trips of `size` bytes with an echo process; `pins`: the caller's
/// CPU and the echo's.
fn rtt(c: &mut criterion::Criterion, node: &Node, name: &str, size: usize, pins: Option<(usize, usize)>) {
    if let Some((me, _)) = pins {
        common::pin(me);
    }
    let raw = floor::Echo::start(pins.map(|p| p.1));
    let mut b = Builder::new();
    if let Some((_, echo_cpu)) = pins {
        b = b.cpus(&[echo_cpu]);
    }
    let e = b.spawn(echo).unwrap();
    let me = node.ctx::<Bytes>();
    let back = me.mailbox();
    let payload = Bytes::from(vec![7u8; size]);
    common::compare_as(
        c,
        name,
        if pins.is_some() { "ratio" } else { "info" },
        |iters| raw.round_trips(iters, size),
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                e.send((payload.clone(), back)).unwrap();
                let got = me.recv().unwrap();
                debug_assert_eq!(got.len(), size);
            }
            t.elapsed()
        },
    );
    e.kill();
    drop(raw);
    if pins.is_some() {
        common::unpin();
    }
}

/// CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A send to a process known to be gone, against a send to a live one (the
/// floor here is converge's own live send): a dead target must cost no more.
fn send_dead(c: &mut criterion::Criterion, node: &Node) {
    let sink = converge::spawn(|ctx: Ctx<u64>| while ctx.recv().is_ok() {}).unwrap();
    let (dead, r) = converge::spawn_monitor(|_: Ctx<u64>| {}).unwrap();
    node.ctx::<()>().recv_down(r).unwrap();
    dead.send(0).unwrap();
    common::compare(
        c,
        "send_dead",
        |iters| {
            let t = Instant::now();
            for i in 0..iters {
                sink.send(i).unwrap();
            }
            let spent = t.elapsed();
            converge::flush();
            spent
        },
        |iters| {
            let t = Instant::now();
            for i in 0..iters {
                dead.send(i).unwrap();
            }
            t.elapsed()
        },
    );
    sink.kill();
}

/// A process that counts messages and answers when it has the number asked.
fn counter(ctx: Ctx<Msg>) {
    let mut n = 0u64;
    while let Ok(m) = ctx.recv() {
        match m {
            Msg::Data(..) => n += 1,
            Msg::Expect(count, back) => {
                while n < count {
                    if let Ok(Msg::Data(..)) = ctx.recv() {
                        n += 1;
                    }
                }
                n = 0;
                back.send(()).unwrap();
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Msg {
    /// A 64-byte message (with the frame header, the type fingerprint, the
    /// variant and the length, 79 bytes on the wire against the floor's 64).
    Data(serde_bytes::ByteArray<64>),
    /// Answer once this many data messages arrived.
    Expect(u64, Mailbox<()>),
}

/// One-way throughput of 64-byte messages.
fn throughput(c: &mut criterion::Criterion, node: &Node) {
    let sink = floor::Sink::start();
    let counter = converge::spawn(counter).unwrap();
    let me = node.ctx::<()>();
    let back = me.mailbox();
    let mut per_second = 0.0;
    common::compare(
        c,
        "throughput_64",
        |iters| sink.stream(iters),
        |iters| {
            let t = Instant::now();
            counter.send(Msg::Expect(iters, back)).unwrap();
            for _ in 0..iters {
                counter.send(Msg::Data(serde_bytes::ByteArray::new([1; 64]))).unwrap();
            }
            me.recv().unwrap();
            let d = t.elapsed();
            per_second = iters as f64 / d.as_secs_f64();
            d
        },
    );
    common::RESULTS
        .lock()
        .unwrap()
        .push(format!("msgs_per_s throughput_64: {per_second:.0}"));
    counter.kill();
}

/// SIGKILL to the Down at a monitor.
fn kill_down(c: &mut criterion::Criterion, node: &Node) {
    common::compare(c, "kill_down", floor::kill_to_pidfd_wakeup, |iters| {
        let me = node.ctx::<()>();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let back = me.mailbox();
            let (p, r) = converge::spawn_monitor(move |ctx: Ctx<()>| {
                back.send(()).unwrap();
                let _ = ctx.recv();
            })
            .unwrap();
            // Running and waiting in recv before the clock starts.
            me.recv().unwrap();
            let t = Instant::now();
            p.kill();
            node.ctx::<()>().recv_down(r).unwrap();
            total += t.elapsed();
        }
        total
    });
}

/// Private memory (USS) of an idle process, the node idle and small.
fn uss(node: &Node) {
    let me = node.ctx::<()>();
    let back = me.mailbox();
    let p = converge::spawn(move |ctx: Ctx<()>| {
        back.send(()).unwrap();
        let _ = ctx.recv();
    })
    .unwrap();
    me.recv().unwrap();
    // Let it settle in its receive, background thread started.
    while converge::process_info(p).map(|i| i.state) != Some(converge::ProcessState::Waiting) {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    let os = converge::process_info(p).unwrap().os_pid.unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{os}/smaps_rollup")).unwrap();
    let kib: u64 = rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    let rss = std::fs::read_to_string("/proc/self/statm").unwrap();
    let node_rss_mb = rss.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4 / 1024;
    let mut results = common::RESULTS.lock().unwrap();
    results.push(format!("uss_kib idle_process: {kib}"));
    results.push(format!("node_rss_mb while measuring uss: {node_rss_mb}"));
    p.kill();
}

fn quit_at_once(ctx: Ctx<()>, _: ()) {
    let _ = ctx;
}

/// spawn_fn from the zygote while the node holds 1 GB, against a tiny
/// process's fork.
fn spawn_fn_1gb(c: &mut criterion::Criterion, node: &Node, tiny: &floor::TinyForker) {
    common::compare(
        c,
        "spawn_fn_1gb",
        |iters| tiny.run(iters),
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let p = converge::spawn_fn(quit_at_once, ()).unwrap();
                let r = node.ctx::<()>().monitor(p);
                node.ctx::<()>().recv_down(r).unwrap();
            }
            t.elapsed()
        },
    );
}

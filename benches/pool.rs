//! The scheduler pool: a trivial task's round trip against the socketpair
//! ping-pong floor, a scheduler's replacement against a bare
//! fork + _exit + waitpid, each measured in the same run, and the item rate
//! of an ordered `map`. Ends with `ratio NAME: X.XX (floor F, converge C)`
//! lines (converge's time per operation over the floor's: lower is better)
//! and one `items_per_s map: N` line.
//!
//! Run with `cargo bench --bench pool` (`CI=1` for a short run).

mod common;

use std::time::{Duration, Instant};

use common::floor;
use converge::pool;
use converge::{Config, Mailbox};

fn square(x: u64) -> u64 {
    x * x
}

fn me(_: ()) -> u32 {
    std::process::id()
}

fn main() {
    let node = Config::new()
        .scheduler_class("spare", 1)
        .init()
        .expect("init() first, before criterion starts threads");
    let mut c = common::criterion();
    task_rtt(&mut c);
    replace(&mut c);
    c.final_summary();
    common::print_results();
    map_rate();
    node.shutdown(Duration::from_secs(5));
}

/// Submit a trivial task and join its value.
fn task_rtt(c: &mut criterion::Criterion) {
    let echo = floor::Echo::start(None);
    common::compare(
        c,
        "task_rtt",
        |iters| echo.round_trips(iters, 16),
        |iters| {
            let t = Instant::now();
            for i in 0..iters {
                assert_eq!(pool::submit(square, i).unwrap().join(), Ok(i * i));
            }
            t.elapsed()
        },
    );
}

/// Kill the only scheduler of a class; a task submitted at once runs on its
/// replacement.
fn replace(c: &mut criterion::Criterion) {
    let first = pool::submit_to("spare", me, ()).unwrap().join().unwrap();
    let mut last = first;
    common::compare(c, "scheduler_replace", floor::fork_exit_wait, |iters| {
        let t = Instant::now();
        for _ in 0..iters {
            let scheduler = pool::schedulers().into_iter().find(|s| s.0 == "spare").unwrap().1;
            Mailbox::<()>::from_pid(scheduler).kill();
            let now = pool::submit_to("spare", me, ()).unwrap().join().unwrap();
            assert_ne!(now, last, "the task ran on a replacement");
            last = now;
        }
        t.elapsed()
    });
}

/// `x * x` over 1,000,000 `u64`, in order, on the default class.
fn map_rate() {
    let n = 1_000_000u64;
    let runs = if common::ci() { 3 } else { 11 };
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let mut sum = 0u64;
            for r in pool::map(square, 0..n) {
                sum = sum.wrapping_add(r.unwrap());
            }
            let el = t.elapsed();
            assert_eq!(sum, (0..n).map(|x| x * x).fold(0u64, u64::wrapping_add));
            n as f64 / el.as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("items_per_s map: {:.0}", rates[rates.len() / 2]);
}

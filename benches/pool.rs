//! The scheduler pool, each figure against a floor measured in the same run:
//! a trivial task's round trip against the socketpair ping-pong; a
//! scheduler's replacement against a bare fork + _exit + waitpid; spawning a
//! lightweight actor and seeing its Down against spawning and joining a
//! thread; a message between two actors of one scheduler against one through
//! a crossbeam channel between two threads; and the item rate of an ordered
//! `map`. Ends with `ratio NAME: X.XX (floor F, converge C)` lines
//! (converge's time per operation over the floor's: lower is better) and one
//! `items_per_s map: N` line.
//!
//! Run with `cargo bench --bench pool` (`CI=1` for a short run).

mod common;

use std::time::{Duration, Instant};

use common::floor;
use converge::pool::{self, Actor, ActorBuilder, ActorCtx};
use converge::{Config, Event, ExitReason, Mailbox};
use serde::{Deserialize, Serialize};

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
    replace(&mut c, &node);
    actor_spawn(&mut c, &node);
    actor_msg(&mut c, &node);
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

/// Kill the only scheduler of a class; once its Down is in, a task submitted
/// runs on its replacement.
fn replace(c: &mut criterion::Criterion, node: &converge::Node) {
    let mut last = pool::submit_to("spare", me, ()).unwrap().join().unwrap();
    common::compare(c, "scheduler_replace", floor::fork_exit_wait, |iters| {
        let t = Instant::now();
        for _ in 0..iters {
            let scheduler = pool::schedulers().into_iter().find(|s| s.0 == "spare").unwrap().1;
            let down = node.ctx::<()>().monitor(scheduler);
            Mailbox::<()>::from_pid(scheduler).kill();
            node.ctx::<()>().recv_down(down).unwrap();
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

/// An actor that ends as it starts.
struct Brief;

impl Actor for Brief {
    type Msg = ();
    type Args = ();

    fn start(_: (), ctx: &mut ActorCtx<'_, ()>) -> Brief {
        ctx.stop(ExitReason::Normal);
        Brief
    }

    fn handle(&mut self, _: Event<()>, _: &mut ActorCtx<'_, ()>) {}
}

/// Spawn an actor and wait for its Down.
fn actor_spawn(c: &mut criterion::Criterion, node: &converge::Node) {
    common::compare(
        c,
        "actor_spawn",
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::thread::spawn(|| ()).join().unwrap();
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let (_, r) = ActorBuilder::new().spawn_monitor::<Brief>(()).unwrap();
                node.ctx::<()>().recv_down(r).unwrap();
            }
            t.elapsed()
        },
    );
}

/// One end of a ping-pong: passes the ball on until it is worn out.
struct Player {
    peer: Option<Mailbox<Ball>>,
    done: Mailbox<u64>,
}

#[derive(Serialize, Deserialize)]
enum Ball {
    Peer(Mailbox<Ball>),
    Hits(u64),
}

impl Actor for Player {
    type Msg = Ball;
    type Args = Mailbox<u64>;

    fn start(done: Mailbox<u64>, _: &mut ActorCtx<'_, Ball>) -> Player {
        Player { peer: None, done }
    }

    fn handle(&mut self, event: Event<Ball>, _: &mut ActorCtx<'_, Ball>) {
        match event {
            Event::Message(Ball::Peer(p)) => self.peer = Some(p),
            Event::Message(Ball::Hits(0)) => self.done.send(0).unwrap(),
            Event::Message(Ball::Hits(n)) => self.peer.unwrap().send(Ball::Hits(n - 1)).unwrap(),
            _ => {}
        }
    }
}

/// Messages between two actors of one scheduler.
fn actor_msg(c: &mut criterion::Criterion, node: &converge::Node) {
    let me = node.ctx::<u64>();
    let on_spare = ActorBuilder::new().class("spare");
    let a = on_spare.spawn::<Player>(me.mailbox()).unwrap();
    let b = on_spare.spawn::<Player>(me.mailbox()).unwrap();
    a.send(Ball::Peer(b)).unwrap();
    b.send(Ball::Peer(a)).unwrap();
    // The floor: the same ping-pong between two threads (`None` ends it).
    let (to_b, b_in) = crossbeam_channel::unbounded::<Option<u64>>();
    let (to_a, a_in) = crossbeam_channel::unbounded::<Option<u64>>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
    let player = |inbox: crossbeam_channel::Receiver<Option<u64>>,
                  out: crossbeam_channel::Sender<Option<u64>>,
                  done: crossbeam_channel::Sender<()>| {
        move || {
            while let Ok(Some(n)) = inbox.recv() {
                if n == 0 {
                    done.send(()).unwrap();
                } else {
                    out.send(Some(n - 1)).unwrap();
                }
            }
            let _ = out.send(None);
        }
    };
    let ta = std::thread::spawn(player(a_in, to_b.clone(), done_tx.clone()));
    let tb = std::thread::spawn(player(b_in, to_a.clone(), done_tx));
    common::compare(
        c,
        "actor_msg",
        |iters| {
            let t = Instant::now();
            to_a.send(Some(iters)).unwrap();
            done_rx.recv().unwrap();
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            a.send(Ball::Hits(iters)).unwrap();
            assert_eq!(me.recv().unwrap(), 0);
            t.elapsed()
        },
    );
    to_a.send(None).unwrap();
    ta.join().unwrap();
    tb.join().unwrap();
    a.kill();
    b.kill();
}

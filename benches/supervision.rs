//! A supervised child killed until its replacement runs, against a bare
//! fork + _exit + waitpid measured in the same run. Ends with a
//! `ratio NAME: X.XX (floor F, converge C)` line (converge's time per
//! operation over the floor's: lower is better).
//!
//! Run with `cargo bench --bench supervision` (`CI=1` for a short run).

mod common;

use std::time::{Duration, Instant};

use common::floor;
use converge::supervisor::{ChildSpec, Shutdown, Strategy, Supervisor};
use converge::{Ctx, Mailbox, Pid};

fn main() {
    let node = converge::init().expect("init() first, before criterion starts threads");
    let mut c = common::criterion();
    restart(&mut c, &node);
    c.final_summary();
    common::print_results();
    node.shutdown(Duration::from_secs(5));
}

/// Kill the child; its replacement announces itself.
fn restart(c: &mut criterion::Criterion, node: &converge::Node) {
    let me = node.ctx::<Pid>();
    let back = me.mailbox();
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(u32::MAX, Duration::from_secs(1))
        .child(
            ChildSpec::new("child", move |ctx: Ctx<()>| {
                back.send(ctx.pid()).unwrap();
                let _ = ctx.recv();
            })
            .shutdown(Shutdown::BrutalKill),
        )
        .spawn()
        .unwrap();
    let mut current = me.recv().unwrap();
    common::compare(c, "restart", floor::fork_exit_wait, |iters| {
        let t = Instant::now();
        for _ in 0..iters {
            Mailbox::<()>::from_pid(current).kill();
            current = me.recv().unwrap();
        }
        t.elapsed()
    });
    sup.stop().unwrap();
}

//! Parallel work as a service would run it: a supervision tree (a pool of
//! worker processes under their own supervisor, and an external program next
//! to it), jobs farmed out with `call`, poisoned inputs that crash workers
//! (which are restarted, and the job reported failed, not lost), everything
//! observed through `tracing` and the node's stats at the end.
//!
//! Run with `cargo run --example observed_service` (add `-- --json` for JSON
//! lines; `RUST_LOG=debug` for more).

use std::time::{Duration, Instant};

use converge::port::{Framing, PortBuilder};
use converge::supervisor::{ChildSpec, Strategy, Supervisor, SupervisorRef};
use converge::{CallError, Ctx, Mailbox, ReplyTo};
use serde::{Deserialize, Serialize};

const WORKERS: usize = 3;
const JOBS: u64 = 40;

/// A job: sum the digits of every number below `n`, answer on `reply`.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: u64,
    reply: ReplyTo<u64>,
}

fn worker(ctx: Ctx<Job>, index: usize) {
    ctx.register(&format!("worker-{index}")).expect("a free name");
    tracing::debug!(index, "worker ready");
    while let Ok(job) = ctx.recv() {
        // Some inputs are poison: the worker crashes, the supervisor restarts
        // it, and the caller sees the crash as the call's error.
        assert!(job.n % 13 != 0, "poisoned input {}", job.n);
        let sum = (0..job.n)
            .map(|k| k.to_string().bytes().map(|b| u64::from(b - b'0')).sum::<u64>())
            .sum();
        let _ = job.reply.reply(sum);
    }
}

fn main() -> Result<(), converge::Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::env::args().any(|a| a == "--json") {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .init();
    }
    let node = converge::init()?;
    let started = Instant::now();

    let mut pool = Supervisor::new(Strategy::OneForOne).intensity(20, Duration::from_secs(5));
    for i in 0..WORKERS {
        pool = pool.child(ChildSpec::new(format!("worker-{i}"), move |ctx: Ctx<Job>| {
            worker(ctx, i)
        }));
    }
    let ticker = PortBuilder::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 5 ]; do echo tick $i; i=$((i+1)); sleep 0.02; done",
        ])
        .framing(Framing::Lines { max: 256 });
    let service = Supervisor::new(Strategy::OneForOne)
        .name("service")
        .intensity(5, Duration::from_secs(5))
        .child(ChildSpec::supervisor("pool", pool))
        .child(ChildSpec::port("ticker", ticker).restart(converge::supervisor::Restart::Transient))
        .spawn()?;

    let (mut done, mut failed) = (0, 0);
    for (k, n) in (1..=JOBS).map(|j| j * 250).enumerate() {
        let Some(worker) = find_worker(k % WORKERS) else {
            failed += 1;
            continue;
        };
        match worker.call(|reply| Job { n, reply }, Duration::from_secs(10)) {
            Ok(sum) => {
                done += 1;
                tracing::debug!(n, sum, "job done");
            }
            Err(CallError::Exited(reason)) => {
                failed += 1;
                tracing::warn!(n, %reason, "job failed: its worker crashed");
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(n, error = %e, "job failed");
            }
        }
    }

    print_tree(&service, 0)?;
    service.stop()?;
    let stats = node.stats();
    println!(
        "{done} jobs done, {failed} failed in {:.0?}; processes started: {}, restarts: {}",
        started.elapsed(),
        stats.spawned,
        stats.restarts
    );
    for (reason, n) in &stats.exits {
        println!("  {n:>3} exits: {reason}");
    }
    Ok(())
}

/// Worker `i` by its registered name (it may be restarting: wait a little).
fn find_worker(i: usize) -> Option<Mailbox<Job>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = converge::whereis(&format!("worker-{i}")) {
            return Some(Mailbox::from_pid(pid));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn print_tree(sup: &SupervisorRef, depth: usize) -> Result<(), converge::Error> {
    for child in sup.which_children()? {
        println!(
            "{:indent$}{} ({:?}, {:?}): restarts {}, last exit {}",
            "",
            child.id,
            child.kind,
            child.state,
            child.restarts,
            child.last_exit.map_or_else(|| "-".into(), |r| r.to_string()),
            indent = depth * 2
        );
        if child.kind == converge::supervisor::ChildKind::Supervisor
            && let Some(pid) = child.pid
        {
            print_tree(&SupervisorRef::from_pid(pid), depth + 1)?;
        }
    }
    Ok(())
}

//! Runs many external commands in parallel, at most `LIMIT` at a time, like
//! `xargs -P`: each one is a port, its output comes as events, and its end
//! as an exact exit reason (a code, a signal, a program that cannot run).
//!
//! Run with `cargo run --example parallel_exe [LIMIT]` (default 4).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use converge::{Ctx, Event, ExitReason, Pid};

use converge::port::{Framing, PortBuilder, PortOutput};

fn main() -> Result<(), converge::Error> {
    let node = converge::init()?;
    let limit: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    // Twenty jobs: most succeed, some fail in each way a program can.
    let mut jobs: VecDeque<(String, PortBuilder)> = (1..=20)
        .map(|i| {
            let script = match i % 7 {
                0 => format!("echo job {i} gives up; exit {}", i % 5 + 1),
                3 => format!("echo job {i} is killed; kill -KILL $$"),
                _ => format!("sleep 0.0{}; echo job {i} done", i % 9),
            };
            (format!("job-{i:02}"), sh(&script))
        })
        .collect();
    jobs.push_back(("missing".into(), PortBuilder::new("/nonexistent/tool")));

    let started = Instant::now();
    let ctx: Ctx<()> = node.ctx();
    let mut running: HashMap<Pid, String> = HashMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut most = 0;
    loop {
        // Keep `limit` programs running.
        while running.len() < limit
            && let Some((name, job)) = jobs.pop_front()
        {
            match job.spawn() {
                Ok(port) => {
                    running.insert(port.pid(), name);
                }
                Err(e) => {
                    println!("{name:>9}: {e}");
                    *outcomes.entry("could not start".into()).or_default() += 1;
                }
            }
        }
        most = most.max(running.len());
        if running.is_empty() {
            break;
        }
        // Events of every port this process owns, in arrival order.
        if let Event::Port { port, output } = ctx.recv_event()? {
            match output {
                PortOutput::Line { data, .. } => {
                    println!("{:>9}| {}", running[&port], String::from_utf8_lossy(&data));
                }
                PortOutput::Exit(reason) => {
                    let name = running.remove(&port).expect("a port of ours");
                    println!("{name:>9}: {reason}");
                    *outcomes.entry(kind(&reason)).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    println!(
        "\n{} jobs in {:.0?}, at most {most} at once:",
        outcomes.values().sum::<usize>(),
        started.elapsed()
    );
    for (outcome, n) in &outcomes {
        println!("  {n:>3} {outcome}");
    }
    Ok(())
}

fn sh(script: &str) -> PortBuilder {
    PortBuilder::new("/bin/sh")
        .args(["-c", script])
        .framing(Framing::Lines { max: 4096 })
}

fn kind(reason: &ExitReason) -> String {
    match reason {
        ExitReason::Normal => "succeeded".into(),
        ExitReason::Code(_) => "exited with a code".into(),
        other => format!("ended: {other}"),
    }
}

//! A dynamic work queue: producer processes add jobs while the pool's
//! schedulers drain them. Jobs are plain functions; idle schedulers pull the
//! next job, so a slow job never holds up the others. The node prints the
//! pool's progress while the queue runs, then who did what and how each job
//! ended (a returned value, a panic).
//!
//! Run with `cargo run --example work_queue [PRODUCERS] [JOBS_EACH]`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use converge::pool::{self, TaskError};
use converge::{Ctx, Mailbox};
use serde::{Deserialize, Serialize};

/// A job: some digits of work, and how long it "waits on IO".
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    producer: u32,
    n: u32,
    wait_ms: u64,
}

/// What a job gives back: the scheduler that ran it and a checksum.
fn work(job: Job) -> (u32, u64) {
    std::thread::sleep(Duration::from_millis(job.wait_ms));
    assert!(job.n % 17 != 16, "job {}/{} refuses to run", job.producer, job.n);
    let sum = (0..20_000u64).fold(job.n as u64, |a, x| a.wrapping_mul(31).wrapping_add(x));
    (std::process::id(), sum)
}

/// What a producer reports for each of its jobs.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    producer: u32,
    n: u32,
    outcome: Result<u32, String>,
}

fn main() -> Result<(), converge::Error> {
    // Panics are reported to the producers as values: the schedulers need not
    // print them too.
    let node = converge::Config::new()
        .scheduler_init(|| std::panic::set_hook(Box::new(|_| {})))
        .init()?;
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>().ok());
    let producers = args.next().flatten().unwrap_or(3);
    let jobs_each = args.next().flatten().unwrap_or(20);
    let started = Instant::now();
    let ctx: Ctx<Report> = node.ctx();
    let results: Mailbox<Report> = ctx.mailbox();
    // Producers add work over time, from their own processes: each submits
    // in bursts, then joins what it submitted and reports.
    for producer in 0..producers {
        converge::spawn(move |_: Ctx<()>| {
            let mut tasks = Vec::new();
            for n in 0..jobs_each {
                let job = Job {
                    producer,
                    n,
                    wait_ms: if n % 5 == 0 { 40 } else { 3 },
                };
                tasks.push((n, pool::submit(work, job).expect("the pool takes work")));
                if n % 4 == 3 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for (n, task) in tasks {
                let outcome = task.join().map(|(scheduler, _)| scheduler).map_err(|e| match e {
                    TaskError::Panicked(m) => format!("panicked: {m}"),
                    other => other.to_string(),
                });
                results.send(Report { producer, n, outcome }).unwrap();
            }
        })?;
    }
    let total = producers * jobs_each;
    let mut by_scheduler: BTreeMap<u32, u32> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut got = 0;
    let mut last_print = Instant::now() - Duration::from_secs(1);
    while got < total {
        if last_print.elapsed() >= Duration::from_millis(50) {
            let p = pool::progress();
            println!(
                "{:>6.0} ms  queued {:>3}  running {}  done {:>3}  failed {}",
                started.elapsed().as_secs_f64() * 1e3,
                p.queued,
                p.running,
                p.done,
                p.failed
            );
            last_print = Instant::now();
        }
        match ctx.recv_timeout(Duration::from_millis(50)) {
            Ok(report) => {
                got += 1;
                match report.outcome {
                    Ok(scheduler) => *by_scheduler.entry(scheduler).or_default() += 1,
                    Err(why) => failed.push(format!("job {}/{}: {why}", report.producer, report.n)),
                }
            }
            Err(converge::RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
    }
    println!("\n{total} jobs from {producers} producers in {:.0?}", started.elapsed());
    for (scheduler, n) in &by_scheduler {
        println!("  scheduler (OS pid {scheduler}) ran {n} jobs");
    }
    for f in &failed {
        println!("  {f}");
    }
    println!("progress at the end: {:?}", pool::progress());
    Ok(())
}

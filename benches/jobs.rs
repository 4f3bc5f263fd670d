//! Convergent jobs, against the pool running the same functions in the same
//! run: one round of 16 trivial agents (each isolated, its effects merged)
//! against the 16 functions through `pool::map` (`ratio job_round`); the
//! same round in microseconds (`info job_round_us`); and the rate of 1,000
//! small independent jobs run at once with `run_all` (`info jobs_per_s`).
//!
//! Run with `cargo bench --bench jobs` (`CI=1` for a short run).

mod common;

use std::time::{Duration, Instant};

use converge::Config;
use converge::job::{Agent, Effects, Input, Job, run_all};
use converge::pool;

/// The work of one trivial agent.
fn work(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A trivial agent: `work` of its number, put under `out`.
fn trivial(input: Input) -> Result<Effects, String> {
    let i: u64 = input.agent[1..].parse().map_err(|_| "a name a<N>".to_owned())?;
    let mut out = Effects::new();
    out.put("out", &work(i));
    Ok(out)
}

fn round_of(agents: u64) -> Job {
    let mut job = Job::new("round");
    job.union::<u64>("out");
    for i in 0..agents {
        job.agent(Agent::new(&format!("a{i}"), trivial));
    }
    job
}

fn main() {
    let node = Config::new()
        .init()
        .expect("init() first, before criterion starts threads");
    let mut c = common::criterion();
    let mut round_us = Vec::new();
    common::compare(
        &mut c,
        "job_round",
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let sum = pool::map(work, 0..16u64)
                    .map(Result::unwrap)
                    .fold(0u64, u64::wrapping_add);
                assert_ne!(sum, 0);
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let r = round_of(16).run().unwrap();
                assert!(r.outcome.is_converged());
                assert_eq!(r.context.values::<u64>("out").len(), 16);
            }
            let el = t.elapsed();
            round_us.push(el.as_secs_f64() * 1e6 / iters.max(1) as f64);
            el
        },
    );
    c.final_summary();
    common::print_results();
    round_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "info job_round_us: {:.0} (one round of 16 isolated agents; LangGraph 1.2.22: 3200 for 16 nodes, in one process)",
        round_us[round_us.len() / 2]
    );
    jobs_rate();
    node.shutdown(Duration::from_secs(5));
}

/// 1,000 jobs of one agent each, at once.
fn jobs_rate() {
    let runs = if common::ci() { 3 } else { 7 };
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let jobs: Vec<Job> = (0..1000).map(|_| round_of(1)).collect();
            let t = Instant::now();
            let results = run_all(jobs);
            let el = t.elapsed();
            assert!(results.iter().all(|r| r.as_ref().unwrap().outcome.is_converged()));
            1000.0 / el.as_secs_f64()
        })
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("info jobs_per_s: {:.0}", rates[rates.len() / 2]);
}

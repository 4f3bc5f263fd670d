//! A small build system on the scheduler pool. Steps depend on other steps;
//! compiling is CPU-heavy and runs in the default class (one scheduler per
//! CPU), fetching and testing mostly wait and run in an "io" class of their
//! own with a higher limit. A step runs once everything it needs succeeded; a
//! step that fails (a panic, a crash of its scheduler) is reported with its
//! reason, and the steps that depend on it are skipped, not run.
//!
//! Run with `cargo run --example build_system`.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use converge::pool::{self, TaskError};
use serde::{Deserialize, Serialize};

/// What a step does; it runs in a scheduler.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Action {
    /// Download (waits), or fail as a download does.
    Fetch { ms: u64, fail: bool },
    /// Compile (computes).
    Compile { rounds: u64 },
    /// Run a test binary, which may crash.
    Test { crash: bool },
}

/// When a step ran (microseconds from the build's start) and what it made.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    start: u128,
    end: u128,
    output: String,
}

fn since(epoch: u128) -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        - epoch
}

fn run_step(args: (Action, u128)) -> Done {
    let (action, epoch) = args;
    let start = since(epoch);
    let output = match action {
        Action::Fetch { ms, fail } => {
            std::thread::sleep(Duration::from_millis(ms));
            assert!(!fail, "connection reset by peer");
            format!("{ms} ms of download")
        }
        Action::Compile { rounds } => {
            let h = (0..rounds).fold(0xcbf29ce484222325u64, |h, x| (h ^ x).wrapping_mul(0x100000001b3));
            format!("object {h:016x}")
        }
        Action::Test { crash } => {
            if crash {
                // Killed as the OOM killer would: the scheduler dies with
                // the step, which fails with that reason.
                let me = std::process::id().to_string();
                let _ = std::process::Command::new("kill").args(["-KILL", &me]).status();
            }
            std::thread::sleep(Duration::from_millis(30));
            "all tests passed".into()
        }
    };
    Done {
        start,
        end: since(epoch),
        output,
    }
}

struct Step {
    class: &'static str,
    deps: &'static [&'static str],
    action: Action,
}

#[derive(Debug)]
enum State {
    Waiting,
    Running,
    Built(Done),
    Failed(TaskError),
    Skipped(String),
}

fn steps() -> BTreeMap<&'static str, Step> {
    let fetch = |ms, fail| Action::Fetch { ms, fail };
    let compile = |rounds| Action::Compile { rounds };
    let io = "io";
    let cpu = pool::DEFAULT_CLASS;
    BTreeMap::from([
        (
            "fetch:serde",
            Step {
                class: io,
                deps: &[],
                action: fetch(60, false),
            },
        ),
        (
            "fetch:libc",
            Step {
                class: io,
                deps: &[],
                action: fetch(40, false),
            },
        ),
        (
            "fetch:zlib",
            Step {
                class: io,
                deps: &[],
                action: fetch(50, true),
            },
        ),
        (
            "fetch:regex",
            Step {
                class: io,
                deps: &[],
                action: fetch(30, false),
            },
        ),
        (
            "fetch:log",
            Step {
                class: io,
                deps: &[],
                action: fetch(20, false),
            },
        ),
        (
            "compile:serde",
            Step {
                class: cpu,
                deps: &["fetch:serde"],
                action: compile(30_000_000),
            },
        ),
        (
            "compile:libc",
            Step {
                class: cpu,
                deps: &["fetch:libc"],
                action: compile(20_000_000),
            },
        ),
        (
            "compile:zlib",
            Step {
                class: cpu,
                deps: &["fetch:zlib"],
                action: compile(20_000_000),
            },
        ),
        (
            "compile:regex",
            Step {
                class: cpu,
                deps: &["fetch:regex"],
                action: compile(40_000_000),
            },
        ),
        (
            "compile:log",
            Step {
                class: cpu,
                deps: &["fetch:log"],
                action: compile(10_000_000),
            },
        ),
        (
            "compile:app",
            Step {
                class: cpu,
                deps: &["compile:serde", "compile:libc", "compile:regex", "compile:log"],
                action: compile(30_000_000),
            },
        ),
        (
            "compile:archive",
            Step {
                class: cpu,
                deps: &["compile:zlib", "compile:libc"],
                action: compile(10_000_000),
            },
        ),
        (
            "test:app",
            Step {
                class: io,
                deps: &["compile:app"],
                action: Action::Test { crash: false },
            },
        ),
        (
            "test:fuzz",
            Step {
                class: io,
                deps: &["compile:app"],
                action: Action::Test { crash: true },
            },
        ),
        (
            "test:archive",
            Step {
                class: io,
                deps: &["compile:archive"],
                action: Action::Test { crash: false },
            },
        ),
        (
            "package",
            Step {
                class: cpu,
                deps: &["test:app", "test:archive"],
                action: compile(1_000_000),
            },
        ),
    ])
}

fn main() -> Result<(), converge::Error> {
    let _node = converge::Config::new()
        .schedulers(2)
        .scheduler_class("io", 4)
        // Failures are reported as values: the schedulers need not print them.
        .scheduler_init(|| std::panic::set_hook(Box::new(|_| {})))
        .init()?;
    let steps = steps();
    let epoch = since(0);
    let started = Instant::now();
    let mut state: BTreeMap<&str, State> = steps.keys().map(|&k| (k, State::Waiting)).collect();
    let (tx, rx) = mpsc::channel::<(&'static str, Result<Done, TaskError>)>();
    let mut running = 0;
    loop {
        // Skip what depends on a failure; start what has everything it needs.
        for (&name, step) in &steps {
            if !matches!(state[name], State::Waiting) {
                continue;
            }
            let blocked = step
                .deps
                .iter()
                .find(|d| matches!(state[**d], State::Failed(_) | State::Skipped(_)));
            if let Some(dep) = blocked {
                println!(
                    "{:>7.0} ms  skip  {name}: {dep} did not build",
                    started.elapsed().as_secs_f64() * 1e3
                );
                state.insert(name, State::Skipped(dep.to_string()));
                continue;
            }
            if step.deps.iter().all(|d| matches!(state[*d], State::Built(_))) {
                let task = pool::submit_to(step.class, run_step, (step.action.clone(), epoch))?;
                let tx = tx.clone();
                // A thread per running step waits for it; results arrive in
                // the order steps finish.
                std::thread::spawn(move || {
                    let _ = tx.send((name, task.join()));
                });
                println!(
                    "{:>7.0} ms  start {name} ({})",
                    started.elapsed().as_secs_f64() * 1e3,
                    step.class
                );
                state.insert(name, State::Running);
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        let (name, result) = rx.recv().expect("a step thread always answers");
        running -= 1;
        let at = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(done) => {
                println!("{at:>7.0} ms  done  {name}: {}", done.output);
                state.insert(name, State::Built(done));
            }
            Err(e) => {
                println!("{at:>7.0} ms  FAIL  {name}: {e}");
                state.insert(name, State::Failed(e));
            }
        }
    }

    // The report, and the concurrency each class reached.
    println!("\nbuild finished in {:.0?}", started.elapsed());
    let mut spans: HashMap<&str, Vec<(u128, u128)>> = HashMap::new();
    for (name, s) in &state {
        match s {
            State::Built(d) => spans.entry(steps[name].class).or_default().push((d.start, d.end)),
            State::Failed(e) => println!("  failed   {name}: {e}"),
            State::Skipped(dep) => println!("  skipped  {name} (needs {dep})"),
            State::Waiting | State::Running => unreachable!("every step ends built, failed or skipped"),
        }
    }
    for (class, limit) in [(pool::DEFAULT_CLASS, 2), ("io", 4)] {
        let most = most_at_once(spans.get(class).map_or(&[][..], |v| v));
        println!("  class {class:>7}: at most {most} steps at once (limit {limit})");
        assert!(most <= limit);
    }
    Ok(())
}

fn most_at_once(spans: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = spans.iter().flat_map(|s| [(s.0, 1), (s.1, -1)]).collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

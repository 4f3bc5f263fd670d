//! A test runner in which every test runs in a process of its own, with a
//! time limit: the crash-only idea applied to testing. A test that panics,
//! aborts, hangs or calls `exit` cannot take the runner (or the other tests)
//! with it, and each outcome is reported exactly: pass, fail (an `Err`, or an
//! exit code), panic (with its message), crash (the signal) or timeout.
//!
//! Run with `cargo run --example isolated_tests [PARALLEL]` (default 2 at a
//! time). The tests here fail on purpose, in every way a test can; each says
//! how it is expected to end, and the runner exits 1 if any ended otherwise.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use converge::{Ctx, Event, ExitReason, MonitorRef, Pid};

type Test = fn() -> Result<(), String>;

/// A test: its name, how it is expected to end, and its body.
type Case = (&'static str, &'static str, Test);

/// How long a test may run.
const LIMIT: Duration = Duration::from_millis(500);

fn tests() -> Vec<Case> {
    vec![
        ("adds", "ok", || {
            if std::hint::black_box(2) + 2 == 4 {
                Ok(())
            } else {
                Err("arithmetic is broken".into())
            }
        }),
        ("parses_numbers", "ok", || {
            let n: u32 = "42".parse().map_err(|e| format!("{e}"))?;
            if n == 42 { Ok(()) } else { Err(format!("got {n}")) }
        }),
        ("finds_a_missing_file", "FAIL", || {
            std::fs::read("/nonexistent/config.toml")
                .map(drop)
                .map_err(|e| format!("reading the config: {e}"))
        }),
        ("asserts", "PANIC", || {
            let v = [1, 2, 3];
            assert_eq!(v.iter().sum::<i32>(), 7, "the sum is off");
            Ok(())
        }),
        ("indexes_out_of_bounds", "PANIC", || {
            let v: Vec<u8> = Vec::new();
            let i = std::hint::black_box(3);
            let _ = v[i];
            Ok(())
        }),
        ("aborts", "CRASH", || std::process::abort()),
        ("exits_with_a_code", "FAIL", || std::process::exit(3)),
        ("hangs", "TIMEOUT", || {
            loop {
                std::thread::sleep(Duration::from_millis(50));
            }
        }),
        ("sorts", "ok", || {
            let mut v = vec![3, 1, 2];
            v.sort();
            if v == [1, 2, 3] { Ok(()) } else { Err(format!("{v:?}")) }
        }),
    ]
}

/// A test's outcome, as a runner reports it.
fn verdict(reason: &ExitReason, timed_out: bool) -> (&'static str, String) {
    if timed_out {
        return ("TIMEOUT", format!("still running after {LIMIT:?}"));
    }
    match reason {
        ExitReason::Normal => ("ok", String::new()),
        ExitReason::Error(e) => ("FAIL", e.clone()),
        ExitReason::Code(c) => ("FAIL", format!("exited with code {c}")),
        ExitReason::Panic(m) => ("PANIC", m.clone()),
        ExitReason::Signal { .. } | ExitReason::Killed => ("CRASH", reason.to_string()),
        other => ("FAIL", other.to_string()),
    }
}

fn main() -> Result<(), converge::Error> {
    // Panic messages are reported by the runner: the test processes need not
    // print them too.
    std::panic::set_hook(Box::new(|_| {}));
    let node = converge::init()?;
    let parallel: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let ctx: Ctx<()> = node.ctx();
    let mut waiting = tests().into_iter();
    let mut running: HashMap<MonitorRef, (&str, &str, Pid, Instant)> = HashMap::new();
    let mut unexpected = 0;
    let mut timed_out: Vec<MonitorRef> = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    loop {
        while running.len() < parallel
            && let Some((name, expected, test)) = waiting.next()
        {
            let (mailbox, monitor) = converge::spawn_monitor(move |_: Ctx<()>| test())?;
            running.insert(monitor, (name, expected, mailbox.pid(), Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        // The next end, or the next time limit of a test not killed yet.
        let wait = running
            .iter()
            .filter(|(monitor, _)| !timed_out.contains(monitor))
            .map(|(_, r)| (r.3 + LIMIT).saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(LIMIT);
        match ctx.recv_event_timeout(wait) {
            Ok(Event::Down(down)) => {
                let Some((name, expected, _, began)) = running.remove(&down.reference) else {
                    continue;
                };
                let late = timed_out.contains(&down.reference);
                let (word, detail) = verdict(&down.reason, late);
                *counts.entry(word).or_default() += 1;
                let took = began.elapsed().as_secs_f64() * 1e3;
                let detail = detail.lines().next().unwrap_or("").to_string();
                println!("test {name:<24} {word:<8} {took:>6.1} ms  {detail}");
                if word != expected {
                    unexpected += 1;
                    println!("     (expected {expected})");
                }
            }
            Ok(_) => {}
            Err(converge::RecvTimeoutError::Timeout) => {
                // Over the limit: killed; its Down says so next.
                for (monitor, (_, _, pid, began)) in &running {
                    if began.elapsed() >= LIMIT && !timed_out.contains(monitor) {
                        timed_out.push(*monitor);
                        converge::Mailbox::<()>::from_pid(*pid).kill();
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
    println!(
        "\n{} tests in {:.0?}: {}",
        tests().len(),
        started.elapsed(),
        summary.join(", ")
    );
    node.shutdown(Duration::from_secs(5));
    std::process::exit(if unexpected == 0 { 0 } else { 1 })
}

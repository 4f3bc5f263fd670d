//! The scheduler pool: tasks and their failures, the queue, concurrency
//! classes, cancellation, `map`, progress, and schedulers replaced when they
//! die.

mod util;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use converge::pool::{self, Task, TaskError};
use converge::{Config, Ctx, ExitReason, Mailbox, Pid};
use util::{PATIENCE, node, wait_until};

/// Default class 2, "solo" 1, "io" 3.
const POOL: usize = 6;

fn main() {
    util::run_with(
        Config::new()
            .schedulers(2)
            .scheduler_class("solo", 1)
            .scheduler_class("io", 3)
            .scheduler_init(mark_initialized),
        &[
            // First: right after init().
            (
                "the_pool_is_ready_when_init_returns",
                the_pool_is_ready_when_init_returns,
            ),
            ("submit_and_join", submit_and_join),
            ("a_panic_is_the_task_s_error", a_panic_is_the_task_s_error),
            (
                "join_timeout_leaves_the_task_running",
                join_timeout_leaves_the_task_running,
            ),
            ("tasks_from_a_process", tasks_from_a_process),
            ("an_unknown_class_is_an_error", an_unknown_class_is_an_error),
            (
                "a_scheduler_killed_mid_task_fails_that_task_only",
                a_scheduler_killed_mid_task_fails_that_task_only,
            ),
            (
                "a_segfault_mid_task_is_the_task_s_error",
                a_segfault_mid_task_is_the_task_s_error,
            ),
            ("a_retryable_task_runs_again", a_retryable_task_runs_again),
            ("cancel_queued_and_running", cancel_queued_and_running),
            ("a_cancel_never_ends_another_task", a_cancel_never_ends_another_task),
            ("concurrency_limits_hold", concurrency_limits_hold),
            ("idle_schedulers_pull_the_work", idle_schedulers_pull_the_work),
            ("map_keeps_order", map_keeps_order),
            ("map_reports_each_item_s_panic", map_reports_each_item_s_panic),
            ("progress_while_it_runs", progress_while_it_runs),
            ("schedulers_are_the_runtime_s", schedulers_are_the_runtime_s),
            (
                "the_initializer_runs_in_each_scheduler",
                the_initializer_runs_in_each_scheduler,
            ),
            ("losing_the_zygote_is_survived", losing_the_zygote_is_survived),
        ],
        &[],
    )
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// `init()` returns with every configured scheduler ready (2 default, 1
/// solo, 3 io).
fn the_pool_is_ready_when_init_returns() {
    let ready = converge::pool::schedulers();
    assert_eq!(ready.len(), 6, "{ready:?}");
}

fn mark_initialized() {
    INITIALIZED.store(true, Ordering::SeqCst);
}

fn initialized(_: ()) -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

fn square(x: u64) -> u64 {
    x * x
}

fn greet(who: (String, u32)) -> Vec<String> {
    (0..who.1).map(|i| format!("hello {} #{i}", who.0)).collect()
}

fn boom(n: u32) -> u32 {
    panic!("boom {n}")
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Tells `to` this scheduler's OS pid, then waits (bounded) for `path`.
fn report_then_wait(args: (Mailbox<u32>, PathBuf)) -> bool {
    args.0.send(std::process::id()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if args.1.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn touch(path: PathBuf) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

fn segfault(_: ()) -> u64 {
    util::no_core_dumps();
    // SAFETY: not safe at all: this scheduler is meant to die of SIGSEGV.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    0
}

/// Aborts the first time (leaving `path` behind), answers the second.
fn flaky(path: PathBuf) -> String {
    if path.exists() {
        return "second run".into();
    }
    std::fs::write(&path, b"first").unwrap();
    util::no_core_dumps();
    std::process::abort()
}

/// When it ran: (start, end) in microseconds since the epoch, and where.
fn timed(ms: u64) -> (u128, u128, u32) {
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros();
    let start = now();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now(), std::process::id())
}

fn where_am_i(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn square_but_77(x: u64) -> u64 {
    assert_ne!(x, 77, "no 77");
    x * x
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("converge-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn schedulers_of(class: &str) -> Vec<Pid> {
    pool::schedulers()
        .into_iter()
        .filter(|(c, _)| c == class)
        .map(|(_, p)| p)
        .collect()
}

/// Waits for the pool to be back to full size.
fn pool_is_full() {
    assert!(
        wait_until(PATIENCE, || pool::schedulers().len() == POOL),
        "the pool is not back to {POOL} schedulers: {:?}",
        pool::schedulers()
    );
}

fn submit_and_join() {
    assert_eq!(pool::submit(square, 12).unwrap().join(), Ok(144));
    let got = pool::submit(greet, ("pool".to_string(), 3)).unwrap().join().unwrap();
    assert_eq!(got, ["hello pool #0", "hello pool #1", "hello pool #2"]);
    // Many at once, joined in any order.
    let tasks: Vec<Task<u64>> = (0..200).map(|i| pool::submit(square, i).unwrap()).collect();
    for (i, t) in tasks.into_iter().enumerate().rev() {
        assert_eq!(t.join(), Ok((i * i) as u64));
    }
}

fn a_panic_is_the_task_s_error() {
    let before: HashSet<Pid> = pool::schedulers().into_iter().map(|s| s.1).collect();
    assert_eq!(
        pool::submit(boom, 7).unwrap().join(),
        Err(TaskError::Panicked("boom 7".into()))
    );
    // The scheduler lives on.
    assert_eq!(pool::submit(square, 3).unwrap().join(), Ok(9));
    let after: HashSet<Pid> = pool::schedulers().into_iter().map(|s| s.1).collect();
    assert_eq!(before, after);
}

fn join_timeout_leaves_the_task_running() {
    let mut t = pool::submit(sleep_ms, 300).unwrap();
    assert_eq!(t.join_timeout(Duration::from_millis(20)), Err(TaskError::Timeout));
    assert_eq!(t.join_timeout(PATIENCE), Ok(300));
    // Ended: a later join says it was consumed.
    assert!(t.join_timeout(Duration::from_millis(1)).is_err());
}

fn tasks_from_a_process() {
    let r = converge::spawn_join(|_: Ctx<()>| {
        let one = pool::submit(square, 5).unwrap().join().unwrap();
        let many: Vec<u64> = pool::map(square, 0..5000u64).map(Result::unwrap).collect();
        (one, many.len(), many[4999])
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(r, (25, 5000, 4999 * 4999));
}

fn an_unknown_class_is_an_error() {
    assert_eq!(
        pool::submit_to("nope", square, 1).err(),
        Some(TaskError::NoScheduler("nope".into()))
    );
}

fn a_scheduler_killed_mid_task_fails_that_task_only() {
    let me = node().ctx::<u32>();
    let never = scratch("never");
    let running = pool::submit_to("solo", report_then_wait, (me.mailbox(), never)).unwrap();
    let ospid = me.recv_timeout(PATIENCE).unwrap();
    // Its only scheduler is busy: these wait in the queue.
    let queued: Vec<Task<u64>> = (0..3).map(|i| pool::submit_to("solo", square, i).unwrap()).collect();
    let scheduler = schedulers_of("solo")[0];
    let monitor = me.monitor(scheduler);
    // SAFETY: plain kill(2) of the scheduler, from outside.
    assert_eq!(unsafe { libc::kill(ospid as i32, libc::SIGKILL) }, 0);
    assert_eq!(running.join(), Err(TaskError::Crashed(ExitReason::Killed)));
    let down = me.recv_down_timeout(monitor, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::Killed);
    for (i, t) in queued.into_iter().enumerate() {
        assert_eq!(t.join(), Ok((i * i) as u64));
    }
    pool_is_full();
    assert_ne!(schedulers_of("solo"), [scheduler]);
    assert_eq!(pool::progress().running, 0);
}

fn a_segfault_mid_task_is_the_task_s_error() {
    let r = pool::submit(segfault, ()).unwrap().join();
    assert_eq!(
        r,
        Err(TaskError::Crashed(ExitReason::Signal {
            signal: libc::SIGSEGV,
            core_dumped: false
        }))
    );
    pool_is_full();
}

fn a_retryable_task_runs_again() {
    let once = scratch("once");
    let r = pool::submit(flaky, once.clone()).unwrap().join();
    assert_eq!(
        r,
        Err(TaskError::Crashed(ExitReason::Signal {
            signal: libc::SIGABRT,
            core_dumped: false
        }))
    );
    let twice = scratch("twice");
    let r = pool::submit(flaky, twice).unwrap().retryable().join();
    assert_eq!(r, Ok("second run".to_string()));
    pool_is_full();
}

fn cancel_queued_and_running() {
    let me = node().ctx::<u32>();
    let never = scratch("never");
    let mut running = pool::submit_to("solo", report_then_wait, (me.mailbox(), never)).unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    let not_run = scratch("not-run");
    let mut queued = pool::submit_to("solo", touch, not_run.clone()).unwrap();
    let scheduler = schedulers_of("solo")[0];
    // A queued task is dropped: join says so at once.
    queued.cancel();
    assert_eq!(
        queued.join_timeout(Duration::from_millis(100)),
        Err(TaskError::Cancelled)
    );
    // A running one is stopped with its scheduler.
    running.cancel();
    assert_eq!(running.join_timeout(PATIENCE), Err(TaskError::Cancelled));
    pool_is_full();
    assert_ne!(schedulers_of("solo"), [scheduler]);
    // The replacement works, and the cancelled task (queued before this one)
    // never ran.
    let after = scratch("after");
    assert_eq!(pool::submit_to("solo", touch, after.clone()).unwrap().join(), Ok(true));
    assert!(after.exists());
    assert!(!not_run.exists(), "a cancelled task ran");
}

/// Spins for `micros` microseconds, then squares.
fn spin_square(args: (u64, u64)) -> u64 {
    let until = Instant::now() + Duration::from_micros(args.1);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    args.0 * args.0
}

/// A cancel that lands as its task finishes must not end the next task on
/// the same scheduler: cancels at many moments around the end of a task,
/// with another task queued right behind it.
fn a_cancel_never_ends_another_task() {
    let (mut finished, mut cancelled) = (0, 0);
    for i in 0..300u64 {
        let mut first = pool::submit_to("solo", spin_square, (i, 100)).unwrap();
        let mut second = pool::submit_to("solo", spin_square, (i, 0)).unwrap();
        // Sweeps the moments from the start to well after the end.
        let until = Instant::now() + Duration::from_micros((i * 7) % 600);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        first.cancel();
        match first.join_timeout(PATIENCE) {
            Ok(v) => {
                assert_eq!(v, i * i);
                finished += 1;
            }
            Err(TaskError::Cancelled) => cancelled += 1,
            Err(e) => panic!("round {i}: the cancelled task ended with {e:?}"),
        }
        assert_eq!(
            second.join_timeout(PATIENCE),
            Ok(i * i),
            "round {i}: the next task paid for the cancel"
        );
    }
    // The sweep saw both sides of the task's end.
    assert!(
        finished > 0 && cancelled > 0,
        "finished {finished}, cancelled {cancelled}"
    );
    pool_is_full();
}

/// The most tasks of `runs` running at the same time.
fn overlap(runs: &[(u128, u128, u32)]) -> usize {
    let mut events: Vec<(u128, i32)> = runs.iter().flat_map(|r| [(r.0, 1), (r.1, -1)]).collect();
    // Ends before starts at the same instant.
    events.sort();
    let mut now = 0i32;
    let mut most = 0i32;
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn concurrency_limits_hold() {
    for (class, limit) in [("io", 3), (pool::DEFAULT_CLASS, 2), ("solo", 1)] {
        let tasks: Vec<Task<(u128, u128, u32)>> = (0..12).map(|_| pool::submit_to(class, timed, 25).unwrap()).collect();
        let runs: Vec<(u128, u128, u32)> = tasks.into_iter().map(|t| t.join().unwrap()).collect();
        let most = overlap(&runs);
        assert!(most <= limit, "{class}: {most} tasks at once, limit {limit}");
        let places: HashSet<u32> = runs.iter().map(|r| r.2).collect();
        assert_eq!(places.len(), limit, "{class}: every scheduler of the class takes work");
    }
}

fn idle_schedulers_pull_the_work() {
    // One long task holds a scheduler; the short ones behind it are all run
    // by the other, which pulls them as it becomes idle.
    let long = pool::submit(where_am_i, 400).unwrap();
    let short: Vec<Task<u32>> = (0..10).map(|_| pool::submit(where_am_i, 5).unwrap()).collect();
    let short: Vec<u32> = short.into_iter().map(|t| t.join().unwrap()).collect();
    let long = long.join().unwrap();
    assert!(!short.contains(&long), "a short task waited behind the long one");
}

fn map_keeps_order() {
    let got: Vec<u64> = pool::map(square, 0..100_000u64).map(Result::unwrap).collect();
    let want: Vec<u64> = (0..100_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
    // Empty input.
    assert_eq!(pool::map(square, Vec::new()).count(), 0);
}

fn map_reports_each_item_s_panic() {
    let got: Vec<Result<u64, TaskError>> = pool::map(square_but_77, 0..5000u64).collect();
    assert_eq!(got.len(), 5000);
    for (i, r) in got.iter().enumerate() {
        if i == 77 {
            match r {
                Err(TaskError::Panicked(m)) => assert!(m.contains("no 77"), "{m}"),
                other => panic!("item 77: {other:?}"),
            }
        } else {
            assert_eq!(r, &Ok((i * i) as u64));
        }
    }
}

fn progress_while_it_runs() {
    let me = node().ctx::<u32>();
    let go = scratch("go");
    let before = pool::progress();
    let blocker = pool::submit_to("solo", report_then_wait, (me.mailbox(), go.clone())).unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    let queued: Vec<Task<u64>> = (0..3).map(|i| pool::submit_to("solo", square, i).unwrap()).collect();
    let failing = pool::submit(boom, 1).unwrap();
    assert!(failing.join().is_err());
    let mid = pool::progress();
    assert_eq!(mid.running, 1, "{mid:?}");
    assert_eq!(mid.queued, 3, "{mid:?}");
    assert_eq!(mid.failed, before.failed + 1);
    std::fs::write(&go, b"go").unwrap();
    assert_eq!(blocker.join(), Ok(true));
    for t in queued {
        t.join().unwrap();
    }
    let after = pool::progress();
    assert_eq!((after.queued, after.running), (0, 0), "{after:?}");
    assert_eq!(after.done, before.done + 4);
}

fn schedulers_are_the_runtime_s() {
    let all = pool::schedulers();
    assert_eq!(all.len(), POOL);
    let count = |class: &str| all.iter().filter(|(c, _)| c == class).count();
    assert_eq!((count(pool::DEFAULT_CLASS), count("solo"), count("io")), (2, 1, 3));
    // Not the application's processes, and not counted as spawned.
    assert!(node().processes().is_empty());
    assert_eq!(node().stats().spawned, node().stats().exits.values().sum::<u64>());
    // But they can be watched like any process.
    for (_, pid) in all {
        assert!(converge::process_info(pid).is_some(), "{pid}");
    }
}

fn the_initializer_runs_in_each_scheduler() {
    assert!(!INITIALIZED.load(Ordering::SeqCst), "the node did not run it");
    for class in [pool::DEFAULT_CLASS, "solo", "io"] {
        assert_eq!(pool::submit_to(class, initialized, ()).unwrap().join(), Ok(true));
    }
    // A replacement runs it too.
    let _ = pool::submit_to("solo", segfault, ()).unwrap().join();
    assert_eq!(pool::submit_to("solo", initialized, ()).unwrap().join(), Ok(true));
}

/// The OS pid of this node's zygote.
fn zygote() -> i32 {
    let found = util::children()
        .into_iter()
        .find(|&pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "converge-zygote"));
    found.expect("the node has a zygote")
}

fn spawned_fn(ctx: Ctx<u64>, x: u64) -> Result<(), String> {
    let y = ctx.recv().map_err(|e| e.to_string())?;
    Err(format!("ran with {x} and {y}"))
}

fn losing_the_zygote_is_survived() {
    for round in 0..2 {
        let old = zygote();
        // SAFETY: plain kill(2) of the zygote, from outside.
        assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
        // Its spare takes over.
        assert!(
            wait_until(PATIENCE, || util::children().into_iter().any(|pid| pid != old
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "converge-zygote"))),
            "round {round}: no zygote took over"
        );
        // The schedulers it started still work, and one that dies is
        // replaced by the new zygote.
        assert_eq!(pool::submit(square, 4).unwrap().join(), Ok(16));
        let scheduler = schedulers_of("solo")[0];
        let r = node().ctx::<()>().monitor(scheduler);
        Mailbox::<()>::from_pid(scheduler).kill();
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
        pool_is_full();
        assert_eq!(pool::submit_to("solo", square, 5).unwrap().join(), Ok(25));
        // The new zygote starts processes and programs.
        let f = converge::spawn_fn(spawned_fn, 7).unwrap();
        let r = node().ctx::<()>().monitor(f.pid());
        f.send(8).unwrap();
        assert_eq!(
            node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
            ExitReason::Error("ran with 7 and 8".into())
        );
        let port = converge::port::PortBuilder::new("/bin/true").spawn().unwrap();
        assert!(matches!(
            port.recv(),
            Ok(converge::port::PortOutput::Eof) | Ok(converge::port::PortOutput::Exit(_))
        ));
    }
    // No zombie left by the zygotes that died.
    assert!(wait_until(PATIENCE, || util::zombie_children().is_empty()));
}

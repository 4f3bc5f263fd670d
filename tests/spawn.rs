//! Starting processes: from closures at any depth, from the zygote, with a
//! value to join, with options; fork safety with busy threads; the
//! application's own child processes keep working.

mod util;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use converge::{Builder, Ctx, ExitReason, Pid};
use util::{PATIENCE, node};

fn main() {
    util::run(
        &[
            ("nested_spawns_at_any_depth", nested_spawns_at_any_depth),
            ("spawn_join_gives_the_value", spawn_join_gives_the_value),
            ("join_gives_the_exit_reason", join_gives_the_exit_reason),
            (
                "join_timeout_leaves_the_handle_usable",
                join_timeout_leaves_the_handle_usable,
            ),
            ("spawn_fn_runs_in_a_clean_image", spawn_fn_runs_in_a_clean_image),
            ("spawn_fn_from_inside_a_process", spawn_fn_from_inside_a_process),
            (
                "a_process_spawns_children_that_end_at_once",
                a_process_spawns_children_that_end_at_once,
            ),
            (
                "a_spawn_fn_process_is_named_after_the_program",
                a_spawn_fn_process_is_named_after_the_program,
            ),
            ("name_sets_the_process_title", name_sets_the_process_title),
            ("cpus_sets_the_affinity", cpus_sets_the_affinity),
            ("environment_changes", environment_changes),
            ("working_directory", working_directory),
            (
                "missing_working_directory_is_a_spawn_error",
                missing_working_directory_is_a_spawn_error,
            ),
            ("descriptors_are_closed_unless_kept", descriptors_are_closed_unless_kept),
            (
                "fork_while_another_thread_prints_and_holds_a_mutex",
                fork_while_another_thread_prints_and_holds_a_mutex,
            ),
            (
                "command_works_in_the_node_and_in_processes",
                command_works_in_the_node_and_in_processes,
            ),
            (
                "pids_are_never_confused_by_os_pid_reuse",
                pids_are_never_confused_by_os_pid_reuse,
            ),
            ("pids_are_unique_and_not_os_pids", pids_are_unique_and_not_os_pids),
        ],
        &[("fork_while_printing", helper_fork_while_printing)],
    )
}

fn depth(ctx: Ctx<()>, n: u32) -> u64 {
    let _ = ctx;
    if n == 0 {
        return std::process::id() as u64;
    }
    let child = converge::spawn_join(move |c: Ctx<()>| depth(c, n - 1)).unwrap();
    let below = child.join().unwrap();
    assert_ne!(below, std::process::id() as u64);
    below
}

fn nested_spawns_at_any_depth() {
    let h = converge::spawn_join(|ctx: Ctx<()>| depth(ctx, 5)).unwrap();
    let deepest = h.join().unwrap();
    assert_ne!(deepest, std::process::id() as u64);
}

/// A process's child that ends at once may be over, its end taken by the
/// node and its connection closed, before its parent hands the node its
/// pidfd: the spawn still succeeds, and the child's one `Down` comes. A
/// thread that keeps a CPU busy makes the parent's turn come late.
fn a_process_spawns_children_that_end_at_once() {
    let h = converge::spawn_join(|ctx: Ctx<()>| -> Result<(), String> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        let spinner = std::thread::spawn(move || {
            while !spinning.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let result = (0..400u32).try_for_each(|i| {
            let (_, r) = converge::spawn_monitor(|_: Ctx<()>| {}).map_err(|e| format!("spawn {i} failed: {e}"))?;
            let d = ctx
                .recv_down_timeout(r, PATIENCE)
                .map_err(|e| format!("Down {i}: {e:?}"))?;
            match d.reason {
                ExitReason::Normal => Ok(()),
                other => Err(format!("round {i} ended {other:?}")),
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        result
    })
    .unwrap();
    assert_eq!(h.join().unwrap(), Ok(()));
}

fn spawn_join_gives_the_value() {
    let h = converge::spawn_join(|_: Ctx<()>| (1..=20u64).map(|i| i * i).collect::<Vec<_>>()).unwrap();
    assert_eq!(h.join().unwrap(), (1..=20u64).map(|i| i * i).collect::<Vec<_>>());
}

fn join_gives_the_exit_reason() {
    let h = converge::spawn_join(|_: Ctx<()>| -> u32 { panic!("no value") }).unwrap();
    let e = h.join().unwrap_err();
    assert_eq!(e.panic_message(), Some("no value"));
    let h = converge::spawn_join(|_: Ctx<()>| -> u32 { std::process::exit(4) }).unwrap();
    assert_eq!(h.join().unwrap_err().reason(), Some(&ExitReason::Code(4)));
    let h = converge::spawn_join(|_: Ctx<()>| 1u8).unwrap();
    h.mailbox().kill();
    // Killed, or finished first: either way, an answer.
    let r = h.join();
    assert!(matches!(&r, Ok(1)) || r.as_ref().unwrap_err().reason() == Some(&ExitReason::Killed));
}

fn join_timeout_leaves_the_handle_usable() {
    let mut h = converge::spawn_join(|ctx: Ctx<u32>| ctx.recv().unwrap() * 3).unwrap();
    assert!(h.join_timeout(Duration::from_millis(30)).unwrap_err().is_timeout());
    h.mailbox().send(14).unwrap();
    assert_eq!(h.join_timeout(PATIENCE).unwrap(), 42);
}

fn parent_os_pid(os: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{os}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn report_parent(ctx: Ctx<()>, back: converge::Mailbox<(i32, usize)>) {
    let me = std::process::id() as i32;
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    back.send((parent_os_pid(me), threads)).unwrap();
    let _ = ctx;
}

fn spawn_fn_runs_in_a_clean_image() {
    // This node has threads of its own (the test harness's watchdog, the
    // runtime's); a spawn_fn process has none of them.
    let me = node().ctx::<(i32, usize)>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let busy = std::thread::spawn(move || {
        let _ = stop_rx.recv_timeout(PATIENCE);
    });
    let p = converge::spawn_fn(report_parent, me.mailbox()).unwrap();
    let (ppid, threads) = me.recv_timeout(PATIENCE).unwrap();
    assert_ne!(ppid, std::process::id() as i32, "forked by the zygote, not the node");
    assert_eq!(threads, 1, "a spawn_fn process starts with one thread");
    assert!(converge::process_info(p).is_none() || util::wait_until(PATIENCE, || converge::process_info(p).is_none()));
    stop_tx.send(()).unwrap();
    busy.join().unwrap();
}

fn report_comm(_: Ctx<()>, back: converge::Mailbox<String>) {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    back.send(comm.trim_end().to_string()).unwrap();
}

/// `ps` shows a spawn_fn process as the program and its role, not as the
/// zygote; `Builder::name` replaces that.
fn a_spawn_fn_process_is_named_after_the_program() {
    let me = node().ctx::<String>();
    let program = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_string();
    converge::spawn_fn(report_comm, me.mailbox()).unwrap();
    let comm = me.recv_timeout(PATIENCE).unwrap();
    assert!(comm.ends_with(":fn"), "{comm}");
    assert!(
        program.starts_with(comm.trim_end_matches(":fn")),
        "{comm} for {program}"
    );
    assert!(comm.len() <= 15, "{comm}");
    converge::Builder::new()
        .name("worker")
        .spawn_fn(report_comm, me.mailbox())
        .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "worker");
}

fn double(ctx: Ctx<()>, n: u64) -> Result<(), String> {
    let _ = ctx;
    if n == 21 { Err(format!("{}", n * 2)) } else { Ok(()) }
}

fn spawn_fn_from_inside_a_process() {
    let h = converge::spawn_join(|ctx: Ctx<()>| {
        let p = converge::spawn_fn(double, 21u64).unwrap();
        let r = ctx.monitor(p);
        ctx.recv_down_timeout(r, PATIENCE).unwrap().reason
    })
    .unwrap();
    // The monitor may have come after the exit: NoProc is the honest answer then.
    let reason = h.join().unwrap();
    assert!(
        matches!(&reason, ExitReason::Error(e) if e == "42") || reason == ExitReason::NoProc,
        "{reason:?}"
    );
}

fn name_sets_the_process_title() {
    let me = node().ctx::<()>();
    let back = me.mailbox();
    let p = Builder::new()
        .name("worker-7")
        .spawn(move |ctx: Ctx<()>| {
            back.send(()).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    let info = converge::process_info(p).unwrap();
    assert_eq!(info.name.as_deref(), Some("worker-7"));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", info.os_pid.unwrap())).unwrap();
    assert_eq!(comm.trim(), "worker-7");
    p.kill();
}

fn cpus_sets_the_affinity() {
    let last = std::thread::available_parallelism().map(|n| n.get() - 1).unwrap_or(0);
    let h = Builder::new()
        .cpus(&[last])
        .spawn_join(|_: Ctx<()>| {
            // SAFETY: an all-zero cpu_set_t is a valid output buffer.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: plain sched_getaffinity into a local set.
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
            (0..64)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
                .collect::<Vec<usize>>()
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), vec![last]);
}

fn environment_changes() {
    // SAFETY: the test harness runs one test at a time; no other thread reads
    // the environment now.
    unsafe { std::env::set_var("CONVERGE_TEST_REMOVED", "present") };
    let h = Builder::new()
        .env("CONVERGE_TEST_SET", "yes")
        .env_remove("CONVERGE_TEST_REMOVED")
        .spawn_join(|_: Ctx<()>| {
            (
                std::env::var("CONVERGE_TEST_SET").ok(),
                std::env::var("CONVERGE_TEST_REMOVED").ok(),
                std::env::var("PATH").is_ok(),
            )
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), (Some("yes".into()), None, true));
    let h = Builder::new()
        .env_clear()
        .env("ONLY", "this")
        .spawn_join(|_: Ctx<()>| std::env::vars().collect::<Vec<_>>())
        .unwrap();
    assert_eq!(h.join().unwrap(), vec![("ONLY".to_string(), "this".to_string())]);
}

fn working_directory() {
    let dir = std::env::temp_dir();
    let h = Builder::new()
        .current_dir(&dir)
        .spawn_join(|_: Ctx<()>| std::env::current_dir().unwrap())
        .unwrap();
    assert_eq!(h.join().unwrap(), dir.canonicalize().unwrap());
}

fn missing_working_directory_is_a_spawn_error() {
    let err = Builder::new()
        .current_dir("/nonexistent/converge")
        .spawn(|_: Ctx<()>| {})
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/converge"), "{err}");
}

fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

fn descriptors_are_closed_unless_kept() {
    let (kept_r, kept_w) = std::io::pipe().unwrap();
    let not_kept = std::fs::File::open("/proc/self/stat").unwrap();
    let (kfd, nfd) = (kept_w.as_raw_fd(), not_kept.as_raw_fd());
    let h = Builder::new()
        .keep_fd(&kept_w)
        .spawn_join(move |_: Ctx<()>| {
            let mut w = kept_w;
            let _ = w.write_all(b"kept");
            (fd_open(kfd), fd_open(nfd))
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), (true, false));
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut &kept_r, &mut buf).unwrap();
    assert_eq!(&buf, b"kept");
}

/// The fork-safety test: while another thread prints in a tight loop
/// and holds a mutex, fork 1,000 processes that print and allocate; none
/// hangs.
/// Forks 1,000 times while another thread prints and holds a mutex, in a
/// helper whose standard output this test reads (and counts) rather than
/// letting it reach the terminal.
fn fork_while_another_thread_prints_and_holds_a_mutex() {
    let mut h = util::HelperProcess::start(util::helper("fork_while_printing"));
    let out = h.rest().join("\n");
    assert!(h.wait(PATIENCE).unwrap().success(), "the helper failed");
    // Every child printed, and so did the thread.
    assert_eq!(out.matches("\r10").count(), 1000);
    assert!(out.contains("noisy"), "the printing thread never printed");
    assert!(out.ends_with("downs 1000"), "{}", &out[out.len().saturating_sub(200)..]);
}

fn helper_fork_while_printing() {
    util::install_node(converge::init().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lock = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let noisy = {
        let (stop, lock) = (stop.clone(), lock.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut g = lock.lock().unwrap();
                *g += 1;
                // Printing takes the stdout lock while the mutex is held.
                let _ = writeln!(std::io::stdout().lock(), "\rnoisy {}", *g);
                drop(g);
            }
        })
    };
    let mut refs = Vec::new();
    for i in 0..1000u32 {
        let (_p, r) = converge::spawn_monitor(move |_: Ctx<()>| {
            let v: Vec<String> = (0..10).map(|j| format!("{i}-{j}")).collect();
            print!("\r{}", v.len());
            // A process ends with `_exit`: what it leaves buffered is lost.
            std::io::stdout().flush().unwrap();
        })
        .unwrap();
        refs.push(r);
    }
    for r in refs {
        assert_eq!(
            node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
            ExitReason::Normal
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    noisy.join().unwrap();
    println!();
    util::say("downs", 1000);
    node().shutdown(PATIENCE);
}

fn command_works_in_the_node_and_in_processes() {
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let out = std::process::Command::new("/bin/echo").arg("hi").output().unwrap();
    assert_eq!(out.stdout, b"hi\n");
    let h = converge::spawn_join(|_: Ctx<()>| {
        let s = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 5"])
            .status()
            .unwrap();
        let o = std::process::Command::new("/bin/echo").arg("inside").output().unwrap();
        (s.code(), String::from_utf8(o.stdout).unwrap())
    })
    .unwrap();
    assert_eq!(h.join().unwrap(), (Some(5), "inside\n".to_string()));
}

/// A process's OS pid is given to a new process; the old `Pid` still means
/// the old process (`NoProc`), never the new one.
fn pids_are_never_confused_by_os_pid_reuse() {
    let ns_last_pid = "/proc/sys/kernel/ns_last_pid";
    if std::fs::OpenOptions::new().write(true).open(ns_last_pid).is_err() {
        println!("skipped: cannot write {ns_last_pid} (needs root)");
        return;
    }
    let me = node().ctx::<()>();
    let back = me.mailbox();
    let (old, r) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        back.send(()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    let old_os = converge::process_info(old).unwrap().os_pid.unwrap();
    old.kill();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    // Make the kernel hand out the same OS pid again (several tries: other
    // processes of the machine may take it first).
    let mut reused = None;
    for _ in 0..20 {
        std::fs::write(ns_last_pid, format!("{}", old_os - 1)).unwrap();
        let back = me.mailbox();
        let new = converge::spawn(move |ctx: Ctx<()>| {
            back.send(()).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
        me.recv_timeout(PATIENCE).unwrap();
        if converge::process_info(new).unwrap().os_pid == Some(old_os) {
            reused = Some(new);
            break;
        }
        new.kill();
    }
    let new = reused.expect("the OS pid was reused");
    assert_ne!(new.pid(), old.pid());
    // The old Pid is dead: monitor says NoProc, kill does nothing.
    let again = node().ctx::<()>().monitor(old);
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(again, PATIENCE).unwrap().reason,
        ExitReason::NoProc
    );
    old.kill();
    assert!(converge::process_info(new).is_some());
    let rn = node().ctx::<()>().monitor(new);
    new.send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rn, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

fn pids_are_unique_and_not_os_pids() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let (p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
        assert!(seen.insert(p.pid()));
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    }
    let pids: Vec<Pid> = seen.into_iter().collect();
    assert!(pids.iter().all(|p| p.node() == node().id()));
}

//! Every exit reason, caused for real, observed exactly once by a monitor.

mod util;

use converge::{Ctx, ExitReason, Mailbox};
use util::{PATIENCE, exit_reason, node};

fn main() {
    util::run(
        &[
            ("returns_ok_is_normal", returns_ok_is_normal),
            ("returns_unit_is_normal", returns_unit_is_normal),
            ("returns_err_is_error_with_text", returns_err_is_error_with_text),
            ("panic_is_panic_with_message", panic_is_panic_with_message),
            ("explicit_exit_with_user_reason", explicit_exit_with_user_reason),
            ("returned_exit_reason", returned_exit_reason),
            ("kill_is_killed", kill_is_killed),
            ("sigkill_from_outside_is_killed", sigkill_from_outside_is_killed),
            ("sigterm_is_signal", sigterm_is_signal),
            ("segfault_is_signal", segfault_is_signal),
            ("abort_is_signal", abort_is_signal),
            ("core_flag_follows_the_kernel", core_flag_follows_the_kernel),
            ("process_exit_3_is_code_3", process_exit_3_is_code_3),
            ("process_exit_0_is_normal", process_exit_0_is_normal),
            (
                "death_through_link_carries_the_reason",
                death_through_link_carries_the_reason,
            ),
            ("killed_before_it_ran_is_killed", killed_before_it_ran_is_killed),
            (
                "killed_while_flushing_on_exit_is_killed",
                killed_while_flushing_on_exit_is_killed,
            ),
            ("nested_process_reasons_are_exact", nested_process_reasons_are_exact),
            ("orphan_reasons_are_exact", orphan_reasons_are_exact),
            ("spawn_fn_reasons_are_exact", spawn_fn_reasons_are_exact),
            ("cpu_time_limit_is_cpu_limit", cpu_time_limit_is_cpu_limit),
            (
                "last_words_that_cannot_be_sent_are_not_normal",
                last_words_that_cannot_be_sent_are_not_normal,
            ),
        ],
        &[],
    )
}

fn returns_ok_is_normal() {
    assert_eq!(exit_reason(|_: Ctx<()>| Ok::<(), String>(())), ExitReason::Normal);
}

fn returns_unit_is_normal() {
    assert_eq!(exit_reason(|_: Ctx<()>| {}), ExitReason::Normal);
}

fn returns_err_is_error_with_text() {
    let r = exit_reason(|_: Ctx<()>| -> Result<(), std::io::Error> { Err(std::io::Error::other("disk on fire")) });
    assert_eq!(r, ExitReason::Error("disk on fire".into()));
}

fn panic_is_panic_with_message() {
    let r = exit_reason(|_: Ctx<()>| -> () {
        let n = 7;
        panic!("boom {n}");
    });
    assert_eq!(r, ExitReason::Panic("boom 7".into()));
}

fn explicit_exit_with_user_reason() {
    let r = exit_reason(|ctx: Ctx<()>| -> () {
        ctx.exit(ExitReason::Exit("enough".into()));
    });
    assert_eq!(r, ExitReason::Exit("enough".into()));
}

fn returned_exit_reason() {
    assert_eq!(exit_reason(|_: Ctx<()>| ExitReason::Shutdown), ExitReason::Shutdown);
}

/// A process that waits for a message that never comes.
fn idle(ctx: Ctx<()>) {
    let _ = ctx.recv_timeout(PATIENCE * 3);
}

fn kill_is_killed() {
    let (mb, r) = converge::spawn_monitor(idle).unwrap();
    mb.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
}

fn os_pid(mb: &Mailbox<()>) -> i32 {
    let mut os = None;
    assert!(util::wait_until(PATIENCE, || {
        os = converge::process_info(mb).and_then(|i| i.os_pid);
        os.is_some()
    }));
    os.unwrap()
}

fn signal_from_outside(signal: i32) -> ExitReason {
    let (mb, r) = converge::spawn_monitor(idle).unwrap();
    let os = os_pid(&mb);
    // SAFETY: sending a signal to a process of ours.
    unsafe {
        libc::kill(os, signal);
    }
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason
}

fn sigkill_from_outside_is_killed() {
    assert_eq!(signal_from_outside(libc::SIGKILL), ExitReason::Killed);
}

fn sigterm_is_signal() {
    assert_eq!(
        signal_from_outside(libc::SIGTERM),
        ExitReason::Signal {
            signal: libc::SIGTERM,
            core_dumped: false
        }
    );
}

fn segfault_is_signal() {
    let r = exit_reason(|_: Ctx<()>| {
        util::no_core_dumps();
        // SAFETY: not safe at all: this process is meant to die of SIGSEGV.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    });
    assert_eq!(
        r,
        ExitReason::Signal {
            signal: libc::SIGSEGV,
            core_dumped: false
        }
    );
}

fn abort_is_signal() {
    let r = exit_reason(|_: Ctx<()>| -> () {
        util::no_core_dumps();
        std::process::abort();
    });
    assert_eq!(
        r,
        ExitReason::Signal {
            signal: libc::SIGABRT,
            core_dumped: false
        }
    );
}

/// `core_dumped` is what the kernel says: true exactly when a core was written.
fn core_flag_follows_the_kernel() {
    let dir = std::env::temp_dir().join(format!("converge-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = {
        let (_mb, r) = converge::Builder::new()
            .current_dir(&dir)
            .spawn_monitor(|_: Ctx<()>| -> () {
                let lim = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                // SAFETY: plain setrlimit; failing (not root) only means no core.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &lim);
                }
                std::process::abort();
            })
            .unwrap();
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason
    };
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let core_written = std::fs::read_dir(&dir).unwrap().count() > 0;
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        ExitReason::Signal { signal, core_dumped } => {
            assert_eq!(signal, libc::SIGABRT);
            if !pattern.starts_with('|') {
                assert_eq!(core_dumped, core_written, "core_pattern {pattern:?}");
            }
        }
        other => panic!("expected a signal, got {other:?}"),
    }
}

fn process_exit_3_is_code_3() {
    assert_eq!(
        exit_reason(|_: Ctx<()>| -> () { std::process::exit(3) }),
        ExitReason::Code(3)
    );
}

fn process_exit_0_is_normal() {
    assert_eq!(
        exit_reason(|_: Ctx<()>| -> () { std::process::exit(0) }),
        ExitReason::Normal
    );
}

fn death_through_link_carries_the_reason() {
    let me = node().ctx::<()>();
    let me_mb = me.mailbox();
    let (b, rb) = converge::spawn_monitor(|ctx: Ctx<()>| -> Result<(), String> {
        let _ = ctx.recv_timeout(PATIENCE);
        Err("b failed".into())
    })
    .unwrap();
    let (_a, ra) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        ctx.link(b.pid()).unwrap();
        me_mb.send(()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    b.send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rb, PATIENCE).unwrap().reason,
        ExitReason::Error("b failed".into())
    );
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(ra, PATIENCE).unwrap().reason,
        ExitReason::Error("b failed".into())
    );
}

fn killed_before_it_ran_is_killed() {
    for _ in 0..20 {
        let (mb, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
        mb.kill();
        let reason = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason;
        // Either the kill landed first, or the process had already finished.
        assert!(matches!(reason, ExitReason::Killed | ExitReason::Normal), "{reason:?}");
    }
}

/// A process whose messages cannot leave (the receiver never reads) spends
/// its exit trying to write them; killed then, it is `Killed`, not `Normal`.
fn killed_while_flushing_on_exit_is_killed() {
    let (sink, rs) = converge::spawn_monitor(|ctx: Ctx<Vec<u8>>| {
        // Never reads: just waits for the end.
        std::thread::sleep(PATIENCE);
        let _ = ctx;
    })
    .unwrap();
    let (writer, rw) = converge::spawn_monitor(move |_: Ctx<()>| {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..16 {
            sink.send(chunk.clone()).unwrap();
        }
    })
    .unwrap();
    assert!(util::wait_until(PATIENCE, || {
        converge::process_info(writer).is_some_and(|i| i.state == converge::ProcessState::Exiting)
    }));
    writer.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rw, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
    sink.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rs, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
}

/// Reasons of processes spawned from inside a process, reported to the node's
/// main thread through a monitor placed by the node.
fn nested_process_reasons_are_exact() {
    let parent = converge::spawn_join(|ctx: Ctx<()>| {
        let mut out = Vec::new();
        let cases: Vec<Box<dyn FnOnce(Ctx<()>) -> ExitReason>> = vec![
            Box::new(|_| ExitReason::Normal),
            Box::new(|_| panic!("inner panic")),
            Box::new(|_| std::process::exit(9)),
            Box::new(|_| ExitReason::Exit("inner".into())),
        ];
        for case in cases {
            let (_mb, r) = converge::spawn_monitor(case).unwrap();
            out.push(ctx.recv_down_timeout(r, PATIENCE).unwrap().reason);
        }
        out
    })
    .unwrap();
    assert_eq!(
        parent.join().unwrap(),
        vec![
            ExitReason::Normal,
            ExitReason::Panic("inner panic".into()),
            ExitReason::Code(9),
            ExitReason::Exit("inner".into()),
        ]
    );
}

/// A process whose parent died: its status comes from the node (which adopts
/// it) and its reason is exact.
fn orphan_reasons_are_exact() {
    let me = node().ctx::<(converge::Pid, u32)>();
    let me_mb = me.mailbox();
    let (parent, rp) = converge::spawn_monitor(move |_: Ctx<()>| {
        let child = converge::spawn(move |ctx: Ctx<()>| -> () {
            let _ = ctx.recv_timeout(PATIENCE);
            std::process::exit(42);
        })
        .unwrap();
        me_mb.send((child.pid(), 0)).unwrap();
        // The parent dies before its child.
        ExitReason::Exit("parent gone".into())
    })
    .unwrap();
    let (child, _) = me.recv_timeout(PATIENCE).unwrap();
    let rc = node().ctx::<()>().monitor(child);
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rp, PATIENCE).unwrap().reason,
        ExitReason::Exit("parent gone".into())
    );
    Mailbox::<()>::from_pid(child).send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rc, PATIENCE).unwrap().reason,
        ExitReason::Code(42)
    );
    let _ = parent;
}

fn fn_exit(ctx: Ctx<()>, code: i32) -> ExitReason {
    // Wait for the go, so that the monitor is in place before the exit.
    let _ = ctx.recv_timeout(PATIENCE);
    match code {
        0 => ExitReason::Normal,
        1 => panic!("fn panic"),
        n => std::process::exit(n),
    }
}

fn spawn_fn_reasons_are_exact() {
    for (arg, want) in [
        (0, ExitReason::Normal),
        (1, ExitReason::Panic("fn panic".into())),
        (5, ExitReason::Code(5)),
    ] {
        let mb = converge::spawn_fn(fn_exit, arg).unwrap();
        let r = node().ctx::<()>().monitor(mb);
        mb.send(()).unwrap();
        assert_eq!(node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason, want);
    }
}

fn cpu_time_limit_is_cpu_limit() {
    let (_p, r) = converge::Builder::new()
        .cpu_time_limit(std::time::Duration::from_secs(1))
        .spawn_monitor(|_: Ctx<()>| -> () {
            util::no_core_dumps();
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        })
        .unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::CpuLimit
    );
}

/// Closes every descriptor from 3 up, as daemonizing or hostile code does:
/// the process's connections to the node are gone.
fn close_every_descriptor() {
    // SAFETY: close_range takes integers only; nothing of the test uses a
    // descriptor of this process after it.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    assert_eq!(r, 0, "close_range failed");
}

/// An abnormal end whose last words cannot reach the node still ends
/// abnormally: the exit code says so (`Code(n)`), never `Normal`.
fn last_words_that_cannot_be_sent_are_not_normal() {
    let r = exit_reason(|_: Ctx<()>| -> Result<(), String> {
        close_every_descriptor();
        Err("no one hears this".into())
    });
    assert_eq!(r, ExitReason::Code(1));
    let r = exit_reason(|_: Ctx<()>| -> () {
        close_every_descriptor();
        panic!("nor this");
    });
    assert_eq!(r, ExitReason::Code(101));
    let r = exit_reason(|_: Ctx<()>| ExitReason::Code(7));
    assert_eq!(r, ExitReason::Code(7));
    let r = exit_reason(|_: Ctx<()>| {
        close_every_descriptor();
        ExitReason::Code(7)
    });
    assert_eq!(r, ExitReason::Code(7));
    // A normal end needs no words.
    let r = exit_reason(|_: Ctx<()>| close_every_descriptor());
    assert_eq!(r, ExitReason::Normal);
}

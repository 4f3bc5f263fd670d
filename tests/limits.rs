//! Per-process resource limits, each provoked for real: memory (a cgroup where
//! the node can make one, `RLIMIT_DATA` otherwise), data segment and open
//! files. The CPU time limit is in `exit_reasons`.

mod util;

use std::time::Duration;

use converge::{Builder, Ctx, ExitReason, MemoryLimiter};
use util::{HelperProcess, PATIENCE, helper, node, say};

const MIB: usize = 1 << 20;

fn main() {
    util::run_skipping(
        converge::Config::new(),
        &[
            ("memory_limit_is_memory_limit", memory_limit_is_memory_limit),
            ("memory_limit_by_cgroup", memory_limit_by_cgroup),
            (
                "memory_limit_without_cgroups_uses_rlimit_data",
                memory_limit_without_cgroups_uses_rlimit_data,
            ),
            ("data_limit_fails_allocations", data_limit_fails_allocations),
            (
                "open_files_limit_makes_opening_fail",
                open_files_limit_makes_opening_fail,
            ),
            (
                "a_process_out_of_descriptors_receives_once_one_is_free",
                a_process_out_of_descriptors_receives_once_one_is_free,
            ),
            (
                "a_send_without_a_descriptor_is_an_error_not_a_loss",
                a_send_without_a_descriptor_is_an_error_not_a_loss,
            ),
        ],
        &[("rlimit_node", helper_rlimit_node)],
        skip,
    )
}

/// Why a test cannot run on this machine, if it cannot.
fn skip(name: &str) -> Option<String> {
    let cgroups = node().memory_limiter() != MemoryLimiter::DataRlimit;
    match name {
        "memory_limit_by_cgroup" if !cgroups => Some(
            "no cgroup with the memory controller can be made here (cgroup v2 needs the node in the root \
             cgroup or alone in a delegated one; no v1 memory controller); memory limits fall back to \
             RLIMIT_DATA"
                .into(),
        ),
        "memory_limit_is_memory_limit" | "memory_limit_by_cgroup" if swap_would_absorb() => {
            Some("this machine has swap and does not account it per cgroup".into())
        }
        _ => None,
    }
}

/// Allocates and touches memory 1 MiB at a time, up to `mib` MiB, then
/// returns normally.
fn hog(mib: usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        // Written, so that every page is really there.
        held.push(vec![0x5a; MIB]);
        std::hint::black_box(&held);
    }
}

/// Spawns a process limited to `limit` bytes that hogs `mib` MiB, and
/// returns its exit reason.
fn hog_with_limit(limit: u64, mib: usize) -> ExitReason {
    let (_p, r) = Builder::new()
        .memory_limit(limit)
        .spawn_monitor(move |_: Ctx<()>| {
            util::no_core_dumps();
            hog(mib);
        })
        .unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason
}

/// Whether a memory-limited process here could swap instead of reaching its
/// limit: the machine has swap and the process's cgroup does not bound it
/// (the kernel does not account swap). Asked of such a process itself.
fn swap_would_absorb() -> bool {
    let limiter = node().memory_limiter();
    if limiter == MemoryLimiter::DataRlimit {
        return false;
    }
    Builder::new()
        .memory_limit(256 << 20)
        .spawn_join(move |_: Ctx<()>| {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
            let swap: u64 = meminfo
                .lines()
                .find_map(|l| l.strip_prefix("SwapTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let dir = format!(
                "{}{}",
                hierarchy_mount(limiter),
                memory_cgroup_of(std::process::id(), limiter)
            );
            let bound = match limiter {
                MemoryLimiter::CgroupV1 => "memory.memsw.limit_in_bytes",
                _ => "memory.swap.max",
            };
            swap > 0 && !std::path::Path::new(&dir).join(bound).exists()
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Whichever way this node enforces it, going past the limit ends the
/// process with `MemoryLimit`, and staying under it does not.
fn memory_limit_is_memory_limit() {
    eprintln!("memory limits here: {:?}", node().memory_limiter());
    assert_eq!(hog_with_limit(256 << 20, 4096), ExitReason::MemoryLimit);
    assert_eq!(hog_with_limit(256 << 20, 32), ExitReason::Normal);
    // The same from a clean image, started by the zygote.
    let p = Builder::new().memory_limit(256 << 20).spawn_fn(hog_fn, 4096).unwrap();
    let r = node().ctx::<()>().monitor(p.pid());
    p.send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::MemoryLimit
    );
}

/// Waits for the word (so that a monitor is in place first), then hogs.
fn hog_fn(ctx: Ctx<()>, mib: usize) {
    util::no_core_dumps();
    let _ = ctx.recv_timeout(PATIENCE);
    hog(mib);
}

/// The cgroup of the process `os_pid` that holds its memory limit: the path
/// (relative to the hierarchy's mount) on its v1 `memory` line, or on its v2
/// line.
fn memory_cgroup_of(os_pid: u32, limiter: MemoryLimiter) -> String {
    let text = std::fs::read_to_string(format!("/proc/{os_pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let v1 = controllers.split(',').any(|c| c == "memory");
            let wanted = match limiter {
                MemoryLimiter::CgroupV1 => v1,
                _ => controllers.is_empty(),
            };
            wanted.then(|| path.to_string())
        })
        .unwrap_or_default()
}

/// Where the hierarchy that holds memory limits is mounted.
fn hierarchy_mount(limiter: MemoryLimiter) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = right.split_whitespace();
            let fs = fields.next()?;
            let options = fields.nth(1)?;
            let wanted = match limiter {
                MemoryLimiter::CgroupV1 => fs == "cgroup" && options.split(',').any(|o| o == "memory"),
                _ => fs == "cgroup2",
            };
            wanted.then(|| left.split_whitespace().nth(4).map(str::to_string))?
        })
        .expect("the hierarchy is mounted")
}

/// With a cgroup: the process is in a cgroup of its own, the kernel's OOM
/// kill there is `MemoryLimit`, any other `SIGKILL` is `Killed`, and the
/// cgroup is removed once the process is gone.
fn memory_limit_by_cgroup() {
    let limiter = node().memory_limiter();
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let (p, r) = Builder::new()
        .memory_limit(64 << 20)
        .spawn_monitor(move |ctx: Ctx<bool>| {
            back.send(memory_cgroup_of(std::process::id(), limiter)).unwrap();
            if ctx.recv_timeout(PATIENCE) == Ok(true) {
                hog(1024);
            }
        })
        .unwrap();
    let cgroup = me.recv_timeout(PATIENCE).unwrap();
    assert!(
        cgroup.ends_with(&format!("/mem-{}", p.pid().serial())),
        "the process is in a cgroup of its own: {cgroup:?}"
    );
    p.send(true).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::MemoryLimit
    );
    let dir = format!("{}{cgroup}", hierarchy_mount(limiter));
    assert!(
        util::wait_until(PATIENCE, || !std::path::Path::new(&dir).exists()),
        "the process's cgroup {dir} is removed"
    );

    // A program it started outlives it in its cgroup: the cgroup goes when
    // the program does.
    let me = node().ctx::<(String, u32)>();
    let back = me.mailbox();
    let (_p, r) = Builder::new()
        .memory_limit(64 << 20)
        .spawn_monitor(move |_: Ctx<()>| {
            // Left to the node, which adopts and reaps it once this process
            // is gone.
            #[allow(clippy::zombie_processes)]
            let sleeper = std::process::Command::new("sleep").arg("100").spawn().unwrap();
            back.send((memory_cgroup_of(std::process::id(), limiter), sleeper.id()))
                .unwrap();
        })
        .unwrap();
    let (cgroup, sleeper) = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
    let dir = format!("{}{cgroup}", hierarchy_mount(limiter));
    assert!(
        std::path::Path::new(&dir).exists(),
        "{dir} is kept while the program runs"
    );
    // SAFETY: a signal to the program the test's process started (the node
    // adopted it and reaps it).
    unsafe {
        libc::kill(sleeper as i32, libc::SIGKILL);
    }
    assert!(
        util::wait_until(PATIENCE, || !std::path::Path::new(&dir).exists()),
        "{dir} is removed once the program is gone"
    );

    // The same limit, ended from outside: not a memory matter.
    let me = node().ctx::<u32>();
    let back = me.mailbox();
    let (_p, r) = Builder::new()
        .memory_limit(64 << 20)
        .spawn_monitor(move |ctx: Ctx<()>| {
            back.send(std::process::id()).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
    let os_pid = me.recv_timeout(PATIENCE).unwrap();
    // SAFETY: a signal to the process this test just started.
    unsafe {
        libc::kill(os_pid as i32, libc::SIGKILL);
    }
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
}

/// A node with `memory_cgroups(false)`: the limit is `RLIMIT_DATA`, an
/// allocation past it aborts the process, reported as `MemoryLimit`.
fn memory_limit_without_cgroups_uses_rlimit_data() {
    let mut h = HelperProcess::start(helper("rlimit_node"));
    assert_eq!(h.expect("limiter"), "DataRlimit");
    assert_eq!(h.expect("over"), "memory limit exceeded");
    assert_eq!(h.expect("under"), "normal");
    assert_eq!(h.expect("left"), "0");
    assert!(h.wait(PATIENCE).expect("the helper ends").success());
}

fn helper_rlimit_node() {
    let node = converge::Config::new().memory_cgroups(false).init().unwrap();
    say("limiter", format!("{:?}", node.memory_limiter()));
    for (key, mib) in [("over", 4096), ("under", 32)] {
        let (_p, r) = Builder::new()
            .memory_limit(256 << 20)
            .spawn_monitor(move |_: Ctx<()>| {
                util::no_core_dumps();
                hog(mib);
            })
            .unwrap();
        say(key, node.ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason);
    }
    node.shutdown(PATIENCE);
    say("left", node.processes().len());
}

/// `data_limit`: an allocation past it fails. `try_reserve` reports it and
/// the process goes on; a plain allocation aborts the process.
fn data_limit_fails_allocations() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let (_p, r) = Builder::new()
        .data_limit(256 << 20)
        .spawn_monitor(move |_: Ctx<()>| {
            util::no_core_dumps();
            let mut v: Vec<u8> = Vec::new();
            let refused = v.try_reserve_exact(1 << 30).is_err();
            back.send(format!("refused {refused}")).unwrap();
            let small = vec![1u8; MIB];
            back.send(format!("small {}", small.len())).unwrap();
            converge::flush();
            let big = vec![1u8; 1 << 30];
            std::hint::black_box(&big);
        })
        .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "refused true");
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), format!("small {MIB}"));
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Signal {
            signal: libc::SIGABRT,
            core_dumped: false
        }
    );
}

/// `open_files_limit`: opening past it fails with `EMFILE` and the process
/// goes on to end normally. At the limit, a send that needs a new connection
/// gets one by closing an idle connection.
fn open_files_limit_makes_opening_fail() {
    let me = node().ctx::<(usize, Option<i32>)>();
    let back = me.mailbox();
    // Passes on what it gets.
    let relay = converge::spawn(move |ctx: Ctx<(usize, Option<i32>)>| {
        if let Ok(m) = ctx.recv_timeout(PATIENCE) {
            back.send(m).unwrap();
        }
    })
    .unwrap();
    let back = me.mailbox();
    let (_p, r) = Builder::new()
        .open_files_limit(32)
        .spawn_monitor(move |_: Ctx<()>| {
            // A connection to the test, idle from here on.
            back.send((0, None)).unwrap();
            converge::flush();
            let mut files = Vec::new();
            let error = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => files.push(f),
                    Err(e) => break e,
                }
                if files.len() > 64 {
                    break std::io::Error::other("no limit");
                }
            };
            // Every descriptor is taken: the connection to the relay is made
            // in place of the idle one.
            relay.send((files.len(), error.raw_os_error())).unwrap();
            converge::flush();
            drop(files);
        })
        .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), (0, None));
    let (opened, errno) = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(errno, Some(libc::EMFILE), "opening past the limit fails with EMFILE");
    assert!(
        (1..32).contains(&opened),
        "the process opened {opened} files under a limit of 32 descriptors"
    );
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

/// CPU time (user and system) the calling process has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the name: the state (field 3), ..., utime and stime (fields 14
    // and 15), in clock ticks of 10 ms.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A process with no descriptor left cannot accept a new peer's connection:
/// the connection waits (the process does not spin on it), and the message
/// arrives once a descriptor is free.
fn a_process_out_of_descriptors_receives_once_one_is_free() {
    let me = node().ctx::<(String, Duration)>();
    let back = me.mailbox();
    let (p, r) = Builder::new()
        .open_files_limit(32)
        .spawn_monitor(move |ctx: Ctx<u32>| {
            // A connection to the test, made while there are descriptors.
            back.send(("hello".into(), Duration::ZERO)).unwrap();
            converge::flush();
            // (Reading the CPU time takes a descriptor: before and after.)
            let before = cpu_time();
            let mut files = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                files.push(f);
            }
            back.send(("full".into(), Duration::ZERO)).unwrap();
            converge::flush();
            // The test's connection waits in the backlog meanwhile.
            let early = ctx.recv_timeout(Duration::from_millis(500));
            drop(files);
            let spent = cpu_time() - before;
            assert!(early.is_err(), "nothing can be read without a descriptor");
            assert_eq!(ctx.recv_timeout(PATIENCE), Ok(7));
            back.send(("spent".into(), spent)).unwrap();
        })
        .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap().0, "hello");
    assert_eq!(me.recv_timeout(PATIENCE).unwrap().0, "full");
    // A first connection from the test's process: it needs a descriptor.
    p.send(7).unwrap();
    let (what, spent) = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(what, "spent");
    assert!(
        spent < Duration::from_millis(150),
        "the process spent {spent:?} of CPU time waiting for a descriptor"
    );
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

/// A first send to a new peer needs a descriptor for the connection. A
/// process that has none left (and no idle connection to close) gets its
/// message back with `NoDescriptor`; once a descriptor is free, the same
/// send goes through. Nothing is dropped while the receiver lives.
fn a_send_without_a_descriptor_is_an_error_not_a_loss() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let told = me.mailbox();
    let receiver = converge::spawn(move |ctx: Ctx<u32>| {
        let got = ctx.recv_timeout(PATIENCE);
        told.send(format!("received {got:?}")).unwrap();
    })
    .unwrap();
    let (_p, r) = Builder::new()
        .open_files_limit(32)
        .spawn_monitor(move |_: Ctx<()>| {
            // No connection of its own yet: none to close to make room.
            let mut files = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                files.push(f);
            }
            let failed = match receiver.send(7) {
                Err(e) => format!("{}", e.kind()),
                Ok(()) => "sent".into(),
            };
            drop(files);
            let again = receiver.send(7).map_err(|e| e.to_string());
            back.send(format!("{failed} / {again:?}")).unwrap();
        })
        .unwrap();
    let mut reports = [me.recv_timeout(PATIENCE).unwrap(), me.recv_timeout(PATIENCE).unwrap()];
    reports.sort();
    let [report, received] = reports;
    assert!(report.starts_with("no descriptor left"), "{report}");
    assert!(report.ends_with("/ Ok(())"), "{report}");
    // The receiver got the second send, once.
    assert_eq!(received, "received Ok(7)");
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

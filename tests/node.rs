//! The node: `init()` rules, orderly shutdown (explicit, by returning from
//! `main`, on SIGINT/SIGTERM), no process outliving a killed node, process
//! status and counters, and orphans adopted as subreaper.

mod util;

use std::time::Duration;

use converge::{Builder, Ctx, Event, ExitReason, InitErrorKind};
use util::{HelperProcess, PATIENCE, helper, node, say};

fn main() {
    util::run_skipping(
        converge::Config::new(),
        &[
            ("init_after_threads_is_an_error", init_after_threads_is_an_error),
            ("init_twice_is_an_error", init_twice_is_an_error),
            ("shutdown_stops_processes_in_order", shutdown_stops_processes_in_order),
            ("returning_from_main_shuts_down", returning_from_main_shuts_down),
            (
                "sigint_shuts_down_and_children_do_not_get_it",
                sigint_shuts_down_and_children_do_not_get_it,
            ),
            ("sigterm_shuts_down", sigterm_shuts_down),
            ("no_process_survives_a_killed_node", no_process_survives_a_killed_node),
            ("process_info_reports_status", process_info_reports_status),
            (
                "the_node_is_refused_in_a_process_that_captured_it",
                the_node_is_refused_in_a_process_that_captured_it,
            ),
            ("stats_count_exits_by_kind", stats_count_exits_by_kind),
            ("orphans_of_a_process_are_reaped", orphans_of_a_process_are_reaped),
            ("a_thousand_processes_at_once", a_thousand_processes_at_once),
            (
                "init_removes_the_empty_cgroups_of_killed_nodes",
                init_removes_the_empty_cgroups_of_killed_nodes,
            ),
            (
                "strays_end_with_the_node_s_shutdown",
                strays_end_with_the_node_s_shutdown,
            ),
            ("strays_die_with_a_killed_node", strays_die_with_a_killed_node),
        ],
        &[
            ("strays_shutdown", helper_strays_shutdown),
            ("strays_killed", helper_strays_killed),
            ("cgroup_node", helper_cgroup_node),
            ("plain_init", helper_plain_init),
            ("threaded_init", threaded_init),
            ("shutdown", helper_shutdown),
            ("return_from_main", helper_return_from_main),
            ("signals", helper_signals),
            ("tree", helper_tree),
        ],
        skip,
    )
}

/// Why a test cannot run on this machine, if it cannot.
fn skip(name: &str) -> Option<String> {
    match name {
        "init_removes_the_empty_cgroups_of_killed_nodes" if cgroup_dirs_of(&node().id().to_string()).is_empty() => {
            Some("the node makes no cgroups here (no writable cgroup v2 with cgroup.kill)".into())
        }
        _ => None,
    }
}

/// The cgroup directories of node `id` (`converge-<id>`), wherever the
/// cgroup hierarchies are mounted under `/sys/fs/cgroup`.
fn cgroup_dirs_of(id: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, name: &str, depth: usize, found: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_str() == Some(name) {
                found.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), name, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        std::path::Path::new("/sys/fs/cgroup"),
        &format!("converge-{id}"),
        6,
        &mut found,
    );
    found
}

/// A node, killed by the test.
fn helper_cgroup_node() {
    let node = converge::init().unwrap();
    say("id", node.id().to_string());
    std::thread::sleep(PATIENCE * 6);
}

/// A node that starts and ends.
fn helper_plain_init() {
    let _node = converge::init().unwrap();
    say("ready", "");
}

/// A node killed with `SIGKILL` together with its zygote (which would
/// otherwise remove the node's cgroups as it goes) leaves empty cgroups
/// behind; the next node to start beside it removes them.
fn init_removes_the_empty_cgroups_of_killed_nodes() {
    let mut h = HelperProcess::start(helper("cgroup_node"));
    let id = h.expect("id").trim().to_string();
    let dirs = cgroup_dirs_of(&id);
    assert!(!dirs.is_empty(), "the node made no cgroup");
    // The node is stopped first, so that it cannot see its zygote die and
    // clean up; then its zygote (and spare), so that they cannot see the
    // node die; then the node.
    let os = h.child.id() as i32;
    // SAFETY: signalling the helper's process.
    unsafe { libc::kill(os, libc::SIGSTOP) };
    let children = std::fs::read_to_string(format!("/proc/{os}/task/{os}/children")).unwrap();
    for child in children.split_whitespace() {
        let child: i32 = child.parse().unwrap();
        // SAFETY: signalling a process of the helper's.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    assert!(dirs.iter().all(|d| d.exists()), "nothing left to remove: {dirs:?}");
    let mut next = HelperProcess::start(helper("plain_init"));
    next.expect("ready");
    next.child.wait().unwrap();
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn threaded_init() {
    let t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500)));
    match converge::init() {
        Ok(_) => say("result", "ok"),
        Err(e) => match e.kind() {
            InitErrorKind::Threaded { threads } => say("result", format!("threaded {threads}")),
            other => say("result", format!("other {other}")),
        },
    }
    t.join().unwrap();
}

fn init_after_threads_is_an_error() {
    let mut h = HelperProcess::start(helper("threaded_init"));
    assert_eq!(h.expect("result"), "threaded 2");
    assert!(h.wait(PATIENCE).unwrap().success());
}

fn init_twice_is_an_error() {
    let e = converge::init().unwrap_err();
    assert!(matches!(e.kind(), InitErrorKind::AlreadyInitialized));
}

fn idle(ctx: Ctx<()>) {
    let _ = ctx.recv_timeout(PATIENCE * 6);
}

/// A process that traps exits, prints the exit signal it gets, and cleans up.
fn trapper(ctx: &Ctx<()>) -> ExitReason {
    loop {
        match ctx.recv_event_timeout(PATIENCE * 6) {
            Ok(Event::Exit(e)) => {
                say("trapper", &e.reason);
                return ExitReason::Exit("cleaned up".into());
            }
            Ok(_) => {}
            Err(_) => return ExitReason::Error("no exit signal".into()),
        }
    }
}

fn helper_shutdown() {
    let node = converge::init().unwrap();
    let me = node.ctx::<converge::Pid>();
    let back = me.mailbox();
    let t = Builder::new()
        .trap_exits(true)
        .spawn(|ctx: Ctx<()>| trapper(&ctx))
        .unwrap();
    let plain = converge::spawn(idle).unwrap();
    let parent = converge::spawn(move |ctx: Ctx<()>| {
        let child = converge::spawn(idle).unwrap();
        back.send(child.pid()).unwrap();
        idle(ctx);
    })
    .unwrap();
    let child = me.recv_timeout(PATIENCE).unwrap();
    let watched = [
        ("trapper", t.pid()),
        ("plain", plain.pid()),
        ("parent", parent.pid()),
        ("child", child),
    ];
    let refs: Vec<_> = watched
        .iter()
        .map(|(n, p)| (*n, node.ctx::<()>().monitor(*p)))
        .collect();
    node.shutdown(PATIENCE);
    for (name, r) in refs {
        match node.ctx::<()>().recv_down_timeout(r, Duration::ZERO) {
            Ok(d) => say("down", format!("{name} {}", d.reason)),
            Err(e) => say("down", format!("{name} missing: {e}")),
        }
    }
    say("alive", node.processes().len());
    say("spawn", converge::spawn(idle).is_err());
}

fn shutdown_stops_processes_in_order() {
    let mut h = HelperProcess::start(helper("shutdown"));
    assert_eq!(h.expect("trapper"), "shutdown");
    assert_eq!(h.expect("down"), "trapper exit: cleaned up");
    assert_eq!(h.expect("down"), "plain shutdown");
    assert_eq!(h.expect("down"), "parent shutdown");
    // The child's parent was stopped, so it was stopped next.
    assert_eq!(h.expect("down"), "child shutdown");
    assert_eq!(h.expect("alive"), "0");
    assert_eq!(h.expect("spawn"), "true");
    assert!(h.wait(PATIENCE).unwrap().success());
}

fn helper_return_from_main() {
    let _node = converge::init().unwrap();
    let t = Builder::new()
        .trap_exits(true)
        .spawn(|ctx: Ctx<()>| trapper(&ctx))
        .unwrap();
    let plain = converge::spawn(idle).unwrap();
    let os: Vec<String> = [t.pid(), plain.pid()]
        .iter()
        .map(|p| os_pid_of(*p).to_string())
        .collect();
    say("pids", os.join(" "));
    // `_node` is dropped here: an orderly shutdown.
}

/// The OS pid of a process, once the node knows it.
fn os_pid_of(pid: converge::Pid) -> i32 {
    let mut os = None;
    assert!(util::wait_until(PATIENCE, || {
        os = converge::process_info(pid).and_then(|i| i.os_pid);
        os.is_some()
    }));
    os.unwrap()
}

fn os_pids(line: &str) -> Vec<i32> {
    line.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn all_gone(pids: &[i32], within: Duration) -> bool {
    util::wait_until(within, || pids.iter().all(|&p| !util::os_alive(p)))
}

fn returning_from_main_shuts_down() {
    let mut h = HelperProcess::start(helper("return_from_main"));
    let pids = os_pids(&h.expect("pids"));
    assert_eq!(h.expect("trapper"), "shutdown");
    assert!(h.wait(PATIENCE).unwrap().success());
    assert!(all_gone(&pids, Duration::from_secs(2)));
}

fn helper_signals() {
    let node = converge::init().unwrap();
    let plain = converge::spawn(idle).unwrap();
    // The trapper is newer: it gets Shutdown first, then reports the plain
    // process's end.
    let ready = node.ctx::<()>();
    let ready_mb = ready.mailbox();
    let t = Builder::new()
        .trap_exits(true)
        .spawn(move |ctx: Ctx<()>| {
            let r = ctx.monitor(plain);
            ready_mb.send(()).unwrap();
            let reason = trapper(&ctx);
            if let Ok(d) = ctx.recv_down_timeout(r, PATIENCE) {
                say("plain", d.reason);
            }
            reason
        })
        .unwrap();
    ready.recv_timeout(PATIENCE).unwrap();
    let os: Vec<String> = [plain.pid(), t.pid()]
        .iter()
        .map(|p| os_pid_of(*p).to_string())
        .collect();
    say("pids", os.join(" "));
    let _ = node.ctx::<()>().recv_timeout(PATIENCE * 6);
}

/// Runs the `signals` helper; `send` delivers the signal; checks the orderly
/// shutdown and the node's end by that signal.
fn signal_helper(cmd: std::process::Command, signal: i32, send: impl FnOnce(&HelperProcess)) {
    let mut h = HelperProcess::start(cmd);
    let pids = os_pids(&h.expect("pids"));
    send(&h);
    assert_eq!(h.expect("trapper"), "shutdown");
    assert_eq!(h.expect("plain"), "shutdown");
    let status = h.wait(PATIENCE).unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(signal));
    assert!(all_gone(&pids, Duration::from_secs(2)));
}

/// Ctrl-C on the node's terminal (a pseudo-terminal here): the tty sends
/// SIGINT to the node's foreground process group; the node's processes are
/// not in it and end with `Shutdown`, not with SIGINT.
fn sigint_shuts_down_and_children_do_not_get_it() {
    // SAFETY: plain pty calls on a descriptor we own.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    assert!(master >= 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: as above; `name` is a writable buffer of the given length.
    unsafe {
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
    }
    // SAFETY: `name` was filled with a NUL-terminated path.
    let slave = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    let mut cmd = helper("signals");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::setsid();
            let fd = libc::open(slave.as_ptr(), libc::O_RDWR);
            if fd < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    signal_helper(cmd, libc::SIGINT, |_| {
        // SAFETY: writing the interrupt character to the pty master we own.
        unsafe { libc::write(master, b"\x03".as_ptr().cast(), 1) };
    });
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(master) };
}

/// `kill -TERM <node>`, as a service manager stops a service.
fn sigterm_shuts_down() {
    signal_helper(helper("signals"), libc::SIGTERM, |h| {
        // SAFETY: signalling the helper process.
        unsafe { libc::kill(h.child.id() as i32, libc::SIGTERM) };
    });
}

fn from_zygote(ctx: Ctx<()>, _: ()) {
    idle(ctx)
}

fn helper_tree() {
    let node = converge::init().unwrap();
    let me = node.ctx::<i32>();
    let back = me.mailbox();
    let a = converge::spawn(move |ctx: Ctx<()>| {
        let b = converge::spawn(move |ctx: Ctx<()>| {
            back.send(std::process::id() as i32).unwrap();
            let c = converge::spawn(idle).unwrap();
            let _ = c;
            idle(ctx);
        })
        .unwrap();
        let _ = b;
        idle(ctx);
    })
    .unwrap();
    let z = converge::spawn_fn(from_zygote, ()).unwrap();
    let b_os = me.recv_timeout(PATIENCE).unwrap();
    let mut os = vec![os_pid_of(a.pid()), os_pid_of(z.pid()), b_os];
    // Every other process of this node: the zygote, the grandchild.
    assert!(util::wait_until(PATIENCE, || node.processes().len() == 4));
    for p in node.processes() {
        os.push(os_pid_of(p));
    }
    os.extend(util::children());
    os.sort_unstable();
    os.dedup();
    say("pids", os.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "));
    let _ = me.recv_timeout(PATIENCE * 6);
}

fn no_process_survives_a_killed_node() {
    let mut h = HelperProcess::start(helper("tree"));
    let pids = os_pids(&h.expect("pids"));
    assert!(pids.len() >= 5, "{pids:?}");
    assert!(pids.iter().all(|&p| util::os_alive(p)));
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    assert!(
        all_gone(&pids, Duration::from_secs(2)),
        "survivors: {:?}",
        pids.iter().filter(|&&p| util::os_alive(p)).collect::<Vec<_>>()
    );
}

/// A process that captured the node (here through the test's `&'static
/// Node`) is refused the node's main-thread context and its tables, with a
/// message that says what to use, rather than acting on the parent's copy.
fn the_node_is_refused_in_a_process_that_captured_it() {
    let node: &'static converge::Node = node();
    type Use = fn(&converge::Node);
    let uses: [(&str, Use); 3] = [
        ("ctx", |n| {
            let _ = n.ctx::<()>().try_recv();
        }),
        ("processes", |n| drop(n.processes())),
        ("stats", |n| drop(n.stats())),
    ];
    for (what, f) in uses {
        let (_p, r) = converge::spawn_monitor(move |_: Ctx<()>| f(node)).unwrap();
        let reason = node.ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason;
        match reason {
            ExitReason::Panic(text) => assert!(
                text.contains(&format!("Node::{what} called in process")) && text.contains("the Ctx it was given"),
                "{text}"
            ),
            other => panic!("Node::{what} in a process ended it with {other}"),
        }
    }
    // The values it carries work anywhere.
    let me = node.pid();
    let seen = converge::spawn_join(move |_: Ctx<()>| (node.pid(), node.id())).unwrap();
    assert_eq!(seen.join().unwrap(), (me, node.id()));
}

fn process_info_reports_status() {
    let me = node().ctx::<()>();
    let back = me.mailbox();
    let p = Builder::new()
        .name("inspected")
        .trap_exits(true)
        .spawn(move |ctx: Ctx<()>| {
            back.send(()).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    converge::register("inspected", p).unwrap();
    assert!(util::wait_until(PATIENCE, || {
        converge::process_info(p).is_some_and(|i| i.state == converge::ProcessState::Waiting)
    }));
    let info = converge::process_info(p).unwrap();
    assert_eq!(info.pid, p.pid());
    assert_eq!(info.name.as_deref(), Some("inspected"));
    assert_eq!(info.parent, Some(node().pid()));
    assert!(info.trap_exits);
    assert_eq!(info.registered_names, vec!["inspected".to_string()]);
    assert!(info.memory.unwrap() > 0);
    assert!(util::os_alive(info.os_pid.unwrap()));
    p.kill();
    assert!(util::wait_until(PATIENCE, || converge::process_info(p).is_none()));
}

fn stats_count_exits_by_kind() {
    let before = node().stats();
    let (_p, r) = converge::spawn_monitor(|_: Ctx<()>| -> () { panic!("counted") }).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    let (_p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    let after = node().stats();
    assert_eq!(after.spawned, before.spawned + 2);
    let count = |s: &converge::NodeStats, k: &str| s.exits.get(k).copied().unwrap_or(0);
    assert_eq!(count(&after, "panic"), count(&before, "panic") + 1);
    assert_eq!(count(&after, "normal"), count(&before, "normal") + 1);
}

/// A process starts a program and exits without waiting for it: when the
/// program ends, the node (its subreaper by then) reaps it.
fn orphans_of_a_process_are_reaped() {
    let before = node().stats().strangers_reaped;
    let h = converge::spawn_join(|_: Ctx<()>| {
        let child = std::process::Command::new("/bin/sleep").arg("0.3").spawn().unwrap();
        let id = child.id() as i32;
        std::mem::forget(child);
        id
    })
    .unwrap();
    let orphan = h.join().unwrap();
    assert!(util::wait_until(PATIENCE, || node().stats().strangers_reaped > before));
    assert_eq!(util::os_state(orphan), None, "reaped, not a zombie");
}

/// 1,000 processes alive at once, each monitored; all killed, all Downs
/// received.
fn a_thousand_processes_at_once() {
    let mut refs = Vec::new();
    let mut boxes = Vec::new();
    for _ in 0..1000 {
        let (mb, r) = converge::spawn_monitor(idle).unwrap();
        boxes.push(mb);
        refs.push(r);
    }
    assert_eq!(node().processes().len(), 1000);
    assert_eq!(node().stats().alive, 1000);
    for mb in &boxes {
        mb.kill();
    }
    let me = node().ctx::<()>();
    let mut downs = std::collections::HashSet::new();
    while downs.len() < 1000 {
        match me.recv_event_timeout(PATIENCE).unwrap() {
            Event::Down(d) => {
                assert_eq!(d.reason, ExitReason::Killed);
                assert!(downs.insert(d.reference), "a second Down for one monitor");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refs.iter().all(|r| downs.contains(r)));
}

/// Starts `sleep 100` from inside the calling process (not through the
/// runtime): a stray once the process ends. Its OS pid.
fn start_sleep() -> i32 {
    // Left running on purpose: the node reaps it (the test ends it).
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    child.id() as i32
}

/// Spawns a process that starts a stray and returns (with `leave`, one
/// that lets its strays outlive the node); the stray's OS pid once the
/// process is gone.
fn leave_a_stray(node: &converge::Node, leave: bool) -> i32 {
    let me = node.ctx::<i32>();
    let back = me.mailbox();
    let (_p, r) = converge::Builder::new()
        .leave_strays(leave)
        .spawn_monitor(move |_: Ctx<()>| back.send(start_sleep()).unwrap())
        .unwrap();
    let stray = me.recv_timeout(PATIENCE).unwrap();
    node.ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    stray
}

fn helper_strays_shutdown() {
    let node = converge::init().unwrap();
    let stray = leave_a_stray(&node, false);
    let kept = leave_a_stray(&node, true);
    // The application's own child, started by the node's main thread: not a
    // stray, the application waits for it.
    let mut own = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    say("pids", format!("{stray} {kept} {}", own.id()));
    node.shutdown(Duration::from_secs(2));
    // Still running, and still this process's to wait for.
    let own_after = format!("{:?}", own.try_wait());
    say("shut", "");
    let _ = own.kill();
    let status = own.wait().expect("the application's child was reaped by the node");
    say("own", format!("{own_after} then {status:?}"));
}

/// At the node's shutdown, what processes left behind is stopped, except
/// what a process let outlive the node (`Builder::leave_strays`).
fn strays_end_with_the_node_s_shutdown() {
    let mut h = HelperProcess::start(helper("strays_shutdown"));
    let pids = os_pids(&h.expect("pids"));
    let (stray, kept, own) = (pids[0], pids[1], pids[2]);
    h.expect("shut");
    let stray_gone = util::wait_until(PATIENCE, || !util::os_alive(stray));
    let kept_alive = util::os_alive(kept);
    let own_status = h.expect("own");
    // SAFETY: the kept stray is this test's to end.
    unsafe { libc::kill(kept, libc::SIGKILL) };
    h.child.wait().unwrap();
    assert!(stray_gone, "the stray {stray} outlived the shutdown");
    assert!(kept_alive, "the stray {kept} that was let outlive the node was stopped");
    assert!(
        own_status.starts_with("Ok(None) then"),
        "the application's own child {own} was stopped, or reaped by the node: {own_status}"
    );
    assert!(util::wait_until(PATIENCE, || !util::os_alive(kept)));
}

fn helper_strays_killed() {
    let node = converge::init().unwrap();
    // One left behind by a process that ended (adopted by the node).
    let adopted = leave_a_stray(&node, false);
    assert!(
        util::wait_until(PATIENCE, || node.stats().strays == 1),
        "{:?}",
        node.stats()
    );
    say("pids", format!("{adopted}"));
    let _ = node.ctx::<()>().recv_timeout(PATIENCE * 6);
}

/// A node killed with `SIGKILL` takes with it what its processes started by
/// themselves and left behind: the strays it adopted (its zygote kills them).
fn strays_die_with_a_killed_node() {
    let mut h = HelperProcess::start(helper("strays_killed"));
    let pids = os_pids(&h.expect("pids"));
    assert!(pids.iter().all(|&p| util::os_alive(p)));
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    let gone = all_gone(&pids, Duration::from_secs(2));
    let survivors: Vec<i32> = pids.iter().copied().filter(|&p| util::os_alive(p)).collect();
    for &p in &survivors {
        // SAFETY: ending what the test started.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(gone, "survivors: {survivors:?}");
}

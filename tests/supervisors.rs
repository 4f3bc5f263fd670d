//! Supervisors: restart types and strategies, intensity, shutdown policies,
//! dynamic and nested children, ports as children, and what is observed.

mod util;

use std::time::Duration;

use converge::port::PortBuilder;
use converge::supervisor::{
    ChildInfo, ChildKind, ChildSpec, ChildState, Restart, Shutdown, Strategy, Supervisor, SupervisorError,
    SupervisorRef,
};
use converge::{Ctx, Event, ExitReason, Mailbox, Pid};
use serde::{Deserialize, Serialize};
use util::{PATIENCE, node, wait_until};

fn main() {
    util::run(
        &[
            (
                "one_for_one_restarts_only_the_child",
                one_for_one_restarts_only_the_child,
            ),
            ("one_for_all_restarts_every_child", one_for_all_restarts_every_child),
            (
                "rest_for_one_restarts_the_later_children",
                rest_for_one_restarts_the_later_children,
            ),
            ("restart_types", restart_types),
            (
                "intensity_reached_shuts_the_supervisor_down",
                intensity_reached_shuts_the_supervisor_down,
            ),
            ("shutdown_policies", shutdown_policies),
            (
                "a_child_that_cannot_restart_counts_toward_intensity",
                a_child_that_cannot_restart_counts_toward_intensity,
            ),
            ("dynamic_children", dynamic_children),
            ("nested_supervisors", nested_supervisors),
            ("a_killed_port_child_is_restarted", a_killed_port_child_is_restarted),
            (
                "a_child_that_cannot_start_fails_the_start",
                a_child_that_cannot_start_fails_the_start,
            ),
            (
                "killing_the_supervisor_kills_its_children",
                killing_the_supervisor_kills_its_children,
            ),
            (
                "the_starter_ending_stops_a_linked_supervisor",
                the_starter_ending_stops_a_linked_supervisor,
            ),
            ("restarts_are_counted_by_the_node", restarts_are_counted_by_the_node),
            ("a_zero_restart_period_is_refused", a_zero_restart_period_is_refused),
            (
                "a_port_child_killed_at_its_shutdown_time_is_killed",
                a_port_child_killed_at_its_shutdown_time_is_killed,
            ),
            (
                "a_port_child_s_shutdown_is_the_child_spec_s",
                a_port_child_s_shutdown_is_the_child_spec_s,
            ),
            ("a_named_supervisor_is_registered", a_named_supervisor_is_registered),
            (
                "a_terminated_child_stays_stopped_during_failing_restarts",
                a_terminated_child_stays_stopped_during_failing_restarts,
            ),
        ],
        &[],
    )
}

/// What a test worker is told.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    /// End with this reason.
    End(ExitReason),
    /// Panic.
    Panic,
}

/// A worker that ends when told.
fn worker(ctx: Ctx<Cmd>) -> ExitReason {
    match ctx.recv() {
        Ok(Cmd::End(reason)) => reason,
        Ok(Cmd::Panic) => panic!("told to"),
        Err(_) => ExitReason::Normal,
    }
}

fn worker_fn(ctx: Ctx<Cmd>, (): ()) -> ExitReason {
    worker(ctx)
}

fn children(sup: &SupervisorRef) -> Vec<ChildInfo> {
    sup.which_children().expect("which_children")
}

fn child(sup: &SupervisorRef, id: &str) -> ChildInfo {
    children(sup)
        .into_iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no child {id}"))
}

fn pid_of(sup: &SupervisorRef, id: &str) -> Pid {
    child(sup, id)
        .pid
        .unwrap_or_else(|| panic!("child {id} is not running"))
}

/// Waits until child `id` runs with a pid other than `old`.
fn replaced(sup: &SupervisorRef, id: &str, old: Pid) -> Pid {
    assert!(
        wait_until(PATIENCE, || child(sup, id).pid.is_some_and(|p| p != old)),
        "child {id} was not restarted: {:?}",
        child(sup, id)
    );
    pid_of(sup, id)
}

fn stop(sup: SupervisorRef) {
    let pids: Vec<Pid> = children(&sup).iter().filter_map(|c| c.pid).collect();
    let watched: Vec<_> = pids.iter().map(|&p| node().ctx::<()>().monitor(p)).collect();
    sup.stop().expect("stop");
    for r in watched {
        node()
            .ctx::<()>()
            .recv_down_timeout(r, PATIENCE)
            .expect("each child ends with its supervisor");
    }
    assert!(converge::process_info(sup.pid()).is_none());
}

fn three(strategy: Strategy) -> SupervisorRef {
    Supervisor::new(strategy)
        .intensity(10, Duration::from_secs(10))
        .child(ChildSpec::new("a", worker))
        .child(ChildSpec::new("b", worker))
        .child(ChildSpec::new("c", worker))
        .spawn()
        .expect("supervisor starts")
}

fn one_for_one_restarts_only_the_child() {
    let sup = three(Strategy::OneForOne);
    let (a, b, c) = (pid_of(&sup, "a"), pid_of(&sup, "b"), pid_of(&sup, "c"));
    Mailbox::<Cmd>::from_pid(b).kill();
    let b2 = replaced(&sup, "b", b);
    let info = child(&sup, "b");
    assert_eq!(
        (info.restarts, info.last_exit, info.state),
        (1, Some(ExitReason::Killed), ChildState::Running)
    );
    assert_eq!((pid_of(&sup, "a"), pid_of(&sup, "c")), (a, c));
    // The new process is a working child.
    Mailbox::<Cmd>::from_pid(b2).send(Cmd::Panic).unwrap();
    replaced(&sup, "b", b2);
    assert!(matches!(child(&sup, "b").last_exit, Some(ExitReason::Panic(_))));
    assert_eq!(child(&sup, "b").restarts, 2);
    stop(sup);
}

fn one_for_all_restarts_every_child() {
    let sup = three(Strategy::OneForAll);
    let (a, b, c) = (pid_of(&sup, "a"), pid_of(&sup, "b"), pid_of(&sup, "c"));
    Mailbox::<Cmd>::from_pid(b)
        .send(Cmd::End(ExitReason::Error("boom".into())))
        .unwrap();
    replaced(&sup, "b", b);
    replaced(&sup, "a", a);
    replaced(&sup, "c", c);
    // The others were stopped by the supervisor, with `Shutdown`.
    assert_eq!(child(&sup, "a").last_exit, Some(ExitReason::Shutdown));
    assert_eq!(child(&sup, "b").last_exit, Some(ExitReason::Error("boom".into())));
    assert!(children(&sup).iter().all(|c| c.restarts == 1));
    stop(sup);
    // One crash is one restart, however many children restart with it: the
    // default intensity (1 in 5 s) lets it through.
    let sup = Supervisor::new(Strategy::OneForAll)
        .child(ChildSpec::new("a", worker))
        .child(ChildSpec::new("b", worker))
        .spawn()
        .unwrap();
    let (a, b) = (pid_of(&sup, "a"), pid_of(&sup, "b"));
    Mailbox::<Cmd>::from_pid(a).kill();
    replaced(&sup, "a", a);
    replaced(&sup, "b", b);
    stop(sup);
}

fn rest_for_one_restarts_the_later_children() {
    let sup = three(Strategy::RestForOne);
    let (a, b, c) = (pid_of(&sup, "a"), pid_of(&sup, "b"), pid_of(&sup, "c"));
    Mailbox::<Cmd>::from_pid(b).kill();
    replaced(&sup, "b", b);
    replaced(&sup, "c", c);
    assert_eq!(pid_of(&sup, "a"), a);
    assert_eq!(child(&sup, "a").restarts, 0);
    // Children start in order: the list keeps it.
    let ids: Vec<String> = children(&sup).into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    stop(sup);
}

fn restart_types() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(10))
        .child(ChildSpec::new("permanent", worker))
        .child(ChildSpec::new("transient", worker).restart(Restart::Transient))
        .child(ChildSpec::new("temporary", worker).restart(Restart::Temporary))
        .spawn()
        .unwrap();
    let end = |id: &str, reason: ExitReason| {
        Mailbox::<Cmd>::from_pid(pid_of(&sup, id))
            .send(Cmd::End(reason))
            .unwrap();
    };
    // Permanent: restarted even after a normal end.
    let p = pid_of(&sup, "permanent");
    end("permanent", ExitReason::Normal);
    replaced(&sup, "permanent", p);
    // Transient: not after a normal end or Shutdown, after anything else.
    end("transient", ExitReason::Normal);
    assert!(wait_until(PATIENCE, || child(&sup, "transient").state == ChildState::Stopped));
    assert_eq!(child(&sup, "transient").restarts, 0);
    let t = sup.restart_child("transient").unwrap();
    end("transient", ExitReason::Shutdown);
    assert!(wait_until(PATIENCE, || child(&sup, "transient").state == ChildState::Stopped));
    let t2 = sup.restart_child("transient").unwrap();
    assert_ne!(t, t2);
    end("transient", ExitReason::Exit("bad".into()));
    replaced(&sup, "transient", t2);
    assert_eq!(child(&sup, "transient").restarts, 1);
    // Temporary: never, and forgotten.
    end("temporary", ExitReason::Error("gone".into()));
    assert!(wait_until(PATIENCE, || children(&sup)
        .iter()
        .all(|c| c.id != "temporary")));
    stop(sup);
}

fn intensity_reached_shuts_the_supervisor_down() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(2, Duration::from_secs(60))
        .child(ChildSpec::new("crashy", worker))
        .child(ChildSpec::new("bystander", worker))
        .spawn()
        .unwrap();
    let watch_sup = node().ctx::<()>().monitor(sup.pid());
    let bystander = node().ctx::<()>().monitor(pid_of(&sup, "bystander"));
    let mut last = pid_of(&sup, "crashy");
    for _ in 0..2 {
        Mailbox::<Cmd>::from_pid(last).kill();
        last = replaced(&sup, "crashy", last);
    }
    // The third restart within the period is one too many.
    Mailbox::<Cmd>::from_pid(last).kill();
    let down = node().ctx::<()>().recv_down_timeout(watch_sup, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::Shutdown);
    assert_eq!(
        node()
            .ctx::<()>()
            .recv_down_timeout(bystander, PATIENCE)
            .unwrap()
            .reason,
        ExitReason::Shutdown
    );
    assert!(matches!(sup.which_children(), Err(SupervisorError::Failed(_))));
}

/// A worker that traps exits and takes `linger` to act on a shutdown.
fn stubborn(ctx: Ctx<Cmd>, linger: Duration) -> ExitReason {
    ctx.trap_exits(true);
    loop {
        match ctx.recv_event() {
            Ok(Event::Exit(signal)) if signal.reason == ExitReason::Shutdown => {
                std::thread::sleep(linger);
                return ExitReason::Exit("cleaned up".into());
            }
            Ok(_) => {}
            Err(_) => return ExitReason::Normal,
        }
    }
}

fn shutdown_policies() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::new("plain", worker).shutdown(Shutdown::Timeout(Duration::from_secs(5))))
        .child(ChildSpec::new("brutal", worker).shutdown(Shutdown::BrutalKill))
        .child(
            ChildSpec::new("cleans_up", |ctx: Ctx<Cmd>| stubborn(ctx, Duration::ZERO))
                .shutdown(Shutdown::Timeout(Duration::from_secs(5))),
        )
        .child(
            ChildSpec::new("too_slow", |ctx: Ctx<Cmd>| stubborn(ctx, PATIENCE))
                .shutdown(Shutdown::Timeout(Duration::from_millis(100))),
        )
        .child(
            ChildSpec::new("unlinked", |ctx: Ctx<Cmd>| {
                // No exit signal will reach the supervisor: its monitor does.
                let me = converge::process_info(ctx.pid()).unwrap();
                ctx.unlink(me.parent.unwrap());
                worker(ctx)
            })
            .shutdown(Shutdown::BrutalKill),
        )
        .spawn()
        .unwrap();
    // The trapping children trap before they are asked to stop (else the
    // Shutdown ends them at once, as it should).
    for id in ["cleans_up", "too_slow"] {
        let pid = pid_of(&sup, id);
        assert!(wait_until(PATIENCE, || converge::process_info(pid).is_some_and(|i| i.trap_exits)));
    }
    // Stopping a child is not a crash: nothing is restarted.
    for (id, expected) in [
        ("plain", ExitReason::Shutdown),
        ("brutal", ExitReason::Killed),
        ("cleans_up", ExitReason::Exit("cleaned up".into())),
        ("too_slow", ExitReason::Killed),
        ("unlinked", ExitReason::Killed),
    ] {
        sup.terminate_child(id).unwrap();
        let info = child(&sup, id);
        assert_eq!(
            (info.state, info.last_exit, info.restarts),
            (ChildState::Stopped, Some(expected), 0),
            "{id}"
        );
    }
    stop(sup);
}

fn a_child_that_cannot_restart_counts_toward_intensity() {
    // A program that goes away after its first start.
    let program = std::env::temp_dir().join(format!("converge-sleep-{}", std::process::id()));
    std::fs::copy("/bin/sleep", &program).unwrap();
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(3, Duration::from_secs(60))
        .child(ChildSpec::port("doomed", PortBuilder::new(&program).arg("100")))
        .spawn()
        .unwrap();
    std::fs::remove_file(&program).unwrap();
    let watch = node().ctx::<()>().monitor(sup.pid());
    let first = pid_of(&sup, "doomed");
    Mailbox::<()>::from_pid(first).kill();
    // Each failed start is counted: the fourth restart attempt is one too many.
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(watch, PATIENCE).unwrap().reason,
        ExitReason::Shutdown
    );
}

fn dynamic_children() {
    let sup = Supervisor::new(Strategy::OneForOne).spawn().unwrap();
    assert!(children(&sup).is_empty());
    let w = sup.start_child(ChildSpec::from_fn("fn", worker_fn, ())).unwrap();
    let p = sup
        .start_child(ChildSpec::port("port", PortBuilder::new("sleep").arg("100")))
        .unwrap();
    let kinds: Vec<(String, ChildKind, Option<Pid>)> =
        children(&sup).into_iter().map(|c| (c.id, c.kind, c.pid)).collect();
    assert_eq!(
        kinds,
        [
            ("fn".to_string(), ChildKind::Worker, Some(w)),
            ("port".to_string(), ChildKind::Port, Some(p))
        ]
    );
    assert_eq!(
        sup.start_child(ChildSpec::from_fn("fn", worker_fn, ())),
        Err(SupervisorError::AlreadyPresent("fn".into()))
    );
    assert_eq!(
        sup.start_child(ChildSpec::new("closure", worker)),
        Err(SupervisorError::NotPortable("closure".into()))
    );
    assert_eq!(sup.delete_child("fn"), Err(SupervisorError::Running("fn".into())));
    assert_eq!(
        sup.terminate_child("nobody"),
        Err(SupervisorError::NotFound("nobody".into()))
    );
    sup.terminate_child("fn").unwrap();
    assert_eq!(child(&sup, "fn").state, ChildState::Stopped);
    let w2 = sup.restart_child("fn").unwrap();
    assert_ne!(w, w2);
    assert_eq!(pid_of(&sup, "fn"), w2);
    sup.terminate_child("fn").unwrap();
    sup.delete_child("fn").unwrap();
    assert_eq!(children(&sup).len(), 1);
    // A program that cannot run: a clear error, nothing added.
    match sup.start_child(ChildSpec::port("missing", PortBuilder::new("/nonexistent/program"))) {
        Err(SupervisorError::Start { id, why }) => assert!(id == "missing" && why.contains("No such file"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(children(&sup).len(), 1);
    stop(sup);
}

fn nested_supervisors() {
    let inner = Supervisor::new(Strategy::OneForOne).child(ChildSpec::new("leaf", worker));
    let top = Supervisor::new(Strategy::OneForOne)
        .intensity(5, Duration::from_secs(10))
        .child(ChildSpec::supervisor("inner", inner))
        .child(ChildSpec::new("sibling", worker))
        .spawn()
        .unwrap();
    let inner_pid = pid_of(&top, "inner");
    assert_eq!(child(&top, "inner").kind, ChildKind::Supervisor);
    let inner_ref = supervisor_at(inner_pid);
    let leaf = pid_of(&inner_ref, "leaf");
    let watch_leaf = node().ctx::<()>().monitor(leaf);
    // The inner supervisor dies: its leaf with it, then both come back.
    Mailbox::<()>::from_pid(inner_pid).kill();
    assert_eq!(
        node()
            .ctx::<()>()
            .recv_down_timeout(watch_leaf, PATIENCE)
            .unwrap()
            .reason,
        ExitReason::Killed
    );
    let inner2 = replaced(&top, "inner", inner_pid);
    assert!(pid_of(&supervisor_at(inner2), "leaf") != leaf);
    // Stopping the top stops the whole tree.
    let leaf2 = node().ctx::<()>().monitor(pid_of(&supervisor_at(inner2), "leaf"));
    stop(top);
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(leaf2, PATIENCE).unwrap().reason,
        ExitReason::Shutdown
    );
}

/// The supervisor running as `pid` (a child of kind `Supervisor`).
fn supervisor_at(pid: Pid) -> SupervisorRef {
    SupervisorRef::from_pid(pid)
}

fn a_killed_port_child_is_restarted() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::port("sleeper", PortBuilder::new("sleep").arg("100")))
        .spawn()
        .unwrap();
    let first = pid_of(&sup, "sleeper");
    let ospid = converge::process_info(first).unwrap().os_pid.unwrap();
    // Killed from outside the runtime.
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(ospid, libc::SIGKILL) }, 0);
    replaced(&sup, "sleeper", first);
    assert_eq!(child(&sup, "sleeper").last_exit, Some(ExitReason::Killed));
    assert!(wait_until(PATIENCE, || !util::os_alive(ospid)));
    stop(sup);
}

fn a_child_that_cannot_start_fails_the_start() {
    let me = node().ctx::<Pid>();
    let back = me.mailbox();
    let started = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::new("first", move |ctx: Ctx<Cmd>| {
            back.send(ctx.pid()).unwrap();
            worker(ctx)
        }))
        .child(ChildSpec::port("broken", PortBuilder::new("/nonexistent/program")))
        .child(ChildSpec::new("never", worker))
        .spawn();
    match started {
        Err(SupervisorError::Failed(ExitReason::Error(e))) => {
            assert!(e.contains("child broken failed to start"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // The child started before it was stopped.
    let first = me.recv_timeout(PATIENCE).unwrap();
    assert!(wait_until(PATIENCE, || converge::process_info(first).is_none()));
}

fn killing_the_supervisor_kills_its_children() {
    let sup = three(Strategy::OneForOne);
    let watched: Vec<_> = children(&sup)
        .iter()
        .map(|c| node().ctx::<()>().monitor(c.pid.unwrap()))
        .collect();
    Mailbox::<()>::from_pid(sup.pid()).kill();
    for r in watched {
        assert_eq!(
            node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
            ExitReason::Killed
        );
    }
}

fn the_starter_ending_stops_a_linked_supervisor() {
    let me = node().ctx::<(Pid, Pid)>();
    let back = me.mailbox();
    let (starter, r) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        let sup = Supervisor::new(Strategy::OneForOne)
            .child(ChildSpec::new("w", worker))
            .spawn_link()
            .unwrap();
        back.send((sup.pid(), pid_of(&sup, "w"))).unwrap();
        let _ = ctx.recv();
        ExitReason::Error("starter failed".into())
    })
    .unwrap();
    let (sup, w) = me.recv_timeout(PATIENCE).unwrap();
    let (rs, rw) = (node().ctx::<()>().monitor(sup), node().ctx::<()>().monitor(w));
    starter.send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Error("starter failed".into())
    );
    // The supervisor stops its child and leaves with its starter's reason.
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rw, PATIENCE).unwrap().reason,
        ExitReason::Shutdown
    );
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rs, PATIENCE).unwrap().reason,
        ExitReason::Error("starter failed".into())
    );
}

fn restarts_are_counted_by_the_node() {
    let before = node().stats().restarts;
    let sup = three(Strategy::OneForAll);
    let a = pid_of(&sup, "a");
    Mailbox::<Cmd>::from_pid(a).kill();
    replaced(&sup, "a", a);
    assert!(wait_until(PATIENCE, || children(&sup).iter().all(|c| c.pid.is_some())));
    assert_eq!(node().stats().restarts - before, 3);
    let killed_before = node().stats().exits.get("killed").copied().unwrap_or(0);
    assert!(killed_before >= 1);
    stop(sup);
}

/// OTP refuses a restart period that is not a positive integer: with a zero
/// period no restart would count toward the intensity, and a child that
/// cannot start would be retried forever. Refused at the start, nested too,
/// and nothing is left running.
fn a_zero_restart_period_is_refused() {
    let zero = Supervisor::new(Strategy::OneForOne)
        .intensity(3, Duration::ZERO)
        .child(ChildSpec::new("idle", |ctx: Ctx<()>| {
            let _ = ctx.recv_timeout(PATIENCE);
        }));
    match zero.clone().spawn() {
        Err(SupervisorError::Invalid(why)) => assert!(why.contains("period is zero"), "{why}"),
        other => panic!("a zero period was accepted: {other:?}"),
    }
    assert!(node().processes().is_empty(), "{:?}", node().processes());
    let outer = Supervisor::new(Strategy::OneForOne).child(ChildSpec::supervisor("inner", zero));
    match outer.spawn() {
        Err(SupervisorError::Failed(_)) | Err(SupervisorError::Start { .. }) => {}
        other => panic!("a nested zero period was accepted: {other:?}"),
    }
    assert!(wait_until(PATIENCE, || node().processes().is_empty()));
}

/// A shell that ignores SIGTERM (as the programs it starts do) and waits.
fn stubborn_port() -> PortBuilder {
    PortBuilder::new("sh").args(["-c", "trap '' TERM; sleep 30"])
}

/// Waits (bounded) until the shell of port `pid` has started its child:
/// its traps are set by then.
fn wait_for_shell_child(pid: Pid) {
    assert!(
        wait_until(PATIENCE, || {
            let Some(os) = converge::process_info(pid).and_then(|i| i.os_pid) else {
                return false;
            };
            std::fs::read_to_string(format!("/proc/{os}/task/{os}/children")).is_ok_and(|c| !c.trim().is_empty())
        }),
        "the shell of {pid} never started its child"
    );
}

/// OTP says `killed` of a child killed at the end of its shutdown time, for
/// every kind of child: a port child too, in its Down and its `last_exit`.
fn a_port_child_killed_at_its_shutdown_time_is_killed() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::port("stubborn", stubborn_port()).shutdown(Shutdown::Timeout(Duration::from_millis(200))))
        .spawn()
        .unwrap();
    let port = pid_of(&sup, "stubborn");
    wait_for_shell_child(port);
    let watch = node().ctx::<()>().monitor(port);
    sup.terminate_child("stubborn").unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(watch, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
    assert_eq!(child(&sup, "stubborn").last_exit, Some(ExitReason::Killed));
    stop(sup);
}

/// The child spec's shutdown wins over the port's own shutdown time: a port
/// given 100 ms of its own waits the spec's 600 ms before it is killed, and
/// `Infinity` waits for as long as the program takes to stop.
fn a_port_child_s_shutdown_is_the_child_spec_s() {
    let quick = stubborn_port().shutdown_timeout(Duration::from_millis(100));
    // Stops 400 ms after its SIGTERM, with code 0.
    let slow_to_stop = PortBuilder::new("sh")
        .args(["-c", "trap 'sleep 0.4; exit 0' TERM; while :; do sleep 0.05; done"])
        .shutdown_timeout(Duration::from_millis(100));
    let sup = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::port("timeout", quick).shutdown(Shutdown::Timeout(Duration::from_millis(600))))
        .child(ChildSpec::port("infinity", slow_to_stop).shutdown(Shutdown::Infinity))
        .spawn()
        .unwrap();
    wait_for_shell_child(pid_of(&sup, "timeout"));
    wait_for_shell_child(pid_of(&sup, "infinity"));
    let started = std::time::Instant::now();
    sup.terminate_child("timeout").unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "killed after {waited:?}");
    assert_eq!(child(&sup, "timeout").last_exit, Some(ExitReason::Killed));
    let started = std::time::Instant::now();
    sup.terminate_child("infinity").unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "stopped after {waited:?}");
    let last = child(&sup, "infinity").last_exit;
    assert_ne!(last, Some(ExitReason::Killed), "it was not killed");
    stop(sup);
}

/// `Supervisor::name` registers the supervisor, as OTP's
/// `start_link({local, Name}, ...)`; a name taken refuses the start, and
/// none of its children starts.
fn a_named_supervisor_is_registered() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let spec = |back: Mailbox<String>| {
        Supervisor::new(Strategy::OneForOne)
            .name("the-supervisor")
            .child(ChildSpec::new("greeter", move |ctx: Ctx<()>| {
                back.send("started".into()).unwrap();
                let _ = ctx.recv_timeout(PATIENCE);
            }))
    };
    let sup = spec(back).spawn().unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "started");
    assert_eq!(converge::whereis("the-supervisor"), Some(sup.pid()));
    match spec(back).spawn() {
        Err(SupervisorError::NameTaken { name, holder }) => {
            assert_eq!((name.as_str(), holder), ("the-supervisor", sup.pid()));
        }
        other => panic!("a second supervisor took the name: {other:?}"),
    }
    assert!(matches!(
        me.recv_timeout(Duration::from_millis(200)),
        Err(converge::RecvTimeoutError::Timeout)
    ));
    stop(sup);
    assert!(wait_until(PATIENCE, || converge::whereis("the-supervisor").is_none()));
}

/// A child that cannot start again is retried, each attempt counted; a
/// `terminate_child` in the middle of it stops the retries for good.
fn a_terminated_child_stays_stopped_during_failing_restarts() {
    // A program that goes away after its first start.
    let program = std::env::temp_dir().join(format!("converge-sleep-t-{}", std::process::id()));
    std::fs::copy("/bin/sleep", &program).unwrap();
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(1_000_000, Duration::from_secs(60))
        .child(ChildSpec::port("doomed", PortBuilder::new(&program).arg("100")))
        .spawn()
        .unwrap();
    std::fs::remove_file(&program).unwrap();
    Mailbox::<()>::from_pid(pid_of(&sup, "doomed")).kill();
    // It is being retried now; stop it.
    assert!(wait_until(PATIENCE, || child(&sup, "doomed").pid.is_none()));
    sup.terminate_child("doomed").unwrap();
    // It stays stopped (watched for a while: the retries came every few ms).
    let until = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < until {
        let info = child(&sup, "doomed");
        assert_eq!(
            (info.state, info.pid),
            (ChildState::Stopped, None),
            "restarted after terminate_child"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(sup);
}

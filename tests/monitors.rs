//! Monitors: one-way, stackable, exactly one `Down` each, `NoProc` for a
//! process that is already gone, and `demonitor`.

mod util;

use converge::{Ctx, Event, ExitReason, Mailbox};
use util::{PATIENCE, node};

fn main() {
    util::run(
        &[
            ("monitors_stack", monitors_stack),
            (
                "monitoring_a_dead_process_is_noproc_at_once",
                monitoring_a_dead_process_is_noproc_at_once,
            ),
            ("demonitor_removes_the_down", demonitor_removes_the_down),
            (
                "no_down_after_demonitor_on_the_main_thread",
                no_down_after_demonitor_on_the_main_thread,
            ),
            (
                "no_down_after_demonitor_in_a_process",
                no_down_after_demonitor_in_a_process,
            ),
            (
                "demonitor_of_many_right_after_a_kill_flushes_them_all",
                demonitor_of_many_right_after_a_kill_flushes_them_all,
            ),
            (
                "demonitor_right_after_spawn_monitor_in_a_process",
                demonitor_right_after_spawn_monitor_in_a_process,
            ),
            ("monitors_are_one_way", monitors_are_one_way),
            ("processes_monitor_each_other", processes_monitor_each_other),
            (
                "exactly_one_down_per_monitor_under_load",
                exactly_one_down_per_monitor_under_load,
            ),
        ],
        &[],
    )
}

fn idle(ctx: Ctx<()>) {
    let _ = ctx.recv_timeout(PATIENCE);
}

fn monitors_stack() {
    let p = converge::spawn(idle).unwrap();
    let r1 = node().ctx::<()>().monitor(p);
    let r2 = node().ctx::<()>().monitor(p);
    assert_ne!(r1, r2);
    p.exit(ExitReason::Exit("bye".into()));
    let d2 = node().ctx::<()>().recv_down_timeout(r2, PATIENCE).unwrap();
    let d1 = node().ctx::<()>().recv_down_timeout(r1, PATIENCE).unwrap();
    assert_eq!((d1.pid, d2.pid), (p.pid(), p.pid()));
    assert_eq!(d1.reason, ExitReason::Exit("bye".into()));
    assert_eq!(d2.reason, ExitReason::Exit("bye".into()));
}

fn monitoring_a_dead_process_is_noproc_at_once() {
    let (p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    let again = node().ctx::<()>().monitor(p);
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(again, PATIENCE).unwrap().reason,
        ExitReason::NoProc
    );
}

fn demonitor_removes_the_down() {
    let p = converge::spawn(idle).unwrap();
    let r1 = node().ctx::<()>().monitor(p);
    let r2 = node().ctx::<()>().monitor(p);
    node().ctx::<()>().demonitor(r1);
    p.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r2, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
    // r2's Down came after the kill; a Down for r1 would be queued by now.
    let me = node().ctx::<()>();
    assert!(matches!(me.try_recv_event(), Err(converge::TryRecvError::Empty)));
}

/// Waits (bounded) until the node no longer knows `p`: its `Down`s are sent.
fn wait_gone(p: converge::Pid) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while converge::process_info(p).is_some() {
        assert!(std::time::Instant::now() < deadline, "{p} never ended");
        std::thread::yield_now();
    }
}

/// After `demonitor` returns, no `Down` for its reference is received:
/// checked behind a barrier, the `NoProc` of a fresh monitor of a dead
/// process, which the node sends after anything it sent before.
fn assert_no_down_after(ctx: &Ctx<()>, r: converge::MonitorRef, dead: converge::Pid) -> Result<(), String> {
    let barrier = ctx.monitor(dead);
    ctx.recv_down_timeout(barrier, PATIENCE)
        .map_err(|e| format!("no barrier Down: {e:?}"))?;
    match ctx.recv_down_timeout(r, std::time::Duration::ZERO) {
        Ok(d) => Err(format!("a Down after demonitor returned: {d:?}")),
        Err(_) => Ok(()),
    }
}

/// Erlang's `demonitor(Ref, [flush, info])`: whether the Down was sent
/// already (the process is gone) or not, none is received after it returns,
/// and the answer says which.
fn no_down_after_demonitor_on_the_main_thread() {
    let me = node().ctx::<()>();
    let (mut active, mut flushed) = (0, 0);
    for i in 0..200 {
        let p = converge::spawn(idle).unwrap();
        let r = me.monitor(p);
        p.kill();
        // Half the time the Down is surely sent (the node forgot the process);
        // else the demonitor races the exit.
        if i % 2 == 0 {
            wait_gone(p.pid());
        }
        let was_active = me.demonitor(r);
        if i % 2 == 0 {
            assert!(!was_active, "round {i}: the monitor of a process gone was still active");
        }
        if was_active {
            active += 1
        } else {
            flushed += 1
        }
        assert_no_down_after(&me, r, p.pid()).unwrap();
    }
    assert!(flushed >= 100, "{flushed} Downs flushed, {active} monitors removed");
    // A monitor of a live process is active when removed.
    let p = converge::spawn(idle).unwrap();
    let r = me.monitor(p);
    assert!(me.demonitor(r));
    assert!(!me.demonitor(r), "a second demonitor finds nothing");
    p.kill();
}

fn no_down_after_demonitor_in_a_process() {
    rounds_in_a_process(100, |ctx, i| {
        let p = converge::spawn(idle).unwrap();
        let r = ctx.monitor(p);
        p.kill();
        if i % 2 == 0 {
            wait_gone(p.pid());
        }
        let was_active = ctx.demonitor(r);
        if i % 2 == 0 && was_active {
            return Err("still active".into());
        }
        assert_no_down_after(ctx, r, p.pid())
    });
}

/// Runs `round` `rounds` times in a process; the first failure, with its
/// round, fails the test.
fn rounds_in_a_process(rounds: u32, round: fn(&Ctx<()>, u32) -> Result<(), String>) {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let (_w, rw) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        let failed = (0..rounds).find_map(|i| round(&ctx, i).err().map(|e| format!("round {i}: {e}")));
        back.send(failed.unwrap_or_else(|| "ok".into())).unwrap();
    })
    .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE * 4).unwrap(), "ok");
    node().ctx::<()>().recv_down_timeout(rw, PATIENCE).unwrap();
}

/// 100 monitors of processes killed an instant before are removed: no Down
/// of any of them is received.
fn demonitor_of_many_right_after_a_kill_flushes_them_all() {
    let me = node().ctx::<()>();
    for _round in 0..5 {
        let procs: Vec<_> = (0..20).map(|_| converge::spawn(idle).unwrap()).collect();
        let refs: Vec<_> = procs
            .iter()
            .flat_map(|&p| (0..5).map(move |_| (p, node().ctx::<()>().monitor(p))))
            .collect();
        for p in &procs {
            p.kill();
        }
        for &(_, r) in &refs {
            me.demonitor(r);
        }
        for &(p, r) in &refs {
            assert_no_down_after(&me, r, p.pid()).unwrap();
        }
        // Nothing else is left behind either.
        assert!(matches!(me.try_recv_event(), Err(converge::TryRecvError::Empty)));
    }
}

/// In a process, `spawn_monitor` registers the child (and its monitor) on a
/// connection of its own, and `demonitor` goes on the process's control
/// connection: the demonitor must still find the monitor, and no `Down`
/// come after it.
fn demonitor_right_after_spawn_monitor_in_a_process() {
    rounds_in_a_process(100, |ctx, _| {
        let (p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
        ctx.demonitor(r);
        assert_no_down_after(ctx, r, p.pid())
    });
}

fn monitors_are_one_way() {
    // The watched process is not affected when its watcher dies.
    let me = node().ctx::<()>();
    let back = me.mailbox();
    let target = converge::spawn(idle).unwrap();
    let (_w, rw) = converge::spawn_monitor(move |ctx: Ctx<()>| -> Result<(), String> {
        ctx.monitor(target);
        back.send(()).unwrap();
        Err("watcher fails".into())
    })
    .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    node().ctx::<()>().recv_down_timeout(rw, PATIENCE).unwrap();
    let rt = node().ctx::<()>().monitor(target);
    target.send(()).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(rt, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

fn processes_monitor_each_other() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let target = converge::spawn(idle).unwrap();
    converge::spawn(move |ctx: Ctx<()>| {
        let r = ctx.monitor(target);
        back.send("watching".into()).unwrap();
        match ctx.recv_event_timeout(PATIENCE).unwrap() {
            Event::Down(d) if d.reference == r => back.send(format!("{}", d.reason)).unwrap(),
            other => back.send(format!("unexpected {other:?}")).unwrap(),
        }
    })
    .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "watching");
    Mailbox::<()>::from_pid(target.pid()).kill();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "killed");
}

/// Many processes, each watched twice, die in several ways at once: every
/// monitor gets exactly one Down with the right reason.
fn exactly_one_down_per_monitor_under_load() {
    let mut expect = Vec::new();
    for i in 0..60u32 {
        let p = converge::spawn(move |ctx: Ctx<()>| -> Result<(), String> {
            let _ = ctx.recv_timeout(PATIENCE);
            match i % 3 {
                0 => Ok(()),
                1 => Err(format!("e{i}")),
                _ => panic!("p{i}"),
            }
        })
        .unwrap();
        let r1 = node().ctx::<()>().monitor(p);
        let r2 = node().ctx::<()>().monitor(p);
        let want = match i % 4 {
            3 => {
                p.kill();
                ExitReason::Killed
            }
            _ => {
                p.send(()).unwrap();
                match i % 3 {
                    0 => ExitReason::Normal,
                    1 => ExitReason::Error(format!("e{i}")),
                    _ => ExitReason::Panic(format!("p{i}")),
                }
            }
        };
        expect.push((r1, want.clone()));
        expect.push((r2, want));
    }
    let me = node().ctx::<()>();
    let mut downs = std::collections::HashMap::new();
    while downs.len() < expect.len() {
        match me.recv_event_timeout(PATIENCE).unwrap() {
            Event::Down(d) => assert!(
                downs.insert(d.reference, d.reason).is_none(),
                "two Downs for one monitor"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    for (r, want) in expect {
        assert_eq!(downs[&r], want);
    }
    assert!(matches!(me.try_recv_event(), Err(converge::TryRecvError::Empty)));
}

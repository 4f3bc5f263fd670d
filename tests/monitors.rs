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

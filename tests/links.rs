//! Links and exit signals, with OTP's rules: abnormal exits travel both ways,
//! `Normal` does not, trapping turns signals into messages, `kill` cannot be
//! trapped but a `Killed` reason arriving through a link can.

mod util;

use converge::{Ctx, Event, ExitReason, ExitSignal, Mailbox, Pid};
use serde::{Deserialize, Serialize};
use util::{PATIENCE, node};

fn main() {
    util::run(
        &[
            (
                "abnormal_exit_kills_the_linked_process",
                abnormal_exit_kills_the_linked_process,
            ),
            ("links_are_bidirectional", links_are_bidirectional),
            ("normal_exit_does_not_propagate", normal_exit_does_not_propagate),
            ("trapping_turns_exits_into_messages", trapping_turns_exits_into_messages),
            ("kill_cannot_be_trapped", kill_cannot_be_trapped),
            (
                "killed_through_a_link_can_be_trapped",
                killed_through_a_link_can_be_trapped,
            ),
            ("exit_signal_with_a_reason", exit_signal_with_a_reason),
            (
                "exit_signal_normal_is_ignored_unless_trapped",
                exit_signal_normal_is_ignored_unless_trapped,
            ),
            ("unlink_stops_propagation", unlink_stops_propagation),
            ("link_to_a_dead_process_fails", link_to_a_dead_process_fails),
            ("spawn_link_is_atomic", spawn_link_is_atomic),
            ("a_chain_of_links_fails_together", a_chain_of_links_fails_together),
            ("the_main_thread_receives_exits", the_main_thread_receives_exits),
            (
                "a_new_process_links_before_its_spawner_is_known",
                a_new_process_links_before_its_spawner_is_known,
            ),
            (
                "a_kill_right_after_a_nested_spawn_lands",
                a_kill_right_after_a_nested_spawn_lands,
            ),
        ],
        &[],
    )
}

/// What a test process can be told to do.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    Link(Pid),
    Unlink(Pid),
    Trap(bool),
    Exit(ExitReason),
}

/// A process that obeys commands, reports every event to `report`, and
/// acknowledges each command (so the test knows it took effect).
fn agent(report: Mailbox<String>) -> impl FnOnce(Ctx<Cmd>) -> ExitReason {
    move |ctx: Ctx<Cmd>| loop {
        match ctx.recv_event() {
            Ok(Event::Message(Cmd::Link(p))) => {
                ctx.link(p).unwrap();
                report.send("ok".into()).unwrap();
            }
            Ok(Event::Message(Cmd::Unlink(p))) => {
                ctx.unlink(p);
                report.send("ok".into()).unwrap();
            }
            Ok(Event::Message(Cmd::Trap(on))) => {
                ctx.trap_exits(on);
                report.send("ok".into()).unwrap();
            }
            Ok(Event::Message(Cmd::Exit(r))) => return r,
            Ok(Event::Exit(ExitSignal { from, reason })) => {
                report.send(format!("exit {} {reason}", from.serial())).unwrap();
            }
            Ok(other) => report.send(format!("{other:?}")).unwrap(),
            Err(_) => return ExitReason::Normal,
        }
    }
}

struct Agents {
    me: Ctx<String>,
}

impl Agents {
    fn new() -> Agents {
        Agents { me: node().ctx() }
    }

    fn spawn(&self) -> (Mailbox<Cmd>, converge::MonitorRef) {
        converge::spawn_monitor(agent(self.me.mailbox())).unwrap()
    }

    fn tell(&self, to: Mailbox<Cmd>, cmd: Cmd) {
        to.send(cmd).unwrap();
        assert_eq!(self.me.recv_timeout(PATIENCE).unwrap(), "ok");
    }

    fn next(&self) -> String {
        self.me.recv_timeout(PATIENCE).unwrap()
    }
}

fn down(r: converge::MonitorRef) -> ExitReason {
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason
}

fn abnormal_exit_kills_the_linked_process() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(x, Cmd::Link(y.pid()));
    y.send(Cmd::Exit(ExitReason::Exit("y broke".into()))).unwrap();
    assert_eq!(down(ry), ExitReason::Exit("y broke".into()));
    assert_eq!(down(rx), ExitReason::Exit("y broke".into()));
}

fn links_are_bidirectional() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(x, Cmd::Link(y.pid()));
    x.send(Cmd::Exit(ExitReason::Error("x broke".into()))).unwrap();
    assert_eq!(down(rx), ExitReason::Error("x broke".into()));
    assert_eq!(down(ry), ExitReason::Error("x broke".into()));
}

fn normal_exit_does_not_propagate() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(x, Cmd::Link(y.pid()));
    y.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(ry), ExitReason::Normal);
    // x is alive and obeys.
    a.tell(x, Cmd::Trap(true));
    x.kill();
    assert_eq!(down(rx), ExitReason::Killed);
}

fn trapping_turns_exits_into_messages() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    let (z, rz) = a.spawn();
    a.tell(x, Cmd::Trap(true));
    a.tell(x, Cmd::Link(y.pid()));
    a.tell(x, Cmd::Link(z.pid()));
    y.send(Cmd::Exit(ExitReason::Error("bad".into()))).unwrap();
    assert_eq!(down(ry), ExitReason::Error("bad".into()));
    assert_eq!(a.next(), format!("exit {} error: bad", y.pid().serial()));
    // A trapping process also hears of normal exits.
    z.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(rz), ExitReason::Normal);
    assert_eq!(a.next(), format!("exit {} normal", z.pid().serial()));
    x.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(rx), ExitReason::Normal);
}

fn kill_cannot_be_trapped() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    a.tell(x, Cmd::Trap(true));
    x.kill();
    assert_eq!(down(rx), ExitReason::Killed);
}

fn killed_through_a_link_can_be_trapped() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(x, Cmd::Trap(true));
    a.tell(x, Cmd::Link(y.pid()));
    y.kill();
    assert_eq!(down(ry), ExitReason::Killed);
    assert_eq!(a.next(), format!("exit {} killed", y.pid().serial()));
    x.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(rx), ExitReason::Normal);
}

fn exit_signal_with_a_reason() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(y, Cmd::Trap(true));
    x.exit(ExitReason::Exit("go away".into()));
    assert_eq!(down(rx), ExitReason::Exit("go away".into()));
    y.exit(ExitReason::Shutdown);
    assert_eq!(a.next(), format!("exit {} shutdown", node().pid().serial()));
    y.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(ry), ExitReason::Normal);
}

fn exit_signal_normal_is_ignored_unless_trapped() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    x.exit(ExitReason::Normal);
    // Still alive: it obeys the next command.
    a.tell(x, Cmd::Trap(true));
    x.exit(ExitReason::Normal);
    assert_eq!(a.next(), format!("exit {} normal", node().pid().serial()));
    x.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(rx), ExitReason::Normal);
}

fn unlink_stops_propagation() {
    let a = Agents::new();
    let (x, rx) = a.spawn();
    let (y, ry) = a.spawn();
    a.tell(x, Cmd::Link(y.pid()));
    a.tell(x, Cmd::Unlink(y.pid()));
    y.send(Cmd::Exit(ExitReason::Error("alone".into()))).unwrap();
    assert_eq!(down(ry), ExitReason::Error("alone".into()));
    a.tell(x, Cmd::Trap(false));
    x.send(Cmd::Exit(ExitReason::Normal)).unwrap();
    assert_eq!(down(rx), ExitReason::Normal);
}

fn link_to_a_dead_process_fails() {
    let (dead, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
    down(r);
    assert_eq!(node().ctx::<()>().link(dead), Err(converge::LinkError(dead.pid())));
    let got = converge::spawn_join(move |ctx: Ctx<()>| ctx.link(dead.pid()).is_err())
        .unwrap()
        .join()
        .unwrap();
    assert!(got);
}

fn spawn_link_is_atomic() {
    // A child that fails at once still takes its linked parent with it.
    for _ in 0..10 {
        let (_p, rp) = converge::spawn_monitor(|ctx: Ctx<()>| {
            converge::spawn_link(|_: Ctx<()>| -> Result<(), String> { Err("instant".into()) }).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
        assert_eq!(down(rp), ExitReason::Error("instant".into()));
    }
}

fn a_chain_of_links_fails_together() {
    let a = Agents::new();
    let agents: Vec<_> = (0..5).map(|_| a.spawn()).collect();
    for w in agents.windows(2) {
        a.tell(w[0].0, Cmd::Link(w[1].0.pid()));
    }
    agents[4]
        .0
        .send(Cmd::Exit(ExitReason::Panic("end of chain".into())))
        .unwrap();
    for (_, r) in agents {
        assert_eq!(down(r), ExitReason::Panic("end of chain".into()));
    }
}

fn the_main_thread_receives_exits() {
    let child = converge::spawn_link(|_: Ctx<()>| -> Result<(), String> { Err("child failed".into()) }).unwrap();
    match node().ctx::<()>().recv_event_timeout(PATIENCE).unwrap() {
        Event::Exit(e) => {
            assert_eq!(e.from, child.pid());
            assert_eq!(e.reason, ExitReason::Error("child failed".into()));
        }
        other => panic!("expected an exit message, got {other:?}"),
    }
}

/// A process spawned from inside a process links a child of its own at once:
/// the node may read the grandchild's registration before the child's, and
/// the link must hold anyway. (Found by `examples/link_crash.rs`.)
fn a_new_process_links_before_its_spawner_is_known() {
    for _ in 0..30 {
        let reason = converge::spawn_join(|ctx: Ctx<()>| {
            let (_p, r) = converge::spawn_monitor(|ctx: Ctx<()>| {
                converge::spawn_link(|_: Ctx<()>| -> Result<(), String> { Err("w".into()) }).unwrap();
                let _ = ctx.recv_timeout(PATIENCE);
            })
            .unwrap();
            ctx.recv_down_timeout(r, PATIENCE).unwrap().reason
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(reason, ExitReason::Error("w".into()));
    }
}

/// An exit signal for a process whose registration is still in flight is
/// not lost.
fn a_kill_right_after_a_nested_spawn_lands() {
    for _ in 0..30 {
        let reason = converge::spawn_join(|ctx: Ctx<()>| {
            let (p, r) = converge::spawn_monitor(|ctx: Ctx<()>| {
                let _ = ctx.recv_timeout(PATIENCE);
            })
            .unwrap();
            p.kill();
            ctx.recv_down_timeout(r, PATIENCE).unwrap().reason
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(reason, ExitReason::Killed);
    }
}

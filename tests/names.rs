//! Registered names: register, whereis, removed on exit, one holder at a time.

mod util;

use converge::{Ctx, ExitReason, RegisterError};
use util::{PATIENCE, node};

fn main() {
    util::run(
        &[
            ("register_and_whereis", register_and_whereis),
            ("a_name_is_removed_on_exit", a_name_is_removed_on_exit),
            ("a_name_has_one_holder", a_name_has_one_holder),
            ("unregister", unregister),
            ("a_process_registers_itself", a_process_registers_itself),
            ("registering_a_dead_process_fails", registering_a_dead_process_fails),
            ("monitor_by_name_names_the_process", monitor_by_name_names_the_process),
            (
                "monitor_of_a_name_nobody_holds_is_noproc_at_once",
                monitor_of_a_name_nobody_holds_is_noproc_at_once,
            ),
            (
                "monitor_by_name_watches_the_holder_at_the_time",
                monitor_by_name_watches_the_holder_at_the_time,
            ),
        ],
        &[],
    )
}

fn idle(ctx: Ctx<()>) {
    let _ = ctx.recv_timeout(PATIENCE);
}

fn register_and_whereis() {
    let p = converge::spawn(idle).unwrap();
    converge::register("alpha", p).unwrap();
    assert_eq!(converge::whereis("alpha"), Some(p.pid()));
    assert_eq!(converge::whereis("beta"), None);
    let seen = converge::spawn_join(|_: Ctx<()>| converge::whereis("alpha"))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(seen, Some(p.pid()));
    p.kill();
}

fn a_name_is_removed_on_exit() {
    let (p, r) = converge::spawn_monitor(idle).unwrap();
    converge::register("short-lived", p).unwrap();
    p.kill();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(converge::whereis("short-lived"), None);
    // The name is free again.
    let q = converge::spawn(idle).unwrap();
    converge::register("short-lived", q).unwrap();
    assert_eq!(converge::whereis("short-lived"), Some(q.pid()));
    q.kill();
}

fn a_name_has_one_holder() {
    let p = converge::spawn(idle).unwrap();
    let q = converge::spawn(idle).unwrap();
    converge::register("one", p).unwrap();
    assert_eq!(converge::register("one", q), Err(RegisterError::Taken("one".into())));
    assert_eq!(converge::whereis("one"), Some(p.pid()));
    p.kill();
    q.kill();
}

fn unregister() {
    let p = converge::spawn(idle).unwrap();
    converge::register("gone-soon", p).unwrap();
    converge::unregister("gone-soon");
    assert_eq!(converge::whereis("gone-soon"), None);
    p.kill();
}

fn a_process_registers_itself() {
    let me = node().ctx::<()>();
    let back = me.mailbox();
    let p = converge::spawn(move |ctx: Ctx<()>| {
        ctx.register("self-made").unwrap();
        back.send(()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(converge::whereis("self-made"), Some(p.pid()));
    p.kill();
}

fn registering_a_dead_process_fails() {
    let (p, r) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(converge::register("ghost", p), Err(RegisterError::NoProc(p.pid())));
}

/// Erlang's `monitor(process, Name)`: the `Down` names the process.
fn monitor_by_name_names_the_process() {
    let p = converge::spawn(idle).unwrap();
    converge::register("watched-by-name", p).unwrap();
    let me = node().ctx::<()>();
    let r = me.monitor_name("watched-by-name");
    p.exit(ExitReason::Exit("done".into()));
    let down = me.recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.pid, p.pid());
    assert_eq!(down.reason, ExitReason::Exit("done".into()));
    assert_eq!(down.name.as_deref(), Some("watched-by-name"));
    // A monitor by pid carries no name.
    let (_q, rq) = converge::spawn_monitor(|_: Ctx<()>| {}).unwrap();
    assert_eq!(me.recv_down_timeout(rq, PATIENCE).unwrap().name, None);
}

fn monitor_of_a_name_nobody_holds_is_noproc_at_once() {
    let me = node().ctx::<()>();
    let r = me.monitor_name("nobody-holds-this");
    let down = me.recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::NoProc);
    assert_eq!(down.name.as_deref(), Some("nobody-holds-this"));
    // In a process too.
    let got = converge::spawn_join(|ctx: Ctx<()>| {
        let r = ctx.monitor_name("nobody-holds-this");
        ctx.recv_down_timeout(r, PATIENCE)
            .map(|d| (d.reason, d.name))
            .map_err(|e| e.to_string())
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(got, Ok((ExitReason::NoProc, Some("nobody-holds-this".into()))));
}

/// The name is resolved when the monitor is placed: its next holder is not
/// watched.
fn monitor_by_name_watches_the_holder_at_the_time() {
    let first = converge::spawn(idle).unwrap();
    converge::register("held-in-turn", first).unwrap();
    let me = node().ctx::<()>();
    let r = me.monitor_name("held-in-turn");
    converge::unregister("held-in-turn");
    let second = converge::spawn(idle).unwrap();
    converge::register("held-in-turn", second).unwrap();
    second.kill();
    first.kill();
    let down = me.recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.pid, first.pid());
    assert_eq!(down.reason, ExitReason::Killed);
}

//! Registered names: register, whereis, removed on exit, one holder at a time.

mod util;

use converge::{Ctx, RegisterError};
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

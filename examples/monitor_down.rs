//! Every way a process can end, each observed once, with its reason: the
//! promise at the heart of converge.
//!
//! Run with `cargo run --example monitor_down`.

use std::time::Duration;

use converge::{Ctx, ExitReason, IntoExitReason};

/// The body of a process that ends one way or another.
type Body = fn(Ctx<()>) -> ExitReason;

fn main() -> Result<(), converge::Error> {
    let node = converge::init()?;
    let cases: [(&str, Body); 7] = [
        ("returns Ok(())", |_| Ok::<(), String>(()).into_exit_reason()),
        ("returns Err", |_| Err::<(), _>("disk full").into_exit_reason()),
        ("panics", |_| panic!("index out of bounds")),
        ("exits with a reason", |ctx| {
            ctx.exit(ExitReason::Exit("done early".into()))
        }),
        ("calls process::exit(3)", |_| std::process::exit(3)),
        ("segfaults", |_| segfault()),
        ("aborts", |_| std::process::abort()),
    ];
    let mut watched = Vec::new();
    for (what, body) in cases {
        let (_mailbox, watch) = converge::spawn_monitor(body)?;
        watched.push((what, watch));
    }
    // One more, killed from the outside while it waits.
    let (sleeper, watch) = converge::spawn_monitor(|ctx: Ctx<()>| {
        let _ = ctx.recv_timeout(Duration::from_secs(60));
    })?;
    watched.push(("is killed", watch));
    sleeper.kill();

    for (what, watch) in watched {
        let down = node.ctx::<()>().recv_down_timeout(watch, Duration::from_secs(10))?;
        println!("{what:>24} -> {}", down.reason);
    }
    println!("exits by kind: {:?}", node.stats().exits);
    Ok(())
}

/// Writes through a null pointer: the kernel ends the process with SIGSEGV.
fn segfault() -> ExitReason {
    let null: *mut u8 = std::ptr::null_mut();
    // SAFETY: not safe at all: this process is meant to die of SIGSEGV.
    unsafe { null.write_volatile(1) };
    unreachable!()
}

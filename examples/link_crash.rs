//! Links: a worker's crash takes its linked partner down with the same
//! reason, while a supervisor-like process that traps exits survives and is
//! told why.
//!
//! Run with `cargo run --example link_crash`.

use std::time::Duration;

use converge::{Builder, Ctx, Event};

fn main() -> Result<(), converge::Error> {
    let node = converge::init()?;
    let report = node.ctx::<String>();
    let out = report.mailbox();

    // The watcher traps exits: a linked process's death is a message to it.
    let watcher = Builder::new().trap_exits(true).spawn(move |ctx: Ctx<()>| {
        // The partner is linked to the worker; the watcher to the partner.
        let partner = converge::spawn(|ctx: Ctx<()>| {
            let worker = converge::spawn_link(|_: Ctx<()>| -> Result<(), String> {
                std::thread::sleep(Duration::from_millis(100));
                Err("could not parse config.toml".into())
            })
            .expect("spawn the worker");
            let _ = worker;
            let _ = ctx.recv_timeout(Duration::from_secs(10));
        })
        .expect("spawn the partner");
        ctx.link(partner).expect("the partner is alive");
        out.send(format!("watching {}", partner.pid())).unwrap();
        while let Ok(event) = ctx.recv_event_timeout(Duration::from_secs(10)) {
            if let Event::Exit(e) = event {
                out.send(format!("{} exited: {}; the watcher lives on", e.from, e.reason))
                    .unwrap();
                break;
            }
        }
    })?;
    let watch = node.ctx::<()>().monitor(watcher);
    println!("{}", report.recv()?);
    println!("{}", report.recv()?);
    println!(
        "watcher: {}",
        node.ctx::<()>()
            .recv_down_timeout(watch, Duration::from_secs(10))?
            .reason
    );
    Ok(())
}

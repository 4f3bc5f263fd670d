//! Two processes play ping-pong: typed messages, mailboxes inside messages,
//! and a clean end.
//!
//! Run with `cargo run --example ping_pong`.

use converge::{Ctx, Mailbox};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Ping { n: u32, reply_to: Mailbox<Msg> },
    Pong { n: u32 },
}

fn main() -> Result<(), converge::Error> {
    let node = converge::init()?;

    // The ponger answers every ping, until its mailbox is quiet for a second.
    let ponger = converge::spawn(|ctx: Ctx<Msg>| {
        while let Ok(msg) = ctx.recv_timeout(std::time::Duration::from_secs(1)) {
            if let Msg::Ping { n, reply_to } = msg {
                println!("  ponger (os pid {}) got ping {n}", std::process::id());
                reply_to.send(Msg::Pong { n }).expect("a pong encodes");
            }
        }
    })?;

    // The main thread is a process too: it has a mailbox and receives.
    let me = node.ctx::<Msg>();
    for n in 1..=5 {
        ponger.send(Msg::Ping {
            n,
            reply_to: me.mailbox(),
        })?;
        match me.recv()? {
            Msg::Pong { n } => println!("main (os pid {}) got pong {n}", std::process::id()),
            other => println!("unexpected {other:?}"),
        }
    }

    let watch = node.ctx::<()>().monitor(ponger);
    ponger.kill();
    let down = node
        .ctx::<()>()
        .recv_down_timeout(watch, std::time::Duration::from_secs(5))?;
    println!("ponger is gone: {}", down.reason);
    Ok(())
}

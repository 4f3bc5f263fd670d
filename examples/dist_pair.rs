//! Two nodes in one command (feature `dist`): this program starts itself
//! again as a second node, joins it, and then, across the two: a ping-pong,
//! a remote spawn by registered name whose exit code comes back in a `Down`,
//! a remote kill seen by a monitor, and the other node leaving.
//!
//! ```sh
//! cargo run --features dist --example dist_pair
//! ```

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge::dist::{Cluster, ClusterConfig, NodeEvent, Secret};
use converge::{Ctx, ExitReason, Mailbox, Pid};

const ROLE: &str = "DIST_PAIR_ROLE";

fn secret() -> Secret {
    Secret::from_bytes(b"the secret of the dist_pair example").expect("16 bytes or more")
}

/// Started from another node: waits for a word, then ends with `code`.
fn crasher(ctx: Ctx<()>, code: i32) -> ExitReason {
    let _ = ctx.recv();
    ExitReason::Code(code)
}

/// The second node: a `pong` process, and `crasher` for others to start.
fn beta() -> Result<(), Box<dyn std::error::Error>> {
    let node = converge::init()?;
    converge::dist::spawnable("crasher", crasher);
    let cluster = Cluster::start(&node, ClusterConfig::new("beta", "127.0.0.1:0".parse()?, secret()))?;
    let pong = converge::spawn(|ctx: Ctx<(u32, Pid)>| {
        while let Ok((n, from)) = ctx.recv() {
            let _ = Mailbox::<u32>::from_pid(from).send(n);
        }
    })?;
    converge::register("pong", pong.pid())?;
    cluster.join(std::env::var("ALPHA")?.parse()?);
    println!("ready");
    // Until the first node closes our input.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    cluster.leave();
    node.shutdown(Duration::from_secs(1));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var(ROLE).as_deref() == Ok("beta") {
        return beta();
    }
    let node = converge::init()?;
    let cluster = Cluster::start(&node, ClusterConfig::new("alpha", "127.0.0.1:0".parse()?, secret()))?;
    let events = node.ctx::<NodeEvent>();
    cluster.monitor_nodes(node.mailbox());
    let mut other = Command::new(std::env::current_exe()?)
        .env(ROLE, "beta")
        .env("ALPHA", cluster.local_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(other.stdout.take().expect("piped")).read_line(&mut line)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pong = loop {
        if let Some(pid) = cluster.whereis("beta", "pong", Duration::from_secs(1)) {
            break pid;
        }
        if Instant::now() > deadline {
            return Err("beta never joined".into());
        }
    };
    println!(
        "joined: {:?}",
        cluster.nodes().iter().map(|n| &n.name).collect::<Vec<_>>()
    );

    // Ping-pong: the main program here, a process there.
    let me = converge::self_pid().expect("the main program has a pid");
    let replies = node.ctx::<u32>();
    let start = Instant::now();
    for n in 0..1000u32 {
        Mailbox::<(u32, Pid)>::from_pid(pong).send((n, me))?;
        assert_eq!(replies.recv()?, n);
    }
    println!("1000 round trips to beta: {:?} each", start.elapsed() / 1000);

    // Remote spawn by registered name; its exit code comes back.
    let crash = cluster.spawn_on("beta", "crasher", &3i32, Duration::from_secs(2))?;
    let ctx = node.ctx::<()>();
    let watch = ctx.monitor(crash);
    Mailbox::<()>::from_pid(crash).send(())?;
    println!("crasher on beta ended: {}", ctx.recv_down(watch)?.reason);

    // A kill from here, seen by a monitor from here.
    let watch = ctx.monitor(pong);
    Mailbox::<()>::from_pid(pong).kill();
    println!("pong on beta ended: {}", ctx.recv_down(watch)?.reason);

    // beta leaves.
    drop(other.stdin.take());
    loop {
        match events.recv_timeout(Duration::from_secs(10))? {
            NodeEvent::NodeDown { node, reason } => {
                println!("{node} is down: {reason:?}");
                break;
            }
            _ => continue,
        }
    }
    other.wait()?;
    drop(cluster);
    node.shutdown(Duration::from_secs(1));
    Ok(())
}

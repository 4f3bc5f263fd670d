//! A cluster of four nodes in one command (feature `dist`): this program
//! starts itself three more times as worker nodes, spreads twelve pieces of
//! work over them by registered name (`spawn_on`), kills one node while
//! work runs there, and moves that node's work to the others: each piece's
//! `Down` says how it ended (`NoConnection` for those on the lost node), and
//! every piece is done once in the end.
//!
//! ```sh
//! cargo run --features dist --example dist_cluster
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use converge::dist::{Cluster, ClusterConfig, Secret};
use converge::{Ctx, Event, ExitReason, Mailbox, MonitorRef};

const ROLE: &str = "DIST_CLUSTER_NODE";
const PIECES: u64 = 12;

fn secret() -> Secret {
    Secret::from_bytes(b"the secret of the dist_cluster example").expect("16 bytes or more")
}

/// A piece of work, started from another node: a while of work (longer
/// for later pieces), then its result (the piece, its square, and the node
/// that did it) to `to`.
fn piece(_: Ctx<()>, (n, to): (u64, Mailbox<(u64, u64, String)>)) {
    std::thread::sleep(Duration::from_millis(200 + 100 * n));
    let node = std::env::var(ROLE).unwrap_or_default();
    let _ = to.send((n, n * n, node));
}

/// A worker node: lets others start `piece` here, until its input closes.
fn worker(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = converge::init()?;
    converge::dist::spawnable("piece", piece);
    let cluster = Cluster::start(&node, ClusterConfig::new(name, "127.0.0.1:0".parse()?, secret()))?;
    cluster.join(std::env::var("SEED")?.parse()?);
    println!("ready");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    cluster.leave();
    node.shutdown(Duration::from_secs(1));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(ROLE) {
        return worker(&name);
    }
    let node = converge::init()?;
    let cluster = Cluster::start(&node, ClusterConfig::new("n0", "127.0.0.1:0".parse()?, secret()))?;
    let mut workers: BTreeMap<String, Child> = BTreeMap::new();
    for n in 1..=3 {
        let name = format!("n{n}");
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE, &name)
            .env("SEED", cluster.local_addr().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        workers.insert(name, child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes().len() < 3 {
        if Instant::now() > deadline {
            return Err("the workers never joined".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "cluster: n0 and {:?}",
        cluster.nodes().iter().map(|n| &n.name).collect::<Vec<_>>()
    );

    let me = node.ctx::<(u64, u64, String)>();
    let mut lost: Vec<String> = Vec::new();
    // Each piece's node and monitor while it runs.
    let mut running: BTreeMap<MonitorRef, (u64, String)> = BTreeMap::new();
    let mut turn = 0usize;
    let names: Vec<String> = workers.keys().cloned().collect();
    let mut start = |n: u64, lost: &[String], running: &mut BTreeMap<MonitorRef, (u64, String)>| {
        let live: Vec<String> = names.iter().filter(|w| !lost.contains(w)).cloned().collect();
        for _ in 0..live.len() {
            let on = &live[turn % live.len()];
            turn += 1;
            match cluster.spawn_on(on, "piece", &(n, me.mailbox()), Duration::from_secs(2)) {
                Ok(pid) => {
                    running.insert(me.monitor(pid), (n, on.clone()));
                    return;
                }
                Err(e) => println!("piece {n}: not started on {on}: {e}"),
            }
        }
        panic!("no node left for piece {n}");
    };
    for n in 1..=PIECES {
        start(n, &lost, &mut running);
    }
    let mut done: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut killed = false;
    while done.len() < PIECES as usize {
        match me.recv_event_timeout(Duration::from_secs(10))? {
            Event::Message((n, square, by)) => {
                println!("piece {n:>2} = {square:>3} (done on {by})");
                done.insert(n, (square, by));
                if !killed {
                    // One result in: kill a node while its pieces run.
                    killed = true;
                    let victim = "n2".to_string();
                    workers.get_mut(&victim).expect("a worker").kill()?;
                    println!("-- n2 killed (SIGKILL) --");
                    lost.push(victim);
                }
            }
            Event::Down(down) => {
                let Some((n, on)) = running.remove(&down.reference) else {
                    continue;
                };
                // Ended after its result, or lost after sending it (its
                // result came first: a message sent before a process ended
                // arrives before its Down).
                if down.reason == ExitReason::Normal || done.contains_key(&n) {
                    continue;
                }
                println!("piece {n:>2}: Down from {on}: {}; moving it", down.reason);
                if !lost.contains(&on) {
                    lost.push(on);
                }
                start(n, &lost, &mut running);
            }
            _ => {}
        }
    }
    println!(
        "all {PIECES} pieces done; by node: {:?}",
        done.values().fold(BTreeMap::<&str, u32>::new(), |mut m, (_, by)| {
            *m.entry(by.as_str()).or_default() += 1;
            m
        })
    );
    for (_, mut child) in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    cluster.leave();
    node.shutdown(Duration::from_secs(1));
    Ok(())
}

//! Distribution (feature `dist`): a 16-byte round trip between the main
//! program of one node and a process of another node on loopback (`ratio
//! remote_rtt_16`), against a bare TCP ping-pong between two processes in
//! the same run; and the time from `SIGKILL` of a node to `NodeDown` at a
//! node monitoring it (`info nodedown_kill_ms`).
//!
//! Run with `cargo bench --features dist --bench dist` (`CI=1` for a short
//! run). Each node is its own OS process: this binary, run again.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use converge::dist::{Cluster, ClusterConfig, NodeEvent, Secret};
use converge::{Config, Ctx, Mailbox, Pid};

const SECRET: &[u8] = b"the secret of the benches of converge";
const ROLE: &str = "CONVERGE_BENCH_ROLE";

fn secret() -> Secret {
    Secret::from_bytes(SECRET).expect("a long enough secret")
}

/// The other node: an echo process that answers each message to the pid it
/// names; prints its address, and ends when its input closes.
fn other_node() {
    let node = Config::new().schedulers(0).init().expect("init");
    let cluster = Cluster::start(
        &node,
        ClusterConfig::new("beta", "127.0.0.1:0".parse().unwrap(), secret()),
    )
    .expect("a cluster node");
    let echo = converge::spawn(|ctx: Ctx<([u8; 16], Pid)>| {
        while let Ok((payload, to)) = ctx.recv() {
            let _ = Mailbox::<[u8; 16]>::from_pid(to).send(payload);
        }
    })
    .expect("spawn");
    converge::register("echo", echo.pid()).expect("register");
    println!("{}", cluster.local_addr());
    let _ = std::io::stdout().flush();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(cluster);
    node.shutdown(Duration::from_secs(1));
}

/// The floor's other end: a TCP echo of 16-byte messages.
fn tcp_echo() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    let (mut s, _) = listener.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 16];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            return;
        }
    }
}

/// This binary again, as `role`; its first line.
fn start(role: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a process of the bench");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its first line");
    (child, line.trim().to_string())
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("node") => return other_node(),
        Ok("tcp") => return tcp_echo(),
        _ => {}
    }
    let node = Config::new()
        .schedulers(0)
        .init()
        .expect("init() first, before criterion starts threads");
    let cluster = Cluster::start(
        &node,
        ClusterConfig::new("alpha", "127.0.0.1:0".parse().unwrap(), secret()),
    )
    .expect("a cluster node");
    let (mut beta, addr) = start("node");
    cluster.join(addr.parse().expect("an address"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let echo = loop {
        if let Some(pid) = cluster.whereis("beta", "echo", Duration::from_secs(1)) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the other node never joined");
        std::thread::sleep(Duration::from_millis(20));
    };
    let echo = Mailbox::<([u8; 16], Pid)>::from_pid(echo);
    let me = converge::self_pid().expect("the node's own pid");
    let ctx = node.ctx::<[u8; 16]>();
    let (mut tcp, tcp_addr) = start("tcp");
    let mut floor = TcpStream::connect(tcp_addr.as_str()).expect("connect");
    floor.set_nodelay(true).expect("nodelay");

    let mut c = common::criterion();
    common::compare(
        &mut c,
        "remote_rtt_16",
        |iters| {
            let mut buf = [0u8; 16];
            let t = Instant::now();
            for i in 0..iters {
                buf[0] = i as u8;
                floor.write_all(&buf).expect("write");
                floor.read_exact(&mut buf).expect("read");
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for i in 0..iters {
                let mut payload = [0u8; 16];
                payload[0] = i as u8;
                echo.send((payload, me)).expect("send");
                let back = ctx.recv().expect("the echo");
                assert_eq!(back[0], i as u8);
            }
            t.elapsed()
        },
    );
    drop(floor);
    drop(tcp.stdin.take());
    let _ = tcp.wait();

    // SIGKILL of a node to NodeDown here, a few times.
    let mut times = Vec::new();
    drop(beta.stdin.take());
    let _ = beta.wait();
    for _ in 0..if common::ci() { 3 } else { 10 } {
        let (mut other, addr) = start("node");
        cluster.join(addr.parse().expect("an address"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.whereis("beta", "echo", Duration::from_secs(1)).is_none() {
            assert!(Instant::now() < deadline, "the other node never joined");
        }
        let down = node.ctx::<NodeEvent>();
        cluster.monitor_node("beta", node.mailbox::<NodeEvent>());
        let t = Instant::now();
        other.kill().expect("kill");
        loop {
            match down.recv_timeout(Duration::from_secs(10)) {
                Ok(NodeEvent::NodeDown { .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("no NodeDown: {e}"),
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let _ = other.wait();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "info nodedown_kill_ms: {:.1} (median of {}, min {:.1}, max {:.1})",
        times[times.len() / 2],
        times.len(),
        times[0],
        times[times.len() - 1]
    );
    common::print_results();
    drop(cluster);
    node.shutdown(Duration::from_secs(1));
}

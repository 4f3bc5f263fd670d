//! Distribution (feature `dist`), each against its floor in the same run:
//!
//! - `ratio remote_rtt_16`: a 16-byte round trip between the main program of
//!   one node and a process of another node on loopback, against a bare TCP
//!   ping-pong between two processes; `_samecore`: each node (all its
//!   threads and processes) and each end of the floor pinned to one CPU;
//!   `_crosscore`: the two nodes, and the two ends of the floor, on two;
//!   `_crosscore_spin`: the same, both ends of converge polling up to 50 us
//!   before they sleep (`Ctx::busy_wait`, as BEAM schedulers do), the
//!   floor's ends sleeping;
//! - `ratio remote_throughput_64`: 64-byte messages streamed to a process of
//!   another node until it acknowledges the count, against 64-byte frames
//!   streamed in batches over TCP to a sink that acknowledges the count;
//! - `info nodedown_kill_ms`: `SIGKILL` of a node to `NodeDown` at a node
//!   monitoring it (target 100);
//! - `info nodedown_silent_ms`: `SIGSTOP` of a node to `NodeDown` (target
//!   2000: its ticks stop);
//! - `info join_ms`: a new node joins a cluster of 4 until it receives its
//!   first message from a member (target 100).
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
use serde::{Deserialize, Serialize};

const SECRET: &[u8] = b"the secret of the benches of converge";
const ROLE: &str = "CONVERGE_BENCH_ROLE";
const NAME: &str = "CONVERGE_BENCH_NAME";
const SEED: &str = "CONVERGE_BENCH_SEED";
/// The CPU a process of the bench runs on, from its start (its threads and
/// the processes it forks too).
const PIN: &str = "CONVERGE_BENCH_PIN";
/// Microseconds the other node's echo polls before it sleeps.
const SPIN: &str = "CONVERGE_BENCH_SPIN";

/// What the sink of the throughput figure takes.
#[derive(Serialize, Deserialize)]
enum SinkMsg {
    Data(Vec<u8>),
    /// Answer the count so far to this process (as a 16-byte message).
    Ack(Pid),
}

fn secret() -> Secret {
    Secret::from_bytes(SECRET).expect("a long enough secret")
}

/// The other node: an echo process that answers each message to the pid it
/// names; prints its address, and ends when its input closes.
fn other_node() {
    pin_from_env();
    let node = Config::new().schedulers(0).init().expect("init");
    let name = std::env::var(NAME).unwrap_or_else(|_| "beta".into());
    let cluster = Cluster::start(
        &node,
        ClusterConfig::new(name, "127.0.0.1:0".parse().unwrap(), secret()),
    )
    .expect("a cluster node");
    if let Ok(seed) = std::env::var(SEED) {
        cluster.join(seed.parse().expect("an address"));
    }
    let sink = converge::spawn(|ctx: Ctx<SinkMsg>| {
        let mut count = 0u64;
        while let Ok(msg) = ctx.recv() {
            match msg {
                SinkMsg::Data(_) => count += 1,
                SinkMsg::Ack(to) => {
                    let mut answer = [0u8; 16];
                    answer[..8].copy_from_slice(&count.to_le_bytes());
                    let _ = Mailbox::<[u8; 16]>::from_pid(to).send(answer);
                }
            }
        }
    })
    .expect("spawn");
    converge::register("sink", sink.pid()).expect("register");
    let spin = std::env::var(SPIN).map_or(0, |us| us.parse().expect("microseconds"));
    let echo = converge::spawn(move |ctx: Ctx<([u8; 16], Pid)>| {
        ctx.busy_wait(Duration::from_micros(spin));
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

/// A node that joins the cluster through `SEED` and prints how long it took
/// until its first message from a member arrived (milliseconds).
fn joiner() {
    let node = Config::new().schedulers(0).init().expect("init");
    let name = std::env::var(NAME).expect("a name");
    let cluster = Cluster::start(
        &node,
        ClusterConfig::new(name, "127.0.0.1:0".parse().unwrap(), secret()),
    )
    .expect("a cluster node");
    let ctx = node.ctx::<[u8; 16]>();
    ctx.register("inbox").expect("register");
    println!("{}", cluster.local_addr());
    let _ = std::io::stdout().flush();
    let t = Instant::now();
    cluster.join(std::env::var(SEED).expect("a seed").parse().expect("an address"));
    let first = ctx.recv_timeout(Duration::from_secs(30));
    println!("{}", t.elapsed().as_secs_f64() * 1e3);
    let _ = std::io::stdout().flush();
    assert!(first.is_ok(), "no message came");
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(cluster);
    node.shutdown(Duration::from_secs(1));
}

/// The floor of the stream: reads an 8-byte count, then that many 64-byte
/// frames in bulk, then answers one byte; until its peer closes.
fn tcp_sink() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    let _ = std::io::stdout().flush();
    let (mut s, _) = listener.accept().expect("accept");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 65536];
    loop {
        let mut count = [0u8; 8];
        if s.read_exact(&mut count).is_err() {
            return;
        }
        let mut left = u64::from_le_bytes(count) * 64;
        while left > 0 {
            let want = buf.len().min(left as usize);
            match s.read(&mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n as u64,
            }
        }
        if s.write_all(b"k").is_err() {
            return;
        }
    }
}

/// The floor's other end: a TCP echo of 16-byte messages.
fn tcp_echo() {
    pin_from_env();
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

fn pin_from_env() {
    if let Ok(cpu) = std::env::var(PIN) {
        common::pin(cpu.parse().expect("a CPU number"));
    }
}

/// A node's echo: answers each payload to the pid with it.
type Echo = Mailbox<([u8; 16], Pid)>;

/// The echo of the node `name` (it joins through `cluster`'s node).
fn echo_of(cluster: &Cluster, name: &str) -> Echo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = cluster.whereis(name, "echo", Duration::from_secs(1)) {
            return Mailbox::from_pid(pid);
        }
        assert!(Instant::now() < deadline, "the other node never joined");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `name`: round trips of 16 bytes to `echo`, against a TCP ping-pong with a
/// process of the bench started with `env` (its pin).
fn remote_rtt(
    c: &mut criterion::Criterion,
    name: &str,
    (echo, me, ctx): (&Echo, Pid, &Ctx<[u8; 16]>),
    env: &[(&str, &str)],
) {
    let (mut tcp, tcp_addr) = start_with("tcp", env);
    let mut floor = TcpStream::connect(tcp_addr.as_str()).expect("connect");
    floor.set_nodelay(true).expect("nodelay");
    common::compare(
        c,
        name,
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
}

/// This binary again, as `role`; its first line.
fn start(role: &str) -> (Child, String) {
    start_with(role, &[])
}

/// This binary again, as `role` with `env`; its first line.
fn start_with(role: &str, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(ROLE, role)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a process of the bench");
    let mut line = String::new();
    // Borrowed: a later line is read from it again (nothing past the first
    // line is written before this one is read).
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("its first line");
    (child, line.trim().to_string())
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("node") => return other_node(),
        Ok("tcp") => return tcp_echo(),
        Ok("tcpsink") => return tcp_sink(),
        Ok("joiner") => return joiner(),
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
    let echo = echo_of(&cluster, "beta");
    let me = converge::self_pid().expect("the node's own pid");
    let ctx = node.ctx::<[u8; 16]>();

    let mut c = common::criterion();
    remote_rtt(&mut c, "remote_rtt_16", (&echo, me, &ctx), &[]);
    // Pinned: this node's threads, the other node, the floor's echo.
    let two = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
    let pins: &[(&str, usize)] = if two {
        &[("samecore", 0), ("crosscore", 1)]
    } else {
        &[("samecore", 0)]
    };
    for &(how, there) in pins {
        common::pin_process(Some(0));
        let cpu = there.to_string();
        let name = format!("beta-{how}");
        let env = [(PIN, cpu.as_str())];
        let (mut other, addr) = start_with("node", &[(NAME, name.as_str()), (PIN, cpu.as_str())]);
        cluster.join(addr.parse().expect("an address"));
        let pinned_echo = echo_of(&cluster, &name);
        remote_rtt(&mut c, &format!("remote_rtt_16_{how}"), (&pinned_echo, me, &ctx), &env);
        drop(other.stdin.take());
        let _ = other.wait();
        common::pin_process(None);
    }
    if two {
        // Both ends of converge polling before they sleep, the floor's not.
        common::pin_process(Some(0));
        let env = [(PIN, "1")];
        let (mut other, addr) = start_with("node", &[(NAME, "beta-spin"), (PIN, "1"), (SPIN, "50")]);
        cluster.join(addr.parse().expect("an address"));
        let spinning_echo = echo_of(&cluster, "beta-spin");
        ctx.busy_wait(Duration::from_micros(50));
        remote_rtt(&mut c, "remote_rtt_16_crosscore_spin", (&spinning_echo, me, &ctx), &env);
        ctx.busy_wait(Duration::ZERO);
        drop(other.stdin.take());
        let _ = other.wait();
        common::pin_process(None);
    }

    // 64-byte messages streamed one way until the count is acknowledged.
    let sink = loop {
        if let Some(pid) = cluster.whereis("beta", "sink", Duration::from_secs(1)) {
            break Mailbox::<SinkMsg>::from_pid(pid);
        }
    };
    let (mut tcp_sink, sink_addr) = start("tcpsink");
    let mut stream = TcpStream::connect(sink_addr.as_str()).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut sent = 0u64;
    common::compare(
        &mut c,
        "remote_throughput_64",
        |iters| {
            let batch = vec![5u8; 64 * 64];
            let t = Instant::now();
            stream.write_all(&iters.to_le_bytes()).expect("write");
            let mut left = iters;
            while left > 0 {
                let n = left.min(64);
                stream.write_all(&batch[..n as usize * 64]).expect("write");
                left -= n;
            }
            let mut k = [0u8; 1];
            stream.read_exact(&mut k).expect("the ack");
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                sink.send(SinkMsg::Data(vec![5u8; 64])).expect("send");
            }
            sink.send(SinkMsg::Ack(me)).expect("send");
            sent += iters;
            let back = ctx.recv_timeout(Duration::from_secs(30)).expect("the ack");
            assert_eq!(u64::from_le_bytes(back[..8].try_into().unwrap()), sent);
            t.elapsed()
        },
    );
    drop(stream);
    drop(tcp_sink.stdin.take());
    let _ = tcp_sink.wait();

    // SIGKILL of a node to NodeDown here, a few times; then SIGSTOP (its
    // ticks stop).
    drop(beta.stdin.take());
    let _ = beta.wait();
    let rounds = if common::ci() { 3 } else { 10 };
    let times = (0..rounds)
        .map(|_| nodedown_ms(&node, &cluster, |other| other.kill().expect("kill")))
        .collect();
    summary("nodedown_kill_ms", times);
    let times = (0..rounds)
        .map(|_| {
            nodedown_ms(&node, &cluster, |other| {
                Command::new("kill")
                    .args(["-STOP", &other.id().to_string()])
                    .status()
                    .expect("kill -STOP");
            })
        })
        .collect();
    summary("nodedown_silent_ms", times);

    // A new node joins a cluster of 4 (this one and three others) and gets
    // its first message from this one.
    let seed = cluster.local_addr().to_string();
    let members: Vec<Child> = (1..=3)
        .map(|n| start_with("node", &[(NAME, &format!("member{n}")), (SEED, &seed)]).0)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes().len() < 3 {
        assert!(Instant::now() < deadline, "the cluster of 4 did not form");
        std::thread::sleep(Duration::from_millis(20));
    }
    let events = node.ctx::<NodeEvent>();
    cluster.monitor_nodes(node.mailbox::<NodeEvent>());
    let mut times = Vec::new();
    for n in 0..if common::ci() { 3 } else { 10 } {
        let name = format!("joiner{n}");
        let (mut joiner, _) = start_with("joiner", &[(NAME, &name), (SEED, &seed)]);
        loop {
            match events.recv_timeout(Duration::from_secs(10)) {
                Ok(NodeEvent::NodeUp { node, .. }) if node == name => break,
                Ok(_) => {}
                Err(e) => panic!("{name} never came up: {e}"),
            }
        }
        let inbox = loop {
            if let Some(pid) = cluster.whereis(&name, "inbox", Duration::from_secs(1)) {
                break Mailbox::<[u8; 16]>::from_pid(pid);
            }
        };
        inbox.send([1u8; 16]).expect("send");
        let mut line = String::new();
        BufReader::new(joiner.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("its time");
        times.push(line.trim().parse::<f64>().expect("milliseconds"));
        drop(joiner.stdin.take());
        let _ = joiner.wait();
    }
    summary("join_ms", times);
    for mut m in members {
        drop(m.stdin.take());
        let _ = m.wait();
    }
    common::print_results();
    drop(cluster);
    node.shutdown(Duration::from_secs(1));
}

/// Adds `info NAME: median (of n, min, max)` to the closing lines.
fn summary(name: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    common::RESULTS.lock().unwrap().push(format!(
        "info {name}: {:.1} (median of {}, min {:.1}, max {:.1})",
        times[times.len() / 2],
        times.len(),
        times[0],
        times[times.len() - 1]
    ));
}

/// Starts another node `beta`, joins it, does `to` to it, and measures the
/// time until its `NodeDown` here (ms); then it is killed for good and let
/// go by membership (the next one is "beta" again).
fn nodedown_ms(node: &converge::Node, cluster: &Cluster, to: impl FnOnce(&mut Child)) -> f64 {
    let (mut other, addr) = start("node");
    cluster.join(addr.parse().expect("an address"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.whereis("beta", "echo", Duration::from_secs(1)).is_none() {
        assert!(Instant::now() < deadline, "the other node never joined");
    }
    let down = node.ctx::<NodeEvent>();
    cluster.monitor_node("beta", node.mailbox::<NodeEvent>());
    let t = Instant::now();
    to(&mut other);
    loop {
        match down.recv_timeout(Duration::from_secs(10)) {
            Ok(NodeEvent::NodeDown { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("no NodeDown: {e}"),
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = other.kill();
    let _ = other.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes().iter().any(|n| n.name == "beta") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ms
}

//! Hostile and foreign peers: connections from another user are refused,
//! garbage and broken frames are rejected and counted, a huge length prefix
//! reserves nothing, and the target keeps serving its real peers.

mod util;

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};

use converge::{Ctx, Pid};
use util::{HelperProcess, PATIENCE, helper, node, say};

fn main() {
    util::run(
        &[
            ("another_user_is_refused", another_user_is_refused),
            ("garbage_is_rejected_and_counted", garbage_is_rejected_and_counted),
            (
                "a_huge_length_prefix_is_refused_at_once",
                a_huge_length_prefix_is_refused_at_once,
            ),
            ("announced_frames_reserve_no_memory", announced_frames_reserve_no_memory),
            ("many_raw_connections_at_once", many_raw_connections_at_once),
            ("socket_names_carry_the_node_id", socket_names_carry_the_node_id),
        ],
        &[("connect_as_other_user", connect_as_other_user)],
    )
}

/// The abstract socket name of a process's mailbox.
fn address(pid: Pid) -> String {
    format!("converge/{}/{}", pid.node(), pid.serial())
}

fn connect(name: &str) -> std::io::Result<UnixStream> {
    UnixStream::connect_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
}

/// A frame as the runtime writes it: `[u32 LE length][kind][body]`.
/// The body of a hello frame: who sends, for no actor in particular.
fn hello(from: Pid) -> Vec<u8> {
    postcard::to_stdvec(&(from, None::<u64>)).unwrap()
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

/// FNV-1a of a type name: the fingerprint a message frame carries.
fn fingerprint(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A well-formed hello followed by a well-formed `u32` message.
fn valid_frames(from: Pid, value: u32) -> Vec<u8> {
    let mut out = frame(1, &hello(from));
    let mut body = fingerprint("u32").to_le_bytes().to_vec();
    body.extend_from_slice(&postcard::to_stdvec(&value).unwrap());
    out.extend_from_slice(&frame(2, &body));
    out
}

/// A process that counts the `u32`s it gets, and reports each.
fn counter(report: converge::Mailbox<u32>) -> impl FnOnce(Ctx<u32>) {
    move |ctx: Ctx<u32>| {
        while let Ok(n) = ctx.recv() {
            report.send(n).unwrap();
        }
    }
}

fn connect_as_other_user() {
    let target = std::env::var("TARGET").unwrap();
    let from: Pid = pid_from_hex(&std::env::var("FROM").unwrap());
    match connect(&target) {
        Ok(mut s) => {
            let _ = s.write_all(&valid_frames(from, 666));
            say("connected", "yes");
        }
        Err(e) => say("connected", format!("no {e}")),
    }
}

/// A Pid travels to the helper as hex postcard bytes.
fn pid_from_hex(hex: &str) -> Pid {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    postcard::from_bytes(&bytes).unwrap()
}

fn to_hex(pid: Pid) -> String {
    postcard::to_stdvec(&pid)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn another_user_is_refused() {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        println!("skipped: needs root to run a peer as another user");
        return;
    }
    let me = node().ctx::<u32>();
    let target = converge::spawn(counter(me.mailbox())).unwrap();
    let before = node().stats().refused;
    let mut cmd = helper("connect_as_other_user");
    cmd.env("TARGET", address(target.pid()));
    cmd.env("FROM", to_hex(node().pid()));
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let mut h = HelperProcess::start(cmd);
    assert_eq!(h.expect("connected"), "yes");
    assert!(h.wait(PATIENCE).unwrap().success());
    assert!(util::wait_until(PATIENCE, || converge::process_info(target)
        .is_some_and(|i| i.refused == 1)));
    // The node's own control socket refuses the same way.
    let mut cmd = helper("connect_as_other_user");
    cmd.env("TARGET", format!("converge/{}/node", node().id()));
    cmd.env("FROM", to_hex(node().pid()));
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let mut h = HelperProcess::start(cmd);
    assert_eq!(h.expect("connected"), "yes");
    assert!(h.wait(PATIENCE).unwrap().success());
    assert!(util::wait_until(PATIENCE, || node().stats().refused == before + 1));
    // Nothing from the foreign peer arrived; a real message does.
    target.send(7).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 7);
    target.kill();
}

fn garbage_is_rejected_and_counted() {
    let me = node().ctx::<u32>();
    let target = converge::spawn(counter(me.mailbox())).unwrap();
    let name = address(target.pid());
    let inputs: Vec<Vec<u8>> = vec![
        // Not a frame at all.
        b"GET / HTTP/1.1\r\nHost: converge\r\n\r\n".to_vec(),
        // An unknown kind.
        frame(9, b"xx"),
        // A message before any hello.
        frame(2, &[0; 12]),
        // A hello that does not decode.
        frame(1, &[0xff; 40]),
        // A valid hello, then a message of the wrong type, then a body that
        // does not decode: these are message-level errors, the connection
        // stays, and the good message after them arrives.
        {
            let mut v = frame(1, &hello(node().pid()));
            let mut wrong = fingerprint("i64").to_le_bytes().to_vec();
            wrong.push(1);
            v.extend(frame(2, &wrong));
            let mut bad = fingerprint("u32").to_le_bytes().to_vec();
            bad.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            v.extend(frame(2, &bad));
            let mut good = fingerprint("u32").to_le_bytes().to_vec();
            good.extend_from_slice(&postcard::to_stdvec(&41u32).unwrap());
            v.extend(frame(2, &good));
            v
        },
        // A truncated frame, then the connection closes.
        frame(2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])[..9].to_vec(),
    ];
    for input in inputs {
        let mut s = connect(&name).unwrap();
        s.write_all(&input).unwrap();
    }
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 41);
    // Four broken connections, two undecodable messages; the HTTP request
    // reads as a length over the limit: refused too.
    assert!(util::wait_until(PATIENCE, || converge::process_info(target)
        .is_some_and(|i| i.undecodable == 6)));
    // The real peers are still served, in order, and count as nothing bad.
    for i in 0..100 {
        target.send(i).unwrap();
    }
    for i in 0..100 {
        assert_eq!(me.recv_timeout(PATIENCE).unwrap(), i);
    }
    let info = converge::process_info(target).unwrap();
    assert_eq!((info.undecodable, info.refused), (6, 1));
    target.kill();
}

fn a_huge_length_prefix_is_refused_at_once() {
    let me = node().ctx::<u32>();
    let target = converge::spawn(counter(me.mailbox())).unwrap();
    let mut s = connect(&address(target.pid())).unwrap();
    s.write_all(&frame(1, &hello(node().pid()))).unwrap();
    s.write_all(&[0xf0, 0xff, 0xff, 0xff, 2]).unwrap();
    // The target cut the connection without waiting for 4 GB: the read ends
    // (end of stream, or reset), it does not time out.
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut s, &mut buf) {
        Ok(n) => assert_eq!(n, 0, "nothing is sent back"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(util::wait_until(PATIENCE, || converge::process_info(target)
        .is_some_and(|i| i.refused == 1)));
    target.send(3).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 3);
    target.kill();
}

/// A number from `/proc/<pid>/<file>`, on the line starting with `key`.
fn proc_number(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
}

/// 50 connections each announce a 60 MB frame (under the limit) and send 10
/// bytes of it: once the target has read every byte sent (`rchar` of
/// `/proc/<pid>/io` says so), neither its address space (`VmData`) nor its
/// resident memory grew by what was announced (3 GB in all).
fn announced_frames_reserve_no_memory() {
    let me = node().ctx::<u32>();
    let target = converge::spawn(counter(me.mailbox())).unwrap();
    target.send(0).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 0);
    let info = converge::process_info(target).unwrap();
    let os = info.os_pid.unwrap();
    let (rss0, data0, read0) = (
        info.memory.unwrap(),
        proc_number(os, "status", "VmData:") << 10,
        proc_number(os, "io", "rchar:"),
    );
    let mut held = Vec::new();
    let mut sent = 0;
    for _ in 0..50 {
        let mut s = connect(&address(target.pid())).unwrap();
        let mut bytes = frame(1, &hello(node().pid()));
        bytes.extend((60u32 << 20).to_le_bytes());
        bytes.push(2);
        bytes.extend_from_slice(&[0; 10]);
        s.write_all(&bytes).unwrap();
        sent += bytes.len() as u64;
        held.push(s);
    }
    assert!(
        util::wait_until(PATIENCE, || proc_number(os, "io", "rchar:") >= read0 + sent),
        "the target reads what was sent"
    );
    let (rss, data) = (
        converge::process_info(target).unwrap().memory.unwrap(),
        proc_number(os, "status", "VmData:") << 10,
    );
    assert!(rss < rss0 + (8 << 20), "resident memory grew from {rss0} to {rss}");
    assert!(
        data < data0 + (64 << 20),
        "the data segment grew from {data0} to {data}"
    );
    // And it goes on serving.
    target.send(1).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 1);
    drop(held);
    target.kill();
}

fn many_raw_connections_at_once() {
    let me = node().ctx::<u32>();
    let target = converge::spawn(counter(me.mailbox())).unwrap();
    let name = address(target.pid());
    let conns: Vec<UnixStream> = (0..300u32)
        .map(|i| {
            let mut s = connect(&name).unwrap();
            s.write_all(&valid_frames(node().pid(), i)).unwrap();
            s
        })
        .collect();
    let mut got: Vec<u32> = (0..300).map(|_| me.recv_timeout(PATIENCE).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    drop(conns);
    target.send(1000).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 1000);
    target.kill();
}

fn socket_names_carry_the_node_id() {
    let target = converge::spawn(|ctx: Ctx<()>| {
        let _ = ctx.recv_timeout(PATIENCE);
    });
    let target = target.unwrap();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let want = format!("@{}", address(target.pid()));
    assert!(table.lines().any(|l| l.ends_with(&want)), "{want} not listed");
    assert_eq!(format!("{}", node().id()).len(), 32, "128 random bits");
    target.kill();
}

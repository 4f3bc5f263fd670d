//! Ports against `std::process::Command` doing the same work in the same run:
//! starting a program until its exit status is known, and a line's round trip
//! through `cat`. Ends with `ratio NAME: X.XX (floor F, converge C)` lines
//! (converge's time per operation over the floor's: lower is better).
//!
//! Run with `cargo bench --bench ports` (`CI=1` for a short run).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge::port::{Framing, PortBuilder, PortOutput};

fn main() {
    let cgroups = std::env::var_os("PORT_CGROUPS").is_none_or(|v| v != "0");
    let node = converge::Config::new()
        .port_cgroups(cgroups)
        .init()
        .expect("init() first, before criterion starts threads");
    let mut c = common::criterion();
    port_spawn(&mut c);
    // Both ends on one core (the caller and the program alike, floor and
    // converge); unpinned, for information only (bimodal: the ends land on
    // one core or two).
    port_rtt(&mut c, Some(0));
    port_rtt(&mut c, None);
    c.final_summary();
    common::print_results();
    node.shutdown(Duration::from_secs(5));
}

/// A port of `/bin/true` until its exit reason arrives, against
/// `Command::status()`.
fn port_spawn(c: &mut criterion::Criterion) {
    common::compare(
        c,
        "port_spawn",
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let status = Command::new("/bin/true").status().unwrap();
                assert!(status.success());
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let port = PortBuilder::new("/bin/true").spawn().unwrap();
                loop {
                    match port.recv().unwrap() {
                        PortOutput::Exit(reason) => {
                            assert!(reason.is_normal());
                            break;
                        }
                        _ => continue,
                    }
                }
            }
            t.elapsed()
        },
    );
}

/// A line echoed by a `cat` port, against a bare round trip through `cat` over
/// two pipes; `pin`: the caller and both programs on this CPU (`taskset`).
fn port_rtt(c: &mut criterion::Criterion, pin: Option<usize>) {
    let cpu = pin.map(|p| p.to_string());
    let program = |cmd: &mut Vec<String>| {
        if let Some(cpu) = &cpu {
            cmd.extend(["taskset".into(), "-c".into(), cpu.clone()]);
        }
        cmd.push("cat".into());
    };
    let mut argv = Vec::new();
    program(&mut argv);
    if let Some(p) = pin {
        common::pin(p);
    }
    let mut bare = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bare_in = bare.stdin.take().unwrap();
    let mut bare_out = BufReader::new(bare.stdout.take().unwrap());
    let port = PortBuilder::new(&argv[0])
        .args(&argv[1..])
        .framing(Framing::Lines { max: 4096 })
        .spawn()
        .unwrap();
    let line = b"a line of forty bytes, more or less....\n";
    let mut back = String::new();
    common::compare_as(
        c,
        if pin.is_some() { "port_rtt_samecore" } else { "port_rtt" },
        if pin.is_some() { "ratio" } else { "info" },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                bare_in.write_all(line).unwrap();
                back.clear();
                bare_out.read_line(&mut back).unwrap();
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                port.send(line).unwrap();
                match port.recv().unwrap() {
                    PortOutput::Line { data, .. } => assert_eq!(data.len(), line.len() - 1),
                    other => panic!("unexpected {other:?}"),
                }
            }
            t.elapsed()
        },
    );
    drop(bare_in);
    bare.wait().unwrap();
    port.close_input();
    while !matches!(port.recv(), Ok(PortOutput::Exit(_)) | Err(_)) {}
    if pin.is_some() {
        common::unpin();
    }
}

//! Ports: external programs as processes, with framing, exit reasons, process
//! groups (and cgroups) that never outlive the port, its owner or the node.

mod util;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use converge::port::stdio::{PacketReader, PacketWriter};
use converge::port::{Framing, PortBuilder, PortError, PortOutput, Stderr};
use converge::{Ctx, Event, ExitReason};
use util::{HelperProcess, PATIENCE, helper, node, say};

fn main() {
    util::run(
        &[
            ("lines_come_as_events", lines_come_as_events),
            ("long_lines_are_cut", long_lines_are_cut),
            ("raw_chunks_and_input", raw_chunks_and_input),
            ("packets_of_1_2_and_4_bytes", packets_of_1_2_and_4_bytes),
            ("exit_status_is_the_reason", exit_status_is_the_reason),
            ("kill_and_signals", kill_and_signals),
            ("stderr_separate_merged_or_logged", stderr_separate_merged_or_logged),
            (
                "a_program_that_cannot_run_is_a_spawn_error",
                a_program_that_cannot_run_is_a_spawn_error,
            ),
            ("killing_a_port_kills_its_group", killing_a_port_kills_its_group),
            (
                "setsid_descendants_die_with_the_cgroup",
                setsid_descendants_die_with_the_cgroup,
            ),
            (
                "environment_and_directory_are_the_owners",
                environment_and_directory_are_the_owners,
            ),
            ("closing_input_gives_eof", closing_input_gives_eof),
            (
                "a_script_without_a_shebang_runs_with_sh",
                a_script_without_a_shebang_runs_with_sh,
            ),
            ("spawn_errors_are_those_of_command", spawn_errors_are_those_of_command),
            (
                "a_program_waits_while_its_owner_does_not_read",
                a_program_waits_while_its_owner_does_not_read,
            ),
            (
                "an_oversized_packet_ends_only_that_port",
                an_oversized_packet_ends_only_that_port,
            ),
            (
                "port_garbage_is_refused_and_counted",
                port_garbage_is_refused_and_counted,
            ),
            ("ports_end_with_their_owner", ports_end_with_their_owner),
            ("shutdown_is_sigterm_then_sigkill", shutdown_is_sigterm_then_sigkill),
            ("a_port_is_a_process", a_port_is_a_process),
            ("a_linked_port_signals_its_owner", a_linked_port_signals_its_owner),
            ("no_port_survives_a_killed_node", no_port_survives_a_killed_node),
            (
                "ports_are_observed_after_the_zygote_dies",
                ports_are_observed_after_the_zygote_dies,
            ),
        ],
        &[
            ("packet_echo", packet_echo),
            ("bad_packet", bad_packet),
            ("node_with_ports", node_with_ports),
            ("zygote_dies", zygote_dies),
        ],
    )
}

/// A port program: echoes every packet upper-cased (prefix size from argv).
fn packet_echo() {
    let size: u8 = std::env::args().next_back().unwrap().parse().unwrap();
    let mut input = PacketReader::new(std::io::stdin().lock(), size);
    let mut output = PacketWriter::new(std::io::stdout().lock(), size);
    while let Some(p) = input.read().unwrap() {
        output.write(&p.to_ascii_uppercase()).unwrap();
    }
}

/// A port program that announces a 4 GB packet.
fn bad_packet() {
    let mut out = std::io::stdout().lock();
    out.write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3]).unwrap();
    out.flush().unwrap();
    std::thread::sleep(PATIENCE);
}

fn sh(script: &str) -> PortBuilder {
    PortBuilder::new("/bin/sh").args(["-c", script])
}

/// Every event of `port` until its exit.
fn all(port: &converge::port::Port) -> Vec<PortOutput> {
    let mut out = Vec::new();
    loop {
        let ev = port.recv_timeout(PATIENCE).expect("an event within the patience");
        let end = matches!(ev, PortOutput::Exit(_));
        out.push(ev);
        if end {
            return out;
        }
    }
}

fn line(s: &str) -> PortOutput {
    PortOutput::Line {
        data: s.as_bytes().to_vec(),
        cut: false,
    }
}

fn lines_come_as_events() {
    let port = sh("echo hello; echo world")
        .framing(Framing::Lines { max: 100 })
        .spawn()
        .unwrap();
    assert_eq!(
        all(&port),
        vec![
            line("hello"),
            line("world"),
            PortOutput::Eof,
            PortOutput::Exit(ExitReason::Normal)
        ]
    );
}

fn long_lines_are_cut() {
    let port = sh("printf 'abcdefgh\\nxyz'")
        .framing(Framing::Lines { max: 3 })
        .spawn()
        .unwrap();
    let cut = |s: &str| PortOutput::Line {
        data: s.as_bytes().to_vec(),
        cut: true,
    };
    assert_eq!(
        all(&port),
        vec![
            cut("abc"),
            cut("def"),
            line("gh"),
            cut("xyz"),
            PortOutput::Eof,
            PortOutput::Exit(ExitReason::Normal)
        ]
    );
}

fn raw_chunks_and_input() {
    let port = PortBuilder::new("cat").spawn().unwrap();
    port.send(b"some bytes").unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        match port.recv_timeout(PATIENCE).unwrap() {
            PortOutput::Data(d) => got.extend(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, b"some bytes");
    port.close_input();
    assert_eq!(all(&port), vec![PortOutput::Eof, PortOutput::Exit(ExitReason::Normal)]);
}

/// Output queued unread is bounded: past about 1 MiB the port's pipe is not
/// read, and the program waits on it (as on a slow reader) until its owner
/// takes some. Nothing is lost.
fn a_program_waits_while_its_owner_does_not_read() {
    let dir = std::env::temp_dir().join(format!("converge-ports-wait-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let done = dir.join("done");
    let script = format!("head -c 50000000 /dev/zero; : > {}", done.display());
    let port = sh(&script).framing(Framing::Raw).spawn().unwrap();
    // Unread, 50 MB would be queued here in a small fraction of this time:
    // the program is still writing when the time is up.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert!(
            !done.exists(),
            "the program wrote everything to an owner that read nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut total = 0;
    loop {
        match port.recv_timeout(PATIENCE).expect("an event within the patience") {
            PortOutput::Data(d) => total += d.len(),
            PortOutput::Eof => {}
            PortOutput::Exit(reason) => {
                assert_eq!(reason, ExitReason::Normal);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, 50_000_000);
    assert!(done.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn packets_of_1_2_and_4_bytes() {
    for size in [1u8, 2, 4] {
        let mut cmd = helper("packet_echo");
        cmd.arg(size.to_string());
        let exe = std::env::current_exe().unwrap();
        let port = PortBuilder::new(exe)
            .arg(size.to_string())
            .env(util::HELPER, "packet_echo")
            .framing(Framing::Packet(size))
            .spawn()
            .unwrap();
        let big = vec![
            b'a';
            if size == 1 {
                255
            } else {
                70_000.min(if size == 2 { 65_535 } else { 70_000 })
            }
        ];
        for p in [b"one".to_vec(), Vec::new(), big.clone()] {
            port.send(&p).unwrap();
            assert_eq!(
                port.recv_timeout(PATIENCE).unwrap(),
                PortOutput::Packet(p.to_ascii_uppercase())
            );
        }
        if size == 1 {
            assert!(matches!(port.send(&[0; 256]), Err(PortError::Framing(_))));
        }
        port.close_input();
        assert_eq!(all(&port), vec![PortOutput::Eof, PortOutput::Exit(ExitReason::Normal)]);
    }
}

fn exit_status_is_the_reason() {
    let port = sh("exit 3").spawn().unwrap();
    let r = node().ctx::<()>().monitor(port.pid());
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Code(3))));
    // A monitor sees the same reason (or NoProc if it came after the end).
    let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason;
    assert!(matches!(down, ExitReason::Code(3) | ExitReason::NoProc), "{down:?}");
}

fn kill_and_signals() {
    let port = PortBuilder::new("sleep").arg("100").spawn().unwrap();
    let r = node().ctx::<()>().monitor(port.pid());
    port.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Killed)));
    let port = PortBuilder::new("sleep").arg("100").spawn().unwrap();
    // SAFETY: signalling the port's program.
    unsafe { libc::kill(port.os_pid(), libc::SIGTERM) };
    assert_eq!(
        all(&port).last(),
        Some(&PortOutput::Exit(ExitReason::Signal {
            signal: libc::SIGTERM,
            core_dumped: false
        }))
    );
}

fn stderr_separate_merged_or_logged() {
    let script = "echo out; echo err >&2";
    let port = sh(script).framing(Framing::Lines { max: 100 }).spawn().unwrap();
    let events = all(&port);
    assert!(events.contains(&line("out")));
    assert!(events.contains(&PortOutput::Stderr(b"err\n".to_vec())));
    let port = sh(script)
        .framing(Framing::Lines { max: 100 })
        .stderr(Stderr::Merge)
        .spawn()
        .unwrap();
    let events = all(&port);
    assert!(
        events.contains(&line("out")) && events.contains(&line("err")),
        "{events:?}"
    );
    let port = sh(script)
        .framing(Framing::Lines { max: 100 })
        .stderr(Stderr::Log)
        .spawn()
        .unwrap();
    assert_eq!(
        all(&port),
        vec![line("out"), PortOutput::Eof, PortOutput::Exit(ExitReason::Normal)]
    );
}

fn a_program_that_cannot_run_is_a_spawn_error() {
    match PortBuilder::new("/nonexistent/program").spawn() {
        Err(PortError::Spawn { program, source }) => {
            assert_eq!(program, std::path::Path::new("/nonexistent/program"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    let dir = std::env::temp_dir().join(format!("converge-noexec-{}", std::process::id()));
    std::fs::write(&dir, "#!/bin/sh\necho hi\n").unwrap();
    let err = PortBuilder::new(&dir).spawn().unwrap_err();
    std::fs::remove_file(&dir).unwrap();
    assert!(matches!(err, PortError::Spawn { .. }), "{err}");
    // Nothing was left running.
    assert!(node().processes().is_empty());
}

/// A port program that starts a child in the background and prints its pid.
fn with_grandchild(setsid: bool) -> (converge::port::Port, i32) {
    let script = if setsid {
        "setsid sleep 100 & echo $!; wait"
    } else {
        "sleep 100 & echo $!; wait"
    };
    let port = sh(script).framing(Framing::Lines { max: 100 }).spawn().unwrap();
    let grandchild = match port.recv_timeout(PATIENCE).unwrap() {
        PortOutput::Line { data, .. } => String::from_utf8(data).unwrap().trim().parse().unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(util::wait_until(PATIENCE, || util::os_alive(grandchild)));
    (port, grandchild)
}

fn killing_a_port_kills_its_group() {
    let (port, grandchild) = with_grandchild(false);
    port.kill();
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Killed)));
    // Dead, and reaped: not a zombie left to the application.
    assert!(util::wait_until(PATIENCE, || util::os_state(grandchild).is_none()));
}

fn setsid_descendants_die_with_the_cgroup() {
    let (port, grandchild) = with_grandchild(true);
    let cgroup_of = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if !cgroup_of(port.os_pid()).contains("converge-") {
        println!("skipped: no writable cgroup v2 hierarchy here, so a setsid descendant can escape");
        port.kill();
        // SAFETY: cleaning up the escaped process ourselves.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        let _ = all(&port);
        return;
    }
    // The port entered its cgroup before its program ran: so did everything
    // it started.
    assert_eq!(cgroup_of(grandchild), cgroup_of(port.os_pid()));
    port.kill();
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Killed)));
    // Dead, and reaped: not a zombie left to the application.
    assert!(util::wait_until(PATIENCE, || util::os_state(grandchild).is_none()));
}

fn environment_and_directory_are_the_owners() {
    let lines = |b: PortBuilder| -> Vec<String> {
        all(&b.framing(Framing::Lines { max: 4096 }).spawn().unwrap())
            .into_iter()
            .filter_map(|o| match o {
                PortOutput::Line { data, .. } => Some(String::from_utf8(data).unwrap()),
                _ => None,
            })
            .collect()
    };
    // The owner's environment, with the builder's changes.
    let home = std::env::var("HOME").unwrap_or_default();
    let got = lines(
        sh("echo \"$CONVERGE_TEST_VAR|$HOME|${PATH:+path}\"; pwd")
            .env("CONVERGE_TEST_VAR", "set here")
            .current_dir("/tmp"),
    );
    assert_eq!(got, vec![format!("set here|{home}|path"), "/tmp".to_string()]);
    let got = lines(sh("echo \"${HOME:-none}\"").env_remove("HOME"));
    assert_eq!(got, vec!["none".to_string()]);
    let got = lines(
        PortBuilder::new("/bin/sh")
            .args(["-c", "echo \"${HOME:-none}|$ONLY|$0\""])
            .env_clear()
            .env("ONLY", "this")
            .arg0("renamed"),
    );
    // `-c` makes the first operand after the script `$0`; with none, it is
    // the program's argv[0].
    assert_eq!(got, vec!["none|this|renamed".to_string()]);
    // A relative working directory is the owner's, joined.
    let here = std::env::current_dir().unwrap();
    let got = lines(sh("pwd").current_dir("src"));
    assert_eq!(got, vec![here.join("src").display().to_string()]);
    // No signal blocked, and SIGPIPE at its default (a Rust program
    // ignores it, and the ignored stay so across exec).
    let got = lines(sh("grep -E '^Sig(Blk|Ign)' /proc/self/status"));
    let mask = |name: &str| {
        let line = got.iter().find(|l| l.starts_with(name)).expect("in /proc/self/status");
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0);
    assert_eq!(mask("SigIgn:") & 1 << (libc::SIGPIPE - 1), 0);
}

fn a_script_without_a_shebang_runs_with_sh() {
    // As execvp(3) (and so `Command`) runs it: `/bin/sh` with its path,
    // found through PATH too.
    let dir = std::env::temp_dir().join(format!("converge-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("no-shebang");
    std::fs::write(&script, "echo \"ran $0 $1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = |b: PortBuilder| -> Vec<PortOutput> { all(&b.framing(Framing::Lines { max: 4096 }).spawn().unwrap()) };
    let by_path = out(PortBuilder::new(&script).arg("one"));
    let by_name = out(PortBuilder::new("no-shebang").arg("two").env("PATH", &dir));
    std::fs::remove_dir_all(&dir).unwrap();
    let shown = script.display();
    assert_eq!(by_path[0], line(&format!("ran {shown} one")), "{by_path:?}");
    assert_eq!(by_name[0], line(&format!("ran {shown} two")), "{by_name:?}");
}

fn spawn_errors_are_those_of_command() {
    // What `std::process::Command` says for the same program, in the same
    // environment: a name not on PATH, a file without the right to run it
    // (found on PATH, and by path), a directory.
    let dir = std::env::temp_dir().join(format!("converge-spawn-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\necho hi\n").unwrap();
    let path = dir.display().to_string();
    let cases: Vec<(std::ffi::OsString, Option<String>)> = vec![
        ("no-such-program-here".into(), Some(path.clone())),
        ("not-executable".into(), Some(path.clone())),
        (plain.clone().into(), None),
        (dir.clone().into(), None),
    ];
    for (program, path) in cases {
        let mut port = PortBuilder::new(&program);
        let mut command = Command::new(&program);
        if let Some(p) = &path {
            port = port.env("PATH", p);
            command.env("PATH", p);
        }
        let expected = command.spawn().map(drop).unwrap_err().kind();
        match port.spawn() {
            Err(PortError::Spawn { source, .. }) => {
                assert_eq!(source.kind(), expected, "{program:?}: {source}");
            }
            other => panic!("{program:?}: expected a spawn error, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // A nul byte in an argument.
    let expected = Command::new("true").arg("a\0b").spawn().map(drop).unwrap_err().kind();
    match PortBuilder::new("true").arg("a\0b").spawn() {
        Err(PortError::Spawn { source, .. }) => assert_eq!(source.kind(), expected, "{source}"),
        other => panic!("a nul byte: expected a spawn error, got {other:?}"),
    }
    assert!(node().processes().is_empty());
}

fn closing_input_gives_eof() {
    // Several ports and processes alive at once: none may hold another
    // port's input open.
    let ports: Vec<_> = (0..3).map(|_| PortBuilder::new("cat").spawn().unwrap()).collect();
    let others: Vec<_> = (0..3)
        .map(|_| {
            converge::spawn(|ctx: Ctx<()>| {
                let _ = ctx.recv_timeout(PATIENCE);
            })
            .unwrap()
        })
        .collect();
    let nested = converge::spawn(|ctx: Ctx<()>| {
        let p = PortBuilder::new("cat").spawn().unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
        p.kill();
    })
    .unwrap();
    ports[1].send(b"x").unwrap();
    ports[1].close_input();
    let events = all(&ports[1]);
    assert_eq!(
        events,
        vec![
            PortOutput::Data(b"x".to_vec()),
            PortOutput::Eof,
            PortOutput::Exit(ExitReason::Normal)
        ]
    );
    // The others are still running.
    for p in [&ports[0], &ports[2]] {
        assert!(converge::process_info(p.pid()).is_some());
        p.close_input();
        assert_eq!(all(p).last(), Some(&PortOutput::Exit(ExitReason::Normal)));
    }
    for o in others {
        o.send(()).unwrap();
    }
    nested.send(()).unwrap();
}

/// `good` (a `cat` with 2-byte packets) echoes a packet, then ends.
fn still_serves(good: &converge::port::Port) {
    good.send(b"still fine").unwrap();
    assert_eq!(
        good.recv_timeout(PATIENCE).unwrap(),
        PortOutput::Packet(b"still fine".to_vec())
    );
    good.close_input();
    let _ = all(good);
}

fn an_oversized_packet_ends_only_that_port() {
    let exe = std::env::current_exe().unwrap();
    let bad = PortBuilder::new(&exe)
        .env(util::HELPER, "bad_packet")
        .framing(Framing::Packet(4))
        .max_packet(1 << 20)
        .spawn()
        .unwrap();
    let good = PortBuilder::new("cat").framing(Framing::Packet(2)).spawn().unwrap();
    match all(&bad).last() {
        Some(PortOutput::Exit(ExitReason::Error(e))) => assert!(e.contains("over the limit"), "{e}"),
        other => panic!("expected an error exit, got {other:?}"),
    }
    still_serves(&good);
}

/// Port programs that write garbage for their framing: the owner is told
/// (`Broken`, then the end of the output) and counts it; a program still
/// running is ended with the error; another port of the same owner goes on.
fn port_garbage_is_refused_and_counted() {
    let errors = || node().stats().exits.get("error").copied().unwrap_or(0);
    let undecodable = || converge::process_info(node().pid()).unwrap().undecodable;
    let (errors_before, undecodable_before) = (errors(), undecodable());
    let good = PortBuilder::new("cat").framing(Framing::Packet(2)).spawn().unwrap();
    // A prefix of 65,535 bytes over a limit of 100, from a program that goes
    // on running, with a child of its own.
    let sleeper_file = std::env::temp_dir().join(format!("converge-garbage-{}", std::process::id()));
    let over = sh(&format!(
        r"sleep 100 & echo $! > {}; printf '\377\377garbage'; wait",
        sleeper_file.display()
    ))
    .framing(Framing::Packet(2))
    .max_packet(100)
    .spawn()
    .unwrap();
    // A packet of 40 bytes of which 3 come before the program ends (5 bytes
    // with its prefix).
    let cut = sh(r"printf '\000\050abc'").framing(Framing::Packet(2)).spawn().unwrap();
    // Lines have no wrong bytes: a long line without a newline, not UTF-8, is
    // cut at the limit and delivered.
    let lines = sh(r"printf '\377\376%0300d' 0")
        .framing(Framing::Lines { max: 128 })
        .spawn()
        .unwrap();

    // (The end of its output may come after its exit, when its child's copy
    // of the pipe closes: then there is no `Eof`.)
    let mut events = all(&over);
    events.retain(|e| *e != PortOutput::Eof);
    let why = "a packet of 65535 bytes is over the limit of 100 bytes";
    assert!(
        matches!(&events[..], [PortOutput::Broken(b), PortOutput::Exit(ExitReason::Error(e))] if b.contains(why) && e == b),
        "{events:?}"
    );
    // The program's child ended with it.
    let sleeper: i32 = std::fs::read_to_string(&sleeper_file).unwrap().trim().parse().unwrap();
    let _ = std::fs::remove_file(&sleeper_file);
    assert!(
        util::wait_until(PATIENCE, || !util::os_alive(sleeper)),
        "the port's child {sleeper} is gone"
    );
    // (The same: the next port's program, forked meanwhile, may hold a copy
    // of this one's pipe for a moment; 1 run in 12 saw no `Eof`.)
    let mut events = all(&cut);
    events.retain(|e| *e != PortOutput::Eof);
    assert!(
        matches!(&events[..], [PortOutput::Broken(b), PortOutput::Exit(ExitReason::Normal)] if b.contains("ended inside a packet (5 bytes)")),
        "{events:?}"
    );
    let events = all(&lines);
    let sizes: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            PortOutput::Line { data, cut: true } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [128, 128, 46]);
    assert_eq!(events.last(), Some(&PortOutput::Exit(ExitReason::Normal)));
    assert_eq!(undecodable(), undecodable_before + 2, "both broken outputs counted");
    assert!(
        util::wait_until(PATIENCE, || errors() == errors_before + 1),
        "the port ended for its output counted as an error exit"
    );
    still_serves(&good);
}

fn ports_end_with_their_owner() {
    for how in ["returns", "killed"] {
        let me = node().ctx::<(converge::Pid, i32)>();
        let back = me.mailbox();
        let (owner, ro) = converge::spawn_monitor(move |ctx: Ctx<()>| {
            let (port, grandchild) = with_grandchild(false);
            back.send((port.pid(), grandchild)).unwrap();
            let _ = ctx.recv_timeout(PATIENCE);
        })
        .unwrap();
        let (port, grandchild) = me.recv_timeout(PATIENCE).unwrap();
        let rp = node().ctx::<()>().monitor(port);
        if how == "killed" {
            owner.kill();
        } else {
            owner.send(()).unwrap();
        }
        let owner_reason = node().ctx::<()>().recv_down_timeout(ro, PATIENCE).unwrap().reason;
        let port_reason = node().ctx::<()>().recv_down_timeout(rp, PATIENCE).unwrap().reason;
        if how == "killed" {
            assert_eq!((owner_reason, port_reason), (ExitReason::Killed, ExitReason::Killed));
        } else {
            assert_eq!((owner_reason, port_reason), (ExitReason::Normal, ExitReason::Shutdown));
        }
        assert!(util::wait_until(PATIENCE, || !util::os_alive(grandchild)));
    }
}

fn shutdown_is_sigterm_then_sigkill() {
    // Stops on SIGTERM: Shutdown.
    let port = PortBuilder::new("sleep").arg("100").spawn().unwrap();
    port.shutdown();
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Shutdown)));
    // Ignores SIGTERM: killed when the timeout is up, and Killed (the kill
    // was needed), as OTP says of a child killed at its shutdown time. The
    // program does nothing that would wake the node meanwhile: the kill is
    // on time even when the node's exit watcher slept without a timeout
    // when the main thread asked (the kick that wakes it was once taken by
    // the main thread's own poll; rounds repeated to catch that race).
    for _ in 0..5 {
        let port = sh("trap '' TERM; echo ready; exec sleep 100")
            .framing(Framing::Lines { max: 100 })
            .shutdown_timeout(Duration::from_millis(200))
            .spawn()
            .unwrap();
        assert_eq!(port.recv_timeout(PATIENCE).unwrap(), line("ready"));
        let t = std::time::Instant::now();
        port.shutdown();
        assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Killed)));
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(3), "killed late: {:?}", t.elapsed());
    }
    // Handles SIGTERM and exits 0 by itself: Normal.
    let port = sh("trap 'exit 0' TERM; echo ready; while true; do sleep 0.05; done")
        .framing(Framing::Lines { max: 100 })
        .spawn()
        .unwrap();
    assert_eq!(port.recv_timeout(PATIENCE).unwrap(), line("ready"));
    port.shutdown();
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Normal)));
}

fn a_port_is_a_process() {
    let port = PortBuilder::new("sleep").arg("100").name("sleeper").spawn().unwrap();
    converge::register("the-sleeper", port.pid()).unwrap();
    assert_eq!(converge::whereis("the-sleeper"), Some(port.pid()));
    let info = converge::process_info(port.pid()).unwrap();
    assert_eq!(info.name.as_deref(), Some("sleeper"));
    assert_eq!(info.os_pid, Some(port.os_pid()));
    // Another process monitors it and kills it through its Pid.
    let pid = port.pid();
    let reason = converge::spawn_join(move |ctx: Ctx<()>| {
        let r = ctx.monitor(pid);
        converge::Mailbox::<()>::from_pid(pid).kill();
        ctx.recv_down_timeout(r, PATIENCE).unwrap().reason
    })
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(reason, ExitReason::Killed);
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Killed)));
    assert_eq!(converge::whereis("the-sleeper"), None);
}

fn a_linked_port_signals_its_owner() {
    // The node's main thread traps exits: it receives the port's exit signal.
    let port = sh("exit 7").link(true).spawn().unwrap();
    assert_eq!(all(&port).last(), Some(&PortOutput::Exit(ExitReason::Code(7))));
    match node().ctx::<()>().recv_event_timeout(PATIENCE).unwrap() {
        Event::Exit(e) => assert_eq!((e.from, e.reason), (port.pid(), ExitReason::Code(7))),
        other => panic!("unexpected {other:?}"),
    }
    // A process that does not trap dies with it.
    let (_p, r) = converge::spawn_monitor(|ctx: Ctx<()>| {
        let _port = sh("sleep 0.1; exit 9").link(true).spawn().unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Code(9)
    );
}

fn node_with_ports() {
    let node = converge::init().unwrap();
    let mut pids = Vec::new();
    let (port, grandchild) = with_grandchild_in(&node);
    pids.push(port.os_pid());
    pids.push(grandchild);
    let me = node.ctx::<i32>();
    let back = me.mailbox();
    converge::spawn(move |ctx: Ctx<()>| {
        let p = PortBuilder::new("sleep").arg("100").spawn().unwrap();
        back.send(p.os_pid()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE * 6);
    })
    .unwrap();
    pids.push(me.recv_timeout(PATIENCE).unwrap());
    say("pids", pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" "));
    let _ = me.recv_timeout(PATIENCE * 6);
}

fn with_grandchild_in(_node: &converge::Node) -> (converge::port::Port, i32) {
    with_grandchild(false)
}

fn no_port_survives_a_killed_node() {
    let mut h = HelperProcess::start(helper("node_with_ports"));
    let pids: Vec<i32> = h
        .expect("pids")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| util::os_alive(p)));
    h.child.kill().unwrap();
    h.child.wait().unwrap();
    assert!(
        util::wait_until(Duration::from_secs(2), || pids.iter().all(|&p| !util::os_alive(p))),
        "survivors: {:?}",
        pids.iter().filter(|&&p| util::os_alive(p)).collect::<Vec<_>>()
    );
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A node whose zygote (the ports' parent) is killed under its ports.
fn zygote_dies() {
    let _node = converge::init().unwrap();
    let port = PortBuilder::new("sleep").arg("100").spawn().unwrap();
    let zygote = parent_of(port.os_pid());
    assert_ne!(zygote, std::process::id() as i32);
    // SAFETY: killing this node's own zygote.
    unsafe { libc::kill(zygote, libc::SIGKILL) };
    // The node adopts the port: its end is still observed, once.
    assert!(util::wait_until(PATIENCE, || parent_of(port.os_pid()) == std::process::id() as i32));
    port.kill();
    say("exit", format!("{:?}", all(&port).last().unwrap()));
    say("port", port.os_pid());
    // The zygote's spare took over: new ports start.
    match PortBuilder::new("true").spawn() {
        Ok(p) => say("spawn", format!("{:?}", all(&p).last().unwrap())),
        Err(e) => say("spawn", e),
    }
}

fn ports_are_observed_after_the_zygote_dies() {
    let mut h = HelperProcess::start(helper("zygote_dies"));
    assert_eq!(h.expect("exit"), "Exit(Killed)");
    let port: i32 = h.expect("port").parse().unwrap();
    assert_eq!(h.expect("spawn"), "Exit(Normal)");
    assert!(h.wait(PATIENCE).is_some_and(|s| s.success()));
    assert!(!util::os_alive(port));
}

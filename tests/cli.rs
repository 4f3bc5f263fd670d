//! The `converge` command (feature `cli`). `converge run` promises the exit
//! statuses of coreutils `timeout` and of a shell: each case runs the real
//! `timeout` beside it and expects the same status.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn converge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_converge"))
}

fn run(args: &[&str]) -> Output {
    converge().arg("run").args(args).stdin(Stdio::null()).output().unwrap()
}

/// What `timeout ARGS` exits with.
fn timeout(args: &[&str]) -> i32 {
    let s = Command::new("timeout")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    // `timeout` re-raises a signal its child died of (or the KILL it had to
    // send) on itself; a shell reports that as 128+N.
    s.code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap())
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("converge run exits, it is not killed")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("converge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn script(name: &str, body: &str) -> String {
    let p = scratch(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn the_program_s_own_status_and_output() {
    let o = run(&["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(code(&o), 3);
    assert_eq!(code(&o), timeout(&["10", "sh", "-c", "exit 3"]));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    assert_eq!(code(&run(&["--", "true"])), 0);
}

#[test]
fn a_signal_is_128_plus_its_number() {
    for sig in ["KILL", "TERM", "SEGV", "INT"] {
        let cmd = format!("kill -{sig} $$");
        let o = run(&["--", "sh", "-c", &cmd]);
        assert_eq!(code(&o), timeout(&["10", "sh", "-c", &cmd]), "{sig}");
    }
    assert_eq!(code(&run(&["--", "sh", "-c", "kill -9 $$"])), 137);
}

#[test]
fn a_timeout_is_124_and_a_needed_kill_137() {
    let t = Instant::now();
    let o = run(&["--timeout", "0.3", "--", "sleep", "10"]);
    assert_eq!(code(&o), 124);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(timeout(&["0.3", "sleep", "10"]), 124);
    // Handles TERM and exits 7 by itself: still a timeout.
    let stops = script("stops.sh", "trap 'exit 7' TERM\nsleep 10 & wait");
    assert_eq!(
        code(&run(&["--timeout", "0.3", "--", &stops])),
        timeout(&["0.3", &stops])
    );
    // Ignores TERM: killed after --kill-after, as `timeout -k`.
    let stubborn = script("stubborn.sh", "trap '' TERM\nexec sleep 10");
    let t = Instant::now();
    let o = run(&["--timeout", "0.2", "--kill-after", "0.3", "--", &stubborn]);
    assert_eq!(code(&o), 137);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(timeout(&["-k", "0.3", "0.2", &stubborn]), 137);
    // Units.
    assert_eq!(code(&run(&["--timeout", "0.005m", "--", "sleep", "10"])), 124);
}

#[test]
fn missing_and_unrunnable_programs_are_127_and_126() {
    let o = run(&["--", "no-such-program-here"]);
    assert_eq!(code(&o), 127);
    assert_eq!(timeout(&["1", "no-such-program-here"]), 127);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let dir = std::env::temp_dir();
    let dir = dir.to_str().unwrap();
    assert_eq!(code(&run(&["--", dir])), 126);
    assert_eq!(timeout(&["1", dir]), 126);
    let plain = scratch("not-executable");
    std::fs::write(&plain, "echo hi\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let plain = plain.to_str().unwrap();
    assert_eq!(code(&run(&["--", plain])), 126);
    assert_eq!(timeout(&["1", plain]), 126);
    assert_eq!(code(&run(&["--", "./no/such/path"])), 127);
}

#[test]
fn converge_s_own_failures_are_125() {
    for args in [
        &["--timeout", "abc", "--", "true"][..],
        &["--timeout", "-1", "--", "true"],
        &["--timeout", "5x", "--", "true"],
        &["--env", "NOEQUALS", "--", "true"],
        &["--no-such-flag", "--", "true"],
        &[],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 125, "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: a clear error");
    }
    assert_eq!(timeout(&["abc", "true"]), 125);
}

#[test]
fn input_passes_through_and_the_environment_and_directory_apply() {
    let mut child = converge()
        .args(["run", "--", "sh", "-c", "tr a-z A-Z; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "HELLO\nWORLD\ndone\n");
    let dir = std::env::temp_dir();
    let o = run(&[
        "--workdir",
        dir.to_str().unwrap(),
        "--env",
        "GREETING=a=b",
        "--",
        "sh",
        "-c",
        "pwd; echo $GREETING",
    ]);
    let want = format!("{}\na=b\n", dir.canonicalize().unwrap().display());
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
}

#[test]
fn signals_reach_the_program_s_whole_group() {
    // The program and its background child both report the TERM; the
    // program's own status is the command's.
    let marker = scratch("got-term");
    let _ = std::fs::remove_file(&marker);
    let body = format!(
        "trap 'echo child >> {m}; exit 0' TERM; sleep 30 & wait",
        m = marker.display()
    );
    let child_script = script("child.sh", &body);
    let main = script(
        "main.sh",
        &format!(
            "trap 'echo main >> {m}; wait; exit 7' TERM\n{child_script} &\necho ready\nwait",
            m = marker.display()
        ),
    );
    let mut c = converge()
        .args(["run", "--", &main])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line, "ready\n");
    // As `kill` from another terminal would.
    Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "converge run did not end");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(7));
    let mut got: Vec<String> = std::fs::read_to_string(&marker)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    got.sort();
    assert_eq!(got, ["child", "main"]);
}

#[test]
fn help_and_version_exit_0() {
    let o = converge().arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("run"));
    let o = converge().args(["run", "--help"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--timeout"));
    let o = converge().arg("--version").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
}

//! `converge supervise` (feature `cli`) keeps a server running as
//! supervisord does: start failures within `--startsecs`, retried
//! `--startretries` times before giving up (checked against supervisord
//! itself where it is installed), restarts with a doubling backoff within
//! `--max-restarts`, `transient` restarts only after a failure, and a stop
//! that reaches the server's whole group.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("converge-supervise-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn supervise(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_converge"));
    c.arg("supervise").args(args).stdin(Stdio::null());
    c
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let mut child = supervise(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap());
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    (status.code().expect("converge supervise exits"), reader.join().unwrap())
}

/// The times (seconds) the server wrote, one line per start.
fn starts(log: &str) -> Vec<f64> {
    log.lines().map(|l| l.trim().parse().unwrap()).collect()
}

const STAMP: &str = "date +%s.%N >> starts";

/// Kills process `0` if the test fails while it may still run.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// Runs supervisord (in the foreground, with its own configuration in
/// `dir`) with one program until its log has `until`; its log.
fn supervisord(dir: &Path, program: &str, until: &str) -> Option<String> {
    let found = Command::new("supervisord")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("supervisord is not installed: checking converge against its recorded behaviour only");
        return None;
    }
    let d = dir.display();
    // supervisord's configuration expands `%(name)s`: a `%` is written `%%`.
    let program = program.replace('%', "%%");
    let conf = format!(
        "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n\
         childlogdir={d}\n\n[program:p]\ndirectory={d}\n{program}\n"
    );
    std::fs::write(dir.join("supervisord.conf"), conf).unwrap();
    let mut child = Command::new("supervisord")
        .args(["-c", "supervisord.conf"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(dir.join("supervisord.log")).unwrap_or_default();
        if log.contains(until) {
            break log;
        }
        assert!(Instant::now() < deadline, "supervisord never logged {until:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // It stops its programs on TERM.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_bounded(&mut child, Duration::from_secs(20));
    Some(log)
}

#[test]
fn start_failures_give_up_after_startretries_as_supervisord() {
    let dir = Scratch::new("fatal");
    let body = format!("cd {}; {STAMP}; exit 3", dir.0.display());
    let (code, log) = run(&["--startsecs", "3", "--startretries", "2", "--", "sh", "-c", &body]);
    // 1 + 2 retries, then FATAL with the server's last status.
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("FATAL"), "{log}");
    let ours = starts(&dir.read("starts"));
    assert_eq!(ours.len(), 3, "{log}");
    // Backoff: 100 ms, then 200 ms.
    let gaps: Vec<f64> = ours.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= 0.1 && gaps[1] >= 0.2, "{gaps:?}");
    assert!(gaps[1] > gaps[0], "{gaps:?}");
    // supervisord, on the same program (startsecs above its 1 s tick, or it
    // may see a quick exit late and call it a start).
    std::fs::remove_file(dir.path("starts")).unwrap();
    let program = format!("command=/bin/sh -c '{STAMP}; exit 3'\nstartsecs=3\nstartretries=2\nautorestart=true");
    if let Some(log) = supervisord(&dir.0, &program, "entered FATAL state") {
        assert_eq!(starts(&dir.read("starts")).len(), ours.len(), "{log}");
    }
}

#[test]
fn a_server_that_started_is_restarted_within_max_restarts() {
    let dir = Scratch::new("restarts");
    let body = format!("cd {}; {STAMP}; sleep 0.3; exit 5", dir.0.display());
    let (code, log) = run(&["--startsecs", "0.1", "--max-restarts", "2/20s", "--", "sh", "-c", &body]);
    assert_eq!(code, 5, "{log}");
    assert_eq!(starts(&dir.read("starts")).len(), 3, "{log}");
    assert!(log.contains("--max-restarts"), "{log}");
    // A start failure in between does not count as a restart, and a start
    // resets the count of start failures.
    let _ = std::fs::remove_file(dir.path("starts"));
    let body = format!(
        "cd {}; {STAMP}; n=$(wc -l < starts); if [ $n -eq 2 ] || [ $n -eq 4 ]; then exit 6; fi; sleep 0.3; exit 7",
        dir.0.display()
    );
    let (code, log) = run(&[
        "--startsecs",
        "0.2",
        "--startretries",
        "1",
        "--max-restarts",
        "2/20s",
        "--",
        "sh",
        "-c",
        &body,
    ]);
    assert_eq!(code, 7, "{log}");
    // Runs 1, 3, 5 started; 2 and 4 failed to start (one retry each).
    assert_eq!(starts(&dir.read("starts")).len(), 5, "{log}");
}

#[test]
fn transient_restarts_only_after_a_failure_as_autorestart_unexpected() {
    let dir = Scratch::new("transient");
    let body = format!(
        "cd {}; {STAMP}; n=$(wc -l < starts); sleep 0.3; [ $n -ge 2 ] && exit 0; exit 4",
        dir.0.display()
    );
    let (code, log) = run(&["--restart", "transient", "--startsecs", "0.1", "--", "sh", "-c", &body]);
    assert_eq!(code, 0, "{log}");
    assert_eq!(starts(&dir.read("starts")).len(), 2, "{log}");
    // permanent: exit 0 is restarted too.
    let _ = std::fs::remove_file(dir.path("starts"));
    let body = format!("cd {}; {STAMP}; sleep 0.3; exit 0", dir.0.display());
    let (code, log) = run(&["--startsecs", "0.1", "--max-restarts", "1/20s", "--", "sh", "-c", &body]);
    assert_eq!((code, starts(&dir.read("starts")).len()), (0, 2), "{log}");
    // supervisord's autorestart=unexpected leaves a program that exited 0
    // EXITED.
    let _ = std::fs::remove_file(dir.path("starts"));
    let program = format!("command=/bin/sh -c '{STAMP}; sleep 1.5; exit 0'\nstartsecs=1\nautorestart=unexpected");
    if let Some(log) = supervisord(&dir.0, &program, "exit status 0; expected") {
        assert_eq!(starts(&dir.read("starts")).len(), 1, "{log}");
    }
}

#[test]
fn a_stop_reaches_the_whole_group_then_kills() {
    for (server, stop_timeout, status) in [
        // Stops on TERM (its child too): 0.
        ("echo up; sleep 34.5 & wait", "10s", 0),
        // Ignores TERM: killed after --stop-timeout, 137.
        ("trap '' TERM; echo up; sleep 34.5 & wait", "0.3", 137),
    ] {
        let mut child = supervise(&["--stop-timeout", stop_timeout, "--", "sh", "-c", server])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _guard = KillOnPanic(child.id());
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "up\n");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let s = wait_bounded(&mut child, Duration::from_secs(15));
        assert_eq!(s.code(), Some(status), "{server}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ps = Command::new("ps").args(["-eo", "args="]).output().unwrap();
            if !String::from_utf8_lossy(&ps.stdout)
                .lines()
                .any(|l| l.trim() == "sleep 34.5")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the server's child outlived the stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn sighup_restarts_the_server() {
    let dir = Scratch::new("hup");
    let body = format!("cd {}; {STAMP}; echo up; sleep 35.5 & wait", dir.0.display());
    let mut child = supervise(&["--", "sh", "-c", &body])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "up\n");
    // At once, not when the server would have ended by itself.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(starts(&dir.read("starts")).len(), 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(wait_bounded(&mut child, Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn bad_command_lines_and_missing_servers() {
    assert_eq!(run(&["--", "no-such-server-here"]).0, 127);
    for args in [
        &["--bogus", "--", "true"][..],
        &["--max-restarts", "5", "--", "true"],
        &["--restart", "sometimes", "--", "true"],
        &[],
    ] {
        let (code, log) = run(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(!log.is_empty(), "{args:?}");
    }
}

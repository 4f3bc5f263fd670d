//! The `converge` command (feature `cli`). `converge run` promises the exit
//! statuses of coreutils `timeout` and of a shell: each case runs the real
//! `timeout` beside it and expects the same status. Then node daemons
//! (`converge node`), alone and in a cluster on loopback: runs through them,
//! on other nodes and anywhere, `nodes`, `ps`, and nodes lost under runs.

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The command, with no node daemon to find (the runs of these cases are
/// on a node of their own, unless a case starts daemons in its own
/// directory).
fn converge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_converge"));
    let none = std::env::temp_dir().join(format!("converge-cli-nodaemon-{}", std::process::id()));
    c.env("CONVERGE_RUNTIME_DIR", none).env_remove("CONVERGE_NODE");
    c
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
        "trap 'echo child >> {m}; exit 0' TERM; echo child-ready; sleep 30 & wait",
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
    // Both have set their traps (in either order).
    let mut out = std::io::BufReader::new(c.stdout.as_mut().unwrap());
    let mut lines: Vec<String> = (0..2)
        .map(|_| {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            line
        })
        .collect();
    lines.sort();
    assert_eq!(lines, ["child-ready\n", "ready\n"]);
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
    // Every subcommand has examples in its help; an unknown one is a usage
    // error (2).
    for sub in ["run", "parallel", "supervise", "node", "nodes", "ps"] {
        let o = converge().args([sub, "--help"]).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{sub}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Examples:"), "{sub}");
    }
    assert_eq!(
        converge().arg("no-such-command").output().unwrap().status.code(),
        Some(2)
    );
}

/// Polls `f` every 10 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn os_alive(pid: i32) -> bool {
    // A zombie is dead: only its parent has not looked yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A directory of daemons for one case, and the daemons started in it:
/// stopped (TERM, then KILL) and checked gone when the case ends.
struct Cluster {
    dir: PathBuf,
    secret: PathBuf,
    nodes: Vec<(String, Child)>,
}

impl Cluster {
    /// Daemons `alpha` and `beta`, beta joined to alpha, each knowing the
    /// other.
    fn pair(case: &str) -> Cluster {
        let mut c = Cluster::new(case);
        c.start_member("alpha", None, &[], &[]);
        c.start_member("beta", Some("alpha"), &[], &[]);
        assert!(c.knows("alpha", "beta"));
        c
    }

    fn new(case: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("converge-cli-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "a secret for the tests of the command").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        Cluster {
            dir,
            secret,
            nodes: Vec::new(),
        }
    }

    /// The command, finding the daemons of this case.
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_converge"));
        c.env("CONVERGE_RUNTIME_DIR", &self.dir).env_remove("CONVERGE_NODE");
        c
    }

    /// Starts node `name` with `args`, and waits for its socket.
    fn start(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
        let mut c = self.cmd();
        c.args(["node", "--name", name])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().unwrap();
        self.nodes.push((name.to_owned(), child));
        let socket = self.dir.join(format!("{name}.sock"));
        assert!(
            wait_until(Duration::from_secs(10), || UnixStream::connect(&socket).is_ok()),
            "node {name} did not start"
        );
    }

    /// Starts node `name` listening on loopback, joined to `seed`'s address.
    fn start_member(&mut self, name: &str, seed: Option<&str>, extra: &[&str], env: &[(&str, &str)]) {
        let secret = self.secret.to_string_lossy().into_owned();
        let mut args = vec!["--listen", "127.0.0.1:0", "--secret-file", &secret];
        let addr;
        if let Some(seed) = seed {
            addr = self.addr_of(seed);
            args.extend(["--join", &addr]);
        }
        args.extend(extra);
        self.start(name, &args, env);
    }

    /// Where node `name` listens, as it says.
    fn addr_of(&self, name: &str) -> String {
        let rows = self.json(&["nodes", "--node", name, "--json"]);
        let here = rows.iter().find(|r| r["here"] == true).unwrap();
        here["addr"].as_str().unwrap().to_owned()
    }

    /// The JSON lines a command prints.
    fn json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let o = self.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self.nodes.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    /// SIGKILL to node `name` (its zygote is left to see it die).
    fn kill(&self, name: &str) {
        let pid = self.nodes.iter().find(|(n, _)| n == name).unwrap().1.id();
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }

    /// Waits until node `asked` knows `of` and its load.
    fn knows(&self, asked: &str, of: &str) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.json(&["nodes", "--node", asked, "--json"])
                .iter()
                .any(|r| r["name"] == of && r["slots"].is_u64())
        })
    }

    /// `ps` of node `asked`, as JSON rows.
    fn ps(&self, asked: &str) -> Vec<serde_json::Value> {
        self.json(&["ps", "--node", asked, "--json"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        for (name, child) in &mut self.nodes {
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !std::thread::panicking() {
                        panic!("node {name} did not stop on TERM");
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_node_daemon_runs_programs_for_its_clients_and_lists_them() {
    let mut c = Cluster::new("alone");
    c.start("solo", &["--slots", "3"], &[]);
    // The socket is the user's only, in a directory that is the user's only.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&c.dir.join("solo.sock")), 0o600);
    let run = |args: &[&str], input: &str| {
        let mut child = c
            .cmd()
            .env("A", "1")
            .arg("run")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run(&["--", "sh", "-c", "echo out; echo err >&2; exit 3"], "");
    assert_eq!((code(&o), out(&o), err(&o)), (3, "out\n".into(), "err\n".into()));
    // Input passes through; the client's environment and directory are the
    // program's; --env adds to it.
    let o = run(&["--env", "B=2", "--", "sh", "-c", "cat; echo $A$B; pwd"], "line\n");
    let here = std::env::current_dir().unwrap();
    assert_eq!(out(&o), format!("line\n12\n{}\n", here.display()));
    // The statuses are a shell's and `timeout`'s, as without a daemon.
    assert_eq!(code(&run(&["--", "sh", "-c", "kill -KILL $$"], "")), 137);
    assert_eq!(code(&run(&["--timeout", "0.2", "--", "sleep", "10"], "")), 124);
    let o = run(&["--", "no-such-program-here"], "");
    assert_eq!(code(&o), 127, "{}", err(&o));
    let o = run(&["--", c.dir.to_str().unwrap()], "");
    assert_eq!(code(&o), 126, "{}", err(&o));
    // `ps` lists each run with its state; interrupted apart from failed.
    let rows = c.ps("solo");
    let states: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["command"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("sh -c echo out; echo err >&2; exit 3", "failed"),
            ("sh -c cat; echo $A$B; pwd", "exited"),
            ("sh -c kill -KILL $$", "interrupted"),
            ("sleep 10", "interrupted"),
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r["node"] == "solo" && r["os_pid"].as_i64().unwrap() > 0)
    );
    assert_eq!(rows[2]["last_exit"], "killed");
    let nodes = c.json(&["nodes", "--json"]);
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0]["name"].as_str(), nodes[0]["slots"].as_u64()),
        (Some("solo"), Some(3))
    );
    assert_eq!(nodes[0]["busy"], 0);
    // TERM stops it: status 0, socket gone.
    let child = c.child("solo");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || child
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(!c.dir.join("solo.sock").exists());
}

#[test]
fn clients_pick_their_node_or_say_why_they_cannot() {
    let mut c = Cluster::new("pick");
    // No daemon: `run` starts a node of its own, `nodes` and `ps` cannot.
    let o = c.cmd().args(["run", "--", "echo", "embedded"]).output().unwrap();
    assert_eq!((code(&o), out(&o)), (0, "embedded\n".into()));
    let o = c.cmd().args(["nodes"]).output().unwrap();
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("no node runs"), "{}", err(&o));
    let o = c.cmd().args(["run", "--on", "b", "--", "true"]).output().unwrap();
    assert_eq!(code(&o), 125);
    c.start("a", &[], &[]);
    c.start("b", &[], &[]);
    // Two: a usage error, in each subcommand's own status.
    let o = c.cmd().args(["ps"]).output().unwrap();
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("several nodes run (a, b)"), "{}", err(&o));
    let o = c.cmd().args(["run", "--", "true"]).output().unwrap();
    assert_eq!(code(&o), 125, "{}", err(&o));
    // Named by flag or by the environment.
    let o = c.cmd().args(["run", "--node", "b", "--", "true"]).output().unwrap();
    assert_eq!(code(&o), 0);
    let o = c
        .cmd()
        .env("CONVERGE_NODE", "a")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    assert_eq!(c.ps("a").len(), 1);
    assert_eq!(c.ps("b").len(), 1);
    let o = c.cmd().args(["ps", "--node", "nope"]).output().unwrap();
    assert_eq!(code(&o), 2);
    // A second daemon of the same name is refused; so is a directory that
    // others may enter.
    let o = c.cmd().args(["node", "--name", "a"]).output().unwrap();
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("already runs"), "{}", err(&o));
    let open = c.dir.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = c
        .cmd()
        .env("CONVERGE_RUNTIME_DIR", &open)
        .args(["node", "--name", "z"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("it must be 0700"), "{}", err(&o));
    // Nor does a client trust a socket there: it would send its
    // environment and input to whoever made it.
    let o = c
        .cmd()
        .env("CONVERGE_RUNTIME_DIR", &open)
        .args(["ps"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("refusing to talk to a node"), "{}", err(&o));
    let o = c.cmd().args(["run", "--node", "../a", "--", "true"]).output().unwrap();
    assert_eq!(code(&o), 125);
    assert!(err(&o).contains("not a node name"), "{}", err(&o));
    // Bad flags: usage errors.
    let o = c.cmd().args(["node", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(err(&o).contains("--secret-file"), "{}", err(&o));
    assert_ne!(code(&o), 0);
    let o = c.cmd().args(["node", "--slots", "0"]).output().unwrap();
    assert_eq!(code(&o), 2);
}

#[test]
fn programs_run_on_the_node_named_or_wherever_there_is_room() {
    let mut c = Cluster::new("place");
    c.start_member("alpha", None, &["--slots", "1"], &[("WHERE", "alpha")]);
    c.start_member("beta", Some("alpha"), &["--slots", "8"], &[("WHERE", "beta")]);
    assert!(c.knows("alpha", "beta") && c.knows("beta", "alpha"));
    let run = |args: &[&str]| {
        c.cmd()
            .env("CONVERGE_NODE", "alpha")
            .env("WHERE", "client")
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Here, the client's environment; there, that node's, with --env.
    assert_eq!(out(&run(&["--", "sh", "-c", "echo $WHERE"])), "client\n");
    let o = run(&[
        "--on",
        "beta",
        "--env",
        "X=1",
        "--",
        "sh",
        "-c",
        "echo $WHERE$X; echo e >&2; exit 4",
    ]);
    assert_eq!((code(&o), out(&o), err(&o)), (4, "beta1\n".into(), "e\n".into()));
    // Beta has 8 free slots, alpha 1.
    assert_eq!(out(&run(&["--anywhere", "--", "sh", "-c", "echo $WHERE"])), "beta\n");
    // A local program is sent to the other node by its content hash.
    let tool = script("tool.sh", "echo tool \"$@\" on $WHERE; exit 5");
    let o = run(&["--on", "beta", "--", &tool, "a b"]);
    assert_eq!((code(&o), out(&o)), (5, "tool a b on beta\n".into()), "{}", err(&o));
    let cached: Vec<_> = std::fs::read_dir(c.dir.join("beta.cache")).unwrap().collect();
    assert_eq!(cached.len(), 1);
    // Again: from the cache (same output), and a changed file is new.
    assert_eq!(out(&run(&["--on", "beta", "--", &tool, "x"])), "tool x on beta\n");
    std::fs::write(&tool, "#!/bin/sh\necho changed\n").unwrap();
    assert_eq!(out(&run(&["--on", "beta", "--", &tool])), "changed\n");
    assert_eq!(std::fs::read_dir(c.dir.join("beta.cache")).unwrap().count(), 2);
    // Input goes there; a timeout there is 124; a missing program 127.
    let mut child = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .args(["run", "--on", "beta", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"to beta\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((code(&o), out(&o)), (0, "to beta\n".into()));
    assert_eq!(
        code(&run(&["--on", "beta", "--timeout", "0.3", "--", "sleep", "10"])),
        124
    );
    assert_eq!(code(&run(&["--on", "beta", "--", "no-such-program-there"])), 127);
    let o = run(&["--on", "gamma", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(err(&o).contains("no node named \"gamma\""), "{}", err(&o));
    // The owner lists them, with the node each ran on.
    let rows = c.ps("alpha");
    let nodes: Vec<&str> = rows.iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.iter().filter(|n| **n == "beta").count(), 8, "{rows:?}");
    assert!(rows.iter().all(|r| r["owner"] == "alpha"));
    // Beta owns none, but lists the cluster's.
    assert_eq!(c.ps("beta").len(), rows.len());
}

#[test]
fn a_lost_node_ends_its_runs_and_theirs_end_with_their_owner() {
    let c = &mut Cluster::new("lost");
    c.start_member("alpha", None, &[], &[]);
    c.start_member("beta", Some("alpha"), &[], &[]);
    c.start_member("gamma", Some("alpha"), &[], &[]);
    assert!(c.knows("alpha", "beta") && c.knows("alpha", "gamma") && c.knows("gamma", "beta"));
    let background = |owner: &str, on: &str| {
        let mut child = c
            .cmd()
            .env("CONVERGE_NODE", owner)
            .args(["run", "--on", on, "--", "sh", "-c", "echo started; exec sleep 60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "started\n");
        child
    };
    let os_pid = |owner: &str| {
        let rows = c.ps(owner);
        let row = rows.iter().find(|r| r["state"] == "running").unwrap();
        row["os_pid"].as_i64().unwrap() as i32
    };
    // Beta dies under alpha's run: the client exits 125 at once (the
    // session broke), and beta's zygote takes the program down.
    let mut client = background("alpha", "beta");
    let program = os_pid("alpha");
    assert!(os_alive(program));
    c.kill("beta");
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(2), || client
        .try_wait()
        .unwrap()
        .is_some()));
    let o = client.wait_with_output().unwrap();
    assert_eq!(code(&o), 125);
    assert!(err(&o).contains("NoConnection"), "{}", err(&o));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(wait_until(Duration::from_secs(2), || !os_alive(program)));
    let rows = c.ps("alpha");
    assert_eq!(rows.last().unwrap()["state"], "interrupted");
    assert_eq!(rows.last().unwrap()["last_exit"], "connection to node lost");
    // Gamma's run on alpha ends when gamma, its owner, is killed.
    let mut client = background("gamma", "alpha");
    let program = os_pid("gamma");
    c.kill("gamma");
    assert!(
        wait_until(Duration::from_secs(3), || !os_alive(program)),
        "the program outlived its owner"
    );
    assert!(wait_until(Duration::from_secs(2), || client
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(code(&client.wait_with_output().unwrap()), 125);
    // Alpha took note: nothing runs there.
    assert!(wait_until(Duration::from_secs(5), || c
        .json(&["nodes", "--node", "alpha", "--json"])
        .iter()
        .any(|r| r["here"] == true && r["busy"] == 0)));
}

#[test]
fn a_run_placed_on_a_node_that_just_died_is_placed_again() {
    let mut c = Cluster::new("replace");
    c.start_member("alpha", None, &["--slots", "1"], &[("WHERE", "alpha")]);
    c.start_member("beta", Some("alpha"), &["--slots", "8"], &[("WHERE", "beta")]);
    assert!(c.knows("alpha", "beta"));
    c.kill("beta");
    let _ = c.child("beta").wait();
    // Membership still lists beta, with the most free slots: the run goes
    // there first, gets no answer, and runs on alpha.
    let listed = c.json(&["nodes", "--node", "alpha", "--json"]);
    assert!(listed.iter().any(|r| r["name"] == "beta"), "{listed:?}");
    let t = Instant::now();
    let o = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .env("WHERE", "client")
        .args(["run", "--anywhere", "--", "sh", "-c", "echo $WHERE"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Here, with the client's environment.
    assert_eq!((code(&o), out(&o)), (0, "client\n".into()), "{}", err(&o));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "placed again only after {:?}",
        t.elapsed()
    );
    // Named, it is not moved: 125, with the reason.
    let o = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .args(["run", "--on", "beta", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 125, "{}", err(&o));
}

/// Writes `y`s to `cmd`'s input until it takes no more (256 MiB at most);
/// how much it took before the program read any. The program says it is
/// ready, sleeps a second, then reads ten bytes and ends.
fn taken_before_reading(mut cmd: Command) -> u64 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut child = cmd
        .args(["--", "sh", "-c", "echo ready; sleep 1; head -c 10 >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            let chunk = vec![b'y'; 64 << 10];
            while written.load(Ordering::Relaxed) < 256 << 20 && stdin.write_all(&chunk).is_ok() {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        })
    };
    // Once the program runs (its client, node and pipes are all up), until
    // the writer is held up: the same count three looks in a row.
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let mut seen = (u64::MAX, 0);
    assert!(wait_until(Duration::from_secs(5), || {
        let now = written.load(Ordering::Relaxed);
        seen = if now == seen.0 { (now, seen.1 + 1) } else { (now, 0) };
        std::thread::sleep(Duration::from_millis(50));
        seen.1 >= 3
    }));
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    writer.join().unwrap();
    seen.0
}

/// `converge run` three ways, for a cluster of alpha and beta: through
/// alpha's daemon on alpha, through it on beta, and with no daemon.
fn three_ways(c: &Cluster) -> [(&'static str, Command); 3] {
    let through = |on: &str| {
        let mut cmd = c.cmd();
        cmd.env("CONVERGE_NODE", "alpha").args(["run", "--on", on]);
        cmd
    };
    let mut embedded = converge();
    embedded.arg("run");
    [
        ("here", through("alpha")),
        ("there", through("beta")),
        ("embedded", embedded),
    ]
}

#[test]
fn input_waits_for_the_program_to_take_it() {
    let c = Cluster::pair("window");
    // A window of 1 MiB, and the pipes and sockets on the way: far from
    // everything a writer would push into a run that never waits.
    for (how, cmd) in three_ways(&c) {
        let taken = taken_before_reading(cmd);
        assert!(
            taken < 16 << 20,
            "{how}: {taken} bytes taken before the program read any"
        );
    }
    // Input well past the window reaches a program that reads it without a
    // word back (nothing else wakes the run): all of it, at once.
    for (how, mut cmd) in three_ways(&c) {
        let input = scratch(&format!("eight-mib-{how}"));
        std::fs::write(&input, vec![b'x'; 8 << 20]).unwrap();
        let t = Instant::now();
        let o = cmd
            .args(["--timeout", "20", "--", "wc", "-c"])
            .stdin(std::fs::File::open(&input).unwrap())
            .output()
            .unwrap();
        assert_eq!((code(&o), out(&o).trim()), (0, "8388608"), "{how}: {}", err(&o));
        assert!(t.elapsed() < Duration::from_secs(10), "{how}: {:?}", t.elapsed());
    }
}

#[test]
fn output_waits_for_the_client_to_take_it() {
    let c = Cluster::pair("backlog");
    for (how, mut cmd) in three_ways(&c) {
        let done = scratch(&format!("backlog-done-{how}"));
        let _ = std::fs::remove_file(&done);
        let script = format!("head -c 50000000 /dev/zero; : > {}", done.display());
        let mut child = cmd
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Unread, the program's 50 MB would all be taken in a fraction of
        // this time (into the memory of the command or of a daemon).
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            if done.exists() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{how}: all the output was taken by nobody reading it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        let mut out = child.stdout.take().unwrap();
        loop {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("{how}: {e}"),
            }
        }
        assert_eq!(total, 50_000_000, "{how}");
        assert_eq!(child.wait().unwrap().code(), Some(0), "{how}");
        assert!(done.exists(), "{how}");
    }
}

#[test]
fn a_timeout_fires_while_the_program_floods_its_output() {
    // As `timeout 1 yes`: 124, at its time, through a daemon too.
    let mut c = Cluster::new("flood");
    c.start("solo", &[], &[]);
    let mut embedded = converge();
    embedded.arg("run");
    let mut through = c.cmd();
    through.arg("run");
    for (how, mut cmd) in [("embedded", embedded), ("daemon", through)] {
        let t = Instant::now();
        let mut child = cmd
            .args(["--timeout", "1", "--", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let ended = wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some());
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert!(ended, "{how}: still running after {:?}", t.elapsed());
        assert_eq!(status.code(), Some(124), "{how}");
        assert_eq!(status.code(), Some(timeout(&["1", "yes"])), "{how}: not as timeout");
    }
    // And while nobody reads its output (the command then blocked writing
    // it): stopped at its time all the same; what is left is read after.
    let mut embedded = converge();
    embedded.arg("run");
    let mut through = c.cmd();
    through.arg("run");
    for (how, mut cmd) in [("embedded", embedded), ("daemon", through)] {
        let mut child = cmd
            .args(["--timeout", "1", "--", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while total < 256 << 20 {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        if total >= 256 << 20 {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert!(total < 256 << 20, "{how}: the program was never stopped");
        assert_eq!(status.code(), Some(124), "{how}");
    }
}

#[test]
fn signals_reach_a_program_run_through_a_daemon_and_on_another_node() {
    let c = Cluster::pair("signals");
    for on in ["alpha", "beta"] {
        let mut child = c
            .cmd()
            .env("CONVERGE_NODE", "alpha")
            .args([
                "run",
                "--on",
                on,
                "--",
                "sh",
                "-c",
                "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || child.try_wait().unwrap().is_some()),
            "on {on}"
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        assert_eq!(rest, "got INT\n", "on {on}");
        assert_eq!(child.wait().unwrap().code(), Some(7), "on {on}");
    }
}

/// The rows of a GNU parallel job log: (Seq, Host, Exitval, Signal).
fn joblog_rows(path: &Path) -> Vec<(u64, String, i64, i32)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand")
    );
    let mut rows: Vec<_> = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].parse().unwrap(),
                f[1].to_owned(),
                f[6].parse().unwrap(),
                f[7].parse().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn parallel_places_jobs_on_the_cluster_and_a_retry_goes_elsewhere() {
    let mut c = Cluster::new("pplace");
    c.start_member("alpha", None, &["--slots", "1"], &[("WHERE", "alpha")]);
    c.start_member("beta", Some("alpha"), &["--slots", "2"], &[("WHERE", "beta")]);
    c.start_member("gamma", Some("alpha"), &["--slots", "2"], &[("WHERE", "gamma")]);
    assert!(c.knows("alpha", "beta") && c.knows("alpha", "gamma"));
    let log = c.dir.join("jobs.tsv");
    // Five slots, ten jobs: every node takes some; the log says where
    // (`:` for the node asked), and each job's output is whole.
    let o = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .env("WHERE", "here")
        .args(["parallel", "--anywhere", "-k", "--joblog", log.to_str().unwrap()])
        .args(["sleep 0.2; echo {} on $WHERE", ":::"])
        .args((1..=10).map(|n| n.to_string()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    let lines: Vec<String> = out(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 10);
    let rows = joblog_rows(&log);
    for (n, line) in lines.iter().enumerate() {
        let (seq, host, exitval, _) = &rows[n];
        assert_eq!((*seq, *exitval), (n as u64 + 1, 0));
        let want = if host == ":" { "here" } else { host.as_str() };
        assert_eq!(*line, format!("{} on {want}", n + 1));
    }
    for host in [":", "beta", "gamma"] {
        assert!(rows.iter().any(|r| r.1 == host), "no job on {host}: {rows:?}");
    }
    // A job that fails on the first node it gets is retried on another: the
    // busiest free node first (beta, gamma: 2 slots), then the other.
    std::fs::remove_file(&log).unwrap();
    let o = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .args([
            "parallel",
            "--anywhere",
            "--retries",
            "3",
            "--joblog",
            log.to_str().unwrap(),
        ])
        .args(["[ $WHERE = gamma ] && echo {} ok on $WHERE || exit 3", ":::", "x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!((code(&o), out(&o)), (0, "x ok on gamma\n".into()), "{}", err(&o));
    assert_eq!(joblog_rows(&log), [(1, "gamma".to_owned(), 0, 0)]);
}

#[test]
fn parallel_reruns_the_jobs_of_a_node_lost_under_it() {
    let c = &mut Cluster::new("plost");
    c.start_member("alpha", None, &["--slots", "1"], &[]);
    c.start_member("beta", Some("alpha"), &["--slots", "3"], &[]);
    c.start_member("gamma", Some("alpha"), &["--slots", "2"], &[]);
    assert!(c.knows("alpha", "beta") && c.knows("alpha", "gamma"));
    let log = c.dir.join("jobs.tsv");
    let mut parallel = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .args(["parallel", "--anywhere", "--retries", "2", "--retry-on", "lost"])
        .args(["--joblog", log.to_str().unwrap(), "sleep 1.5; echo {}", ":::"])
        .args((1..=6).map(|n| n.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Beta has the most room: it takes jobs first. Kill it under them.
    assert!(
        wait_until(Duration::from_secs(10), || c
            .ps("alpha")
            .iter()
            .any(|r| r["node"] == "beta" && r["state"] == "running")),
        "no job went to beta"
    );
    let on_beta: Vec<i32> = c
        .ps("alpha")
        .iter()
        .filter(|r| r["node"] == "beta" && r["state"] == "running")
        .map(|r| r["os_pid"].as_i64().unwrap() as i32)
        .collect();
    c.kill("beta");
    assert!(wait_until(Duration::from_secs(30), || parallel
        .try_wait()
        .unwrap()
        .is_some()));
    let o = parallel.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", err(&o));
    let mut lines: Vec<u32> = out(&o).lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, [1, 2, 3, 4, 5, 6], "each job's output once");
    let rows = joblog_rows(&log);
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 != "beta" && r.2 == 0 && r.3 == 0), "{rows:?}");
    // What ran on beta went with it.
    assert!(wait_until(Duration::from_secs(2), || on_beta
        .iter()
        .all(|&p| !os_alive(p))));
    let interrupted = c
        .ps("alpha")
        .iter()
        .filter(|r| r["last_exit"] == "connection to node lost")
        .count();
    assert!(interrupted >= 1);
}

#[test]
fn a_server_supervised_through_a_daemon_is_one_row_and_moves_when_its_node_is_lost() {
    let c = &mut Cluster::new("supervise");
    c.start_member("alpha", None, &["--slots", "1"], &[]);
    c.start_member("beta", Some("alpha"), &["--slots", "4"], &[("WHERE", "beta")]);
    assert!(c.knows("alpha", "beta"));
    let mut sup = c
        .cmd()
        .env("CONVERGE_NODE", "alpha")
        .env("WHERE", "client")
        .args([
            "supervise",
            "--anywhere",
            "--",
            "sh",
            "-c",
            "echo up on $WHERE; exec sleep 60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sup.stdout.take().unwrap()).lines();
    // Beta has the room; the client's environment is not beta's.
    assert_eq!(lines.next().unwrap().unwrap(), "up on beta");
    let row = |c: &Cluster| {
        let rows = c.ps("alpha");
        let mine: Vec<_> = rows.into_iter().filter(|r| r["kind"] == "supervise").collect();
        assert_eq!(mine.len(), 1, "one row for the server: {mine:?}");
        mine.into_iter().next().unwrap()
    };
    let first = row(c);
    assert_eq!(
        (first["node"].as_str(), first["state"].as_str()),
        (Some("beta"), Some("running"))
    );
    assert_eq!(first["restarts"], 0);
    // Its node is lost: it runs again on the one left, one restart later,
    // with the reason.
    c.kill("beta");
    assert_eq!(lines.next().unwrap().unwrap(), "up on client");
    let second = row(c);
    assert_eq!(
        (second["node"].as_str(), second["state"].as_str()),
        (Some("alpha"), Some("running"))
    );
    assert_eq!(second["restarts"], 1);
    assert_eq!(second["last_exit"], "connection to node lost");
    let program = second["os_pid"].as_i64().unwrap() as i32;
    assert!(os_alive(program));
    // TERM stops it there: status 0, and the row says it was interrupted.
    Command::new("kill")
        .args(["-TERM", &sup.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || sup
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(sup.wait().unwrap().code(), Some(0));
    assert!(wait_until(Duration::from_secs(2), || !os_alive(program)));
    let last = row(c);
    assert_eq!(
        (last["state"].as_str(), last["last_exit"].as_str()),
        (Some("interrupted"), Some("shutdown"))
    );
}

//! `converge parallel` (feature `cli`) promises GNU parallel's behaviours:
//! each case states what GNU parallel does (as observed with GNU parallel
//! 20221122), checks converge against it, and, where GNU parallel is
//! installed, runs it on the same command line and expects the same.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory of the test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("converge-parallel-{}-{name}", std::process::id()));
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

/// Kills process `0` if the test fails while it may still run.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// The tool under test: `converge parallel` or GNU `parallel`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    Converge,
    Gnu,
}

fn gnu_installed() -> bool {
    let found = Command::new("parallel")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU parallel"));
    if !found {
        eprintln!("GNU parallel is not installed: checking converge against its recorded behaviour only");
    }
    found
}

/// The tools to check: converge, and GNU parallel when it is installed.
fn tools() -> Vec<Tool> {
    if gnu_installed() {
        vec![Tool::Converge, Tool::Gnu]
    } else {
        vec![Tool::Converge]
    }
}

fn command(tool: Tool, dir: &Path) -> Command {
    let mut c = match tool {
        Tool::Converge => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_converge"));
            c.arg("parallel");
            c
        }
        Tool::Gnu => {
            let mut c = Command::new("parallel");
            c.arg("--will-cite");
            // GNU parallel keeps its state under $HOME/.parallel.
            c.env("HOME", dir);
            c
        }
    };
    // Both run the jobs with the same shell.
    c.env("PARALLEL_SHELL", "/bin/sh").current_dir(dir);
    c
}

fn run_in(tool: Tool, dir: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut c = command(tool, dir);
    c.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(text) = input {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    wait_bounded(child, Duration::from_secs(60))
}

/// Waits for `child` at most `limit`; a child still running then is killed
/// and the test fails.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut out) = out {
            std::io::Read::read_to_end(&mut out, &mut b).unwrap();
        }
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut err) = err {
            std::io::Read::read_to_end(&mut err, &mut b).unwrap();
        }
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&o.status).unwrap())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The job log's rows without their times, by sequence number: Seq, Host,
/// Send, Receive, Exitval, Signal, Command.
fn rows(log: &str) -> Vec<Vec<String>> {
    let mut lines = log.lines();
    assert_eq!(
        lines.next(),
        Some("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"),
        "{log}"
    );
    let mut rows: Vec<Vec<String>> = lines
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert_eq!(cols.len(), 9, "{l:?}");
            // Times as GNU parallel writes them: %.3f and %10.3f.
            let (start, runtime) = (cols[2], cols[3]);
            assert!(start.split_once('.').is_some_and(|(_, ms)| ms.len() == 3), "{l:?}");
            assert_eq!(runtime.len(), 10, "{l:?}");
            assert!(runtime.trim().parse::<f64>().is_ok(), "{l:?}");
            [0, 1, 4, 5, 6, 7, 8].iter().map(|&i| cols[i].to_string()).collect()
        })
        .collect();
    rows.sort_by_key(|r| r[0].parse::<u64>().unwrap());
    rows
}

fn row(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

#[test]
fn combinations_replacement_strings_and_quoting() {
    let dir = Scratch::new("combinations");
    for tool in tools() {
        let o = run_in(
            tool,
            &dir.0,
            &["-k", "echo {2}-{1}", ":::", "x", "y", ":::", "1", "2"],
            None,
        );
        assert_eq!(stdout(&o), "1-x\n2-x\n1-y\n2-y\n", "{tool:?}");
        assert_eq!(code(&o), 0);
        // Without a replacement string the arguments are appended, quoted.
        let o = run_in(
            tool,
            &dir.0,
            &[
                "--dry-run",
                "-k",
                "echo",
                ":::",
                "a b",
                "c'd",
                "",
                "x$y",
                "plain",
                "é",
                "-n",
            ],
            None,
        );
        assert_eq!(
            stdout(&o),
            "echo 'a b'\necho 'c'\"'\"'d'\necho ''\necho 'x$y'\necho plain\necho 'é'\necho -n\n",
            "{tool:?}"
        );
        let o = run_in(
            tool,
            &dir.0,
            &[
                "--dry-run",
                "-k",
                "echo {//} {/} {.} {/.} {#} {1/} {2.} {3}",
                ":::",
                "a/b.c.d",
                "x.y/z",
                ":::",
                "q.r",
            ],
            None,
        );
        assert_eq!(
            stdout(&o),
            // `{3}`: an argument there is not: nothing.
            "echo a . b.c.d q.r a/b.c q b.c q 1 b.c.d q \necho x.y . z q.r x.y/z q z q 2 z q \n",
            "{tool:?}"
        );
        // No command: the arguments are the commands.
        let o = run_in(tool, &dir.0, &["-k", ":::", "echo a", "echo  \"b c\""], None);
        assert_eq!(stdout(&o), "a\nb c\n", "{tool:?}");
        // An empty list: no job.
        let o = run_in(tool, &dir.0, &["echo", ":::"], None);
        assert_eq!((code(&o), stdout(&o)), (0, String::new()), "{tool:?}");
    }
}

#[test]
fn arguments_from_standard_input_and_files() {
    let dir = Scratch::new("stdin");
    std::fs::write(dir.path("args"), "1\n2\n").unwrap();
    for tool in tools() {
        let o = run_in(tool, &dir.0, &["-k", "echo", "[{}]"], Some("x\n\ny\n"));
        assert_eq!(stdout(&o), "[x]\n[]\n[y]\n", "{tool:?}");
        // Without a command, each line is one.
        let o = run_in(tool, &dir.0, &["-k"], Some("echo A\necho 'B  C'\n"));
        assert_eq!(stdout(&o), "A\nB  C\n", "{tool:?}");
        let o = run_in(tool, &dir.0, &["-k", "echo", "::::", "args", ":::", "a"], None);
        assert_eq!(stdout(&o), "1 a\n2 a\n", "{tool:?}");
    }
}

#[test]
fn the_job_log_and_the_exit_status() {
    let dir = Scratch::new("joblog");
    for tool in tools() {
        let o = run_in(
            tool,
            &dir.0,
            &[
                "-j2",
                "--joblog",
                "log",
                "eval {}",
                ":::",
                "exit 3",
                "kill -9 $$",
                "kill -15 $$",
                "echo hi",
                "true",
            ],
            None,
        );
        // The number of jobs that failed.
        assert_eq!(code(&o), 3, "{tool:?}: {}", stderr(&o));
        assert_eq!(
            rows(&dir.read("log")),
            [
                row(&["1", ":", "0", "0", "3", "0", "eval 'exit 3'"]),
                row(&["2", ":", "0", "0", "0", "9", "eval 'kill -9 $$'"]),
                row(&["3", ":", "0", "0", "0", "15", "eval 'kill -15 $$'"]),
                row(&["4", ":", "0", "3", "0", "0", "eval 'echo hi'"]),
                row(&["5", ":", "0", "0", "0", "0", "eval true"]),
            ],
            "{tool:?}"
        );
        // With -k the rows come in order too.
        run_in(
            tool,
            &dir.0,
            &["-k", "-j3", "--joblog", "log", "sleep", ":::", "0.6", "0.1", "0.3"],
            None,
        );
        let seqs: Vec<String> = dir.read("log").lines().skip(1).map(|l| l[..1].to_string()).collect();
        assert_eq!(seqs, ["1", "2", "3"], "{tool:?}");
        // Receive counts standard output only.
        run_in(
            tool,
            &dir.0,
            &["--joblog", "log", "echo out; echo errr >&2", ":::", "1"],
            None,
        );
        assert_eq!(
            rows(&dir.read("log")),
            [row(&["1", ":", "0", "4", "0", "0", "echo out; echo errr >&2 1"])],
            "{tool:?}"
        );
    }
}

#[test]
fn more_than_100_failed_jobs_exit_101() {
    let dir = Scratch::new("many");
    let n: Vec<String> = (0..102).map(|i| i.to_string()).collect();
    for tool in tools() {
        let mut args = vec!["-j4", "exit 1; true", ":::"];
        args.extend(n.iter().map(String::as_str));
        assert_eq!(code(&run_in(tool, &dir.0, &args, None)), 101, "{tool:?}");
        args[1] = "exit {}; true";
        // Jobs 1 to 101 fail, job 0 does not.
        assert_eq!(code(&run_in(tool, &dir.0, &args, None)), 101, "{tool:?}");
        // Jobs 1 to 100 fail.
        assert_eq!(code(&run_in(tool, &dir.0, &args[..104], None)), 100, "{tool:?}");
    }
}

#[test]
fn a_timeout_uses_the_kill_sequence_on_the_whole_group() {
    let dir = Scratch::new("timeout");
    for tool in tools() {
        let t = Instant::now();
        let o = run_in(
            tool,
            &dir.0,
            &[
                "-j5",
                "--timeout",
                "0.5",
                "--joblog",
                "log",
                "eval {}",
                ":::",
                "sleep 20",
                "trap '' TERM; sleep 20",
                "sleep 0.1",
                "trap 'exit 3' TERM; sleep 20 & wait",
                "trap 'exit 0' TERM; sleep 20 & wait",
            ],
            None,
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{tool:?}: {:?}", t.elapsed());
        assert_eq!(code(&o), 4, "{tool:?}");
        // Stopped by TERM: Exitval -1, Signal 15; it outlived the TERMs: 9;
        // it exited on the TERM with a code of its own: that code; with 0:
        // -1 and no signal.
        assert_eq!(
            rows(&dir.read("log")),
            [
                row(&["1", ":", "0", "0", "-1", "15", "eval 'sleep 20'"]),
                row(&[
                    "2",
                    ":",
                    "0",
                    "0",
                    "-1",
                    "9",
                    "eval 'trap '\"'\"''\"'\"' TERM; sleep 20'"
                ]),
                row(&["3", ":", "0", "0", "0", "0", "eval 'sleep 0.1'"]),
                row(&[
                    "4",
                    ":",
                    "0",
                    "0",
                    "3",
                    "0",
                    "eval 'trap '\"'\"'exit 3'\"'\"' TERM; sleep 20 & wait'"
                ]),
                row(&[
                    "5",
                    ":",
                    "0",
                    "0",
                    "-1",
                    "0",
                    "eval 'trap '\"'\"'exit 0'\"'\"' TERM; sleep 20 & wait'"
                ]),
            ],
            "{tool:?}"
        );
    }
    // The job's whole group is stopped, its background children too (one
    // that ignores TERM is there for the KILL); the TERM comes three times
    // before the KILL (waits long enough for a loaded machine).
    let o = run_in(
        Tool::Converge,
        &dir.0,
        &[
            "--timeout",
            "0.3",
            "--termseq",
            "TERM,400,TERM,400,TERM,400,KILL,25",
            "echo {} >/dev/null; (trap '' TERM; exec sleep 31.5) & trap 'echo TERM >> terms' TERM; while :; do sleep 0.05; done",
            ":::",
            "1",
        ],
        None,
    );
    assert_eq!(code(&o), 1);
    assert_eq!(dir.read("terms"), "TERM\nTERM\nTERM\n");
    assert!(no_process_with("sleep 31.5"), "a job's child outlived its timeout");
}

/// Whether no process runs with `args` (bounded wait for it to go).
fn no_process_with(args: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ps = Command::new("ps").args(["-eo", "args="]).output().unwrap();
        if !String::from_utf8_lossy(&ps.stdout).lines().any(|l| l.trim() == args) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn retries_keep_only_the_last_attempt() {
    let dir = Scratch::new("retries");
    for tool in tools() {
        let _ = std::fs::remove_file(dir.path("count"));
        // Fails twice, then passes.
        let job = "echo {} >/dev/null; n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n; [ $n -ge 3 ]";
        let o = run_in(
            tool,
            &dir.0,
            &["--retries", "3", "--joblog", "log", job, ":::", "a"],
            None,
        );
        assert_eq!(code(&o), 0, "{tool:?}");
        assert_eq!(stdout(&o), "attempt 3\n", "{tool:?}");
        assert_eq!(rows(&dir.read("log")).len(), 1, "{tool:?}");
        assert_eq!(rows(&dir.read("log"))[0][4], "0", "{tool:?}");
        // K attempts in all, then it fails.
        let _ = std::fs::remove_file(dir.path("count"));
        let o = run_in(
            tool,
            &dir.0,
            &["--retries", "2", "--joblog", "log", job, ":::", "a"],
            None,
        );
        assert_eq!(code(&o), 1, "{tool:?}");
        assert_eq!(stdout(&o), "attempt 2\n", "{tool:?}");
        assert_eq!(dir.read("count"), "2\n", "{tool:?}");
        let rows = rows(&dir.read("log"));
        assert_eq!((rows.len(), rows[0][4].as_str()), (1, "1"), "{tool:?}");
    }
}

#[test]
fn resume_skips_logged_jobs_and_resume_failed_reruns_failures() {
    let dir = Scratch::new("resume");
    for tool in tools() {
        let _ = std::fs::remove_file(dir.path("log"));
        let o = run_in(
            tool,
            &dir.0,
            &["--joblog", "log", "--resume", "exit {}", ":::", "0", "1", "2"],
            None,
        );
        assert_eq!(code(&o), 2, "{tool:?}");
        // Every logged job is skipped, passed or failed: only the 4th runs.
        let o = run_in(
            tool,
            &dir.0,
            &["--joblog", "log", "--resume", "exit {}", ":::", "0", "1", "2", "3"],
            None,
        );
        assert_eq!(code(&o), 1, "{tool:?}");
        assert_eq!(rows(&dir.read("log")).len(), 4, "{tool:?}");
        // The failed ones (2, 3, 4) run again, and the 5th, new; a row is
        // appended for each.
        let o = run_in(
            tool,
            &dir.0,
            &[
                "-k",
                "--joblog",
                "log",
                "--resume-failed",
                "echo {}; exit 0",
                ":::",
                "0",
                "1",
                "2",
                "3",
                "4",
            ],
            None,
        );
        assert_eq!((code(&o), stdout(&o)), (0, "1\n2\n3\n4\n".to_string()), "{tool:?}");
        let log = dir.read("log");
        let seqs: Vec<&str> = log.lines().skip(1).map(|l| l.split('\t').next().unwrap()).collect();
        let (first, then) = seqs.split_at(4);
        let mut first = first.to_vec();
        first.sort();
        let mut then = then.to_vec();
        then.sort();
        assert_eq!(
            (first, then),
            (vec!["1", "2", "3", "4"], vec!["2", "3", "4", "5"]),
            "{tool:?}"
        );
    }
}

#[test]
fn halt_stops_as_gnu_parallel_does() {
    let dir = Scratch::new("halt");
    for tool in tools() {
        let go = |args: &[&str]| run_in(tool, &dir.0, args, None);
        // fail=1: the failing job's own status; 128+N for a signal.
        let o = go(&[
            "-j1",
            "--halt",
            "now,fail=1",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
            "5",
        ]);
        assert_eq!((code(&o), stdout(&o)), (3, "0\n3\n".to_string()), "{tool:?}");
        let o = go(&[
            "-j1",
            "--halt",
            "soon,fail=1",
            "echo {}; exit {}",
            ":::",
            "0",
            "3",
            "0",
            "5",
        ]);
        assert_eq!((code(&o), stdout(&o)), (3, "0\n3\n".to_string()), "{tool:?}");
        assert_eq!(
            code(&go(&["-j1", "--halt", "2", "kill -9 $$", ":::", "0"])),
            137,
            "{tool:?}"
        );
        // fail=N for N > 1: the number failed when it stopped.
        let o = go(&["-j1", "--halt", "now,fail=2", "exit {}", ":::", "1", "0", "4", "5", "6"]);
        assert_eq!(code(&o), 2, "{tool:?}");
        // fail=N%: the share of all jobs failed, in percent rounded up, when
        // it stopped or, if it did not, at the end.
        for (args, status) in [
            (&["0", "1", "0", "1", "0", "0"][..], 34),
            (&["1", "0", "0", "0"], 25),
            (&["2", "2", "0", "0"], 50),
        ] {
            let mut a = vec!["-j1", "--halt", "now,fail=50%", "exit {}", ":::"];
            a.extend(args);
            assert_eq!(code(&go(&a)), status, "{tool:?} {args:?}");
        }
        // The share is of all jobs, standard input's too (read first).
        let o = run_in(
            tool,
            &dir.0,
            &["-j1", "--halt", "now,fail=50%", "exit {}"],
            Some("1\n0\n0\n0\n"),
        );
        assert_eq!(code(&o), 25, "{tool:?}");
        // success=1: stop at the first that passes, status 0.
        let o = go(&[
            "-j1",
            "--halt",
            "now,success=1",
            "echo {}; exit {}",
            ":::",
            "1",
            "0",
            "2",
        ]);
        assert_eq!((code(&o), stdout(&o)), (0, "1\n0\n".to_string()), "{tool:?}");
        // now: the running jobs are killed.
        let t = Instant::now();
        let o = go(&[
            "-j2",
            "--halt",
            "now,fail=1",
            "eval {}",
            ":::",
            "sleep 30.5",
            "sleep 0.2; exit 4",
        ]);
        assert_eq!(code(&o), 4, "{tool:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{tool:?}");
    }
    assert!(no_process_with("sleep 30.5"));
}

#[test]
fn usage_errors_exit_255() {
    let dir = Scratch::new("usage");
    for tool in tools() {
        for args in [
            &["--no-such-option", "echo", ":::", "a"][..],
            &["-j", "foo", "echo", ":::", "a"],
            &["--resume", "echo", ":::", "a"],
            &["--resume-failed", "echo", ":::", "a"],
            &["--halt", "later,fail=1", "echo", ":::", "a"],
        ] {
            let o = run_in(tool, &dir.0, args, None);
            assert_eq!(code(&o), 255, "{tool:?} {args:?}");
            assert!(!o.stderr.is_empty(), "{tool:?} {args:?}: a clear error");
            // (GNU parallel prints its usage on standard output.)
            if tool == Tool::Converge {
                assert!(o.stdout.is_empty(), "{args:?}");
            }
        }
    }
}

#[test]
fn output_is_grouped_per_job_and_tagged() {
    let dir = Scratch::new("group");
    for tool in tools() {
        let o = run_in(
            tool,
            &dir.0,
            &[
                "-k",
                "--tag",
                "echo out {}; echo err {} >&2; echo out2 {}",
                ":::",
                "a b",
                "c",
            ],
            None,
        );
        assert_eq!(
            stdout(&o),
            "a b\tout a b\na b\tout2 a b\nc\tout c\nc\tout2 c\n",
            "{tool:?}"
        );
        assert_eq!(stderr(&o), "a b\terr a b\nc\terr c\n", "{tool:?}");
        // Two jobs writing at once, much more than a pipe holds: each job's
        // output stays whole.
        let big = format!("for i in $(seq 3000); do echo {}; done", "{}".repeat(100));
        let o = run_in(tool, &dir.0, &["-j2", &big, ":::", "x", "y"], None);
        let text = stdout(&o);
        assert_eq!(text.len(), 2 * 3000 * 101, "{tool:?}");
        let runs = text.lines().collect::<Vec<_>>().chunk_by(|a, b| a == b).count();
        assert_eq!(runs, 2, "{tool:?}: the two jobs' lines are interleaved");
    }
}

#[test]
fn line_buffer_prints_lines_as_they_come() {
    let dir = Scratch::new("lines");
    // Each job prints its last line only once both have printed their
    // first (each has touched its file after its first line), and half a
    // second later: both first lines come out before either last line. (The
    // half second is the tool's time to read the other job's first line:
    // when both pipes are read in one go, neither tool keeps the order of
    // writes across them.)
    let job = "echo a{}; touch up{}; n=0; while [ ! -e up1 -o ! -e up2 ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done; sleep 0.5; echo b{}";
    for tool in tools() {
        for f in ["up1", "up2"] {
            let _ = std::fs::remove_file(dir.path(f));
        }
        let o = run_in(tool, &dir.0, &["-j2", "--line-buffer", job, ":::", "1", "2"], None);
        let text = stdout(&o);
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{tool:?}: {text}");
        lines[..2].sort();
        lines[2..].sort();
        assert_eq!(lines, ["a1", "a2", "b1", "b2"], "{tool:?}");
    }
    // A line comes out while its job still runs.
    let mut child = command(Tool::Converge, &dir.0)
        .args([
            "--line-buffer",
            "--tag",
            "echo first; sleep 3; echo last {}",
            ":::",
            "j",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let t = Instant::now();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "j\tfirst");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(lines.next().unwrap().unwrap(), "j\tlast j");
    assert!(child.wait().unwrap().success());
}

#[test]
fn json_objects_have_gnu_parallel_s_fields() {
    let dir = Scratch::new("json");
    let o = run_in(
        Tool::Converge,
        &dir.0,
        &["-k", "--json", "echo o{}; echo e{} >&2; exit {}", ":::", "0", "2"],
        None,
    );
    let ours: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let want = |seq: u64, v: &str, exit: i64| {
        serde_json::json!({
            "Seq": seq, "Host": ":", "Send": 0, "Receive": 3, "Exitval": exit, "Signal": 0,
            "Command": format!("echo o{v}; echo e{v} >&2; exit {v}"),
            "V": [v], "Stdout": format!("o{v}\n"), "Stderr": format!("e{v}\n"),
        })
    };
    let without_times = |mut v: serde_json::Value| {
        let m = v.as_object_mut().unwrap();
        assert!(m.remove("Starttime").unwrap().as_f64().unwrap() > 1e9);
        assert!(m.remove("JobRuntime").unwrap().as_f64().unwrap() >= 0.0);
        v
    };
    let ours: Vec<_> = ours.into_iter().map(without_times).collect();
    assert_eq!(ours, [want(1, "0", 0), want(2, "2", 2)]);
    if gnu_installed() {
        // GNU parallel writes the same objects with --results FILE.json.
        run_in(
            Tool::Gnu,
            &dir.0,
            &[
                "-k",
                "--results",
                "r.json",
                "echo o{}; echo e{} >&2; exit {}",
                ":::",
                "0",
                "2",
            ],
            None,
        );
        let gnu: Vec<serde_json::Value> = dir
            .read("r.json")
            .lines()
            .map(|l| without_times(serde_json::from_str(l).unwrap()))
            .collect();
        assert_eq!(gnu, ours);
    }
}

#[test]
fn ctrl_c_reaches_every_job_and_no_more_start() {
    let dir = Scratch::new("interrupt");
    let mut child = command(Tool::Converge, &dir.0)
        .args([
            "-j2",
            "--line-buffer",
            "trap 'echo got {}; exit 0' INT; echo started {}; sleep 33.5 & wait",
            ":::",
            "1",
            "2",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut started: Vec<String> = (0..2).map(|_| lines.next().unwrap().unwrap()).collect();
    started.sort();
    assert_eq!(started, ["started 1", "started 2"]);
    // As Ctrl-C at a terminal: the command's own process gets SIGINT.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut got: Vec<String> = lines.map(Result::unwrap).collect();
    got.sort();
    assert_eq!(got, ["got 1", "got 2"]);
    let o = wait_bounded(child, Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(130));
    assert!(no_process_with("sleep 33.5"));
}

#[test]
fn a_reader_that_goes_away_ends_it_quietly() {
    let dir = Scratch::new("pipe");
    let mut child = command(Tool::Converge, &dir.0)
        .args(["-j2", "-k", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let mut input = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..100_000 {
            if writeln!(input, "{i}").is_err() {
                return;
            }
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "0\n");
    drop(out);
    let o = wait_bounded(child, Duration::from_secs(20));
    feeder.join().unwrap();
    // 128 + SIGPIPE, as a shell reports a writer whose reader went away,
    // and nothing on standard error.
    assert_eq!(code(&o), 141);
    assert_eq!(stderr(&o), "");
}

#[test]
fn help_has_examples() {
    let o = Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["parallel", "--help"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    assert!(help.contains("Examples:") && help.contains("--joblog"), "{help}");
}

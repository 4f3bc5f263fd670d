//! The `converge` command against what its users would run instead, in the
//! same run:
//!
//! - `cli_run_true`: `converge run -- /bin/true` through a running node
//!   daemon, against `/bin/true` started by a shell (`sh -c /bin/true`).
//! - `parallel_10k_true`: `true` commands at `-j 2` (10,000 per sample; 2,000
//!   under `CI`), converge's wall time per job against `xargs -P 2 -n 1` as
//!   the floor; GNU parallel's own ratio to the same floor is an `info` line
//!   when it is installed.
//!
//! Run with `cargo bench --features cli --bench cli` (`CI=1` for a short run).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONVERGE: &str = env!("CARGO_BIN_EXE_converge");

/// A node daemon in a directory of its own, stopped at the end.
struct Daemon {
    dir: std::path::PathBuf,
    child: Child,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = std::env::temp_dir().join(format!("converge-bench-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let child = Command::new(CONVERGE)
            .args(["node", "--name", "bench"])
            .env("CONVERGE_RUNTIME_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(dir.join("bench.sock")).is_err() {
            assert!(Instant::now() < deadline, "the node daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { dir, child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    let mut c = common::criterion();
    let daemon = Daemon::start();
    common::compare(
        &mut c,
        "cli_run_true",
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                assert!(Command::new("sh").args(["-c", "/bin/true"]).status().unwrap().success());
            }
            t.elapsed()
        },
        |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let status = Command::new(CONVERGE)
                    .args(["run", "--", "/bin/true"])
                    .env("CONVERGE_RUNTIME_DIR", &daemon.dir)
                    .stdin(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            }
            t.elapsed()
        },
    );
    drop(daemon);
    parallel_true(&mut c);
    c.final_summary();
    common::print_results();
}

/// Runs `program args` with `jobs` lines (1..=jobs) on its standard input;
/// its wall time.
fn batch(program: &str, args: &[&str], jobs: u64) -> Duration {
    let input: String = (1..=jobs).map(|n| format!("{n}\n")).collect();
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("CONVERGE_RUNTIME_DIR", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{program} {args:?}");
    t.elapsed()
}

fn parallel_true(c: &mut criterion::Criterion) {
    let jobs: u64 = if common::ci() { 2_000 } else { 10_000 };
    let xargs = |iters: u64| {
        (0..iters)
            .map(|_| batch("xargs", &["-P", "2", "-n", "1", "true"], jobs))
            .sum()
    };
    let mut group = c.benchmark_group("cli");
    // Each sample is whole batches: ten of them, with little warm-up.
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
    let mut pairs = common::Pairs::default();
    group.bench_function("parallel_10k_true", |b| {
        b.iter_custom(|iters| {
            let f: Duration = xargs(iters);
            let v: Duration = (0..iters)
                .map(|_| batch(CONVERGE, &["parallel", "-j", "2", "true"], jobs))
                .sum();
            pairs.record(iters * jobs, f, v);
            v
        })
    });
    pairs.report("parallel_10k_true");
    let gnu = Command::new("parallel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if gnu {
        let mut pairs = common::Pairs::default();
        group.bench_function("gnu_parallel_10k_true", |b| {
            b.iter_custom(|iters| {
                let f: Duration = xargs(iters);
                let v: Duration = (0..iters)
                    .map(|_| batch("parallel", &["--will-cite", "-j", "2", "true"], jobs))
                    .sum();
                pairs.record(iters * jobs, f, v);
                v
            })
        });
        pairs.report_as("parallel_10k_true_gnu_parallel", "info");
    } else {
        println!("GNU parallel is not installed: its figure is skipped");
    }
    group.finish();
}

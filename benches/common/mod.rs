//! Shared bench machinery: interleaved floor/converge samples under criterion,
//! the closing `ratio` lines, and the raw-syscall floors.
#![allow(dead_code)] // Each bench binary uses part of it.

pub mod floor;

use std::sync::Mutex;
use std::time::Duration;

use criterion::Criterion;

/// Whether this is a short CI run (`CI` is set).
pub fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A criterion configured for this machine: short runs under `CI`.
pub fn criterion() -> Criterion {
    let c = Criterion::default().configure_from_args();
    if ci() {
        c.sample_size(20)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1))
    } else {
        c.sample_size(30)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(4))
    }
}

/// Per-operation times of the floor and of converge, sample by sample.
#[derive(Default)]
pub struct Pairs {
    floor: Vec<f64>,
    converge: Vec<f64>,
}

/// The closing lines, printed after criterion's report.
pub static RESULTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Pairs {
    /// Records one sample of each: total time for `iters` operations.
    pub fn record(&mut self, iters: u64, floor: Duration, converge: Duration) {
        let n = iters.max(1) as f64;
        self.floor.push(floor.as_secs_f64() / n);
        self.converge.push(converge.as_secs_f64() / n);
    }

    /// Medians (floor, converge), in seconds per operation.
    pub fn medians(&self) -> (f64, f64) {
        (median(&self.floor), median(&self.converge))
    }

    /// The ratio of each sample pair (converge over the floor measured right
    /// before it), sorted: a pair shares the machine's state of the moment,
    /// so the ratio moves less than either time.
    fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self.converge.iter().zip(&self.floor).map(|(c, f)| c / f).collect();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        r
    }

    /// Adds `ratio NAME: X.XX [Q1-Q3] (floor F, converge C)` to the closing
    /// lines: the median of the pairs' ratios, their middle half, and the
    /// median times.
    pub fn report(&self, name: &str) {
        self.report_as(name, "ratio");
    }

    /// As [`report`](Self::report), under another first word (`info` for a
    /// figure that has no target).
    pub fn report_as(&self, name: &str, word: &str) {
        let r = self.ratios();
        if r.is_empty() {
            // Left out by a filter on the command line: nothing measured.
            return;
        }
        let (f, c) = self.medians();
        let line = format!(
            "{word} {name}: {:.2} [{:.2}-{:.2}] (floor {}, converge {}, {} pairs)",
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
            human(f),
            human(c),
            r.len()
        );
        RESULTS.lock().unwrap().push(line);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    quantile(&v, 0.5)
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// A time per operation, in the unit that reads best.
pub fn human(secs: f64) -> String {
    if secs >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.1} us", secs * 1e6)
    } else {
        format!("{:.0} ns", secs * 1e9)
    }
}

/// Runs a criterion benchmark of converge (`NAME`) whose every sample also
/// takes a floor sample of the same size, right before it; reports the ratio.
pub fn compare(
    c: &mut Criterion,
    name: &str,
    floor: impl FnMut(u64) -> Duration,
    converge: impl FnMut(u64) -> Duration,
) {
    compare_as(c, name, "ratio", floor, converge);
}

/// [`compare`], reported under `word` (`info`: a figure without a target).
pub fn compare_as(
    c: &mut Criterion,
    name: &str,
    word: &str,
    mut floor: impl FnMut(u64) -> Duration,
    mut converge: impl FnMut(u64) -> Duration,
) {
    let mut pairs = Pairs::default();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let f = floor(iters);
            let v = converge(iters);
            pairs.record(iters, f, v);
            v
        })
    });
    pairs.report_as(name, word);
}

/// Prints the closing lines.
pub fn print_results() {
    println!();
    for line in RESULTS.lock().unwrap().iter() {
        println!("{line}");
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET with cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Lets the calling thread run on every CPU again.
pub fn unpin() {
    // SAFETY: as in `pin`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..64 {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins every thread of this process to `cpu` (`None`: every CPU again).
pub fn pin_process(cpu: Option<usize>) {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET with cpu
        // < 1024; a thread that ended meanwhile only fails the call.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            match cpu {
                Some(cpu) => libc::CPU_SET(cpu, &mut set),
                None => (0..64).for_each(|c| libc::CPU_SET(c, &mut set)),
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Touches `mb` megabytes of heap, so that a fork has that much to copy.
pub fn touched_heap(mb: usize) -> Vec<u8> {
    let mut v = vec![0u8; mb << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    v
}

//! `converge parallel`: GNU parallel's command line and behaviours (its job
//! log, `--resume`, `--retries`, `--timeout`'s kill sequence, `--halt`, exit
//! statuses), each job a port of the node: its own process group, killed
//! whole, never outliving the command.

mod input;
mod joblog;
mod output;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, ValueEnum};
use converge::daemon::{Placement, Reply, Request, write_frame};
use converge::port::{Framing, Port, PortBuilder, PortOutput, Stderr};
use converge::{Ctx, Event, ExitReason, Pid, RecvTimeoutError};
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

use self::input::{Job, Source, Template};
use self::joblog::{JobLog, Row};
use self::output::{JobOutput, JsonText, LineStream, write_tagged};

/// The exit status of a usage error, as GNU parallel's.
pub(crate) const USAGE: u8 = 255;
/// Jobs handed to the node daemon at once with --anywhere (it queues those
/// for which no node has a free slot).
const ANYWHERE_JOBS: usize = 256;

const EXAMPLES: &str = "Examples:
  converge parallel gzip ::: *.log
  converge parallel -j4 --joblog jobs.tsv 'convert {} {.}.png' ::: *.jpg
  converge parallel --timeout 30s --retries 3 curl -fsS {} :::: urls.txt
  converge parallel echo {1}-{2} ::: a b ::: 1 2 3
  find . -name '*.c' | converge parallel -k wc -l";

/// `converge parallel [OPTIONS] [COMMAND...] [::: ARGS...]...`
#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub(crate) struct ParallelArgs {
    /// Jobs run at once: N, N% of the cores, +N or -N cores (0: no limit;
    /// default: 100%; with --anywhere 256 handed to the node daemon at once,
    /// which runs each where a slot is free and queues the rest).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = parse_jobs)]
    jobs: Option<usize>,
    /// Runs the jobs on the nodes of the cluster, each where there is a
    /// free slot (through the node daemon, `converge node`; a retry goes to
    /// a node where the job has not failed). Without a daemon the jobs run
    /// here.
    #[arg(long)]
    anywhere: bool,
    /// The node daemon to ask (default: the only one running for this user;
    /// also CONVERGE_NODE).
    #[arg(long, value_name = "NAME", requires = "anywhere")]
    node: Option<String>,
    /// Attempts in all for a job that fails (only the last attempt's output
    /// and log row are kept).
    #[arg(long, value_name = "K", default_value_t = 1)]
    retries: u32,
    /// Which failures are retried: `lost` (the job's node was lost), `exit`
    /// (the job failed) or `any`.
    #[arg(long, value_enum, value_name = "WHY", default_value = "any")]
    retry_on: RetryOn,
    /// Stop a job that runs longer (`10`, `1.5s`, `2m`): TERM, 200 ms, TERM,
    /// 100 ms, TERM, 50 ms, KILL to its process group (see --termseq).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration)]
    timeout: Option<Duration>,
    /// The signals and waits (ms) that stop a job: the default is
    /// TERM,200,TERM,100,TERM,50,KILL,25.
    #[arg(long, value_name = "SEQ", value_parser = parse_termseq)]
    termseq: Option<TermSeq>,
    /// When to stop: `now` (kill running jobs) or `soon` (start no more),
    /// after `fail=N`, `fail=N%`, `success=N` or `done=N` jobs; `never`.
    /// `1` is soon,fail=1 and `2` now,fail=1.
    #[arg(long, value_name = "WHEN,WHAT=N", value_parser = parse_halt)]
    halt: Option<Halt>,
    /// Writes a row per finished job to FILE (GNU parallel's format).
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,
    /// Skips the jobs the job log already has a row for.
    #[arg(long, requires = "joblog", conflicts_with = "resume_failed")]
    resume: bool,
    /// Reruns the jobs whose last row in the job log failed (and runs those
    /// not in it).
    #[arg(long, requires = "joblog")]
    resume_failed: bool,
    /// Prints the jobs' output in the order of their arguments.
    #[arg(short = 'k', long)]
    keep_order: bool,
    /// Starts each output line with the job's arguments and a tab.
    #[arg(long)]
    tag: bool,
    /// Prints whole lines as they come instead of each job's output at its end.
    #[arg(long, visible_alias = "lb")]
    line_buffer: bool,
    /// Prints one JSON object per job (GNU parallel's fields: Seq, Host,
    /// Starttime, JobRuntime, Send, Receive, Exitval, Signal, Command, V,
    /// Stdout, Stderr) instead of its output.
    #[arg(long, conflicts_with_all = ["line_buffer", "tag"])]
    json: bool,
    /// Prints the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Shows a progress bar (the default when standard error is a terminal).
    #[arg(long, conflicts_with = "no_bar")]
    bar: bool,
    /// Never shows a progress bar.
    #[arg(long)]
    no_bar: bool,
    /// Accepted for GNU parallel's command lines; does nothing.
    #[arg(long, hide = true)]
    will_cite: bool,
    /// The command (`{}` and the other replacement strings stand for the
    /// arguments; without them the arguments are appended), then `:::`
    /// lists of arguments or `::::` files of them. Without lists, standard
    /// input has one argument a line (one command a line when no command
    /// is given).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    words: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RetryOn {
    Lost,
    Exit,
    Any,
}

/// Signals to send a job in turn, each with the time it has to die.
#[derive(Debug, Clone)]
struct TermSeq(Vec<(i32, Duration)>);

impl Default for TermSeq {
    fn default() -> TermSeq {
        let ms = Duration::from_millis;
        TermSeq(vec![
            (SIGTERM, ms(200)),
            (SIGTERM, ms(100)),
            (SIGTERM, ms(50)),
            (SIGKILL, ms(25)),
        ])
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    Never,
    Soon,
    Now,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum HaltOn {
    Fail,
    Success,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    Count(u64),
    /// A fraction of all jobs.
    Share(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Halt {
    when: When,
    on: HaltOn,
    limit: Limit,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_jobs(s: &str) -> Result<usize, String> {
    let bad = || format!("{s:?} is not a number of jobs (N, N%, +N or -N)");
    let cores = cores();
    let n = if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| bad())?;
        if !(p.is_finite() && p >= 0.0) {
            return Err(bad());
        }
        (cores as f64 * p / 100.0) as usize
    } else if let Some(more) = s.strip_prefix('+') {
        cores.saturating_add(more.parse::<usize>().map_err(|_| bad())?)
    } else if let Some(less) = s.strip_prefix('-') {
        cores.saturating_sub(less.parse::<usize>().map_err(|_| bad())?)
    } else {
        match s.parse::<usize>().map_err(|_| bad())? {
            // As many as there are jobs.
            0 => usize::MAX,
            n => n,
        }
    };
    Ok(n.max(1))
}

fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..65).contains(&n).then_some(n);
    }
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

fn parse_termseq(s: &str) -> Result<TermSeq, String> {
    let parts: Vec<&str> = s.split(',').collect();
    if !parts.len().is_multiple_of(2) {
        return Err(format!("{s:?}: signals and waits in pairs (TERM,200,KILL,25)"));
    }
    parts
        .chunks(2)
        .map(|pair| {
            let signal = signal_number(pair[0]).ok_or_else(|| format!("{:?} is not a signal", pair[0]))?;
            let ms = pair[1]
                .parse::<u64>()
                .map_err(|_| format!("{:?} is not a wait in milliseconds", pair[1]))?;
            Ok((signal, Duration::from_millis(ms)))
        })
        .collect::<Result<_, String>>()
        .map(TermSeq)
}

fn parse_halt(s: &str) -> Result<Halt, String> {
    let long = match s {
        "0" => "never",
        "1" => "soon,fail=1",
        "2" => "now,fail=1",
        "-1" => "soon,success=1",
        "-2" => "now,success=1",
        _ => s,
    };
    let owned;
    let long = match long.strip_suffix('%') {
        Some(p) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            owned = format!("soon,fail={p}%");
            &owned
        }
        _ => long,
    };
    let mut parts = long.splitn(2, ',');
    let when = match parts.next() {
        Some("never") => When::Never,
        Some("soon") => When::Soon,
        Some("now") => When::Now,
        _ => return Err(format!("{s:?}: --halt must start with never, soon or now")),
    };
    if when == When::Never {
        return Ok(Halt {
            when,
            on: HaltOn::Fail,
            limit: Limit::Count(u64::MAX),
        });
    }
    let (what, n) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .ok_or_else(|| format!("{s:?}: --halt {long} needs fail=N, success=N or done=N"))?;
    let on = match what {
        "fail" => HaltOn::Fail,
        "success" => HaltOn::Success,
        "done" => HaltOn::Done,
        _ => return Err(format!("{s:?}: --halt must be followed by fail, success or done")),
    };
    let limit = match n.strip_suffix('%') {
        Some(p) => Limit::Share(
            p.parse::<u64>()
                .map_err(|_| format!("{s:?}: {n} is not a percentage"))? as f64
                / 100.0,
        ),
        None => Limit::Count(n.parse().map_err(|_| format!("{s:?}: {n} is not a number of jobs"))?),
    };
    Ok(Halt { when, on, limit })
}

/// How a job ended, in the job log's terms.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ending {
    exitval: i64,
    signal: i32,
    timed_out: bool,
    /// The job's node was lost (never on a lone node).
    lost: bool,
}

impl Ending {
    fn failed(&self) -> bool {
        self.exitval != 0 || self.signal != 0
    }

    /// The status a shell gives for it: its code, or 128+N for signal N.
    fn status(&self) -> i64 {
        if self.exitval != 0 {
            self.exitval
        } else if self.signal != 0 {
            128 + i64::from(self.signal)
        } else {
            0
        }
    }

    fn why(&self) -> String {
        if self.timed_out {
            "timed out".into()
        } else if self.lost {
            "node lost".into()
        } else if self.signal != 0 {
            format!("killed by signal {}", self.signal)
        } else {
            format!("exit code {}", self.exitval)
        }
    }
}

fn ending(reason: &ExitReason, timed_out: bool) -> Ending {
    let (exitval, signal, lost) = match reason {
        ExitReason::Normal => (0, 0, false),
        ExitReason::Code(c) => (i64::from(*c), 0, false),
        ExitReason::Signal { signal, .. } => (0, *signal, false),
        ExitReason::Killed => (0, SIGKILL, false),
        ExitReason::Shutdown => (0, SIGTERM, false),
        ExitReason::NoConnection => (-1, 0, true),
        _ => (-1, 0, false),
    };
    // GNU parallel's row for a job it stopped: Exitval -1 unless the job
    // exited with a code of its own, and the signal it died of.
    let exitval = if timed_out && exitval == 0 { -1 } else { exitval };
    Ending {
        exitval,
        signal,
        timed_out,
        lost,
    }
}

/// A job that waits to start (again).
struct Pending {
    job: Job,
    /// Its place in the output order, once it has one.
    order: Option<u64>,
    attempt: u32,
    /// Nodes where it failed (a retry goes elsewhere when it can).
    failed_on: Vec<String>,
}

/// What the loop receives: signals, and what the node daemon says of jobs
/// run through it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Msg {
    Signal(i32),
    Daemon {
        key: u64,
        reply: Reply,
    },
    /// The connection of job `key` to the daemon broke.
    Lost {
        key: u64,
    },
}

/// A running job: a port of this command's node, or a run of the node
/// daemon (on whichever node it placed it).
enum Handle {
    Port(Port),
    Daemon {
        key: u64,
        stream: std::os::unix::net::UnixStream,
        /// The node it runs on, once it started.
        node: Option<String>,
    },
}

impl Handle {
    fn signal(&self, signal: i32) {
        match self {
            Handle::Port(p) => {
                let _ = p.signal(signal);
            }
            Handle::Daemon { stream, .. } => {
                let _ = write_frame(&mut &*stream, &Request::Signal(signal));
            }
        }
    }

    /// Kills the job's group (and cgroup); for a daemon's run, the daemon
    /// does that when its client's side of the connection closes.
    fn kill(&self) {
        match self {
            Handle::Port(p) => p.kill(),
            Handle::Daemon { stream, .. } => {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    fn is_port(&self, pid: Pid) -> bool {
        matches!(self, Handle::Port(p) if p.pid() == pid)
    }

    fn is_key(&self, k: u64) -> bool {
        matches!(self, Handle::Daemon { key, .. } if *key == k)
    }
}

struct Running {
    job: Job,
    order: u64,
    attempt: u32,
    slot: usize,
    handle: Handle,
    failed_on: Vec<String>,
    command: String,
    start: SystemTime,
    started: Instant,
    out: JobOutput,
    /// `--line-buffer`: stdout's and stderr's lines as they come.
    lines: [LineStream; 2],
    deadline: Option<Instant>,
    /// The next step of the kill sequence and when it is due.
    kill: Option<(usize, Instant)>,
    timed_out: bool,
}

/// A job as `--json` prints it: GNU parallel's `--results x.json` object.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct JsonRow<'a> {
    seq: u64,
    host: &'a str,
    #[serde(rename = "Starttime")]
    start: f64,
    #[serde(rename = "JobRuntime")]
    runtime: f64,
    send: u64,
    receive: u64,
    exitval: i64,
    signal: i32,
    command: &'a str,
    #[serde(rename = "V")]
    args: &'a [String],
    stdout: &'a str,
    stderr: &'a str,
}

/// A job that ended, waiting for its turn to be printed (`-k`).
struct Finished {
    job: Job,
    row: Row,
    out: JobOutput,
}

/// Where printed output goes: standard output and error, each line after
/// the job's tag when `--tag`, quiet once the reader is gone.
struct Printer {
    tag: bool,
    line_buffer: bool,
    json: bool,
    stdout_gone: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Printer {
    fn emit(&mut self, stream: usize, tag: Option<&str>, bytes: &[u8]) {
        self.emit_part(stream, tag, &mut true, bytes);
    }

    /// Writes a piece of a stream; `at_start` says whether it starts a line
    /// (for the tag) and is kept for the next piece.
    fn emit_part(&mut self, stream: usize, tag: Option<&str>, at_start: &mut bool, bytes: &[u8]) {
        if bytes.is_empty() || (stream == 0 && self.stdout_gone) {
            return;
        }
        let tag = if self.tag { tag } else { None };
        let mut write = |bytes: &[u8]| -> std::io::Result<()> {
            if stream == 0 {
                let mut out = std::io::stdout().lock();
                write_tagged(&mut out, tag, at_start, bytes)?;
                out.flush()
            } else {
                let mut err = std::io::stderr().lock();
                write_tagged(&mut err, tag, at_start, bytes)?;
                err.flush()
            }
        };
        let result = match &self.bar {
            Some(bar) => bar.suspend(|| write(bytes)),
            None => write(bytes),
        };
        if result.is_err() && stream == 0 {
            // A reader that went away (`| head`) is not an error.
            self.stdout_gone = true;
        }
    }

    /// A finished job's whole output (or its JSON object).
    fn job(&mut self, f: &mut Finished) {
        let tag = f.job.args.join(" ");
        if self.json {
            let mut text = [JsonText::default(), JsonText::default()];
            for (i, spool) in [&mut f.out.stdout, &mut f.out.stderr].into_iter().enumerate() {
                let _ = spool.drain(|b| {
                    text[i].push(b);
                    Ok(())
                });
            }
            let [stdout, stderr] = text.map(JsonText::finish);
            let object = JsonRow {
                seq: f.row.seq,
                host: &f.row.host,
                start: (f.row.start * 1000.0).round() / 1000.0,
                runtime: (f.row.runtime * 1000.0).round() / 1000.0,
                send: f.row.send,
                receive: f.row.receive,
                exitval: f.row.exitval,
                signal: f.row.signal,
                command: &f.row.command,
                args: &f.job.args,
                stdout: &stdout,
                stderr: &stderr,
            };
            let line = serde_json::to_string(&object).expect("BUG: a job's JSON object always encodes");
            self.emit(0, None, format!("{line}\n").as_bytes());
            return;
        }
        for (stream, spool) in [&mut f.out.stdout, &mut f.out.stderr].into_iter().enumerate() {
            // Chunk by chunk from the spool: never the whole output in memory.
            let mut at_start = true;
            let _ = spool.drain(|b| {
                self.emit_part(stream, Some(&tag), &mut at_start, b);
                Ok(())
            });
        }
    }
}

pub(crate) fn run(args: ParallelArgs) -> Result<ExitCode, String> {
    let (command, lists) = input::split(&args.words)?;
    let template = Template::parse(&command);
    let source = match lists {
        Some(lists) => Source::lists(lists)?,
        None => Source::lines(std::io::stdin().lock()),
    };
    let source = match args.halt {
        Some(Halt {
            limit: Limit::Share(_), ..
        }) => source.read_all()?,
        _ => source,
    };
    if args.dry_run {
        return Ok(dry_run(&args, &template, source));
    }
    let done = match (&args.joblog, args.resume || args.resume_failed) {
        (Some(path), true) => joblog::read(path)?,
        _ => Default::default(),
    };
    let skip: HashSet<u64> = if args.resume {
        done.seen
    } else if args.resume_failed {
        done.seen.difference(&done.failed).copied().collect()
    } else {
        HashSet::new()
    };
    let log = match &args.joblog {
        Some(path) => Some(
            JobLog::open(path, args.resume || args.resume_failed).map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    // With --anywhere, through the node daemon when one runs.
    let daemon = if args.anywhere {
        crate::client::find(args.node.as_deref())?.map(|(name, _)| name)
    } else {
        None
    };
    let jobs = args
        .jobs
        .unwrap_or(if daemon.is_some() { ANYWHERE_JOBS } else { cores() });
    let node = crate::embedded_node()?;
    // Ctrl-C, SIGTERM and SIGHUP come to the loop as messages.
    let stop_forwarding = crate::signals_as_messages(&node, &[SIGINT, SIGTERM, SIGHUP], Msg::Signal)?;
    let show_bar = !args.no_bar && (args.bar || std::io::stderr().is_terminal());
    let bar = show_bar.then(|| {
        let bar = match source.total() {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} jobs {wide_bar} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let shell = std::env::var_os("PARALLEL_SHELL")
        .or_else(|| std::env::var_os("SHELL"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let mut engine = Engine {
        ctx: node.ctx::<Msg>(),
        daemon,
        next_key: 0,
        template,
        source,
        shell: shell.into(),
        skip,
        log,
        termseq: args.termseq.clone().unwrap_or_default(),
        queue: VecDeque::new(),
        source_done: false,
        running: Vec::new(),
        free_slots: (1..=if jobs == 0 { 4096 } else { jobs.min(4096) }).collect(),
        next_order: 0,
        print_order: 0,
        finished: BTreeMap::new(),
        started: 0,
        completed: 0,
        failed: 0,
        reasons: BTreeMap::new(),
        halt_status: None,
        stop_starting: false,
        interrupted: None,
        printer: Printer {
            tag: args.tag,
            line_buffer: args.line_buffer,
            json: args.json,
            stdout_gone: false,
            bar,
        },
        args: &args,
    };
    let result = engine.run();
    stop_forwarding.close();
    if let Some(bar) = &engine.printer.bar {
        bar.finish_and_clear();
    }
    let code = result.map(|()| engine.exit_status());
    engine.summary();
    drop(engine);
    node.shutdown(Duration::from_secs(1));
    code.map(ExitCode::from)
}

fn dry_run(args: &ParallelArgs, template: &Template, mut source: Source) -> ExitCode {
    let mut out = std::io::stdout().lock();
    // -j 0: no limit (as many slots as a run would have).
    let slots = match args.jobs.unwrap_or_else(cores) {
        0 => 4096,
        n => n.min(4096),
    };
    let mut n = 0usize;
    while let Some(job) = source.next_job() {
        match job {
            Ok(job) => {
                if writeln!(out, "{}", template.render(&job, n % slots + 1)).is_err() {
                    break;
                }
                n += 1;
            }
            Err(e) => {
                eprintln!("converge parallel: {e}");
                return ExitCode::from(USAGE);
            }
        }
    }
    ExitCode::SUCCESS
}

struct Engine<'a> {
    args: &'a ParallelArgs,
    ctx: Ctx<Msg>,
    /// The node daemon the jobs run through (--anywhere).
    daemon: Option<String>,
    next_key: u64,
    template: Template,
    source: Source,
    shell: PathBuf,
    skip: HashSet<u64>,
    log: Option<JobLog>,
    termseq: TermSeq,
    /// Jobs to start before the source's next: retries.
    queue: VecDeque<Pending>,
    source_done: bool,
    running: Vec<Running>,
    free_slots: BTreeSet<usize>,
    next_order: u64,
    print_order: u64,
    finished: BTreeMap<u64, Finished>,
    started: u64,
    completed: u64,
    failed: u64,
    reasons: BTreeMap<String, u64>,
    halt_status: Option<i64>,
    stop_starting: bool,
    /// The signal that interrupted the run.
    interrupted: Option<i32>,
    printer: Printer,
}

impl Engine<'_> {
    fn run(&mut self) -> Result<(), String> {
        loop {
            self.start_jobs()?;
            if self.running.is_empty() {
                // With -k, what waits behind a job that never finished (a
                // `--halt now` killed it) still goes out, in order.
                for (_, mut f) in std::mem::take(&mut self.finished) {
                    self.log_row(&f.row)?;
                    self.printer.job(&mut f);
                }
                return Ok(());
            }
            let now = Instant::now();
            let due = self
                .running
                .iter()
                .filter_map(|r| match r.kill {
                    Some((_, at)) => Some(at),
                    None => r.deadline,
                })
                .min();
            let wait = due.map_or(Duration::from_secs(3600), |d| d.saturating_duration_since(now));
            match self.ctx.recv_event_timeout(wait) {
                Ok(Event::Port { port, output }) => {
                    if let Some(i) = self.running.iter().position(|r| r.handle.is_port(port)) {
                        self.output(i, output)?;
                    }
                }
                Ok(Event::Message(Msg::Signal(signal))) => self.interrupt(signal),
                Ok(Event::Message(Msg::Daemon { key, reply })) => self.daemon_reply(key, reply)?,
                Ok(Event::Message(Msg::Lost { key })) => self.daemon_reply(
                    key,
                    Reply::Exit {
                        reason: ExitReason::NoConnection,
                        timed_out: false,
                    },
                )?,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err("the node stopped".into()),
            }
            self.timers();
        }
    }

    fn next_pending(&mut self) -> Result<Option<Pending>, String> {
        if let Some(p) = self.queue.pop_front() {
            return Ok(Some(p));
        }
        while !self.source_done {
            match self.source.next_job() {
                None => self.source_done = true,
                Some(Err(e)) => return Err(e),
                Some(Ok(job)) if self.skip.contains(&job.seq) => {
                    if let Some(bar) = &self.printer.bar {
                        bar.inc(1);
                    }
                }
                Some(Ok(job)) => {
                    return Ok(Some(Pending {
                        job,
                        order: None,
                        attempt: 1,
                        failed_on: Vec::new(),
                    }));
                }
            }
        }
        Ok(None)
    }

    fn start_jobs(&mut self) -> Result<(), String> {
        // A reader that went away (`| head`) wants nothing more.
        while !self.stop_starting && !self.printer.stdout_gone && !self.free_slots.is_empty() {
            let Some(pending) = self.next_pending()? else {
                return Ok(());
            };
            self.start(pending)?;
        }
        Ok(())
    }

    fn start(&mut self, p: Pending) -> Result<(), String> {
        let slot = self.free_slots.pop_first().expect("BUG: a job starts in a free slot");
        let command = self.template.render(&p.job, slot);
        let order = p.order.unwrap_or_else(|| {
            self.next_order += 1;
            self.next_order - 1
        });
        let handle = match self.daemon.clone() {
            Some(daemon) => self.through_daemon(&daemon, &p, slot, &command)?,
            None => {
                let port = PortBuilder::new(&self.shell)
                    .args(["-c", &command])
                    .framing(Framing::Raw)
                    .stderr(Stderr::Separate)
                    .env("PARALLEL_SEQ", p.job.seq.to_string())
                    .env("PARALLEL_JOBSLOT", slot.to_string())
                    .name(format!("job {}", p.job.seq))
                    .spawn()
                    .map_err(|e| format!("starting job {}: {e}", p.job.seq))?;
                port.close_input();
                Handle::Port(port)
            }
        };
        // A daemon's run has its deadline from its start there.
        let deadline = match handle {
            Handle::Port(_) => self.args.timeout.map(|t| Instant::now() + t),
            Handle::Daemon { .. } => None,
        };
        if p.attempt == 1 {
            self.started += 1;
        }
        let started = Instant::now();
        self.running.push(Running {
            job: p.job,
            order,
            attempt: p.attempt,
            slot,
            handle,
            failed_on: p.failed_on,
            command,
            start: SystemTime::now(),
            started,
            out: JobOutput::default(),
            lines: Default::default(),
            deadline,
            kill: None,
            timed_out: false,
        });
        Ok(())
    }

    /// Whether the job of `order` prints as it goes (`--line-buffer`).
    fn live(&self, order: u64) -> bool {
        !self.args.keep_order || order == self.print_order
    }

    /// Asks the node daemon to run a job wherever there is room: a
    /// connection of its own, whose replies a thread passes to the loop.
    fn through_daemon(&mut self, daemon: &str, p: &Pending, slot: usize, command: &str) -> Result<Handle, String> {
        let mut stream = crate::client::connect(daemon)?;
        // PARALLEL_SEQ and PARALLEL_JOBSLOT as --env: on any node.
        let ours = [
            ("PARALLEL_SEQ".into(), p.job.seq.to_string().into()),
            ("PARALLEL_JOBSLOT".into(), slot.to_string().into()),
        ];
        let command = [self.shell.clone().into_os_string(), "-c".into(), command.into()];
        let mut spec = crate::client::run_spec(
            Placement::Anywhere {
                avoid: p.failed_on.clone(),
            },
            &command,
            &ours,
            None,
        )?;
        // The shell is the node's own; jobs wait at the daemon for a slot.
        spec.ship = false;
        spec.wait_for_slot = true;
        write_frame(&mut stream, &Request::Run(Box::new(spec))).map_err(|e| format!("node {daemon}: {e}"))?;
        write_frame(&mut stream, &Request::InputEnd).map_err(|e| format!("node {daemon}: {e}"))?;
        self.next_key += 1;
        let key = self.next_key;
        let from = stream.try_clone().map_err(|e| e.to_string())?;
        crate::client::forward_replies(
            from,
            self.ctx.mailbox(),
            move |reply| Msg::Daemon { key, reply },
            Msg::Lost { key },
        );
        Ok(Handle::Daemon {
            key,
            stream,
            node: None,
        })
    }

    /// What the daemon says of the job `key`.
    fn daemon_reply(&mut self, key: u64, reply: Reply) -> Result<(), String> {
        let Some(i) = self.running.iter().position(|r| r.handle.is_key(key)) else {
            return Ok(());
        };
        match reply {
            Reply::Started { node, .. } => {
                let r = &mut self.running[i];
                if let Handle::Daemon { node: at, .. } = &mut r.handle {
                    *at = Some(node);
                }
                // Its time runs from its start there, not from its wait for
                // a slot.
                r.start = SystemTime::now();
                r.started = Instant::now();
                r.deadline = self.args.timeout.map(|t| r.started + t);
                Ok(())
            }
            Reply::Stdout(bytes) => self.output(i, PortOutput::Data(bytes)),
            Reply::Stderr(bytes) => self.output(i, PortOutput::Stderr(bytes)),
            Reply::Exit { reason, .. } => self.output(i, PortOutput::Exit(reason)),
            Reply::Failed { code, why } => {
                eprintln!("converge parallel: job {}: {why}", self.running[i].job.seq);
                self.output(i, PortOutput::Exit(ExitReason::Code(i32::from(code))))
            }
            _ => Ok(()),
        }
    }

    /// Output or the end of the running job `i`.
    fn output(&mut self, i: usize, output: PortOutput) -> Result<(), String> {
        let stream = match output {
            PortOutput::Data(bytes) => Some((0, bytes)),
            PortOutput::Stderr(bytes) => Some((1, bytes)),
            PortOutput::Exit(reason) => {
                let r = self.running.swap_remove(i);
                return self.ended(r, &reason);
            }
            _ => None,
        };
        let Some((stream, bytes)) = stream else {
            return Ok(());
        };
        let live = self.live(self.running[i].order);
        let r = &mut self.running[i];
        if stream == 0 {
            // Received bytes count whatever happens to them.
            r.out.received += bytes.len() as u64;
        }
        if self.printer.line_buffer {
            let lines = r.lines[stream].complete_lines(&bytes);
            if live {
                let tag = r.job.args.join(" ");
                self.printer.emit(stream, Some(&tag), &lines);
            } else {
                spool(&mut r.out, stream, &lines)?;
            }
        } else {
            spool(&mut r.out, stream, &bytes)?;
        }
        Ok(())
    }

    fn ended(&mut self, mut r: Running, reason: &ExitReason) -> Result<(), String> {
        self.free_slots.insert(r.slot);
        let end = ending(reason, r.timed_out);
        let retry = end.failed()
            && r.attempt < self.args.retries
            && !self.stop_starting
            && match self.args.retry_on {
                RetryOn::Any => true,
                RetryOn::Lost => end.lost,
                RetryOn::Exit => !end.lost,
            };
        let host = match &r.handle {
            Handle::Daemon { node: Some(node), .. } if Some(node) != self.daemon.as_ref() => node.clone(),
            _ => ":".to_owned(),
        };
        if retry {
            // The failed attempt leaves nothing behind but its lines already
            // printed (`--line-buffer`).
            let mut failed_on = std::mem::take(&mut r.failed_on);
            if let Handle::Daemon { node: Some(node), .. } = &r.handle {
                failed_on.push(node.clone());
            }
            self.queue.push_front(Pending {
                job: r.job,
                order: Some(r.order),
                attempt: r.attempt + 1,
                failed_on,
            });
            return Ok(());
        }
        if r.timed_out {
            eprintln!("converge parallel: job {} timed out: {}", r.job.seq, r.command);
        }
        if self.printer.line_buffer {
            for stream in 0..2 {
                let rest = r.lines[stream].rest();
                if self.live(r.order) {
                    let tag = r.job.args.join(" ");
                    self.printer.emit(stream, Some(&tag), &rest);
                } else {
                    spool(&mut r.out, stream, &rest)?;
                }
            }
        }
        let row = Row {
            seq: r.job.seq,
            host,
            start: r
                .start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            runtime: r.started.elapsed().as_secs_f64(),
            send: 0,
            receive: r.out.received,
            exitval: end.exitval,
            signal: end.signal,
            command: r.command.clone(),
        };
        // With -k, rows are written in order too, as each job is printed.
        if !self.args.keep_order {
            self.log_row(&row)?;
        }
        self.completed += 1;
        if end.failed() {
            self.failed += 1;
            *self.reasons.entry(end.why()).or_default() += 1;
        }
        if let Some(bar) = &self.printer.bar {
            bar.inc(1);
            if self.failed > 0 {
                bar.set_message(format!("{} failed", self.failed));
            }
        }
        let finished = Finished {
            job: r.job,
            row,
            out: r.out,
        };
        self.finished.insert(r.order, finished);
        self.print_ready()?;
        self.check_halt(&end);
        Ok(())
    }

    fn log_row(&mut self, row: &Row) -> Result<(), String> {
        match &mut self.log {
            Some(log) => log.write(row).map_err(|e| format!("writing the job log: {e}")),
            None => Ok(()),
        }
    }

    /// Prints the finished jobs whose turn it is (every one without `-k`).
    fn print_ready(&mut self) -> Result<(), String> {
        if !self.args.keep_order {
            let all = std::mem::take(&mut self.finished);
            for (_, mut f) in all {
                self.printer.job(&mut f);
            }
            return Ok(());
        }
        while let Some(mut f) = self.finished.remove(&self.print_order) {
            self.log_row(&f.row)?;
            self.printer.job(&mut f);
            self.print_order += 1;
            // The next job in order prints as it goes from now on.
            if self.printer.line_buffer
                && let Some(next) = self.running.iter_mut().find(|r| r.order == self.print_order)
            {
                let tag = next.job.args.join(" ");
                for (stream, spool) in [&mut next.out.stdout, &mut next.out.stderr].into_iter().enumerate() {
                    let mut at_start = true;
                    let printer = &mut self.printer;
                    let _ = spool.drain(|b| {
                        printer.emit_part(stream, Some(&tag), &mut at_start, b);
                        Ok(())
                    });
                }
            }
        }
        Ok(())
    }

    /// GNU parallel's `--halt`: after the job that ended with `end`.
    fn check_halt(&mut self, end: &Ending) {
        let Some(halt) = self.args.halt else {
            return;
        };
        if halt.when == When::Never {
            return;
        }
        let reached = match halt.on {
            HaltOn::Fail if end.failed() => self.failed,
            HaltOn::Success if !end.failed() => self.completed - self.failed,
            HaltOn::Done => self.completed,
            _ => return,
        };
        let threshold = match halt.limit {
            Limit::Count(n) => n as f64,
            Limit::Share(share) => self.source.total().unwrap_or(self.started) as f64 * share,
        };
        if (reached as f64) < threshold {
            return;
        }
        if self.halt_status.is_none() {
            self.halt_status = Some(match (halt.on, halt.limit) {
                (HaltOn::Success, _) => 0,
                (_, Limit::Count(1)) => end.status(),
                (_, Limit::Count(_)) => self.failed.min(101) as i64,
                (_, Limit::Share(_)) => {
                    let total = self.source.total().unwrap_or(self.started).max(1);
                    (self.failed * 100).div_ceil(total) as i64
                }
            });
        }
        self.stop_starting = true;
        if halt.when == When::Now {
            if !self.running.is_empty() {
                eprintln!(
                    "converge parallel: halting: killing {} running jobs",
                    self.running.len()
                );
            }
            self.kill_running();
        } else if !self.running.is_empty() {
            eprintln!(
                "converge parallel: starting no more jobs; waiting for {} to finish",
                self.running.len()
            );
        }
    }

    /// Stops every running job with the kill sequence, without a row or its
    /// output: `--halt now`.
    fn kill_running(&mut self) {
        self.drop_unstarted();
        let deadline = Instant::now() + self.termseq.0.iter().map(|(_, d)| *d).sum::<Duration>();
        for r in &self.running {
            r.handle.signal(self.termseq.0.first().map_or(SIGTERM, |s| s.0));
        }
        // The rest of the sequence, for those that are still there.
        let mut step = 0;
        let mut step_at = Instant::now() + self.termseq.0.first().map_or(Duration::ZERO, |s| s.1);
        while !self.running.is_empty() {
            let now = Instant::now();
            if now >= step_at {
                step += 1;
                match self.termseq.0.get(step) {
                    Some((signal, wait)) => {
                        for r in &self.running {
                            r.handle.signal(*signal);
                        }
                        step_at = now + *wait;
                    }
                    None => {
                        for r in &self.running {
                            r.handle.kill();
                        }
                        step_at = now + Duration::from_secs(5);
                    }
                }
            }
            let wait = step_at
                .saturating_duration_since(now)
                .min(deadline.saturating_duration_since(now).max(Duration::from_millis(25)));
            let gone = match self.ctx.recv_event_timeout(wait) {
                Ok(Event::Port {
                    port,
                    output: PortOutput::Exit(_),
                }) => self.running.iter().position(|r| r.handle.is_port(port)),
                Ok(Event::Message(
                    Msg::Daemon {
                        key,
                        reply: Reply::Exit { .. } | Reply::Failed { .. },
                    }
                    | Msg::Lost { key },
                )) => self.running.iter().position(|r| r.handle.is_key(key)),
                _ => None,
            };
            if let Some(i) = gone {
                let r = self.running.swap_remove(i);
                self.free_slots.insert(r.slot);
            }
        }
    }

    /// Timeouts and the steps of kill sequences that are due.
    fn timers(&mut self) {
        let now = Instant::now();
        let seq = &self.termseq.0;
        for r in &mut self.running {
            if r.kill.is_none() && r.deadline.is_some_and(|d| now >= d) {
                r.timed_out = true;
                r.kill = Some((0, now));
            }
            while let Some((step, at)) = r.kill {
                if now < at {
                    break;
                }
                match seq.get(step) {
                    Some((signal, wait)) => {
                        r.handle.signal(*signal);
                        r.kill = Some((step + 1, now + *wait));
                    }
                    None => {
                        // Past the sequence: the whole cgroup too, and no
                        // more steps.
                        r.handle.kill();
                        r.kill = Some((step + 1, now + Duration::from_secs(3600)));
                    }
                }
            }
        }
    }

    /// Ctrl-C or SIGTERM: passed to every running job's process group, and
    /// no more jobs start; a second one kills them. SIGHUP: no more jobs
    /// start.
    fn interrupt(&mut self, signal: i32) {
        self.stop_starting = true;
        if signal == SIGHUP {
            // As GNU parallel: the running jobs finish, no new one starts.
            eprintln!(
                "converge parallel: SIGHUP: starting no more jobs; waiting for {} to finish",
                self.running.len()
            );
            return;
        }
        let second = self.interrupted.is_some();
        self.interrupted = Some(signal);
        self.drop_unstarted();
        for r in &self.running {
            if second {
                r.handle.kill();
            } else {
                r.handle.signal(signal);
            }
        }
    }

    /// Jobs still waiting at the node daemon for a slot never start: their
    /// connections close, and the daemon gives them up.
    fn drop_unstarted(&mut self) {
        let (waiting, started): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| matches!(r.handle, Handle::Daemon { node: None, .. }));
        self.running = started;
        for r in waiting {
            r.handle.kill();
            self.free_slots.insert(r.slot);
        }
    }

    fn exit_status(&self) -> u8 {
        if let Some(signal) = self.interrupted {
            return 128 + signal as u8;
        }
        if self.printer.stdout_gone {
            // As a shell reports a writer that SIGPIPE ended.
            return 128 + libc::SIGPIPE as u8;
        }
        let status = match (self.halt_status, self.args.halt) {
            (Some(s), _) => s,
            (None, Some(h)) if h.when != When::Never => match h.limit {
                Limit::Share(_) => ((self.failed * 100).div_ceil(self.started.max(1))) as i64,
                Limit::Count(_) => self.failed.min(101) as i64,
            },
            _ => self.failed.min(101) as i64,
        };
        // As the exit status of a Perl `exit`: the low byte.
        (status & 0xff) as u8
    }

    /// The exit reasons of the jobs that failed, on standard error.
    fn summary(&self) {
        if self.failed == 0 {
            return;
        }
        let reasons: Vec<String> = self.reasons.iter().map(|(why, n)| format!("{why} ({n})")).collect();
        eprintln!(
            "converge parallel: {} of {} jobs failed: {}",
            self.failed,
            self.completed,
            reasons.join(", ")
        );
    }
}

fn spool(out: &mut JobOutput, stream: usize, bytes: &[u8]) -> Result<(), String> {
    let spool = if stream == 0 { &mut out.stdout } else { &mut out.stderr };
    spool.write(bytes).map_err(|e| format!("spooling a job's output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_as_gnu_parallel_reads_it() {
        assert_eq!(
            parse_halt("now,fail=1").unwrap(),
            Halt {
                when: When::Now,
                on: HaltOn::Fail,
                limit: Limit::Count(1)
            }
        );
        assert_eq!(parse_halt("2").unwrap(), parse_halt("now,fail=1").unwrap());
        assert_eq!(parse_halt("5%").unwrap(), parse_halt("soon,fail=5%").unwrap());
        assert_eq!(parse_halt("soon,done=30%").unwrap().limit, Limit::Share(0.3));
        assert!(parse_halt("later,fail=1").is_err());
        assert!(parse_halt("now,fail=x").is_err());
        assert!(parse_halt("now").is_err());
    }

    #[test]
    fn jobs_and_kill_sequences() {
        assert_eq!(parse_jobs("3").unwrap(), 3);
        assert_eq!(parse_jobs("100%").unwrap(), cores());
        assert_eq!(parse_jobs("+1").unwrap(), cores() + 1);
        assert_eq!(parse_jobs("-100").unwrap(), 1);
        assert!(parse_jobs("foo").is_err());
        let seq = parse_termseq("INT,10,SIGKILL,5").unwrap();
        assert_eq!(
            seq.0,
            vec![(SIGINT, Duration::from_millis(10)), (SIGKILL, Duration::from_millis(5))]
        );
        assert!(parse_termseq("TERM").is_err());
        assert!(parse_termseq("NOPE,1").is_err());
    }
}

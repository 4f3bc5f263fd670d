//! Tools: unreliable dependencies called through the job's broker, with a
//! timeout, retries with seeded backoff, and a circuit breaker counted in
//! rounds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use super::context::{Value, from_json};
use super::hash;
use crate::pool::{self, TaskError};
use crate::port::{Framing, PortBuilder, PortOutput, Stderr};

/// Why a tool call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ToolFailure {
    /// No answer within the tool's timeout.
    #[error("timed out")]
    Timeout,
    /// The tool refused or failed: its error, exit status or crash.
    #[error("refused: {0}")]
    Refused(String),
    /// The tool answered something that is not an answer.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The circuit breaker is open: the tool was not called.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// The job's budget of tool calls is spent: the tool was not called.
    #[error("tool-call budget spent")]
    Budget,
    /// The job has no tool of that name.
    #[error("no such tool")]
    Unknown,
}

type CallFn = dyn Fn(&[u8], Duration) -> Result<Vec<u8>, ToolFailure> + Send + Sync;

/// An unreliable dependency of a job (an API, a program), called by the
/// job's broker when an agent asks: in its own process (a pool task or a
/// port), with a timeout, retries and a circuit breaker.
#[derive(Clone)]
pub struct Tool {
    pub(crate) name: String,
    call: Arc<CallFn>,
    /// A request from JSON (from a program agent).
    pub(crate) request_json: fn(serde_json::Value) -> Result<Vec<u8>, String>,
    timeout: Duration,
    attempts: u32,
    min_delay: Duration,
    max_delay: Duration,
    breaker_after: u32,
    cooldown: u32,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("breaker_after", &self.breaker_after)
            .field("cooldown", &self.cooldown)
            .finish_non_exhaustive()
    }
}

fn encode<T: Value>(v: &T) -> Result<Vec<u8>, ToolFailure> {
    postcard::to_stdvec(v).map_err(|e| ToolFailure::BadAnswer(e.to_string()))
}

impl Tool {
    /// A tool that is a plain function, run as a pool task: `Err` is a
    /// refusal, a panic or a crash of its scheduler too.
    pub fn function<Q: Value, A: Value>(name: &str, f: fn(Q) -> Result<A, String>) -> Tool {
        Tool::with_call(
            name,
            from_json::<Q>,
            Arc::new(move |request: &[u8], timeout: Duration| {
                let q: Q = postcard::from_bytes(request).map_err(|e| ToolFailure::Refused(format!("request: {e}")))?;
                let mut task = pool::submit(f, q).map_err(|e| ToolFailure::Refused(e.to_string()))?;
                match task.join_timeout(timeout) {
                    Ok(Ok(a)) => encode(&a),
                    Ok(Err(e)) => Err(ToolFailure::Refused(e)),
                    Err(TaskError::Timeout) => {
                        task.cancel();
                        Err(ToolFailure::Timeout)
                    }
                    Err(TaskError::Refused(e)) => Err(ToolFailure::BadAnswer(e)),
                    Err(e) => Err(ToolFailure::Refused(e.to_string())),
                }
            }),
        )
    }

    /// A tool that is a program, run as a port with `args` for each call:
    /// the request as one JSON line on its standard input, its answer the
    /// first JSON line of its standard output. A status other than 0 is a
    /// refusal; no line, or one that is not an answer, a bad answer.
    pub fn program<Q: Value, A: Value>(name: &str, program: impl Into<PathBuf>, args: &[&str]) -> Tool {
        let program: PathBuf = program.into();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Tool::with_call(
            name,
            from_json::<Q>,
            Arc::new(move |request: &[u8], timeout: Duration| {
                let q: Q = postcard::from_bytes(request).map_err(|e| ToolFailure::Refused(format!("request: {e}")))?;
                let line = serde_json::to_string(&q).map_err(|e| ToolFailure::Refused(format!("request: {e}")))?;
                let (status, out) = run_program(&program, &args, &line, timeout)?;
                if status != crate::ExitReason::Normal {
                    return Err(ToolFailure::Refused(status.to_string()));
                }
                let first = out
                    .iter()
                    .find(|l| !l.trim().is_empty())
                    .ok_or_else(|| ToolFailure::BadAnswer("no answer".into()))?;
                let a: A = serde_json::from_str(first).map_err(|e| ToolFailure::BadAnswer(e.to_string()))?;
                encode(&a)
            }),
        )
    }

    fn with_call(
        name: &str,
        request_json: fn(serde_json::Value) -> Result<Vec<u8>, String>,
        call: Arc<CallFn>,
    ) -> Tool {
        Tool {
            name: name.to_owned(),
            call,
            request_json,
            timeout: Duration::from_secs(5),
            attempts: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            breaker_after: 3,
            cooldown: 2,
        }
    }

    /// How long one attempt may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Tool {
        self.timeout = timeout;
        self
    }

    /// Attempts per call, the first included (default 3; at least 1).
    pub fn attempts(mut self, attempts: u32) -> Tool {
        self.attempts = attempts.max(1);
        self
    }

    /// The delay before the first retry, doubling up to `max` (defaults
    /// 10 ms and 1 s), with jitter drawn from the job's seed.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Tool {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }

    /// The circuit breaker: open after `failures` failed calls in a row
    /// (each after its retries), for `cooldown` rounds of the job; then one
    /// trial call closes it or opens it again (defaults 3 and 2).
    pub fn breaker(mut self, failures: u32, cooldown: u32) -> Tool {
        self.breaker_after = failures.max(1);
        self.cooldown = cooldown;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Runs a program with one line of input; its status and output lines.
pub(crate) fn run_program(
    program: &PathBuf,
    args: &[String],
    input: &str,
    timeout: Duration,
) -> Result<(crate::ExitReason, Vec<String>), ToolFailure> {
    let port = PortBuilder::new(program)
        .args(args)
        .framing(Framing::Lines { max: 1 << 20 })
        .stderr(Stderr::Log)
        .spawn()
        .map_err(|e| ToolFailure::Refused(e.to_string()))?;
    // A program that exits without reading its input is not an error here.
    let _ = port.send_line(input);
    port.close_input();
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut partial = Vec::new();
    let mut timed_out = false;
    loop {
        let wait = if timed_out {
            Duration::from_secs(10)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match port.recv_timeout(wait) {
            Ok(PortOutput::Line { data, cut }) => {
                partial.extend_from_slice(&data);
                if !cut {
                    lines.push(String::from_utf8_lossy(&partial).into_owned());
                    partial.clear();
                }
            }
            Ok(PortOutput::Exit(reason)) => {
                if !partial.is_empty() {
                    lines.push(String::from_utf8_lossy(&partial).into_owned());
                }
                return if timed_out {
                    Err(ToolFailure::Timeout)
                } else {
                    Ok((reason, lines))
                };
            }
            Ok(_) => {}
            Err(crate::RecvTimeoutError::Timeout) if !timed_out => {
                timed_out = true;
                port.kill();
            }
            Err(e) => return Err(ToolFailure::Refused(e.to_string())),
        }
    }
}

/// A tool's circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Breaker {
    /// Failed calls in a row.
    failures: u32,
    /// Open until this round (then half open).
    open_until: Option<u32>,
}

/// One call as the trace records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The agent that asked.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// The hash of the request.
    pub request: u64,
    /// Attempts made (0 when the tool was not called).
    pub attempts: u32,
    /// The answer's encoding, or why there was none.
    pub result: Result<Vec<u8>, ToolFailure>,
}

/// A call an agent asked for.
pub(crate) struct Ask<'a> {
    /// The round it is merged in.
    pub(crate) round: u32,
    /// Its place among the round's calls.
    pub(crate) index: u32,
    /// The agent that asked.
    pub(crate) agent: &'a str,
    /// The tool.
    pub(crate) tool: &'a str,
    /// The request's encoding.
    pub(crate) request: &'a [u8],
}

/// The job's broker: the tools, their breakers and the calls made.
pub(crate) struct Broker {
    pub(crate) tools: BTreeMap<String, Tool>,
    pub(crate) breakers: BTreeMap<String, Breaker>,
    /// Attempts made so far (against the job's budget).
    pub(crate) used: u32,
    pub(crate) seed: u64,
}

impl Broker {
    /// Calls a tool as `ask` says:
    /// the record of the call. `replayed` gives the recorded call instead
    /// of calling; the breaker moves the same way.
    pub(crate) fn call(
        &mut self,
        ask: Ask<'_>,
        budget: Option<u32>,
        deadline: Option<Instant>,
        replayed: Option<&CallRecord>,
    ) -> CallRecord {
        let Ask {
            round,
            index,
            agent,
            tool,
            request,
        } = ask;
        let mut record = CallRecord {
            agent: agent.to_owned(),
            tool: tool.to_owned(),
            request: hash::short(request),
            attempts: 0,
            result: Err(ToolFailure::Unknown),
        };
        let Some(t) = self.tools.get(tool) else {
            return record;
        };
        let breaker = self.breakers.entry(tool.to_owned()).or_default();
        if breaker.open_until.is_some_and(|until| round < until) {
            record.result = Err(ToolFailure::BreakerOpen);
            return record;
        }
        let half_open = breaker.open_until.is_some();
        if let Some(r) = replayed {
            record.attempts = r.attempts;
            record.result = r.result.clone();
            self.used += r.attempts;
        } else {
            let seed = self.seed ^ hash::short(&postcard::to_stdvec(&(tool, round, index)).unwrap_or_default());
            let mut delays = ExponentialBuilder::default()
                .with_min_delay(t.min_delay)
                .with_max_delay(t.max_delay)
                .with_max_times(if half_open { 0 } else { t.attempts as usize - 1 })
                .with_jitter()
                .with_jitter_seed(seed)
                .build();
            loop {
                if budget.is_some_and(|b| self.used >= b) {
                    record.result = Err(ToolFailure::Budget);
                    break;
                }
                self.used += 1;
                record.attempts += 1;
                record.result = (t.call)(request, t.timeout);
                if record.result.is_ok() {
                    break;
                }
                match delays.next() {
                    Some(d) if deadline.is_none_or(|dl| Instant::now() + d < dl) => std::thread::sleep(d),
                    _ => break,
                }
            }
        }
        let breaker = self.breakers.get_mut(tool).expect("BUG: made above");
        match &record.result {
            Ok(_) => *breaker = Breaker::default(),
            Err(ToolFailure::Budget) => {}
            Err(_) => {
                breaker.failures += 1;
                if half_open || breaker.failures >= t.breaker_after {
                    breaker.open_until = Some(round + t.cooldown.max(1));
                }
            }
        }
        record
    }

    /// Half-opens every open breaker (a continued job tries each tool again).
    pub(crate) fn half_open(&mut self) {
        for b in self.breakers.values_mut() {
            if b.open_until.is_some() {
                b.open_until = Some(0);
            }
        }
    }
}

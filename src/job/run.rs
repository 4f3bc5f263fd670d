//! The job and its driver: rounds of isolated agents, a serial merge in a
//! fixed order, budgets, outcomes, checkpoints and replay.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::agent::{Agent, AgentFn, Effect, Effects, Input, Kind};
use super::context::{Change, Confidence, Context, Fact, FactRef, Join, KeyOps, KeySpec, KeyState, Source, Value};
use super::hash;
use super::tool::{Ask, Breaker, Broker, Tool, ToolFailure};
use super::trace::{AgentRecord, AgentResult, MergeRecord, RoundRecord, Trace};
use std::panic::AssertUnwindSafe;

use crate::exit::{ExitReason, panic_message};
use crate::mailbox::{Ctx, Mailbox};
use crate::pool::{self, Task, TaskError};
use crate::port::{Framing, Port, PortBuilder, PortOutput, Stderr};
use crate::sys::text::{self, FnAddr};

/// Why an agent failed. A failed agent never fails the job: the job is
/// `Partial` when the agent was required, and converges at a lower tier
/// when it was optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum AgentFailure {
    /// Its process ended: `Error(text)` when it returned `Err`, `Panic`,
    /// `Killed`, `Signal { .. }`, `Code(n)` for a program, ...
    #[error("{0}")]
    Exit(ExitReason),
    /// It ran past the job's per-agent timeout and was stopped.
    #[error("timed out")]
    Timeout,
    /// It returned an effect the job refuses (an undeclared key, a value
    /// not of the key's type, a resolution it may not make, a malformed
    /// line from a program): none of its effects were merged.
    #[error("bad effect: {0}")]
    BadEffect(String),
    /// A tool it called gave no answer.
    #[error("tool {tool}: {failure}")]
    Tool {
        /// The tool.
        tool: String,
        /// Why.
        failure: ToolFailure,
    },
}

/// Why a job stopped short of converging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Stop {
    /// Its round budget ran out.
    Rounds,
    /// Its deadline passed (the round under way was not merged).
    Deadline,
    /// Its tool-call budget ran out.
    ToolCalls,
    /// A fixed point, but a required agent failed.
    RequiredFailed,
    /// A fixed point, but a required key is absent or in unresolved
    /// conflict.
    Incomplete,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum JobFailure {
    /// The context came back to what it was `period` rounds before: the
    /// agents undo each other and would never converge.
    #[error("oscillation with period {period}")]
    Oscillation {
        /// Rounds between the two equal contexts.
        period: u32,
    },
}

/// How a job ended. A wrong convergence is never reported: `Converged`
/// means a fixed point where every required agent succeeded and every
/// required key holds an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// A fixed point. `tier` is the highest tier whose agents, and those of
    /// every tier below, all succeeded (the top tier when all did; `None`
    /// when an optional agent of the lowest tier failed); `degraded` lists
    /// the optional agents that failed.
    Converged {
        /// The highest complete tier.
        tier: Option<u32>,
        /// The optional agents that failed, and why.
        degraded: Vec<(String, AgentFailure)>,
    },
    /// An anytime answer: the context as of the last merge, with what is
    /// missing.
    Partial {
        /// Why it stopped.
        why: Stop,
        /// The agents whose last run failed, and why.
        failed: Vec<(String, AgentFailure)>,
        /// Required agents that have not succeeded.
        missing: Vec<String>,
        /// Required keys that are absent or in unresolved conflict.
        incomplete: Vec<String>,
    },
    /// No answer can come of this job.
    Failed(JobFailure),
}

impl Outcome {
    /// Whether it converged.
    pub fn is_converged(&self) -> bool {
        matches!(self, Outcome::Converged { .. })
    }
}

/// A job definition that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A key, agent or tool is declared wrongly, and why.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// A checkpoint or trace of another job, or of different agents.
    #[error("the checkpoint does not fit this job: {0}")]
    Mismatch(String),
    /// `converge::init()` has not been called.
    #[error("converge::init() has not been called")]
    NotInitialized,
}

impl From<JobError> for crate::Error {
    fn from(e: JobError) -> crate::Error {
        crate::Error::other(e)
    }
}

/// Where a replay parted from its trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the replay diverges in round {round}{}: {what}", agent.as_ref().map(|a| format!(" at agent {a}")).unwrap_or_default())]
pub struct ReplayDivergence {
    /// The round.
    pub round: u32,
    /// The first agent whose run differs (`None` when the rounds differ in
    /// number or in something other than one agent).
    pub agent: Option<String>,
    /// What differs.
    pub what: String,
}

/// A fact for a running job from outside: send it to the mailbox of the
/// process that drives the job (see [`JobRun::inbox`]), or hand it to
/// [`JobRun::inject`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inject {
    /// The key.
    pub key: String,
    /// The value's encoding.
    pub value: Vec<u8>,
    /// Its confidence.
    pub confidence: Confidence,
}

impl Inject {
    /// A certain fact.
    pub fn new<T: Serialize>(key: &str, value: &T) -> Inject {
        Inject {
            key: key.to_owned(),
            value: postcard::to_stdvec(value).expect("BUG: an injected value encodes"),
            confidence: Confidence::CERTAIN,
        }
    }
}

/// Limits of a job.
#[derive(Debug, Clone, Copy)]
struct Budget {
    rounds: u32,
    deadline: Option<Duration>,
    tool_calls: Option<u32>,
    agent_timeout: Duration,
}

/// An agent's standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    NotRun,
    Ok,
    Failed(AgentFailure),
}

/// What the job remembers of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    agent: String,
    /// The context's version when it last ran.
    seen: Option<u64>,
    status: Status,
    /// The tool failures of its last run, by answer key.
    tool_failures: Vec<(String, ToolFailure)>,
}

/// The state of a job after a merge: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) round: u32,
    context: Context,
    marks: Vec<Mark>,
    breakers: BTreeMap<String, Breaker>,
    tool_calls: u32,
    /// The context's hash after each round that changed it.
    hashes: BTreeMap<[u8; 32], u32>,
}

/// A job's state after a merge, with its trace: enough to resume it
/// without running again the agents whose effects were merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    job: String,
    state: State,
    trace: Trace,
}

impl Checkpoint {
    /// The round it was taken after.
    pub fn round(&self) -> u32 {
        self.state.round
    }

    /// The context then.
    pub fn context(&self) -> &Context {
        &self.state.context
    }

    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("BUG: a checkpoint always encodes")
    }

    /// A checkpoint from its encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, crate::DecodeError> {
        crate::wire::decode_exact(bytes)
    }

    /// Reads a checkpoint written by [`Job::checkpoint_to`].
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Checkpoint, crate::Error> {
        let bytes = std::fs::read(path).map_err(crate::Error::other)?;
        Checkpoint::from_bytes(&bytes).map_err(crate::Error::other)
    }
}

/// A convergent job: keys with their joins, agents, tools, inputs and
/// budgets. See the [module documentation](super).
pub struct Job {
    name: String,
    keys: BTreeMap<String, KeySpec>,
    agents: Vec<Agent>,
    tools: BTreeMap<String, Tool>,
    inputs: Vec<Inject>,
    budget: Budget,
    seed: u64,
    events: Option<Mailbox<RoundRecord>>,
    checkpoint_to: Option<PathBuf>,
    trace_limit: usize,
    errors: Vec<String>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("agents", &self.agents)
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A declared key, to mark it required.
#[derive(Debug)]
pub struct KeyDecl<'a> {
    spec: &'a mut KeySpec,
}

impl KeyDecl<'_> {
    /// A goal of the job: it converges only with a settled value here (for
    /// a set, at least one value).
    pub fn required(self) -> Self {
        self.spec.required = true;
        self
    }
}

impl Job {
    /// A job with no keys, agents or tools; budgets of 100 rounds, no
    /// deadline, no tool-call limit, 30 s per agent.
    pub fn new(name: &str) -> Job {
        Job {
            name: name.to_owned(),
            keys: BTreeMap::new(),
            agents: Vec::new(),
            tools: BTreeMap::new(),
            inputs: Vec::new(),
            budget: Budget {
                rounds: 100,
                deadline: None,
                tool_calls: None,
                agent_timeout: Duration::from_secs(30),
            },
            seed: 0,
            events: None,
            checkpoint_to: None,
            trace_limit: 1024,
            errors: Vec::new(),
        }
    }

    fn declare<T: Value>(&mut self, key: &str, join: Join, ops: KeyOps) -> KeyDecl<'_> {
        if self.keys.contains_key(key) {
            self.errors.push(format!("key {key} is declared twice"));
        }
        let spec = self.keys.entry(key.to_owned()).or_insert(KeySpec {
            join,
            required: false,
            type_name: std::any::type_name::<T>(),
            ops,
        });
        KeyDecl { spec }
    }

    /// A key whose values form a set ([`Join::Union`]).
    pub fn union<T: Value>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Union, KeyOps::unordered::<T>())
    }

    /// A key that keeps its greatest value ([`Join::Max`]).
    pub fn max<T: Value + Ord>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Max, KeyOps::total::<T>())
    }

    /// A key that keeps its least value ([`Join::Min`]).
    pub fn min<T: Value + Ord>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Min, KeyOps::total::<T>())
    }

    /// A key whose newer value supersedes ([`Join::Latest`]).
    pub fn latest<T: Value>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Latest, KeyOps::unordered::<T>())
    }

    /// A key with one value; another is a conflict ([`Join::Single`]).
    pub fn single<T: Value>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Single, KeyOps::unordered::<T>())
    }

    /// A key that keeps its greatest values under a partial order
    /// ([`Join::Partial`]).
    pub fn partial<T: Value + PartialOrd>(&mut self, key: &str) -> KeyDecl<'_> {
        self.declare::<T>(key, Join::Partial, KeyOps::partial::<T>())
    }

    /// Adds an agent (agents merge in the order they are added).
    pub fn agent(&mut self, agent: Agent) -> &mut Job {
        self.agents.push(agent);
        self
    }

    /// Adds a tool.
    pub fn tool(&mut self, tool: Tool) -> &mut Job {
        if self.tools.insert(tool.name.clone(), tool).is_some() {
            self.errors.push("a tool is declared twice".into());
        }
        self
    }

    /// An input fact, merged before the first round.
    pub fn input<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Job {
        self.inputs.push(Inject::new(key, value));
        self
    }

    /// At most `rounds` rounds per run (default 100).
    pub fn max_rounds(&mut self, rounds: u32) -> &mut Job {
        self.budget.rounds = rounds;
        self
    }

    /// Stop `Partial` once `after` has passed since the run started.
    pub fn deadline(&mut self, after: Duration) -> &mut Job {
        self.budget.deadline = Some(after);
        self
    }

    /// At most `calls` tool attempts in all (retries included).
    pub fn max_tool_calls(&mut self, calls: u32) -> &mut Job {
        self.budget.tool_calls = Some(calls);
        self
    }

    /// How long one agent may run (default 30 s). Function agents go to the
    /// pool in one batch per scheduler; a batch that runs past this time is
    /// stopped and its agents run again alone, each with this time.
    pub fn agent_timeout(&mut self, timeout: Duration) -> &mut Job {
        self.budget.agent_timeout = timeout;
        self
    }

    /// The seed of the tools' backoff jitter (default 0).
    pub fn seed(&mut self, seed: u64) -> &mut Job {
        self.seed = seed;
        self
    }

    /// Sends each round's record to `mailbox` as it is merged.
    pub fn events(&mut self, mailbox: Mailbox<RoundRecord>) -> &mut Job {
        self.events = Some(mailbox);
        self
    }

    /// Writes a checkpoint to `path` after each merge (atomically: a
    /// temporary file renamed over it).
    pub fn checkpoint_to(&mut self, path: impl Into<PathBuf>) -> &mut Job {
        self.checkpoint_to = Some(path.into());
        self
    }

    /// Folds the trace into a snapshot of the job's state every `rounds`
    /// rounds (default 1024), so it stays bounded.
    pub fn trace_limit(&mut self, rounds: usize) -> &mut Job {
        self.trace_limit = rounds.max(1);
        self
    }

    fn validate(&self) -> Result<(), JobError> {
        let bad = |s: String| Err(JobError::Invalid(s));
        if let Some(e) = self.errors.first() {
            return bad(e.clone());
        }
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.is_empty() || self.agents[..i].iter().any(|b| b.name == a.name) {
                return bad(format!("agent name {:?} is empty or taken", a.name));
            }
            if a.name == "input" || a.name == "inject" || a.name.starts_with("tool:") {
                return bad(format!("agent name {:?} is reserved", a.name));
            }
            if let Some(k) = a.reads.iter().find(|k| !self.keys.contains_key(*k)) {
                return bad(format!("agent {} reads undeclared key {k}", a.name));
            }
            for k in &a.resolves {
                if self.keys[k].join == Join::Union {
                    return bad(format!("agent {} resolves {k}, a set (never in conflict)", a.name));
                }
                if a.tier == 0 {
                    return bad(format!(
                        "agent {} resolves {k}: an aggregator must be above tier 0",
                        a.name
                    ));
                }
            }
        }
        for i in &self.inputs {
            self.check_value(&i.key, &i.value).map_err(JobError::Invalid)?;
        }
        if !self.agents.is_empty() && crate::runtime::current().is_none() {
            return Err(JobError::NotInitialized);
        }
        Ok(())
    }

    fn check_value(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let spec = self.keys.get(key).ok_or_else(|| format!("undeclared key {key}"))?;
        (spec.ops.check)(value).map_err(|e| format!("key {key} holds {}: {e}", spec.type_name))
    }

    /// Starts the job: its inputs merged, no round run yet.
    pub fn start(self) -> Result<JobRun, JobError> {
        self.validate()?;
        let mut context = Context::default();
        for (k, s) in &self.keys {
            context.declare(k, s.join);
        }
        let state = State {
            round: 0,
            context,
            marks: self.agents.iter().map(|a| Mark::new(&a.name)).collect(),
            breakers: BTreeMap::new(),
            tool_calls: 0,
            hashes: BTreeMap::new(),
        };
        let inputs = self.inputs.clone();
        let mut run = JobRun::new(self, state, None);
        for i in inputs {
            let key = i.key.clone();
            let fact = Fact {
                value: i.value,
                confidence: i.confidence,
                source: Source {
                    agent: "input".into(),
                    round: 0,
                    read: Vec::new(),
                },
                added: 0,
            };
            run.state.context.merge(&key, &run.def.keys[&key], fact);
        }
        Ok(run)
    }

    /// Runs the job to its end.
    pub fn run(self) -> Result<JobResult, JobError> {
        Ok(self.start()?.run())
    }

    /// Resumes from a checkpoint: the agents whose effects it holds do not
    /// run again unless their inputs change; agents that had failed run
    /// again, and open circuit breakers try once more (a `Partial` job
    /// continues when its dependency is back). The budgets start afresh.
    pub fn resume(self, checkpoint: Checkpoint) -> Result<JobRun, JobError> {
        self.validate()?;
        if checkpoint.job != self.name {
            return Err(JobError::Mismatch(format!("it is of job {}", checkpoint.job)));
        }
        let mut state = checkpoint.state;
        for k in self.keys.keys() {
            if !state.context.slots.contains_key(k) {
                return Err(JobError::Mismatch(format!("key {k} is new")));
            }
        }
        // Marks follow the agents by name: a new agent has not run.
        let mut marks = Vec::new();
        for a in &self.agents {
            let mut m = state
                .marks
                .iter()
                .find(|m| m.agent == a.name)
                .cloned()
                .unwrap_or_else(|| Mark::new(&a.name));
            if matches!(m.status, Status::Failed(_)) {
                m.seen = None;
            }
            marks.push(m);
        }
        state.marks = marks;
        let mut run = JobRun::new(self, state, Some(checkpoint.trace));
        run.broker.half_open();
        Ok(run)
    }

    /// Runs the job again against a recorded trace (from the trace's
    /// snapshot, if it has one), with the recorded tool answers: the result
    /// when every round matches, or the first divergence (an agent whose
    /// fingerprint or effects differ, or rounds that differ in number).
    pub fn replay(self, trace: &Trace) -> Result<JobResult, ReplayDivergence> {
        let diverge = |what: String| ReplayDivergence {
            round: 0,
            agent: None,
            what,
        };
        if trace.job != self.name {
            return Err(diverge(format!("the trace is of job {}", trace.job)));
        }
        let mut run = match &trace.snapshot {
            None => self.start(),
            Some(s) => {
                let state = (**s).clone();
                self.resume(Checkpoint {
                    job: trace.job.clone(),
                    state,
                    trace: Trace {
                        job: trace.job.clone(),
                        snapshot: trace.snapshot.clone(),
                        rounds: Vec::new(),
                    },
                })
            }
        }
        .map_err(|e| diverge(e.to_string()))?;
        run.replay = Some(trace.rounds.clone());
        let result = run.run();
        match result.divergence.clone() {
            Some(d) => Err(d),
            None => Ok(result),
        }
    }
}

impl Mark {
    fn new(agent: &str) -> Mark {
        Mark {
            agent: agent.to_owned(),
            seen: None,
            status: Status::NotRun,
            tool_failures: Vec::new(),
        }
    }
}

/// The end of a job: its outcome, the context as of the last merge, the
/// trace and a checkpoint to continue from.
#[derive(Clone)]
pub struct JobResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The context as of the last merge.
    pub context: Context,
    /// The rounds.
    pub trace: Trace,
    /// Rounds run by this run.
    pub rounds: u32,
    /// The rest of the state (its context is in `context`).
    state: State,
    job: String,
    divergence: Option<ReplayDivergence>,
    shows: Arc<Def>,
}

impl fmt::Debug for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobResult")
            .field("outcome", &self.outcome)
            .field("rounds", &self.rounds)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl JobResult {
    /// The state to resume from (see [`Job::resume`]).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut state = self.state.clone();
        state.context = self.context.clone();
        Checkpoint {
            job: self.job.clone(),
            state,
            trace: self.trace.clone(),
        }
    }

    /// Why the facts of `key` are there: each fact, the agent and round
    /// that put it, and, indented below, the facts that agent had read,
    /// back to the inputs.
    pub fn explain(&self, key: &str) -> String {
        let mut out = String::new();
        let mut seen = Vec::new();
        self.explain_into(key, None, 0, &mut seen, &mut out);
        out
    }

    fn explain_into(&self, key: &str, only: Option<u64>, depth: usize, seen: &mut Vec<FactRef>, out: &mut String) {
        use std::fmt::Write as _;
        let pad = "  ".repeat(depth);
        let show = self.shows.keys.get(key).map(|s| s.ops.show);
        let shown = |v: &[u8]| show.map_or_else(|| format!("{} bytes", v.len()), |s| s(v));
        let mut facts: Vec<&Fact> = self.context.facts(key).iter().collect();
        if let Some(r) = self.context.resolution(key)
            && only.is_none_or(|h| h == r.fact.value_hash())
        {
            let _ = writeln!(
                out,
                "{pad}{key} = {} (resolved by {} in round {}, by {})",
                shown(&r.fact.value),
                r.fact.source.agent,
                r.fact.source.round,
                r.rule
            );
        }
        facts.retain(|f| only.is_none_or(|h| h == f.value_hash()));
        if facts.is_empty() {
            if only.is_some() {
                let _ = writeln!(out, "{pad}{key}: a value since superseded");
            } else if self.context.resolution(key).is_none() {
                let _ = writeln!(out, "{pad}{key}: no fact");
            }
            return;
        }
        let conflict = matches!(self.context.state(key), KeyState::Conflict(_) | KeyState::Resolved(_));
        for f in facts {
            let _ = writeln!(
                out,
                "{pad}{key} = {} ({}{}, by {} in round {})",
                shown(&f.value),
                f.confidence,
                if conflict { ", in conflict" } else { "" },
                f.source.agent,
                f.source.round
            );
            for r in &f.source.read {
                if seen.contains(r) || depth > 32 {
                    let _ = writeln!(out, "{pad}  {} (above)", r.key);
                    continue;
                }
                seen.push(r.clone());
                self.explain_into(&r.key, Some(r.value), depth + 1, seen, out);
            }
        }
    }
}

/// The static part of a running job.
struct Def {
    name: String,
    keys: BTreeMap<String, KeySpec>,
    agents: Vec<Agent>,
    /// The agents' fingerprints.
    fingerprints: Vec<u64>,
    budget: Budget,
    events: Option<Mailbox<RoundRecord>>,
    checkpoint_to: Option<PathBuf>,
    trace_limit: usize,
}

/// A job under way: run it to its end, or round by round, injecting facts
/// between rounds.
pub struct JobRun {
    def: Arc<Def>,
    state: State,
    trace: Trace,
    broker: Broker,
    started: Instant,
    rounds: u32,
    inbox: Option<Ctx<Inject>>,
    injected: Vec<Inject>,
    replay: Option<Vec<RoundRecord>>,
    divergence: Option<ReplayDivergence>,
    outcome: Option<Outcome>,
}

impl fmt::Debug for JobRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRun")
            .field("job", &self.def.name)
            .field("round", &self.state.round)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// One agent under way in a round.
enum Handle {
    Task(Task<Result<Effects, String>>),
    Port(Port),
    Ended(Result<Effects, AgentFailure>),
    /// A function agent run in a batch with others; its input is kept to
    /// run it alone if the batch fails as a whole.
    Batched(AgentFn, Input),
}

struct Running {
    agent: usize,
    input: u64,
    read: Vec<FactRef>,
    handle: Handle,
}

/// A round under way.
struct Launched {
    tier: u32,
    version: u64,
    injected: Vec<MergeRecord>,
    runs: Vec<Running>,
    /// Batches of function agents: the task and the runs it holds.
    batches: Vec<(Task<Vec<BatchResult>>, Vec<usize>)>,
}

/// An agent's result from a batch: `Err` is its panic's message.
type BatchResult = Result<Result<Effects, String>, String>;

/// Runs the agents of a batch one after the other, each one's panic its own
/// (the same message as a panic in a task of its own).
fn run_batch(agents: Vec<(FnAddr, Input)>) -> Vec<BatchResult> {
    agents
        .into_iter()
        .map(|(f, input)| match text::restore::<AgentFn>(f) {
            None => Ok(Err("the agent is not a function of this executable".into())),
            Some(f) => std::panic::catch_unwind(AssertUnwindSafe(|| f(input))).map_err(|p| panic_message(&*p)),
        })
        .collect()
}

impl JobRun {
    fn new(job: Job, state: State, trace: Option<Trace>) -> JobRun {
        let trace = trace.unwrap_or_else(|| Trace {
            job: job.name.clone(),
            snapshot: None,
            rounds: Vec::new(),
        });
        let broker = Broker {
            tools: job.tools,
            breakers: state.breakers.clone(),
            used: state.tool_calls,
            seed: job.seed,
        };
        JobRun {
            def: Arc::new(Def {
                name: job.name,
                keys: job.keys,
                fingerprints: job.agents.iter().map(Agent::fingerprint).collect(),
                agents: job.agents,
                budget: job.budget,
                events: job.events,
                checkpoint_to: job.checkpoint_to,
                trace_limit: job.trace_limit,
            }),
            state,
            trace,
            broker,
            started: Instant::now(),
            rounds: 0,
            inbox: None,
            injected: Vec::new(),
            replay: None,
            divergence: None,
            outcome: None,
        }
    }

    /// Takes injected facts from this mailbox between rounds (the job must
    /// run in the process that owns it; `ctx.view::<Inject>()` gives one).
    pub fn inbox(&mut self, ctx: Ctx<Inject>) -> &mut JobRun {
        self.inbox = Some(ctx);
        self
    }

    /// Injects a fact, merged before the next round. A fact for an
    /// undeclared key, or not of its type, is refused.
    pub fn inject<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), JobError> {
        let i = Inject::new(key, value);
        self.check(&i.key, &i.value).map_err(JobError::Invalid)?;
        self.injected.push(i);
        Ok(())
    }

    pub(crate) fn check(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let spec = self.def.keys.get(key).ok_or_else(|| format!("undeclared key {key}"))?;
        (spec.ops.check)(value).map_err(|e| format!("key {key} holds {}: {e}", spec.type_name))
    }

    /// The context as of the last merge.
    pub fn context(&self) -> &Context {
        &self.state.context
    }

    /// The outcome, once the job has ended.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// A checkpoint of the state as of the last merge.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut state = self.state.clone();
        state.breakers = self.broker.breakers.clone();
        state.tool_calls = self.broker.used;
        Checkpoint {
            job: self.def.name.clone(),
            state,
            trace: self.trace.clone(),
        }
    }

    /// Runs one round (or ends the job): the outcome once it has ended.
    pub fn step(&mut self) -> Option<&Outcome> {
        if self.outcome.is_none() {
            match self.launch() {
                Ok(l) => self.land(l),
                Err(o) => self.finish(o),
            }
        }
        self.outcome.as_ref()
    }

    /// Runs rounds until the job ends.
    pub fn run(mut self) -> JobResult {
        while self.step().is_none() {}
        self.into_result()
    }

    fn into_result(mut self) -> JobResult {
        self.state.breakers = std::mem::take(&mut self.broker.breakers);
        self.state.tool_calls = self.broker.used;
        let context = std::mem::take(&mut self.state.context);
        JobResult {
            outcome: self.outcome.expect("BUG: a result is taken once the job ended"),
            context,
            trace: self.trace,
            rounds: self.rounds,
            state: self.state,
            job: self.def.name.clone(),
            divergence: self.divergence,
            shows: self.def,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.def.budget.deadline.map(|d| self.started + d)
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(expected) = &self.replay
            && self.divergence.is_none()
            && expected.len() > self.trace.rounds.len()
        {
            self.divergence = Some(ReplayDivergence {
                round: expected[self.trace.rounds.len()].round,
                agent: None,
                what: "the replay ended before the recorded job did".into(),
            });
        }
        self.outcome = Some(outcome);
    }

    fn eligible(&self, i: usize) -> bool {
        let a = &self.def.agents[i];
        match self.state.marks[i].seen {
            None => true,
            Some(seen) => a.reads.iter().any(|k| self.state.context.slots[k].changed > seen),
        }
    }

    /// The end at a fixed point.
    fn at_fixed_point(&self) -> Outcome {
        let failed: Vec<(String, AgentFailure)> = self
            .state
            .marks
            .iter()
            .filter_map(|m| match &m.status {
                Status::Failed(f) => Some((m.agent.clone(), f.clone())),
                _ => None,
            })
            .collect();
        let missing: Vec<String> = self
            .def
            .agents
            .iter()
            .zip(&self.state.marks)
            .filter(|(a, m)| a.required && m.status != Status::Ok)
            .map(|(a, _)| a.name.clone())
            .collect();
        let incomplete = self.incomplete();
        if !missing.is_empty() {
            return Outcome::Partial {
                why: Stop::RequiredFailed,
                failed,
                missing,
                incomplete,
            };
        }
        if !incomplete.is_empty() {
            return Outcome::Partial {
                why: Stop::Incomplete,
                failed,
                missing,
                incomplete,
            };
        }
        let top = self.def.agents.iter().map(|a| a.tier).max();
        let lowest_failed = self
            .def
            .agents
            .iter()
            .zip(&self.state.marks)
            .filter(|(_, m)| matches!(m.status, Status::Failed(_)))
            .map(|(a, _)| a.tier)
            .min();
        let tier = match lowest_failed {
            None => top,
            Some(f) => self.def.agents.iter().map(|a| a.tier).filter(|t| *t < f).max(),
        };
        Outcome::Converged { tier, degraded: failed }
    }

    fn incomplete(&self) -> Vec<String> {
        self.def
            .keys
            .iter()
            .filter(|(_, s)| s.required)
            .filter(|(k, _)| matches!(self.state.context.state(k), KeyState::Absent | KeyState::Conflict(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn partial(&self, why: Stop) -> Outcome {
        match self.at_fixed_point() {
            Outcome::Partial {
                failed,
                missing,
                incomplete,
                ..
            } => Outcome::Partial {
                why,
                failed,
                missing,
                incomplete,
            },
            Outcome::Converged { degraded, .. } => Outcome::Partial {
                why,
                failed: degraded,
                missing: Vec::new(),
                incomplete: self.incomplete(),
            },
            f @ Outcome::Failed(_) => f,
        }
    }

    /// Merges the injected facts, then starts the agents of the lowest tier
    /// that has work; `Err`: the job ends here.
    fn launch(&mut self) -> Result<Launched, Outcome> {
        let round = self.state.round + 1;
        let mut injected = Vec::new();
        if let Some(ctx) = &self.inbox {
            while let Ok(i) = ctx.try_recv() {
                self.injected.push(i);
            }
        }
        for i in std::mem::take(&mut self.injected) {
            let change = match self.check(&i.key, &i.value) {
                Err(e) => Change::Refused(e),
                Ok(()) => {
                    let fact = Fact {
                        value: i.value.clone(),
                        confidence: i.confidence,
                        source: Source {
                            agent: "inject".into(),
                            round,
                            read: Vec::new(),
                        },
                        added: 0,
                    };
                    self.state.context.merge(&i.key, &self.def.keys[&i.key], fact)
                }
            };
            injected.push(self.merge_record("inject", &i.key, &i.value, change));
        }
        let eligible: Vec<usize> = (0..self.def.agents.len()).filter(|i| self.eligible(*i)).collect();
        let Some(tier) = eligible.iter().map(|i| self.def.agents[*i].tier).min() else {
            return Err(self.at_fixed_point());
        };
        if self.rounds >= self.def.budget.rounds {
            return Err(self.partial(Stop::Rounds));
        }
        if self.deadline().is_some_and(|d| Instant::now() >= d) {
            return Err(self.partial(Stop::Deadline));
        }
        if self.def.budget.tool_calls.is_some_and(|b| self.broker.used >= b)
            && self
                .trace
                .rounds
                .last()
                .is_some_and(|r| r.calls.iter().any(|c| c.result == Err(ToolFailure::Budget)))
        {
            return Err(self.partial(Stop::ToolCalls));
        }
        let version = self.state.context.version;
        let mut runs: Vec<Running> = eligible
            .into_iter()
            .filter(|i| self.def.agents[*i].tier == tier)
            .map(|i| self.start_agent(i, round))
            .collect();
        let batches = batch(&mut runs);
        Ok(Launched {
            tier,
            version,
            injected,
            runs,
            batches,
        })
    }

    fn start_agent(&self, i: usize, round: u32) -> Running {
        let a = &self.def.agents[i];
        let mark = &self.state.marks[i];
        let seen = mark.seen.unwrap_or(0);
        let slots: BTreeMap<String, _> = a
            .reads
            .iter()
            .map(|k| (k.clone(), self.state.context.slots[k].clone()))
            .collect();
        let delta = a
            .reads
            .iter()
            .filter(|k| self.state.context.slots[*k].changed > seen)
            .cloned()
            .collect();
        let read = slots
            .iter()
            .flat_map(|(k, s)| {
                let settled = s.settled().filter(|_| s.facts.len() > 1);
                s.facts.iter().chain(settled).map(move |f| FactRef {
                    key: k.clone(),
                    value: f.value_hash(),
                })
            })
            .collect();
        let input = Input {
            round,
            agent: a.name.clone(),
            slots,
            delta,
            seen,
            failures: mark.tool_failures.clone(),
        };
        let input_hash = hash::short(&postcard::to_stdvec(&input).expect("BUG: an input always encodes"));
        let handle = match &a.kind {
            Kind::Function(f) => Handle::Batched(*f, input),
            Kind::Program { program, args } => match self.start_program(program, args, &input) {
                Ok(p) => Handle::Port(p),
                Err(e) => Handle::Ended(Err(e)),
            },
        };
        Running {
            agent: i,
            input: input_hash,
            read,
            handle,
        }
    }

    fn start_program(&self, program: &PathBuf, args: &[String], input: &Input) -> Result<Port, AgentFailure> {
        let mut context = serde_json::Map::new();
        for (k, s) in &input.slots {
            let ops = &self.def.keys[k].ops;
            let values: Result<Vec<serde_json::Value>, String> =
                s.facts.iter().map(|f| (ops.to_json)(&f.value)).collect();
            let values = values.map_err(|e| AgentFailure::Exit(ExitReason::Error(e)))?;
            let conflict = matches!(s.state(), KeyState::Conflict(_));
            context.insert(k.clone(), serde_json::json!({ "values": values, "conflict": conflict }));
        }
        let line = serde_json::json!({
            "round": input.round,
            "agent": input.agent,
            "delta": input.delta,
            "context": context,
        });
        let port = PortBuilder::new(program)
            .args(args)
            .framing(Framing::Lines { max: 1 << 20 })
            .stderr(Stderr::Log)
            .spawn()
            .map_err(|e| AgentFailure::Exit(ExitReason::Error(e.to_string())))?;
        let _ = port.send_line(&line.to_string());
        port.close_input();
        Ok(port)
    }

    /// Waits for a program agent's effects.
    fn wait_program(&self, port: Port, until: Instant, deadline_hit: &mut bool) -> Result<Effects, AgentFailure> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut partial = Vec::new();
        let mut killed = false;
        let reason = loop {
            let wait = if killed {
                Duration::from_secs(10)
            } else {
                until.saturating_duration_since(Instant::now())
            };
            match port.recv_timeout(wait) {
                Ok(PortOutput::Line { data, cut }) => {
                    partial.extend_from_slice(&data);
                    if !cut {
                        lines.push(std::mem::take(&mut partial));
                    }
                }
                Ok(PortOutput::Exit(reason)) => break reason,
                Ok(_) => {}
                Err(crate::RecvTimeoutError::Timeout) if !killed => {
                    killed = true;
                    port.kill();
                }
                Err(e) => return Err(AgentFailure::Exit(ExitReason::Error(e.to_string()))),
            }
        };
        if killed {
            if self.deadline().is_some_and(|d| Instant::now() >= d) {
                *deadline_hit = true;
            }
            return Err(AgentFailure::Timeout);
        }
        if !partial.is_empty() {
            lines.push(partial);
        }
        if reason != ExitReason::Normal {
            return Err(AgentFailure::Exit(reason));
        }
        let mut effects = Effects::new();
        for (n, line) in lines.iter().enumerate() {
            let text = String::from_utf8_lossy(line);
            if text.trim().is_empty() {
                continue;
            }
            let effect = self
                .effect_from_json(&text)
                .map_err(|e| AgentFailure::BadEffect(format!("line {}: {e}", n + 1)))?;
            effects.items.push(effect);
        }
        Ok(effects)
    }

    pub(crate) fn effect_from_json(&self, line: &str) -> Result<Effect, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let field = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_owned);
        let value_of = |key: &str, field: &str| -> Result<Vec<u8>, String> {
            let spec = self.def.keys.get(key).ok_or_else(|| format!("undeclared key {key}"))?;
            let raw = v.get(field).cloned().ok_or_else(|| format!("no {field}"))?;
            (spec.ops.from_json)(raw).map_err(|e| format!("key {key}: {e}"))
        };
        if let Some(key) = field("put") {
            let confidence = match v.get("confidence") {
                None => Confidence::CERTAIN,
                Some(c) => {
                    let c = c
                        .as_f64()
                        .filter(|c| (0.0..=1.0).contains(c))
                        .ok_or("confidence must be within 0 and 1")?;
                    Confidence::from_ppm((c * 1_000_000.0).round() as u32)
                }
            };
            return Ok(Effect::Put {
                value: value_of(&key, "value")?,
                key,
                confidence,
            });
        }
        if let Some(tool) = field("call") {
            let t = self.broker.tools.get(&tool).ok_or_else(|| format!("no tool {tool}"))?;
            let raw = v.get("request").cloned().ok_or("no request")?;
            let request = (t.request_json)(raw)?;
            let answer = field("answer").ok_or("no answer key")?;
            return Ok(Effect::Call { tool, request, answer });
        }
        if let Some(key) = field("resolve") {
            let rule = match v.get("rule") {
                Some(serde_json::Value::String(s)) if s == "confidence" => super::Rule::Confidence,
                Some(serde_json::Value::Object(o)) if o.len() == 1 => {
                    let (k, why) = o.iter().next().expect("BUG: one entry");
                    let why = why.as_str().unwrap_or_default().to_owned();
                    match k.as_str() {
                        "dominance" => super::Rule::Dominance(why),
                        "constraint" => super::Rule::Constraint(why),
                        other => return Err(format!("unknown rule {other}")),
                    }
                }
                _ => return Err("rule must be \"confidence\", {\"dominance\": why} or {\"constraint\": why}".into()),
            };
            return Ok(Effect::Resolve {
                value: value_of(&key, "value")?,
                key,
                rule,
            });
        }
        Err("an effect has \"put\", \"call\" or \"resolve\"".into())
    }

    /// Checks an agent's effects against the declarations.
    fn validate_effects(&self, agent: &Agent, effects: &Effects) -> Result<(), AgentFailure> {
        for e in &effects.items {
            let r = match e {
                Effect::Put { key, value, .. } => self.check(key, value),
                Effect::Call { tool, answer, .. } => {
                    if !self.broker.tools.contains_key(tool) {
                        Err(format!("no tool {tool}"))
                    } else if !self.def.keys.contains_key(answer) {
                        Err(format!("undeclared answer key {answer}"))
                    } else {
                        Ok(())
                    }
                }
                Effect::Resolve { key, value, .. } => {
                    if agent.resolves.contains(key) {
                        self.check(key, value)
                    } else {
                        Err(format!("agent {} may not resolve {key}", agent.name))
                    }
                }
            };
            r.map_err(AgentFailure::BadEffect)?;
        }
        Ok(())
    }

    fn merge_record(&self, by: &str, key: &str, value: &[u8], change: Change) -> MergeRecord {
        let value = match self.def.keys.get(key) {
            Some(s) => (s.ops.show)(value),
            None => format!("{} bytes", value.len()),
        };
        MergeRecord {
            by: by.to_owned(),
            key: key.to_owned(),
            value,
            change,
        }
    }

    /// Waits for the round's agents, calls the tools they asked for, and
    /// merges everything in agent order, then emission order.
    fn land(&mut self, launched: Launched) {
        let round = self.state.round + 1;
        let timeout_at = Instant::now() + self.def.budget.agent_timeout;
        let deadline = self.deadline();
        let until = deadline.map_or(timeout_at, |d| d.min(timeout_at));
        let mut deadline_hit = false;
        let mut runs = launched.runs;
        for (mut task, members) in launched.batches {
            let wait = until.saturating_duration_since(Instant::now());
            match task.join_timeout(wait) {
                Ok(results) if results.len() == members.len() => {
                    for (i, r) in members.into_iter().zip(results) {
                        runs[i].handle = Handle::Ended(match r {
                            Ok(Ok(effects)) => Ok(effects),
                            Ok(Err(text)) => Err(AgentFailure::Exit(ExitReason::Error(text))),
                            Err(panic) => Err(AgentFailure::Exit(ExitReason::Panic(panic))),
                        });
                    }
                }
                outcome => {
                    // The batch failed as a whole (a crash, a timeout): each
                    // of its agents runs again alone, so that the failure is
                    // the one agent's that caused it.
                    if matches!(outcome, Err(TaskError::Timeout)) {
                        task.cancel();
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        deadline_hit = true;
                    }
                    for i in members {
                        submit_alone(&mut runs[i]);
                    }
                }
            }
        }
        let until = if runs.iter().any(|r| matches!(r.handle, Handle::Task(_))) {
            // Agents run alone after their batch failed have a timeout of
            // their own.
            let again = Instant::now() + self.def.budget.agent_timeout;
            deadline.map_or(again, |d| d.min(again))
        } else {
            until
        };
        let mut results = Vec::new();
        for r in runs {
            let result = match r.handle {
                Handle::Ended(e) => e,
                Handle::Batched(..) => unreachable!("BUG: every batched agent was submitted"),
                Handle::Task(mut t) => {
                    let wait = until.saturating_duration_since(Instant::now());
                    match t.join_timeout(wait) {
                        Ok(Ok(effects)) => Ok(effects),
                        Ok(Err(text)) => Err(AgentFailure::Exit(ExitReason::Error(text))),
                        Err(TaskError::Panicked(m)) => Err(AgentFailure::Exit(ExitReason::Panic(m))),
                        Err(TaskError::Crashed(reason)) => Err(AgentFailure::Exit(reason)),
                        Err(TaskError::Timeout) => {
                            t.cancel();
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                deadline_hit = true;
                            }
                            Err(AgentFailure::Timeout)
                        }
                        Err(e) => Err(AgentFailure::Exit(ExitReason::Error(e.to_string()))),
                    }
                }
                Handle::Port(p) => self.wait_program(p, until, &mut deadline_hit),
            };
            let agent = &self.def.agents[r.agent];
            let result = result.and_then(|e| self.validate_effects(agent, &e).map(|()| e));
            results.push((r.agent, r.input, r.read, result));
        }
        if deadline_hit {
            // The round is not merged: the answer is the context as of the
            // last merge.
            self.finish(self.partial(Stop::Deadline));
            return;
        }
        let replayed = self
            .replay
            .as_ref()
            .and_then(|rs| rs.get(self.trace.rounds.len()))
            .map(|r| r.calls.clone())
            .unwrap_or_default();
        let mut record = RoundRecord {
            round,
            tier: launched.tier,
            agents: Vec::new(),
            calls: Vec::new(),
            merges: launched.injected,
            context: [0; 32],
        };
        for (i, input, read, result) in results {
            let agent = &self.def.agents[i];
            let name = agent.name.clone();
            let mut failures = Vec::new();
            let mut status = Status::Ok;
            let result = match result {
                Err(f) => {
                    record.agents.push(AgentRecord {
                        agent: name.clone(),
                        fingerprint: self.def.fingerprints[i],
                        input,
                        result: AgentResult::Failed(f.clone()),
                    });
                    status = Status::Failed(f);
                    None
                }
                Ok(effects) => {
                    record.agents.push(AgentRecord {
                        agent: name.clone(),
                        fingerprint: self.def.fingerprints[i],
                        input,
                        result: AgentResult::Effects {
                            count: effects.items.len() as u32,
                            hash: hash::short(&postcard::to_stdvec(&effects).expect("BUG: effects always encode")),
                        },
                    });
                    Some(effects)
                }
            };
            for effect in result.map(|e| e.items).unwrap_or_default() {
                let source = Source {
                    agent: name.clone(),
                    round,
                    read: read.clone(),
                };
                match effect {
                    Effect::Put { key, value, confidence } => {
                        let fact = Fact {
                            value: value.clone(),
                            confidence,
                            source,
                            added: 0,
                        };
                        let change = self.state.context.merge(&key, &self.def.keys[&key], fact);
                        record.merges.push(self.merge_record(&name, &key, &value, change));
                    }
                    Effect::Resolve { key, value, rule } => {
                        let fact = Fact {
                            value: value.clone(),
                            confidence: Confidence::CERTAIN,
                            source,
                            added: 0,
                        };
                        let change = self.state.context.resolve(&key, fact, rule);
                        record.merges.push(self.merge_record(&name, &key, &value, change));
                    }
                    Effect::Call { tool, request, answer } => {
                        let index = record.calls.len();
                        let replay = replayed
                            .get(index)
                            .filter(|c| c.tool == tool && c.agent == name && c.request == hash::short(&request));
                        let ask = Ask {
                            round,
                            index: index as u32,
                            agent: &name,
                            tool: &tool,
                            request: &request,
                        };
                        let mut call = self.broker.call(ask, self.def.budget.tool_calls, deadline, replay);
                        if let Ok(a) = &call.result
                            && let Err(e) = self.check(&answer, a)
                        {
                            call.result = Err(ToolFailure::BadAnswer(e));
                        }
                        match &call.result {
                            Ok(a) => {
                                let fact = Fact {
                                    value: a.clone(),
                                    confidence: Confidence::CERTAIN,
                                    source: Source {
                                        agent: format!("{name} via tool:{tool}"),
                                        round,
                                        read: read.clone(),
                                    },
                                    added: 0,
                                };
                                let change = self.state.context.merge(&answer, &self.def.keys[&answer], fact);
                                let by = format!("tool:{tool}");
                                record.merges.push(self.merge_record(&by, &answer, a, change));
                            }
                            Err(f) => {
                                failures.push((answer.clone(), f.clone()));
                                status = Status::Failed(AgentFailure::Tool {
                                    tool: tool.clone(),
                                    failure: f.clone(),
                                });
                            }
                        }
                        record.calls.push(call);
                    }
                }
            }
            let mark = &mut self.state.marks[i];
            mark.seen = Some(launched.version);
            mark.status = status;
            mark.tool_failures = failures;
        }
        self.state.round = round;
        self.rounds += 1;
        self.state.breakers = self.broker.breakers.clone();
        self.state.tool_calls = self.broker.used;
        let changed = self.state.context.version > launched.version || record.merges.iter().any(|m| m.change.changed());
        let hash = self.state.context.hash();
        record.context = hash;
        let mut oscillation = None;
        if changed {
            if let Some(before) = self.state.hashes.get(&hash) {
                oscillation = Some(round - before);
            }
            self.state.hashes.insert(hash, round);
        }
        self.compare_replay(&record);
        if let Some(m) = &self.def.events {
            let _ = m.send(record.clone());
        }
        self.trace.rounds.push(record);
        if self.trace.rounds.len() >= self.def.trace_limit {
            self.trace.snapshot = Some(Box::new(self.state.clone()));
            self.trace.rounds.clear();
        }
        if let Some(path) = &self.def.checkpoint_to {
            let bytes = self.checkpoint().to_bytes();
            let tmp = path.with_extension("tmp");
            let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                tracing::warn!(job = %self.def.name, path = %path.display(), "checkpoint not written: {e}");
            }
        }
        if let Some(period) = oscillation {
            self.finish(Outcome::Failed(JobFailure::Oscillation { period }));
        }
    }

    fn compare_replay(&mut self, got: &RoundRecord) {
        if self.divergence.is_some() {
            return;
        }
        let Some(expected) = &self.replay else { return };
        let Some(want) = expected.get(self.trace.rounds.len()) else {
            self.divergence = Some(ReplayDivergence {
                round: got.round,
                agent: None,
                what: "the recorded job ended before this round".into(),
            });
            return;
        };
        let n = got.agents.len().max(want.agents.len());
        for i in 0..n {
            match (got.agents.get(i), want.agents.get(i)) {
                (Some(g), Some(w)) if g == w => continue,
                (Some(g), Some(w)) if g.agent == w.agent => {
                    let what = if g.fingerprint != w.fingerprint {
                        "its fingerprint changed"
                    } else if g.input != w.input {
                        "it was given a different input"
                    } else {
                        "its effects differ"
                    };
                    self.divergence = Some(ReplayDivergence {
                        round: got.round,
                        agent: Some(g.agent.clone()),
                        what: what.into(),
                    });
                }
                (g, w) => {
                    let agent = g.or(w).map(|a| a.agent.clone());
                    self.divergence = Some(ReplayDivergence {
                        round: got.round,
                        agent,
                        what: "a different set of agents ran".into(),
                    });
                }
            }
            return;
        }
        if got != want {
            self.divergence = Some(ReplayDivergence {
                round: got.round,
                agent: None,
                what: "the merge differs".into(),
            });
        }
    }
}

/// Submits the function agents of a round: one batch per scheduler of the
/// default class (contiguous runs in agent order), each agent alone when
/// there are no more agents than schedulers.
fn batch(runs: &mut [Running]) -> Vec<(Task<Vec<BatchResult>>, Vec<usize>)> {
    let members: Vec<usize> = (0..runs.len())
        .filter(|i| matches!(runs[*i].handle, Handle::Batched(..)))
        .collect();
    let schedulers = pool::schedulers()
        .iter()
        .filter(|(class, _)| class == pool::DEFAULT_CLASS)
        .count()
        .max(1);
    if members.len() <= schedulers {
        for i in members {
            submit_alone(&mut runs[i]);
        }
        return Vec::new();
    }
    let mut batches = Vec::new();
    let per = members.len().div_ceil(schedulers);
    for chunk in members.chunks(per) {
        let agents = chunk
            .iter()
            .map(|i| match &runs[*i].handle {
                Handle::Batched(f, input) => (text::erase(*f), input.clone()),
                _ => unreachable!("BUG: only batched runs are chunked"),
            })
            .collect();
        match pool::submit(run_batch, agents) {
            Ok(task) => batches.push((task, chunk.to_vec())),
            Err(_) => {
                for i in chunk {
                    submit_alone(&mut runs[*i]);
                }
            }
        }
    }
    batches
}

/// Submits a batched agent as a task of its own.
fn submit_alone(run: &mut Running) {
    let Handle::Batched(f, input) = std::mem::replace(&mut run.handle, Handle::Ended(Ok(Effects::new()))) else {
        return;
    };
    run.handle = match pool::submit(f, input) {
        Ok(t) => Handle::Task(t),
        Err(e) => Handle::Ended(Err(AgentFailure::Exit(ExitReason::Error(e.to_string())))),
    };
}

/// Runs many jobs at once: each round, the agents of every job that has
/// work are started together, so the pool stays busy; each job's outcome
/// and trace are the same as if it ran alone.
pub fn run_all(jobs: Vec<Job>) -> Vec<Result<JobResult, JobError>> {
    let mut runs: Vec<Result<JobRun, JobError>> = jobs.into_iter().map(Job::start).collect();
    loop {
        let mut launched = Vec::new();
        for (i, r) in runs.iter_mut().enumerate() {
            if let Ok(run) = r
                && run.outcome.is_none()
            {
                match run.launch() {
                    Ok(l) => launched.push((i, l)),
                    Err(o) => run.finish(o),
                }
            }
        }
        if launched.is_empty() {
            break;
        }
        for (i, l) in launched {
            if let Ok(run) = &mut runs[i] {
                run.land(l);
            }
        }
    }
    runs.into_iter().map(|r| r.map(JobRun::into_result)).collect()
}

//! The trace of a job: each round's agents, tool calls and merges, as data
//! and as text.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use super::context::Change;
use super::run::{AgentFailure, State};
use super::tool::CallRecord;

/// How an agent's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AgentResult {
    /// It returned effects: how many, and the hash of their encoding.
    Effects {
        /// The number of effects.
        count: u32,
        /// The hash of their canonical encoding.
        hash: u64,
    },
    /// It failed.
    Failed(AgentFailure),
}

/// One agent's run in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub agent: String,
    /// Its fingerprint (see [`Agent::fingerprint`](super::Agent::fingerprint)).
    pub fingerprint: u64,
    /// The hash of what it was given.
    pub input: u64,
    /// How it ended.
    pub result: AgentResult,
}

/// One merged effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// Who put it (an agent, `inject`, or `tool:NAME`).
    pub by: String,
    /// The key.
    pub key: String,
    /// The value, for people.
    pub value: String,
    /// What the merge did.
    pub change: Change,
}

/// One round: the agents that ran (in agent order), the tool calls they
/// asked for (in merge order), every merge, and the context's hash after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// The round, from 1.
    pub round: u32,
    /// The tier that ran.
    pub tier: u32,
    /// The agents that ran.
    pub agents: Vec<AgentRecord>,
    /// The tool calls.
    pub calls: Vec<CallRecord>,
    /// The merges, in order.
    pub merges: Vec<MergeRecord>,
    /// The hash of the context after the merge.
    pub context: [u8; 32],
}

/// A job's trace: the rounds since its snapshot. The same inputs and tool
/// answers give the same trace bytes, whatever the timing. It is bounded:
/// past the job's limit, the rounds so far are folded into a snapshot of
/// the job's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Trace {
    /// The job's name.
    pub job: String,
    /// The state the rounds start from (`None`: the job's start).
    pub(crate) snapshot: Option<Box<State>>,
    /// The rounds, in order.
    pub rounds: Vec<RoundRecord>,
}

impl Trace {
    /// The canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("BUG: a trace always encodes")
    }

    /// A trace from its encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Trace, crate::DecodeError> {
        crate::wire::decode_exact(bytes)
    }

    /// The round the trace starts after (0 without a snapshot).
    pub fn starts_after(&self) -> u32 {
        self.snapshot.as_ref().map_or(0, |s| s.round)
    }

    /// The trace as text for a person: one block per round.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job {}", self.job)?;
        if let Some(s) = &self.snapshot {
            writeln!(f, "  (rounds 1-{} folded into a snapshot)", s.round)?;
        }
        for r in &self.rounds {
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RoundRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hash = String::new();
        for b in &self.context[..4] {
            let _ = write!(hash, "{b:02x}");
        }
        writeln!(f, "round {} (tier {}), context {hash}", self.round, self.tier)?;
        for a in &self.agents {
            match &a.result {
                AgentResult::Effects { count, .. } => writeln!(f, "  agent {}: {count} effect(s)", a.agent)?,
                AgentResult::Failed(why) => writeln!(f, "  agent {}: FAILED, {why}", a.agent)?,
            }
        }
        for c in &self.calls {
            match &c.result {
                Ok(_) => writeln!(
                    f,
                    "  tool {} for {}: answered ({} attempt(s))",
                    c.tool, c.agent, c.attempts
                )?,
                Err(e) => writeln!(f, "  tool {} for {}: {e} ({} attempt(s))", c.tool, c.agent, c.attempts)?,
            }
        }
        for m in &self.merges {
            let what = match &m.change {
                Change::Unchanged => "unchanged".to_owned(),
                Change::Added => "added".to_owned(),
                Change::Superseded(n) => format!("superseded {n}"),
                Change::Conflict(n) => format!("CONFLICT, {n} values side by side"),
                Change::Resolved => "conflict resolved".to_owned(),
                Change::Refused(why) => format!("resolution refused: {why}"),
            };
            writeln!(f, "  {} <- {} by {}: {what}", m.key, m.value, m.by)?;
        }
        Ok(())
    }
}

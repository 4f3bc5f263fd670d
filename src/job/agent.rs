//! Agents: what they are given, what they return, and how they are declared.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::context::{Confidence, Fact, KeyState, Rule, Slot};
use super::hash;
use super::tool::ToolFailure;

/// What an agent is given: the keys it reads, which of them changed since
/// it last ran, and the failures of the tools it asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    /// The round it runs in (from 1).
    pub round: u32,
    /// The agent's name.
    pub agent: String,
    pub(crate) slots: BTreeMap<String, Slot>,
    pub(crate) delta: Vec<String>,
    /// The context's version when the agent last ran (0: never).
    pub(crate) seen: u64,
    pub(crate) failures: Vec<(String, ToolFailure)>,
}

impl Input {
    /// The settled value of a key it reads (see
    /// [`Context::get`](super::Context::get)).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.slots.get(key)?.settled()?.decode()
    }

    /// Every value of a key it reads (see
    /// [`Context::values`](super::Context::values)).
    pub fn values<T: DeserializeOwned>(&self, key: &str) -> Vec<T> {
        self.facts(key).iter().filter_map(Fact::decode).collect()
    }

    /// The values of a key that are new since the agent last ran.
    pub fn new_values<T: DeserializeOwned>(&self, key: &str) -> Vec<T> {
        self.facts(key)
            .iter()
            .filter(|f| f.added > self.seen)
            .filter_map(Fact::decode)
            .collect()
    }

    /// The facts of a key it reads.
    pub fn facts(&self, key: &str) -> &[Fact] {
        self.slots.get(key).map_or(&[], |s| s.facts.as_slice())
    }

    /// The state of a key it reads.
    pub fn state(&self, key: &str) -> KeyState {
        self.slots.get(key).map_or(KeyState::Absent, Slot::state)
    }

    /// Whether a key it reads has no fact. An agent that decides on an
    /// absence must be in a tier above the agents that could put the fact.
    pub fn is_absent(&self, key: &str) -> bool {
        self.state(key) == KeyState::Absent
    }

    /// The keys it reads that changed since it last ran (all of them that
    /// hold facts, on its first run).
    pub fn delta(&self) -> &[String] {
        &self.delta
    }

    /// Why the tool call whose answer was to go under `answer_key` failed,
    /// if it did.
    pub fn tool_failure(&self, answer_key: &str) -> Option<&ToolFailure> {
        self.failures.iter().find(|(k, _)| k == answer_key).map(|(_, f)| f)
    }
}

/// One effect of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Effect {
    /// A fact under a key.
    Put {
        /// The key.
        key: String,
        /// The value's canonical encoding.
        value: Vec<u8>,
        /// How sure the agent is.
        confidence: Confidence,
    },
    /// A call of a tool through the job's broker; its answer is put under
    /// `answer` in the same merge, its failure recorded against the agent.
    Call {
        /// The tool's name.
        tool: String,
        /// The request's canonical encoding.
        request: Vec<u8>,
        /// The key its answer goes under.
        answer: String,
    },
    /// The resolution of a key's conflict (aggregation agents only).
    Resolve {
        /// The key.
        key: String,
        /// The chosen value's canonical encoding.
        value: Vec<u8>,
        /// The rule it follows.
        rule: Rule,
    },
}

/// What an agent returns: its effects, merged in the order emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    pub(crate) items: Vec<Effect>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("BUG: a value of a declared key encodes")
}

impl Effects {
    /// No effects.
    pub fn new() -> Effects {
        Effects::default()
    }

    /// Puts a fact, certain.
    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Effects {
        self.put_with(key, value, Confidence::CERTAIN)
    }

    /// Puts a fact with a confidence.
    pub fn put_with<T: Serialize>(&mut self, key: &str, value: &T, confidence: Confidence) -> &mut Effects {
        self.items.push(Effect::Put {
            key: key.to_owned(),
            value: encode(value),
            confidence,
        });
        self
    }

    /// Calls a tool; its answer goes under `answer`.
    pub fn call<R: Serialize>(&mut self, tool: &str, request: &R, answer: &str) -> &mut Effects {
        self.items.push(Effect::Call {
            tool: tool.to_owned(),
            request: encode(request),
            answer: answer.to_owned(),
        });
        self
    }

    /// Resolves the conflict of `key` with `value`, by `rule`.
    pub fn resolve<T: Serialize>(&mut self, key: &str, value: &T, rule: Rule) -> &mut Effects {
        self.items.push(Effect::Resolve {
            key: key.to_owned(),
            value: encode(value),
            rule,
        });
        self
    }

    /// The effects, in order.
    pub fn items(&self) -> &[Effect] {
        &self.items
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// An agent's function: a plain function (the pool's schedulers are forks
/// of this executable), given its input, returning its effects or why it
/// could not.
pub type AgentFn = fn(Input) -> Result<Effects, String>;

#[derive(Clone)]
pub(crate) enum Kind {
    Function(AgentFn),
    Program { program: PathBuf, args: Vec<String> },
}

/// An agent of a job: a function run on the scheduler pool, or an external
/// program run as a port (the context in as one JSON line on its standard
/// input, its effects out as JSON lines; see [`Agent::program`]).
#[derive(Clone)]
pub struct Agent {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) reads: Vec<String>,
    pub(crate) required: bool,
    pub(crate) tier: u32,
    pub(crate) version: u32,
    pub(crate) resolves: Vec<String>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("reads", &self.reads)
            .field("required", &self.required)
            .field("tier", &self.tier)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent running `f` on the pool: required, tier 0, reading nothing
    /// until told.
    pub fn new(name: &str, f: AgentFn) -> Agent {
        Agent::with_kind(name, Kind::Function(f))
    }

    /// An agent that is an external program, run as a port with `args`.
    ///
    /// It reads one JSON line on its standard input:
    /// `{"round": 1, "agent": "name", "delta": ["key", ...], "context":
    /// {"key": {"values": [...], "conflict": false}, ...}}` (the keys it
    /// reads; values as JSON), and writes its effects, one JSON line each:
    /// `{"put": "key", "value": ..., "confidence": 0.9}` (confidence
    /// optional), `{"call": "tool", "request": ..., "answer": "key"}`, or
    /// `{"resolve": "key", "value": ..., "rule": "confidence" |
    /// {"dominance": "why"} | {"constraint": "why"}}`. It must exit 0: any
    /// other end is the agent's failure, with its reason.
    pub fn program(name: &str, program: impl Into<PathBuf>, args: &[&str]) -> Agent {
        Agent::with_kind(
            name,
            Kind::Program {
                program: program.into(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
            },
        )
    }

    fn with_kind(name: &str, kind: Kind) -> Agent {
        Agent {
            name: name.to_owned(),
            kind,
            reads: Vec::new(),
            required: true,
            tier: 0,
            version: 0,
            resolves: Vec::new(),
        }
    }

    /// The keys it reads: it runs again when one of them changes.
    pub fn reads(mut self, keys: &[&str]) -> Agent {
        self.reads.extend(keys.iter().map(|k| (*k).to_owned()));
        self
    }

    /// Optional: its failure lowers the tier a job converges at instead of
    /// making it partial.
    pub fn optional(mut self) -> Agent {
        self.required = false;
        self
    }

    /// Its tier (stratum): it runs only when no agent of a lower tier has
    /// anything to do. Aggregation agents, and agents that decide on the
    /// absence of a fact, belong above the agents they wait for.
    pub fn tier(mut self, tier: u32) -> Agent {
        self.tier = tier;
        self
    }

    /// Its version, part of its fingerprint: bump it when its behaviour
    /// changes, and a replay of an older trace says where they part.
    pub fn version(mut self, version: u32) -> Agent {
        self.version = version;
        self
    }

    /// Makes it an aggregation agent for `key`: it may resolve the key's
    /// conflicts (it must be above tier 0).
    pub fn resolves(mut self, key: &str) -> Agent {
        self.resolves.push(key.to_owned());
        if !self.reads.iter().any(|k| k == key) {
            self.reads.push(key.to_owned());
        }
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What identifies its behaviour: name, version, reads, tier, whether
    /// required, the keys it resolves, and for a program its path and
    /// arguments.
    pub fn fingerprint(&self) -> u64 {
        let kind = match &self.kind {
            Kind::Function(_) => Vec::new(),
            Kind::Program { program, args } => {
                let mut v = vec![program.to_string_lossy().into_owned()];
                v.extend(args.iter().cloned());
                v
            }
        };
        hash::short(&encode(&(
            &self.name,
            self.version,
            &self.reads,
            self.tier,
            self.required,
            &self.resolves,
            kind,
        )))
    }
}

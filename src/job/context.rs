//! The context of a job: facts per key, each key with its join, and the
//! merge that only lets facts grow in meaning.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::hash;

/// Confidence in a fact, in fixed point: parts per million, from 0 to
/// 1,000,000. Two confidences are equal exactly or not at all, so a merge
/// that compares them is deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Confidence(u32);

impl Confidence {
    /// Certain (1,000,000 ppm): the confidence of a fact put without one.
    pub const CERTAIN: Confidence = Confidence(1_000_000);

    /// From parts per million (capped at 1,000,000).
    pub fn from_ppm(ppm: u32) -> Confidence {
        Confidence(ppm.min(1_000_000))
    }

    /// From a percentage (capped at 100).
    pub fn percent(p: u32) -> Confidence {
        Confidence::from_ppm(p.saturating_mul(10_000))
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:04}%", self.0 / 10_000, self.0 % 10_000)
    }
}

/// How the facts put under one key combine: a join of a lattice, so the
/// facts of a key only grow in meaning and a round that changes nothing is
/// a fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Join {
    /// A set: every distinct value is kept; never a conflict.
    Union,
    /// The greatest value (the type's total order).
    Max,
    /// The least value (the type's total order).
    Min,
    /// A value put in a later round supersedes those of earlier rounds;
    /// different values put in one round are a conflict.
    Latest,
    /// One value: a different one is a conflict.
    Single,
    /// The greatest values under the type's partial order: values that
    /// neither orders stay side by side as a conflict.
    Partial,
}

/// How an aggregation agent resolved a conflict; the merge checks what it
/// can of the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rule {
    /// The value of highest confidence wins. The merge checks it: the chosen
    /// value must be the one member whose confidence is strictly highest (a
    /// tie cannot be resolved by confidence).
    Confidence,
    /// The chosen member dominates the others on a criterion the agent
    /// names. The merge checks that the value is one of the members.
    Dominance(String),
    /// A value that satisfies a constraint the agent names (it may be a new
    /// value, a compromise between the members).
    Constraint(String),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Confidence => f.write_str("highest confidence"),
            Rule::Dominance(why) => write!(f, "dominance ({why})"),
            Rule::Constraint(why) => write!(f, "constraint ({why})"),
        }
    }
}

/// A fact read by an agent: its key and the hash of its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FactRef {
    /// The key.
    pub key: String,
    /// The hash of the value's canonical encoding.
    pub value: u64,
}

/// Where a fact came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The agent that put it: `input` for the job's inputs, `inject` for a
    /// fact injected into a running job, `AGENT via tool:NAME` for the
    /// answer of a tool an agent called.
    pub agent: String,
    /// The round it was merged in (0 for the inputs).
    pub round: u32,
    /// The facts the agent had read when it ran.
    pub read: Vec<FactRef>,
}

/// A fact: a value under a key, its confidence and provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// The value's canonical encoding (postcard of the key's type).
    pub value: Vec<u8>,
    /// How sure its source was.
    pub confidence: Confidence,
    /// Where it came from.
    pub source: Source,
    /// The context's version when it was merged (deltas are read from it).
    pub added: u64,
}

impl Fact {
    /// The hash of the value (what a [`FactRef`] holds).
    pub fn value_hash(&self) -> u64 {
        hash::short(&self.value)
    }

    /// The value, decoded.
    pub fn decode<T: DeserializeOwned>(&self) -> Option<T> {
        postcard::from_bytes(&self.value).ok()
    }
}

/// The resolution of a conflict by an aggregation agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The chosen value, with the aggregator as its source.
    pub fact: Fact,
    /// The rule the aggregator declared.
    pub rule: Rule,
    /// The hashes of the conflicting values it resolved (sorted): a value
    /// that joins the conflict later reopens it.
    pub over: Vec<u64>,
}

/// The facts of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The key's join.
    pub(crate) join: Join,
    /// `Union`: every value. Otherwise the maximal values: one is a settled
    /// key, several a conflict. Sorted by value bytes.
    pub(crate) facts: Vec<Fact>,
    /// The last resolution of a conflict.
    pub(crate) resolution: Option<Resolution>,
    /// The context's version at the last change.
    pub(crate) changed: u64,
}

impl Slot {
    fn new(join: Join) -> Slot {
        Slot {
            join,
            facts: Vec::new(),
            resolution: None,
            changed: 0,
        }
    }

    fn member_hashes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.facts.iter().map(Fact::value_hash).collect();
        v.sort_unstable();
        v
    }

    /// The resolution, when it covers the conflict as it stands.
    fn live_resolution(&self) -> Option<&Resolution> {
        self.resolution
            .as_ref()
            .filter(|r| self.facts.len() > 1 && r.over == self.member_hashes())
    }

    /// The settled fact: the only one, or the resolution of the conflict.
    pub(crate) fn settled(&self) -> Option<&Fact> {
        if self.join == Join::Union {
            return None;
        }
        match self.facts.as_slice() {
            [one] => Some(one),
            [] => None,
            _ => self.live_resolution().map(|r| &r.fact),
        }
    }

    pub(crate) fn state(&self) -> KeyState {
        match (self.join, self.facts.len()) {
            (_, 0) => KeyState::Absent,
            (Join::Union, n) => KeyState::Values(n),
            (_, 1) => KeyState::Settled,
            (_, n) if self.live_resolution().is_some() => KeyState::Resolved(n),
            (_, n) => KeyState::Conflict(n),
        }
    }
}

/// The state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// No fact yet.
    Absent,
    /// A `Union` key with this many values.
    Values(usize),
    /// One value.
    Settled,
    /// This many values that the join could not order, unresolved.
    Conflict(usize),
    /// This many conflicting values, resolved by an aggregation agent.
    Resolved(usize),
}

/// What the merge of one effect did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Change {
    /// Nothing: the value was known, or the join already had a greater one.
    Unchanged,
    /// A new value.
    Added,
    /// A new value that superseded this many.
    Superseded(u32),
    /// A new value that the join could not order against the others: the
    /// key is in conflict, with this many values side by side.
    Conflict(u32),
    /// A conflict resolved by an aggregation agent.
    Resolved,
    /// A resolution refused, and why (the conflict stays).
    Refused(String),
}

impl Change {
    /// Whether the context changed.
    pub fn changed(&self) -> bool {
        matches!(
            self,
            Change::Added | Change::Superseded(_) | Change::Conflict(_) | Change::Resolved
        )
    }
}

/// The type-erased operations of a declared key.
#[derive(Clone, Copy)]
pub(crate) struct KeyOps {
    /// The order of two values, for the ordered joins.
    pub(crate) cmp: fn(&[u8], &[u8]) -> Option<Ordering>,
    /// Whether bytes are the canonical encoding of a value of the type.
    pub(crate) check: fn(&[u8]) -> Result<(), String>,
    /// A value as JSON, for port agents.
    pub(crate) to_json: fn(&[u8]) -> Result<serde_json::Value, String>,
    /// A value from JSON, from port agents.
    pub(crate) from_json: fn(serde_json::Value) -> Result<Vec<u8>, String>,
    /// A value for people.
    pub(crate) show: fn(&[u8]) -> String,
}

impl fmt::Debug for KeyOps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyOps")
    }
}

/// A declared key.
#[derive(Debug, Clone)]
pub(crate) struct KeySpec {
    /// How its facts combine.
    pub(crate) join: Join,
    /// A goal of the job: it must hold a settled value (or, for a set, at
    /// least one) for the job to converge.
    pub(crate) required: bool,
    /// The Rust type of its values.
    pub(crate) type_name: &'static str,
    /// Its operations.
    pub(crate) ops: KeyOps,
}

/// Values a key can hold: encoded with postcard, shown with `Debug`, and
/// exchanged as JSON with port agents.
pub trait Value: Serialize + DeserializeOwned + fmt::Debug + 'static {}
impl<T: Serialize + DeserializeOwned + fmt::Debug + 'static> Value for T {}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| e.to_string())
}

fn check<T: Value>(b: &[u8]) -> Result<(), String> {
    let v: T = decode(b)?;
    // Equal values must have equal bytes: the merge and the hash compare
    // bytes.
    match postcard::to_stdvec(&v) {
        Ok(again) if again == b => Ok(()),
        Ok(_) => Err("not the canonical encoding of the value".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn to_json<T: Value>(b: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::to_value(decode::<T>(b)?).map_err(|e| e.to_string())
}

pub(crate) fn from_json<T: Value>(v: serde_json::Value) -> Result<Vec<u8>, String> {
    let t: T = serde_json::from_value(v).map_err(|e| e.to_string())?;
    postcard::to_stdvec(&t).map_err(|e| e.to_string())
}

fn show<T: Value>(b: &[u8]) -> String {
    match decode::<T>(b) {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("<undecodable: {e}>"),
    }
}

fn unordered(_: &[u8], _: &[u8]) -> Option<Ordering> {
    None
}

fn total<T: Value + Ord>(a: &[u8], b: &[u8]) -> Option<Ordering> {
    Some(decode::<T>(a).ok()?.cmp(&decode::<T>(b).ok()?))
}

fn partial<T: Value + PartialOrd>(a: &[u8], b: &[u8]) -> Option<Ordering> {
    decode::<T>(a).ok()?.partial_cmp(&decode::<T>(b).ok()?)
}

impl KeyOps {
    pub(crate) fn unordered<T: Value>() -> KeyOps {
        KeyOps {
            cmp: unordered,
            check: check::<T>,
            to_json: to_json::<T>,
            from_json: from_json::<T>,
            show: show::<T>,
        }
    }

    pub(crate) fn total<T: Value + Ord>() -> KeyOps {
        KeyOps {
            cmp: total::<T>,
            ..KeyOps::unordered::<T>()
        }
    }

    pub(crate) fn partial<T: Value + PartialOrd>() -> KeyOps {
        KeyOps {
            cmp: partial::<T>,
            ..KeyOps::unordered::<T>()
        }
    }
}

/// The facts of a job, key by key. Every change bumps its version; each key
/// remembers the version of its last change (an agent's delta is the keys
/// it reads that changed since it last ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Context {
    pub(crate) slots: BTreeMap<String, Slot>,
    pub(crate) version: u64,
}

impl Context {
    pub(crate) fn declare(&mut self, key: &str, join: Join) {
        self.slots.entry(key.to_owned()).or_insert_with(|| Slot::new(join));
    }

    /// The settled value of a key: its only value, or the value an
    /// aggregation agent chose for its conflict. `None` when the key is
    /// absent, a set, in unresolved conflict, or not of type `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.slots.get(key)?.settled()?.decode()
    }

    /// Every value of a key: a set's members, a settled key's value, or the
    /// values side by side in a conflict. Sorted by their encoding.
    pub fn values<T: DeserializeOwned>(&self, key: &str) -> Vec<T> {
        self.facts(key).iter().filter_map(Fact::decode).collect()
    }

    /// The facts of a key (see [`values`](Self::values)).
    pub fn facts(&self, key: &str) -> &[Fact] {
        self.slots.get(key).map_or(&[], |s| s.facts.as_slice())
    }

    /// The resolution of a key's conflict, if one covers it as it stands.
    pub fn resolution(&self, key: &str) -> Option<&Resolution> {
        self.slots.get(key)?.live_resolution()
    }

    /// The state of a key (`Absent` for an undeclared one).
    pub fn state(&self, key: &str) -> KeyState {
        self.slots.get(key).map_or(KeyState::Absent, Slot::state)
    }

    /// The keys in unresolved conflict.
    pub fn conflicts(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s.state(), KeyState::Conflict(_)))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The number of changes merged so far.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A hash of what the context means: every key's values, confidences
    /// and resolutions, in the canonical encoding (not who put them, nor
    /// when). Two contexts with equal meaning have equal hashes.
    pub fn hash(&self) -> [u8; 32] {
        #[derive(Serialize)]
        struct Meaning<'a> {
            key: &'a str,
            values: Vec<(&'a [u8], Confidence)>,
            resolution: Option<(&'a [u8], &'a Rule, &'a [u64])>,
        }
        let meaning: Vec<Meaning<'_>> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.facts.is_empty())
            .map(|(key, s)| Meaning {
                key,
                values: s.facts.iter().map(|f| (f.value.as_slice(), f.confidence)).collect(),
                resolution: s
                    .live_resolution()
                    .map(|r| (r.fact.value.as_slice(), &r.rule, r.over.as_slice())),
            })
            .collect();
        hash::long(&postcard::to_stdvec(&meaning).expect("BUG: a context always encodes"))
    }

    /// The canonical encoding of the whole context, provenance included.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("BUG: a context always encodes")
    }

    /// Merges a fact under `key` with the key's join.
    pub(crate) fn merge(&mut self, key: &str, spec: &KeySpec, fact: Fact) -> Change {
        let version = self.version + 1;
        let slot = self
            .slots
            .get_mut(key)
            .expect("BUG: effects are checked against the declared keys");
        let at = slot.facts.binary_search_by(|f| f.value.as_slice().cmp(&fact.value));
        if at.is_ok() {
            return Change::Unchanged;
        }
        let mut fact = fact;
        fact.added = version;
        let mut dropped = 0usize;
        match spec.join {
            Join::Union | Join::Single => {}
            Join::Max | Join::Min | Join::Partial => {
                let order = |a: &[u8], b: &[u8]| {
                    let o = (spec.ops.cmp)(a, b);
                    if spec.join == Join::Min {
                        o.map(Ordering::reverse)
                    } else {
                        o
                    }
                };
                if slot
                    .facts
                    .iter()
                    .any(|e| matches!(order(&fact.value, &e.value), Some(Ordering::Less | Ordering::Equal)))
                {
                    return Change::Unchanged;
                }
                let before = slot.facts.len();
                slot.facts
                    .retain(|e| order(&fact.value, &e.value) != Some(Ordering::Greater));
                dropped = before - slot.facts.len();
            }
            Join::Latest => {
                let before = slot.facts.len();
                slot.facts.retain(|e| e.source.round >= fact.source.round);
                dropped = before - slot.facts.len();
            }
        }
        let at = slot
            .facts
            .binary_search_by(|f| f.value.as_slice().cmp(&fact.value))
            .unwrap_err();
        slot.facts.insert(at, fact);
        slot.changed = version;
        self.version = version;
        let n = slot.facts.len();
        if spec.join != Join::Union && n > 1 {
            Change::Conflict(n as u32)
        } else if dropped > 0 {
            Change::Superseded(dropped as u32)
        } else {
            Change::Added
        }
    }

    /// Resolves the conflict of `key` with `fact`, chosen by `rule`.
    pub(crate) fn resolve(&mut self, key: &str, fact: Fact, rule: Rule) -> Change {
        let version = self.version + 1;
        let slot = self
            .slots
            .get_mut(key)
            .expect("BUG: effects are checked against the declared keys");
        if slot.join == Join::Union || slot.facts.len() < 2 {
            return Change::Refused("the key is not in conflict".into());
        }
        if let Some(r) = slot.live_resolution() {
            return if r.fact.value == fact.value && r.rule == rule {
                Change::Unchanged
            } else {
                Change::Refused("the conflict is already resolved".into())
            };
        }
        match &rule {
            Rule::Confidence => {
                let top = slot
                    .facts
                    .iter()
                    .map(|f| f.confidence)
                    .max()
                    .expect("BUG: a conflict has members");
                let best: Vec<&Fact> = slot.facts.iter().filter(|f| f.confidence == top).collect();
                if best.len() > 1 {
                    return Change::Refused(format!("{} values share the highest confidence", best.len()));
                }
                if best[0].value != fact.value {
                    return Change::Refused("not the value of highest confidence".into());
                }
            }
            Rule::Dominance(_) => {
                if !slot.facts.iter().any(|f| f.value == fact.value) {
                    return Change::Refused("a dominant value must be one of the conflict's".into());
                }
            }
            Rule::Constraint(_) => {}
        }
        let mut fact = fact;
        fact.added = version;
        slot.resolution = Some(Resolution {
            over: slot.member_hashes(),
            fact,
            rule,
        });
        slot.changed = version;
        self.version = version;
        Change::Resolved
    }
}

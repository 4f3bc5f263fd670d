//! The merge's lattice rules, the context hash, and the parsing of a program
//! agent's effect lines, without processes.

use serde::{Deserialize, Serialize};

use super::context::{Change, Confidence, Context, Fact, Join, KeyOps, KeySpec, KeyState, Rule, Source, Value};
use super::{Effect, Job, Tool};

fn spec<T: Value>(join: Join, ops: KeyOps) -> KeySpec {
    KeySpec {
        join,
        required: false,
        type_name: std::any::type_name::<T>(),
        ops,
    }
}

fn fact<T: Serialize>(v: &T, agent: &str, round: u32) -> Fact {
    Fact {
        value: postcard::to_stdvec(v).unwrap(),
        confidence: Confidence::CERTAIN,
        source: Source {
            agent: agent.into(),
            round,
            read: Vec::new(),
        },
        added: 0,
    }
}

fn with_confidence(mut f: Fact, percent: u32) -> Fact {
    f.confidence = Confidence::percent(percent);
    f
}

#[test]
fn max_keeps_the_greatest_and_ignores_the_rest() {
    let s = spec::<u64>(Join::Max, KeyOps::total::<u64>());
    let mut c = Context::default();
    c.declare("k", Join::Max);
    assert_eq!(c.merge("k", &s, fact(&5u64, "a", 1)), Change::Added);
    assert_eq!(c.merge("k", &s, fact(&3u64, "a", 1)), Change::Unchanged);
    assert_eq!(c.merge("k", &s, fact(&5u64, "b", 2)), Change::Unchanged);
    assert_eq!(c.merge("k", &s, fact(&9u64, "b", 2)), Change::Superseded(1));
    assert_eq!(c.get::<u64>("k"), Some(9));
    assert_eq!(c.version(), 2);
}

#[test]
fn min_keeps_the_least() {
    let s = spec::<u64>(Join::Min, KeyOps::total::<u64>());
    let mut c = Context::default();
    c.declare("k", Join::Min);
    c.merge("k", &s, fact(&5u64, "a", 1));
    assert_eq!(c.merge("k", &s, fact(&7u64, "a", 1)), Change::Unchanged);
    assert_eq!(c.merge("k", &s, fact(&2u64, "a", 1)), Change::Superseded(1));
    assert_eq!(c.get::<u64>("k"), Some(2));
}

/// A plan better than another only if it is cheaper and no worse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Plan {
    cost: u32,
    quality: u32,
}

impl PartialOrd for Plan {
    fn partial_cmp(&self, o: &Plan) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering::*;
        match (o.cost.cmp(&self.cost), self.quality.cmp(&o.quality)) {
            (Equal, Equal) => Some(Equal),
            (Greater | Equal, Greater | Equal) => Some(Greater),
            (Less | Equal, Less | Equal) => Some(Less),
            _ => None,
        }
    }
}

#[test]
fn a_partial_order_keeps_incomparable_values_side_by_side() {
    let s = spec::<Plan>(Join::Partial, KeyOps::partial::<Plan>());
    let mut c = Context::default();
    c.declare("plan", Join::Partial);
    let cheap = Plan { cost: 1, quality: 1 };
    let good = Plan { cost: 5, quality: 9 };
    c.merge("plan", &s, fact(&cheap, "a", 1));
    assert_eq!(c.merge("plan", &s, fact(&good, "b", 1)), Change::Conflict(2));
    assert_eq!(c.state("plan"), KeyState::Conflict(2));
    assert_eq!(c.get::<Plan>("plan"), None);
    // Dominated by one of them: nothing changes.
    assert_eq!(
        c.merge("plan", &s, fact(&Plan { cost: 6, quality: 8 }, "c", 2)),
        Change::Unchanged
    );
    // Dominates both: the conflict is gone.
    let best = Plan { cost: 1, quality: 9 };
    assert_eq!(c.merge("plan", &s, fact(&best, "d", 2)), Change::Superseded(2));
    assert_eq!(c.get::<Plan>("plan"), Some(best));
}

#[test]
fn latest_supersedes_earlier_rounds_and_conflicts_within_one() {
    let s = spec::<String>(Join::Latest, KeyOps::unordered::<String>());
    let mut c = Context::default();
    c.declare("k", Join::Latest);
    c.merge("k", &s, fact(&"a".to_owned(), "x", 1));
    assert_eq!(c.merge("k", &s, fact(&"b".to_owned(), "x", 2)), Change::Superseded(1));
    assert_eq!(c.merge("k", &s, fact(&"c".to_owned(), "y", 2)), Change::Conflict(2));
    assert_eq!(c.merge("k", &s, fact(&"b".to_owned(), "z", 3)), Change::Unchanged);
    assert_eq!(c.merge("k", &s, fact(&"d".to_owned(), "z", 3)), Change::Superseded(2));
    assert_eq!(c.get::<String>("k").as_deref(), Some("d"));
}

#[test]
fn resolutions_follow_their_rules_and_a_new_value_reopens_the_conflict() {
    let s = spec::<String>(Join::Single, KeyOps::unordered::<String>());
    let mut c = Context::default();
    c.declare("k", Join::Single);
    assert_eq!(
        c.resolve("k", fact(&"x".to_owned(), "j", 1), Rule::Constraint("any".into())),
        Change::Refused("the key is not in conflict".into())
    );
    c.merge("k", &s, with_confidence(fact(&"buy".to_owned(), "a", 1), 60));
    c.merge("k", &s, with_confidence(fact(&"hold".to_owned(), "b", 1), 60));
    // A tie cannot be resolved by confidence.
    assert!(matches!(
        c.resolve("k", fact(&"hold".to_owned(), "j", 2), Rule::Confidence),
        Change::Refused(why) if why.contains("share")
    ));
    // A dominant value must be a member.
    assert!(matches!(
        c.resolve("k", fact(&"sell".to_owned(), "j", 2), Rule::Dominance("risk".into())),
        Change::Refused(_)
    ));
    assert_eq!(
        c.resolve("k", fact(&"hold".to_owned(), "j", 2), Rule::Dominance("risk".into())),
        Change::Resolved
    );
    assert_eq!(c.get::<String>("k").as_deref(), Some("hold"));
    assert_eq!(c.state("k"), KeyState::Resolved(2));
    // Said again: unchanged; another answer: refused.
    assert_eq!(
        c.resolve("k", fact(&"hold".to_owned(), "j", 3), Rule::Dominance("risk".into())),
        Change::Unchanged
    );
    // A third value reopens the conflict: the resolution covered two.
    assert_eq!(c.merge("k", &s, fact(&"sell".to_owned(), "c", 3)), Change::Conflict(3));
    assert_eq!(c.state("k"), KeyState::Conflict(3));
    assert_eq!(c.get::<String>("k"), None);
    assert_eq!(
        c.resolve(
            "k",
            fact(&"wait".to_owned(), "j", 4),
            Rule::Constraint("a compromise".into())
        ),
        Change::Resolved
    );
    assert_eq!(c.get::<String>("k").as_deref(), Some("wait"));
}

#[test]
fn the_hash_is_of_meaning_not_of_provenance() {
    let s = spec::<u64>(Join::Union, KeyOps::unordered::<u64>());
    let mut a = Context::default();
    let mut b = Context::default();
    a.declare("k", Join::Union);
    b.declare("k", Join::Union);
    a.merge("k", &s, fact(&1u64, "x", 1));
    a.merge("k", &s, fact(&2u64, "x", 1));
    b.merge("k", &s, fact(&2u64, "y", 5));
    b.merge("k", &s, fact(&1u64, "z", 7));
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.to_bytes(), b.to_bytes());
    b.merge("k", &s, with_confidence(fact(&3u64, "z", 7), 50));
    assert_ne!(a.hash(), b.hash());
}

#[test]
fn values_are_checked_for_type_and_canonical_encoding() {
    let ops = KeyOps::unordered::<u32>();
    assert!((ops.check)(&postcard::to_stdvec(&7u32).unwrap()).is_ok());
    assert!((ops.check)(b"").is_err());
    // 7 as a varint padded with a continuation byte: decodes, not canonical.
    assert!((ops.check)(&[0x87, 0x00]).is_err());
    assert!((ops.check)(&[7, 0]).is_err(), "trailing bytes");
}

fn no_tool(_: u64) -> Result<u64, String> {
    Err("not called".into())
}

#[test]
fn a_program_agent_s_bad_lines_are_clear_errors() {
    let mut job = Job::new("lines");
    job.union::<String>("names");
    job.max::<u64>("score");
    job.tool(Tool::function("tool", no_tool));
    let run = job.start().unwrap();
    let ok = run
        .effect_from_json(r#"{"put": "score", "value": 3, "confidence": 0.25}"#)
        .unwrap();
    assert_eq!(
        ok,
        Effect::Put {
            key: "score".into(),
            value: vec![3],
            confidence: Confidence::percent(25)
        }
    );
    assert!(matches!(
        run.effect_from_json(r#"{"call": "tool", "request": 4, "answer": "score"}"#),
        Ok(Effect::Call { .. })
    ));
    for (line, want) in [
        ("not json", "expected"),
        (r#"{"put": "nowhere", "value": 1}"#, "undeclared key nowhere"),
        (r#"{"put": "score", "value": "high"}"#, "key score"),
        (r#"{"put": "score", "value": 1, "confidence": 2}"#, "confidence"),
        (r#"{"put": "score"}"#, "no value"),
        (r#"{"call": "other", "request": 1, "answer": "score"}"#, "no tool other"),
        (r#"{"resolve": "score", "value": 1, "rule": "vote"}"#, "rule must be"),
        (
            r#"{"resolve": "score", "value": 1, "rule": {"luck": "x"}}"#,
            "unknown rule luck",
        ),
        (r#"{"delete": "score"}"#, "an effect has"),
    ] {
        let e = run.effect_from_json(line).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[cfg(feature = "fuzzing")]
#[test]
fn the_fuzz_entry_takes_any_bytes() {
    let mut job = Job::new("fuzz");
    job.union::<String>("names");
    let run = job.start().unwrap();
    let checkpoint = run.checkpoint().to_bytes();
    for data in [
        &b""[..],
        b"\xff\xff\xff\xff\x0f",
        &checkpoint,
        b"{\"put\": \"names\", \"value\": \"x\"}\n{\"put\": \"score\", \"value\": 18446744073709551615}\nnot json",
    ] {
        crate::fuzzing::job_records(data);
    }
}

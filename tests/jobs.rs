//! Convergent jobs: fixed points, failures that stay the agent's, tiers,
//! tools behind a breaker, oscillation, budgets, checkpoints, replay,
//! conflicts, port agents, injection, audit, and determinism whatever the
//! timing.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use converge::job::{
    Agent, AgentFailure, AgentResult, Change, Checkpoint, Confidence, Effects, Input, Job, JobError, JobFailure,
    KeyState, Outcome, RoundRecord, Rule, Stop, Tool, ToolFailure, run_all,
};
use converge::{Config, ExitReason};
use proptest::prelude::*;
use util::PATIENCE;

/// The file the delayed agents read their delays from (set before the node
/// starts, so the schedulers inherit it).
const DELAYS: &str = "CONVERGE_TEST_JOB_DELAYS";

fn main() {
    let delays = std::env::temp_dir().join(format!("converge-job-delays-{}", std::process::id()));
    if std::env::var_os(DELAYS).is_none() {
        // SAFETY: no other thread exists yet (the node is not started).
        unsafe { std::env::set_var(DELAYS, &delays) };
    }
    util::run_with(
        Config::new().schedulers(2),
        &[
            (
                "a_fixed_point_is_reached_and_detected_exactly",
                a_fixed_point_is_reached_and_detected_exactly,
            ),
            (
                "a_required_agent_that_crashes_gives_partial_with_its_reason",
                a_required_agent_that_crashes_gives_partial_with_its_reason,
            ),
            (
                "an_optional_agent_s_failure_converges_at_a_lower_tier",
                an_optional_agent_s_failure_converges_at_a_lower_tier,
            ),
            ("tiers_wait_for_the_tiers_below", tiers_wait_for_the_tiers_below),
            (
                "a_flaky_tool_trips_the_breaker_and_recovers",
                a_flaky_tool_trips_the_breaker_and_recovers,
            ),
            (
                "a_tool_program_that_fails_is_classified",
                a_tool_program_that_fails_is_classified,
            ),
            ("oscillation_is_detected", oscillation_is_detected),
            ("budget_expiry_gives_partial", budget_expiry_gives_partial),
            (
                "an_agent_past_its_timeout_fails_alone",
                an_agent_past_its_timeout_fails_alone,
            ),
            (
                "resume_from_a_checkpoint_reruns_nothing_recorded",
                resume_from_a_checkpoint_reruns_nothing_recorded,
            ),
            (
                "a_partial_job_continues_when_its_dependency_recovers",
                a_partial_job_continues_when_its_dependency_recovers,
            ),
            (
                "replay_of_a_changed_agent_reports_the_divergence",
                replay_of_a_changed_agent_reports_the_divergence,
            ),
            (
                "a_compacted_trace_replays_from_its_snapshot",
                a_compacted_trace_replays_from_its_snapshot,
            ),
            (
                "conflicts_stay_side_by_side_until_an_aggregator_resolves_them",
                conflicts_stay_side_by_side_until_an_aggregator_resolves_them,
            ),
            (
                "a_port_agent_in_another_language_works",
                a_port_agent_in_another_language_works,
            ),
            (
                "bad_effects_are_refused_and_lose_nothing_else",
                bad_effects_are_refused_and_lose_nothing_else,
            ),
            ("facts_injected_into_a_running_job", facts_injected_into_a_running_job),
            (
                "rounds_stream_to_a_mailbox_and_facts_explain_themselves",
                rounds_stream_to_a_mailbox_and_facts_explain_themselves,
            ),
            (
                "many_jobs_at_once_keep_their_own_outcomes",
                many_jobs_at_once_keep_their_own_outcomes,
            ),
            (
                "invalid_jobs_are_refused_before_running",
                invalid_jobs_are_refused_before_running,
            ),
            (
                "timing_changes_neither_the_outcome_nor_the_trace",
                timing_changes_neither_the_outcome_nor_the_trace,
            ),
        ],
        &[],
    )
}

// ----- agents (plain functions: they run in the pool's schedulers) -----

/// Doubles each new number below 100.
fn double(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    for n in input.new_values::<u64>("n") {
        if n < 100 {
            out.put("n", &(n * 2));
        }
    }
    log_run(&input);
    Ok(out)
}

/// Appends `agent round` to the file named by the input key `log`, if any.
fn log_run(input: &Input) {
    if let Some(path) = input.get::<String>("log") {
        let line = format!("{} {}\n", input.agent, input.round);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
    }
}

fn doubling() -> Job {
    let mut job = Job::new("doubling");
    job.union::<u64>("n").required();
    job.single::<String>("log");
    job.input("n", &3u64);
    job.agent(Agent::new("double", double).reads(&["n", "log"]));
    job
}

fn found(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put("found", &input.agent);
    Ok(out)
}

fn panics(_: Input) -> Result<Effects, String> {
    panic!("agent lost its way");
}

fn killed(_: Input) -> Result<Effects, String> {
    // SAFETY: the agent kills its own scheduler, on purpose.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL is not caught");
}

fn segfaults(_: Input) -> Result<Effects, String> {
    util::no_core_dumps();
    // SAFETY: not safe at all: this scheduler is meant to die of SIGSEGV.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    unreachable!("the write faults");
}

fn refuses(_: Input) -> Result<Effects, String> {
    Err("no data".into())
}

fn a_fixed_point_is_reached_and_detected_exactly() {
    let r = doubling().run().unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Converged {
            tier: Some(0),
            degraded: vec![]
        }
    );
    assert_eq!(r.context.values::<u64>("n"), [3, 6, 12, 24, 48, 96, 192]);
    // Six rounds that each add a number, then one in which the agent sees
    // 192 and adds nothing: the fixed point, detected at once.
    assert_eq!(r.rounds, 7);
    let last = r.trace.rounds.last().unwrap();
    assert!(last.merges.is_empty(), "{last}");
    assert_eq!(last.context, r.trace.rounds[5].context);
    assert!(
        r.trace.rounds[..6]
            .iter()
            .all(|round| round.merges.len() == 1 && round.merges[0].change == Change::Added)
    );
    // The same job again: the same bytes.
    assert_eq!(doubling().run().unwrap().trace.to_bytes(), r.trace.to_bytes());
}

fn a_required_agent_that_crashes_gives_partial_with_its_reason() {
    for (name, f, want) in [
        (
            "panics",
            panics as fn(Input) -> Result<Effects, String>,
            ExitReason::Panic("agent lost its way".into()),
        ),
        ("killed", killed, ExitReason::Killed),
        (
            "segfaults",
            segfaults,
            ExitReason::Signal {
                signal: libc::SIGSEGV,
                core_dumped: false,
            },
        ),
        ("refuses", refuses, ExitReason::Error("no data".into())),
    ] {
        let mut job = Job::new("crash");
        job.union::<String>("found");
        job.agent(Agent::new("first", found));
        job.agent(Agent::new(name, f));
        job.agent(Agent::new("last", found));
        let r = job.run().unwrap();
        match &r.outcome {
            Outcome::Partial {
                why: Stop::RequiredFailed,
                failed,
                missing,
                ..
            } => {
                assert_eq!(failed, &[(name.to_owned(), AgentFailure::Exit(want.clone()))], "{name}");
                assert_eq!(missing, &[name.to_owned()]);
            }
            other => panic!("{name}: {other:?}"),
        }
        // What its siblings found is kept.
        let mut found = r.context.values::<String>("found");
        found.sort();
        assert_eq!(found, ["first", "last"], "{name}");
    }
}

fn tier_marker(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put("done", &input.agent);
    Ok(out)
}

fn strategy(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    let seen = input.values::<String>("done");
    out.put("strategy", &format!("from {}", seen.join("+")));
    Ok(out)
}

fn an_optional_agent_s_failure_converges_at_a_lower_tier() {
    let mut job = Job::new("tiers");
    job.union::<String>("done");
    job.single::<String>("strategy").required();
    job.agent(Agent::new("base", tier_marker));
    job.agent(Agent::new("enrich", panics).tier(1).optional());
    job.agent(Agent::new("extra", tier_marker).tier(1));
    job.agent(Agent::new("strategy", strategy).reads(&["done"]).tier(2));
    let r = job.run().unwrap();
    match &r.outcome {
        Outcome::Converged { tier, degraded } => {
            assert_eq!(*tier, Some(0));
            assert_eq!(degraded.len(), 1);
            assert_eq!(degraded[0].0, "enrich");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.context.get::<String>("strategy").unwrap(), "from base+extra");

    // The same failure in a required agent: partial.
    let mut job = Job::new("tiers");
    job.union::<String>("done");
    job.agent(Agent::new("base", tier_marker));
    job.agent(Agent::new("enrich", panics).tier(1));
    assert!(matches!(
        job.run().unwrap().outcome,
        Outcome::Partial {
            why: Stop::RequiredFailed,
            ..
        }
    ));
}

/// Puts 1 while nothing is there yet (an absence: tier 1).
fn default_one(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if input.is_absent("level") {
        out.put("level", &1u64);
    }
    Ok(out)
}

/// Raises the level to 5, step by step.
fn raise(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let Some(l) = input.get::<u64>("level")
        && l < 5
    {
        out.put("level", &(l + 1));
    }
    Ok(out)
}

fn tiers_wait_for_the_tiers_below() {
    let mut job = Job::new("strata");
    job.max::<u64>("level").required();
    job.input("level", &3u64);
    job.agent(Agent::new("raise", raise).reads(&["level"]));
    job.agent(Agent::new("default", default_one).reads(&["level"]).tier(1));
    let r = job.run().unwrap();
    assert!(r.outcome.is_converged(), "{:?}", r.outcome);
    assert_eq!(r.context.get::<u64>("level"), Some(5));
    // Tier 0 ran until quiet (3 -> 4 -> 5, then a quiet run); only then did
    // tier 1 run, once, and saw the level.
    let tiers: Vec<u32> = r.trace.rounds.iter().map(|r| r.tier).collect();
    assert_eq!(tiers, [0, 0, 0, 1]);
    assert!(r.trace.rounds[3].merges.is_empty());
}

/// Counts to 30, one a round.
fn tick(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    let t = input.get::<u64>("tick").unwrap_or(0);
    if t < 30 {
        out.put("tick", &(t + 1));
    }
    Ok(out)
}

/// Asks the flaky tool each round.
fn ask(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let Some(t) = input.get::<u64>("tick") {
        out.call("flaky", &t, "answers");
    }
    Ok(out)
}

/// Down for requests 1 to 6; afterwards fails one time in four, at random.
fn flaky_tool(t: u64) -> Result<u64, String> {
    let random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    if t <= 6 || random.is_multiple_of(4) {
        return Err(format!("unavailable for {t}"));
    }
    Ok(t * 10)
}

fn a_flaky_tool_trips_the_breaker_and_recovers() {
    let mut job = Job::new("breaker");
    job.max::<u64>("tick");
    job.union::<u64>("answers");
    job.seed(7);
    job.agent(Agent::new("tick", tick).reads(&["tick"]));
    job.agent(Agent::new("ask", ask).reads(&["tick"]).optional());
    job.tool(
        Tool::function("flaky", flaky_tool)
            .attempts(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(4))
            .breaker(2, 3),
    );
    let r = job.run().unwrap();
    assert!(r.outcome.is_converged(), "{:?}", r.outcome);
    let calls: Vec<_> = r
        .trace
        .rounds
        .iter()
        .flat_map(|r| r.calls.iter().map(move |c| (r.round, c)))
        .collect();
    // Two failed calls (three attempts each) open the breaker...
    assert_eq!(calls[0].1.attempts, 3);
    assert!(matches!(calls[0].1.result, Err(ToolFailure::Refused(_))));
    assert!(matches!(calls[1].1.result, Err(ToolFailure::Refused(_))));
    // ... for three rounds, without calling the tool.
    for (_, c) in &calls[2..4] {
        assert_eq!((c.attempts, &c.result), (0, &Err(ToolFailure::BreakerOpen)));
    }
    // It recovers: answers come back, and the breaker closes for good.
    let first_ok = calls
        .iter()
        .position(|(_, c)| c.result.is_ok())
        .expect("the tool recovered");
    assert!(calls[first_ok..].iter().filter(|(_, c)| c.result.is_ok()).count() >= 10);
    // Each answer is in the context (the last ones may have failed: the
    // tool fails at random).
    let answers = r.context.values::<u64>("answers");
    let ok = calls.iter().filter(|(_, c)| c.result.is_ok()).count();
    assert_eq!(answers.len(), ok, "{answers:?}");
    // Every call, failures included, is recorded, and the agent saw them.
    assert_eq!(calls.len(), 30);
}

fn a_tool_program_that_fails_is_classified() {
    let dir = util::temp_dir("job-tool");
    let script = dir.join("tool.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r q\ncase \"$q\" in\n  1) echo 10 ;;\n  2) echo 'not json' ;;\n  3) exit 4 ;;\n  4) sleep 5 ;;\nesac\n",
    )
    .unwrap();
    make_executable(&script);
    let mut job = Job::new("program-tool");
    job.union::<u64>("answers");
    job.agent(Agent::new("ask_all", ask_all).optional());
    job.tool(
        Tool::program::<u64, u64>("prog", &script, &[])
            .attempts(1)
            .timeout(Duration::from_millis(300))
            .breaker(10, 1),
    );
    let r = job.run().unwrap();
    let results: Vec<_> = r.trace.rounds[0].calls.iter().map(|c| c.result.clone()).collect();
    assert_eq!(results[0], Ok(postcard::to_stdvec(&10u64).unwrap()));
    assert!(matches!(&results[1], Err(ToolFailure::BadAnswer(_))), "{results:?}");
    assert_eq!(results[2], Err(ToolFailure::Refused("exit code 4".into())));
    assert_eq!(results[3], Err(ToolFailure::Timeout));
    assert_eq!(r.context.values::<u64>("answers"), [10]);
}

fn ask_all(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    for q in 1..=4u64 {
        out.call("prog", &q, "answers");
    }
    Ok(out)
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Flips the light every round.
fn flip(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    let on = input.get::<bool>("light").unwrap_or(false);
    out.put("light", &!on);
    Ok(out)
}

fn oscillation_is_detected() {
    let mut job = Job::new("flip");
    job.latest::<bool>("light");
    job.agent(Agent::new("flip", flip).reads(&["light"]));
    let r = job.run().unwrap();
    assert_eq!(r.outcome, Outcome::Failed(JobFailure::Oscillation { period: 2 }));
    assert_eq!(r.rounds, 3);
}

fn slow(input: Input) -> Result<Effects, String> {
    let n = input.get::<u64>("n").unwrap_or(0);
    if n >= 2 {
        std::thread::sleep(Duration::from_secs(3));
    }
    let mut out = Effects::new();
    out.put("n", &(n + 1));
    Ok(out)
}

fn budget_expiry_gives_partial() {
    // Rounds.
    let mut job = doubling();
    job.max_rounds(3);
    let r = job.run().unwrap();
    assert_eq!(r.context.values::<u64>("n"), [3, 6, 12, 24]);
    assert!(
        matches!(&r.outcome, Outcome::Partial { why: Stop::Rounds, failed, missing, .. } if failed.is_empty() && missing.is_empty()),
        "{:?}",
        r.outcome
    );
    // Deadline: the round under way is not merged; the answer is the
    // context as of the last merge.
    let mut job = Job::new("deadline");
    job.max::<u64>("n").required();
    job.agent(Agent::new("slow", slow).reads(&["n"]));
    job.deadline(Duration::from_millis(800));
    let started = Instant::now();
    let r = job.run().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(
        matches!(
            r.outcome,
            Outcome::Partial {
                why: Stop::Deadline,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.context.get::<u64>("n"), Some(2));
    // Tool calls.
    let mut job = Job::new("calls");
    job.max::<u64>("tick");
    job.union::<u64>("answers");
    job.agent(Agent::new("tick", tick).reads(&["tick"]));
    job.agent(Agent::new("ask", ask).reads(&["tick"]));
    job.tool(Tool::function("flaky", always_ok));
    job.max_tool_calls(5);
    let r = job.run().unwrap();
    assert!(
        matches!(
            r.outcome,
            Outcome::Partial {
                why: Stop::ToolCalls,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.context.values::<u64>("answers").len(), 5);
}

fn always_ok(t: u64) -> Result<u64, String> {
    Ok(t)
}

fn an_agent_past_its_timeout_fails_alone() {
    let mut job = Job::new("timeout");
    job.max::<u64>("n");
    job.union::<String>("found");
    job.input("n", &2u64);
    job.agent(Agent::new("slow", slow).reads(&["n"]).optional());
    job.agent(Agent::new("found", found));
    job.agent_timeout(Duration::from_millis(300));
    let r = job.run().unwrap();
    match &r.outcome {
        Outcome::Converged { degraded, .. } => assert_eq!(degraded, &[("slow".to_owned(), AgentFailure::Timeout)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.context.values::<String>("found"), ["found"]);
    // The pool is whole again: another job runs.
    assert!(doubling().run().unwrap().outcome.is_converged());
}

fn runs_logged(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn resume_from_a_checkpoint_reruns_nothing_recorded() {
    let dir = util::temp_dir("job-resume");
    let log = dir.join("runs");
    let file = dir.join("checkpoint");
    let mut job = doubling();
    job.input("log", &log.to_string_lossy().into_owned());
    job.max_rounds(3).checkpoint_to(&file);
    let first = job.run().unwrap();
    assert!(matches!(first.outcome, Outcome::Partial { why: Stop::Rounds, .. }));
    assert_eq!(runs_logged(&log), ["double 1", "double 2", "double 3"]);

    // From the file, as after a crash of the driver.
    let checkpoint = Checkpoint::load(&file).unwrap();
    assert_eq!(checkpoint.round(), 3);
    assert_eq!(checkpoint, first.checkpoint());
    let mut job = doubling();
    job.input("log", &log.to_string_lossy().into_owned());
    let r = job.resume(checkpoint).unwrap().run();
    assert!(r.outcome.is_converged(), "{:?}", r.outcome);
    assert_eq!(r.context.values::<u64>("n"), [3, 6, 12, 24, 48, 96, 192]);
    // Rounds 1-3 were not run again; the trace goes on where it stopped.
    assert_eq!(
        runs_logged(&log),
        [
            "double 1", "double 2", "double 3", "double 4", "double 5", "double 6", "double 7"
        ]
    );
    let rounds: Vec<u32> = r.trace.rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, [1, 2, 3, 4, 5, 6, 7]);
    // The same answer as a run that was never stopped.
    let whole = doubling().run().unwrap();
    assert_eq!(r.context.values::<u64>("n"), whole.context.values::<u64>("n"));

    // A converged job resumed runs nothing.
    let mut job = doubling();
    job.input("log", &log.to_string_lossy().into_owned());
    let again = job.resume(r.checkpoint()).unwrap().run();
    assert_eq!(again.rounds, 0);
    assert!(again.outcome.is_converged());
    // Of another job: refused.
    assert!(matches!(
        Job::new("other").resume(r.checkpoint()),
        Err(JobError::Mismatch(_))
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Answers while the file named by the request exists.
fn while_present(path: String) -> Result<u64, String> {
    if Path::new(&path).exists() {
        Ok(42)
    } else {
        Err("down".into())
    }
}

fn ask_present(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let Some(p) = input.get::<String>("path") {
        out.call("service", &p, "answer");
    }
    Ok(out)
}

fn a_partial_job_continues_when_its_dependency_recovers() {
    let dir = util::temp_dir("job-continue");
    let flag = dir.join("up");
    let job = || {
        let mut job = Job::new("continue");
        job.single::<String>("path");
        job.single::<u64>("answer").required();
        job.input("path", &flag.to_string_lossy().into_owned());
        job.agent(Agent::new("ask", ask_present).reads(&["path"]));
        job.tool(
            Tool::function("service", while_present)
                .attempts(2)
                .backoff(Duration::from_millis(1), Duration::from_millis(2)),
        );
        job
    };
    let r = job().run().unwrap();
    match &r.outcome {
        Outcome::Partial {
            why: Stop::RequiredFailed,
            failed,
            incomplete,
            ..
        } => {
            assert_eq!(
                failed,
                &[(
                    "ask".to_owned(),
                    AgentFailure::Tool {
                        tool: "service".into(),
                        failure: ToolFailure::Refused("down".into())
                    }
                )]
            );
            assert_eq!(incomplete, &["answer".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&flag, b"").unwrap();
    let r = job().resume(r.checkpoint()).unwrap().run();
    assert!(r.outcome.is_converged(), "{:?}", r.outcome);
    assert_eq!(r.context.get::<u64>("answer"), Some(42));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Like `double`, but stops below 50.
fn double_less(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    for n in input.new_values::<u64>("n") {
        if n < 50 {
            out.put("n", &(n * 2));
        }
    }
    Ok(out)
}

fn replay_of_a_changed_agent_reports_the_divergence() {
    let recorded = doubling().run().unwrap();
    // The same job replays to the same bytes.
    let replayed = doubling().replay(&recorded.trace).unwrap();
    assert_eq!(replayed.trace.to_bytes(), recorded.trace.to_bytes());
    assert_eq!(replayed.outcome, recorded.outcome);
    // A new version of the agent: its fingerprint differs from round 1.
    let mut changed = Job::new("doubling");
    changed.union::<u64>("n").required();
    changed.single::<String>("log");
    changed.input("n", &3u64);
    changed.agent(Agent::new("double", double).reads(&["n", "log"]).version(2));
    let d = changed.replay(&recorded.trace).unwrap_err();
    assert_eq!((d.round, d.agent.as_deref()), (1, Some("double")));
    assert!(d.what.contains("fingerprint"), "{d}");
    // The same fingerprint with another behaviour: where the effects part.
    let mut job = Job::new("doubling");
    job.union::<u64>("n").required();
    job.single::<String>("log");
    job.input("n", &3u64);
    job.agent(Agent::new("double", double_less).reads(&["n", "log"]));
    let d = job.replay(&recorded.trace).unwrap_err();
    // 3, 6, 12, 24, 48 double alike; 96 does not.
    assert_eq!((d.round, d.agent.as_deref()), (6, Some("double")));
    assert!(d.what.contains("effects"), "{d}");
}

fn a_compacted_trace_replays_from_its_snapshot() {
    let mut job = doubling();
    job.trace_limit(3);
    let r = job.run().unwrap();
    assert!(r.outcome.is_converged());
    // Rounds 1-6 folded twice; round 7 remains.
    assert_eq!(r.trace.starts_after(), 6);
    assert_eq!(r.trace.rounds.len(), 1);
    let mut job = doubling();
    job.trace_limit(3);
    let again = job.replay(&r.trace).unwrap();
    assert_eq!(again.context.hash(), r.context.hash());
    assert!(r.trace.render().contains("folded into a snapshot"));
}

fn opinion_a(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put_with("verdict", &"buy".to_owned(), Confidence::percent(60));
    Ok(out)
}

fn opinion_b(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put_with("verdict", &"hold".to_owned(), Confidence::percent(80));
    Ok(out)
}

/// Resolves by confidence (correctly).
fn by_confidence(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let KeyState::Conflict(_) = input.state("verdict") {
        let best = input.facts("verdict").iter().max_by_key(|f| f.confidence).unwrap();
        out.resolve("verdict", &best.decode::<String>().unwrap(), Rule::Confidence);
    }
    Ok(out)
}

/// Claims the weaker value by confidence: refused.
fn wrong_resolution(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let KeyState::Conflict(_) = input.state("verdict") {
        out.resolve("verdict", &"buy".to_owned(), Rule::Confidence);
    }
    Ok(out)
}

fn conflicts_stay_side_by_side_until_an_aggregator_resolves_them() {
    let base = || {
        let mut job = Job::new("verdict");
        job.single::<String>("verdict").required();
        job.agent(Agent::new("a", opinion_a));
        job.agent(Agent::new("b", opinion_b));
        job
    };
    // No aggregator: never converged, both values visible.
    let r = base().run().unwrap();
    match &r.outcome {
        Outcome::Partial {
            why: Stop::Incomplete,
            incomplete,
            ..
        } => assert_eq!(incomplete, &["verdict".to_owned()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.context.state("verdict"), KeyState::Conflict(2));
    assert_eq!(r.context.values::<String>("verdict"), ["buy", "hold"]);
    assert_eq!(r.context.get::<String>("verdict"), None);
    assert_eq!(r.context.conflicts(), ["verdict"]);
    assert!(r.trace.render().contains("CONFLICT"));
    // A wrong resolution is refused and recorded; the conflict stays.
    let mut job = base();
    job.agent(Agent::new("wrong", wrong_resolution).resolves("verdict").tier(1));
    let r = job.run().unwrap();
    assert!(matches!(
        r.outcome,
        Outcome::Partial {
            why: Stop::Incomplete,
            ..
        }
    ));
    let refused = r
        .trace
        .rounds
        .iter()
        .flat_map(|r| &r.merges)
        .find(|m| m.by == "wrong")
        .unwrap();
    assert!(
        matches!(&refused.change, Change::Refused(why) if why.contains("highest confidence")),
        "{refused:?}"
    );
    // The aggregator resolves it, by a rule the merge checks.
    let mut job = base();
    job.agent(Agent::new("judge", by_confidence).resolves("verdict").tier(1));
    let r = job.run().unwrap();
    assert!(r.outcome.is_converged(), "{:?}", r.outcome);
    assert_eq!(r.context.state("verdict"), KeyState::Resolved(2));
    assert_eq!(r.context.get::<String>("verdict").unwrap(), "hold");
    assert_eq!(r.context.values::<String>("verdict"), ["buy", "hold"]);
    let explained = r.explain("verdict");
    assert!(
        explained.contains("resolved by judge") && explained.contains("highest confidence"),
        "{explained}"
    );
}

fn a_port_agent_in_another_language_works() {
    let dir = util::temp_dir("job-port");
    let script = dir.join("agent.sh");
    // Doubles the first number of "n" once it is there; POSIX sh and sed.
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r ctx\nn=$(printf '%s' \"$ctx\" | sed -n 's/.*\"n\":{[^}]*\"values\":\\[\\([0-9]*\\).*/\\1/p')\n\
         [ -n \"$n\" ] && echo \"{\\\"put\\\":\\\"doubled\\\",\\\"value\\\":$((n * 2)),\\\"confidence\\\":0.5}\"\nexit 0\n",
    )
    .unwrap();
    make_executable(&script);
    let bad = dir.join("bad.sh");
    std::fs::write(&bad, "#!/bin/sh\necho '{\"put\":\"doubled\",\"value\":\"seven\"}'\n").unwrap();
    make_executable(&bad);
    let mut job = Job::new("port");
    job.max::<u64>("n");
    job.max::<u64>("doubled").required();
    job.input("n", &21u64);
    job.agent(Agent::program("sh", &script, &[]).reads(&["n"]));
    job.agent(Agent::program("exits", "/bin/sh", &["-c", "exit 3"]).optional());
    job.agent(Agent::program("bad", &bad, &[]).optional());
    let r = job.run().unwrap();
    assert_eq!(r.context.get::<u64>("doubled"), Some(42));
    assert_eq!(r.context.facts("doubled")[0].confidence, Confidence::percent(50));
    match &r.outcome {
        Outcome::Converged { degraded, .. } => {
            assert_eq!(
                degraded[0],
                ("exits".to_owned(), AgentFailure::Exit(ExitReason::Code(3)))
            );
            assert_eq!(degraded[1].0, "bad");
            assert!(
                matches!(&degraded[1].1, AgentFailure::BadEffect(why) if why.contains("line 1")),
                "{degraded:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn bad_put(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put("found", &"before".to_owned());
    out.put("nowhere", &1u8);
    Ok(out)
}

fn bad_type(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.put("count", &"not a number".to_owned());
    Ok(out)
}

fn sneaky_resolve(_: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    out.resolve("count", &1u64, Rule::Constraint("mine".into()));
    Ok(out)
}

fn bad_effects_are_refused_and_lose_nothing_else() {
    let mut job = Job::new("bad");
    job.union::<String>("found");
    job.single::<u64>("count");
    job.agent(Agent::new("bad_put", bad_put).optional());
    job.agent(Agent::new("bad_type", bad_type).optional());
    job.agent(Agent::new("sneaky", sneaky_resolve).optional());
    job.agent(Agent::new("found", found));
    let r = job.run().unwrap();
    match &r.outcome {
        Outcome::Converged { degraded, .. } => {
            let why: BTreeMap<_, _> = degraded.iter().cloned().collect();
            assert!(matches!(&why["bad_put"], AgentFailure::BadEffect(w) if w.contains("undeclared key nowhere")));
            assert!(matches!(&why["bad_type"], AgentFailure::BadEffect(w) if w.contains("count")));
            assert!(matches!(&why["sneaky"], AgentFailure::BadEffect(w) if w.contains("may not resolve")));
        }
        other => panic!("{other:?}"),
    }
    // All or nothing per agent: "before" was not merged; the others were.
    assert_eq!(r.context.values::<String>("found"), ["found"]);
}

fn sum(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    let total: u64 = input.values::<u64>("parts").iter().sum();
    out.put("total", &total);
    Ok(out)
}

fn facts_injected_into_a_running_job() {
    let job = || {
        let mut job = Job::new("inject");
        job.union::<u64>("parts");
        job.max::<u64>("total");
        job.input("parts", &1u64);
        job.agent(Agent::new("sum", sum).reads(&["parts"]));
        job
    };
    let mut run = job().start().unwrap();
    assert!(run.step().is_none());
    assert_eq!(run.context().get::<u64>("total"), Some(1));
    run.inject("parts", &10u64).unwrap();
    assert!(run.inject("nowhere", &1u64).is_err());
    assert!(run.inject("parts", &"text").is_err());
    let r = run.run();
    assert!(r.outcome.is_converged());
    assert_eq!(r.context.get::<u64>("total"), Some(11));
    let injected = r.trace.rounds[1].merges.iter().find(|m| m.by == "inject").unwrap();
    assert_eq!(injected.change, Change::Added);

    // Through the driving process's mailbox.
    let outcome = converge::spawn_join(move |ctx: converge::Ctx<converge::job::Inject>| {
        let mut run = job().start().unwrap();
        run.step();
        ctx.mailbox().send(converge::job::Inject::new("parts", &5u64)).unwrap();
        ctx.mailbox().send(converge::job::Inject::new("parts", &"bad")).unwrap();
        assert!(util::wait_until(PATIENCE, || ctx.len() == 2));
        run.inbox(ctx.view());
        let r = run.run();
        (r.context.get::<u64>("total"), r.trace.rounds[1].merges.len())
    })
    .unwrap()
    .join()
    .unwrap();
    // 1 + 5; the bad one refused (recorded), then sum's merge.
    assert_eq!(outcome, (Some(6), 3));
}

fn rounds_stream_to_a_mailbox_and_facts_explain_themselves() {
    let ctx = util::node().ctx::<RoundRecord>();
    let mut job = doubling();
    job.events(ctx.mailbox());
    let r = job.run().unwrap();
    let mut got = Vec::new();
    while got.len() < r.trace.rounds.len() {
        got.push(ctx.recv_timeout(PATIENCE).unwrap());
    }
    assert_eq!(got, r.trace.rounds);
    // Every fact back to the input.
    let why = r.explain("n");
    assert!(why.contains("n = 192 (100.0000%, by double in round 6)"), "{why}");
    assert!(why.contains("n = 3 (100.0000%, by input in round 0)"), "{why}");
    let text = r.trace.render();
    assert!(
        text.contains("round 1 (tier 0)") && text.contains("agent double: 1 effect(s)"),
        "{text}"
    );
}

fn many_jobs_at_once_keep_their_own_outcomes() {
    let jobs: Vec<Job> = (0..40u64)
        .map(|i| {
            let mut job = Job::new("many");
            job.union::<u64>("n");
            job.input("n", &(i + 1));
            job.agent(Agent::new("double", double).reads(&["n"]));
            job
        })
        .collect();
    let results = run_all(jobs);
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        assert!(r.outcome.is_converged());
        let mut alone = Job::new("many");
        alone.union::<u64>("n");
        alone.input("n", &(i as u64 + 1));
        alone.agent(Agent::new("double", double).reads(&["n"]));
        assert_eq!(alone.run().unwrap().trace.to_bytes(), r.trace.to_bytes(), "job {i}");
    }
}

fn invalid_jobs_are_refused_before_running() {
    let cases: Vec<(Job, &str)> = vec![
        {
            let mut j = Job::new("x");
            j.agent(Agent::new("a", found).reads(&["nowhere"]));
            (j, "undeclared key nowhere")
        },
        {
            let mut j = Job::new("x");
            j.union::<String>("found");
            j.agent(Agent::new("a", found));
            j.agent(Agent::new("a", found));
            (j, "taken")
        },
        {
            let mut j = Job::new("x");
            j.single::<u64>("k");
            j.agent(Agent::new("judge", by_confidence).resolves("k"));
            (j, "above tier 0")
        },
        {
            let mut j = Job::new("x");
            j.single::<u64>("k");
            j.single::<u64>("k");
            (j, "declared twice")
        },
        {
            let mut j = Job::new("x");
            j.single::<u64>("k");
            j.input("k", &"text");
            (j, "key k holds u64")
        },
    ];
    for (job, want) in cases {
        match job.run() {
            Err(JobError::Invalid(why)) => assert!(why.contains(want), "{why} lacks {want}"),
            other => panic!("{want}: {:?}", other.map(|r| r.outcome)),
        }
    }
}

// ----- determinism -----

fn delayed(input: Input) -> Result<Effects, String> {
    let delays = std::fs::read_to_string(std::env::var(DELAYS).unwrap()).unwrap_or_default();
    let me: usize = input.agent[1..].parse().unwrap();
    let ms: u64 = delays.split(',').nth(me).and_then(|d| d.parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    let mut out = Effects::new();
    let level = input.get::<u64>("level").unwrap_or(0);
    if level < 3 {
        out.put("level", &(level + 1));
        out.put_with(
            "seen",
            &format!("{} at {level}", input.agent),
            Confidence::from_ppm(me as u32),
        );
    }
    out.put("last", &input.agent);
    Ok(out)
}

fn delayed_job() -> Job {
    let mut job = Job::new("delays");
    job.max::<u64>("level");
    job.union::<String>("seen");
    job.single::<String>("last");
    for i in 0..4 {
        job.agent(Agent::new(&format!("a{i}"), delayed).reads(&["level"]).optional());
    }
    job
}

fn timing_changes_neither_the_outcome_nor_the_trace() {
    let path = PathBuf::from(std::env::var(DELAYS).unwrap());
    std::fs::write(&path, "0,0,0,0").unwrap();
    let baseline = delayed_job().run().unwrap();
    // Four agents put different "last" values in one round: a conflict.
    assert!(matches!(baseline.context.state("last"), KeyState::Conflict(4)));
    let bytes = baseline.trace.to_bytes();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 6,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(0u64..40, 4), |delays| {
            let text: Vec<String> = delays.iter().map(u64::to_string).collect();
            std::fs::write(&path, text.join(",")).unwrap();
            let r = delayed_job().run().unwrap();
            prop_assert_eq!(&r.outcome, &baseline.outcome);
            prop_assert_eq!(r.trace.to_bytes(), bytes.clone());
            let all_ran = r.trace.rounds.iter().all(|round| {
                round
                    .agents
                    .iter()
                    .all(|a| matches!(a.result, AgentResult::Effects { .. }))
            });
            prop_assert!(all_ran);
            Ok(())
        })
        .unwrap();
    std::fs::remove_file(path).unwrap();
}

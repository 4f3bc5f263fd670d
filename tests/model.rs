//! A model-based property test of links, monitors and exit signals: random
//! sequences of operations on a few processes, checked against a small
//! reference model of the semantics (OTP's rules, as `docs/semantics.md` states
//! them): who dies, with which reason, and which `Down` and `Exit` messages
//! each process receives.

mod util;

use std::collections::{BTreeMap, BTreeSet};

use converge::{Ctx, Event, ExitReason, Mailbox, MonitorRef, Pid};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use util::{PATIENCE, node};

const AGENTS: usize = 4;

fn main() {
    util::run(
        &[(
            "links_and_monitors_follow_the_model",
            links_and_monitors_follow_the_model,
        )],
        &[],
    )
}

#[derive(Debug, Clone, Copy)]
enum Reason {
    Normal,
    Error,
    Exit,
    Killed,
}

impl Reason {
    fn exit_reason(self) -> ExitReason {
        match self {
            Reason::Normal => ExitReason::Normal,
            Reason::Error => ExitReason::Error("e".into()),
            Reason::Exit => ExitReason::Exit("x".into()),
            Reason::Killed => ExitReason::Killed,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Link(usize, usize),
    Unlink(usize, usize),
    Monitor(usize, usize),
    Trap(usize, bool),
    /// The process ends itself with a reason.
    End(usize, Reason),
    /// The test kills it (untrappable).
    Kill(usize),
    /// The test sends it an exit signal.
    Signal(usize, Reason),
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..AGENTS;
    let reason = prop_oneof![
        Just(Reason::Normal),
        Just(Reason::Error),
        Just(Reason::Exit),
        Just(Reason::Killed)
    ];
    prop_oneof![
        3 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Link(x, y)),
        1 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Unlink(x, y)),
        3 => (a.clone(), a.clone()).prop_map(|(x, y)| Op::Monitor(x, y)),
        2 => (a.clone(), any::<bool>()).prop_map(|(x, t)| Op::Trap(x, t)),
        2 => (a.clone(), reason.clone()).prop_map(|(x, r)| Op::End(x, r)),
        1 => a.clone().prop_map(Op::Kill),
        2 => (a, reason).prop_map(|(x, r)| Op::Signal(x, r)),
    ]
}

/// Commands to an agent process.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    Link(Pid),
    Unlink(Pid),
    Monitor(Pid),
    Trap(bool),
    End(ExitReason),
    /// Report everything received so far, then answer.
    Sync,
}

/// What agents tell the test.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Report {
    Ack(usize),
    Linked(usize, bool),
    Monitoring(usize, MonitorRef),
    /// (receiver, reference, about, reason)
    Down(usize, MonitorRef, Pid, String),
    /// (receiver, from, reason)
    Exit(usize, Pid, String),
}

fn agent(me: usize, report: Mailbox<Report>) -> impl FnOnce(Ctx<Cmd>) -> ExitReason {
    move |ctx: Ctx<Cmd>| {
        let handle = |ev: Event<Cmd>| -> Option<ExitReason> {
            match ev {
                Event::Message(Cmd::Link(p)) => report.send(Report::Linked(me, ctx.link(p).is_ok())).unwrap(),
                Event::Message(Cmd::Unlink(p)) => {
                    ctx.unlink(p);
                    report.send(Report::Ack(me)).unwrap();
                }
                Event::Message(Cmd::Monitor(p)) => {
                    let r = ctx.monitor(p);
                    // A round trip to the node on the same control connection:
                    // a NoProc Down for this monitor is on its way before the
                    // answer.
                    let _ = converge::process_info(ctx.pid());
                    report.send(Report::Monitoring(me, r)).unwrap()
                }
                Event::Message(Cmd::Trap(on)) => {
                    ctx.trap_exits(on);
                    report.send(Report::Ack(me)).unwrap();
                }
                Event::Message(Cmd::End(r)) => return Some(r),
                Event::Message(Cmd::Sync) => {
                    // Everything sent to us before the test's Sync is in our
                    // sockets by now: drain it.
                    while let Ok(ev) = ctx.try_recv_event() {
                        report_signal(me, &report, ev);
                    }
                    report.send(Report::Ack(me)).unwrap();
                }
                other => report_signal(me, &report, other),
            }
            None
        };
        loop {
            match ctx.recv_event() {
                Ok(ev) => {
                    if let Some(r) = handle(ev) {
                        return r;
                    }
                }
                Err(_) => return ExitReason::Normal,
            }
        }
    }
}

fn report_signal(me: usize, report: &Mailbox<Report>, ev: Event<Cmd>) {
    match ev {
        Event::Down(d) => report
            .send(Report::Down(me, d.reference, d.pid, d.reason.to_string()))
            .unwrap(),
        Event::Exit(e) => report.send(Report::Exit(me, e.from, e.reason.to_string())).unwrap(),
        other => panic!("agent {me} got {other:?}"),
    }
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    alive: [bool; AGENTS],
    trap: [bool; AGENTS],
    links: BTreeSet<(usize, usize)>,
    /// (watcher, target, reference)
    monitors: Vec<(usize, usize, MonitorRef)>,
    reasons: [Option<ExitReason>; AGENTS],
    /// Expected signal messages per receiver.
    expected: BTreeMap<usize, Vec<Report>>,
}

impl Model {
    fn linked(&self, x: usize) -> Vec<usize> {
        self.links
            .iter()
            .filter_map(|&(a, b)| {
                if a == x {
                    Some(b)
                } else if b == x {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    fn die(&mut self, x: usize, reason: ExitReason, pids: &[Pid]) {
        if !self.alive[x] {
            return;
        }
        self.alive[x] = false;
        self.reasons[x] = Some(reason.clone());
        let watchers: Vec<_> = self.monitors.iter().filter(|m| m.1 == x).cloned().collect();
        self.monitors.retain(|m| m.0 != x && m.1 != x);
        for (w, _, r) in watchers {
            if self.alive[w] {
                self.expected
                    .entry(w)
                    .or_default()
                    .push(Report::Down(w, r, pids[x], reason.to_string()));
            }
        }
        let linked = self.linked(x);
        self.links.retain(|&(a, b)| a != x && b != x);
        for l in linked {
            if !self.alive[l] {
                continue;
            }
            if self.trap[l] {
                self.expected
                    .entry(l)
                    .or_default()
                    .push(Report::Exit(l, pids[x], reason.to_string()));
            } else if !reason.is_normal() {
                self.die(l, reason.clone(), pids);
            }
        }
    }
}

#[allow(clippy::needless_range_loop)] // Agents index several parallel arrays.
fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let me = node().ctx::<Report>();
    let mut mbs = Vec::new();
    let mut downs = Vec::new();
    for i in 0..AGENTS {
        let (mb, r) = converge::spawn_monitor(agent(i, me.mailbox())).unwrap();
        mbs.push(mb);
        downs.push(r);
    }
    let pids: Vec<Pid> = mbs.iter().map(|m| m.pid()).collect();
    let mut model = Model {
        alive: [true; AGENTS],
        ..Model::default()
    };
    // Signals received, per receiver, in the current operation and in total.
    let mut got: BTreeMap<usize, Vec<Report>> = BTreeMap::new();
    let mut got_total: BTreeMap<usize, Vec<Report>> = BTreeMap::new();
    let mut expected_total: BTreeMap<usize, Vec<Report>> = BTreeMap::new();
    let mut reasons: [Option<ExitReason>; AGENTS] = Default::default();
    // Takes reports until `want` matches one; signal reports are kept.
    let wait = |got: &mut BTreeMap<usize, Vec<Report>>, want: &dyn Fn(&Report) -> bool, ops: &[Op]| -> Report {
        loop {
            let r = me
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("no answer ({e}) after {ops:?}"));
            match &r {
                Report::Down(w, ..) | Report::Exit(w, ..) => got.entry(*w).or_default().push(r.clone()),
                _ if want(&r) => return r,
                other => panic!("unexpected report {other:?}"),
            }
        }
    };
    for op in ops {
        let alive_before = model.alive;
        match *op {
            Op::Link(x, y) if model.alive[x] => {
                mbs[x].send(Cmd::Link(pids[y])).unwrap();
                let r = wait(&mut got, &|r| matches!(r, Report::Linked(a, _) if *a == x), ops);
                let ok = matches!(r, Report::Linked(_, true));
                prop_assert_eq!(ok, model.alive[y], "link {} -> {}", x, y);
                if ok && x != y {
                    model.links.insert((x.min(y), x.max(y)));
                }
            }
            Op::Unlink(x, y) if model.alive[x] => {
                mbs[x].send(Cmd::Unlink(pids[y])).unwrap();
                wait(&mut got, &|r| *r == Report::Ack(x), ops);
                model.links.remove(&(x.min(y), x.max(y)));
            }
            Op::Monitor(x, y) if model.alive[x] => {
                mbs[x].send(Cmd::Monitor(pids[y])).unwrap();
                let r = wait(&mut got, &|r| matches!(r, Report::Monitoring(a, _) if *a == x), ops);
                let Report::Monitoring(_, reference) = r else {
                    unreachable!()
                };
                if model.alive[y] {
                    model.monitors.push((x, y, reference));
                } else {
                    model.expected.entry(x).or_default().push(Report::Down(
                        x,
                        reference,
                        pids[y],
                        ExitReason::NoProc.to_string(),
                    ));
                }
            }
            Op::Trap(x, on) if model.alive[x] => {
                mbs[x].send(Cmd::Trap(on)).unwrap();
                wait(&mut got, &|r| *r == Report::Ack(x), ops);
                model.trap[x] = on;
            }
            Op::End(x, reason) if model.alive[x] => {
                mbs[x].send(Cmd::End(reason.exit_reason())).unwrap();
                model.die(x, reason.exit_reason(), &pids);
            }
            Op::Kill(x) => {
                mbs[x].kill();
                model.die(x, ExitReason::Killed, &pids);
            }
            Op::Signal(x, reason) => {
                let r = reason.exit_reason();
                mbs[x].exit(r.clone());
                if model.alive[x] {
                    if model.trap[x] {
                        model
                            .expected
                            .entry(x)
                            .or_default()
                            .push(Report::Exit(x, node().pid(), r.to_string()));
                    } else if !r.is_normal() {
                        model.die(x, r, &pids);
                    }
                }
            }
            _ => continue,
        }
        // Settle: every process the model says is dead is reported dead,
        // and no other...
        for i in 0..AGENTS {
            if !model.alive[i] && reasons[i].is_none() {
                let down = node().ctx::<()>().recv_down_timeout(downs[i], PATIENCE);
                reasons[i] = Some(
                    down.unwrap_or_else(|e| panic!("no Down for agent {i} ({e}) after {ops:?}"))
                        .reason,
                );
            }
        }
        // ...the node has sent everything that follows from it (its process
        // table answers only between two events)...
        let _ = converge::process_info(node().pid());
        // ...and every live agent has read and reported what it was sent.
        for i in 0..AGENTS {
            if model.alive[i] {
                let early = node()
                    .ctx::<()>()
                    .recv_down_timeout(downs[i], std::time::Duration::ZERO);
                prop_assert!(early.is_err(), "agent {} died ({:?}) after {:?}", i, early, ops);
                mbs[i].send(Cmd::Sync).unwrap();
                wait(&mut got, &|r| *r == Report::Ack(i), ops);
            }
        }
        // A signal sent to a process that died in the same operation may or
        // may not have been read before it died: it is not observable.
        for i in 0..AGENTS {
            let g = got.remove(&i).unwrap_or_default();
            let e = model.expected.remove(&i).unwrap_or_default();
            if alive_before[i] && !model.alive[i] {
                continue;
            }
            got_total.entry(i).or_default().extend(g);
            expected_total.entry(i).or_default().extend(e);
        }
    }
    for i in 0..AGENTS {
        prop_assert_eq!(
            &reasons[i],
            &model.reasons[i],
            "exit reason of agent {} after {:?}",
            i,
            ops
        );
        let mut g = got_total.remove(&i).unwrap_or_default();
        let mut e = expected_total.remove(&i).unwrap_or_default();
        g.sort();
        e.sort();
        prop_assert_eq!(g, e, "signals received by agent {} after {:?}", i, ops);
    }
    // Nothing more: no second Down, no stray exit message.
    for i in 0..AGENTS {
        if model.alive[i] {
            mbs[i].kill();
            node().ctx::<()>().recv_down_timeout(downs[i], PATIENCE).unwrap();
        }
    }
    let gone = util::wait_until(PATIENCE, || pids.iter().all(|&p| converge::process_info(p).is_none()));
    prop_assert!(
        gone,
        "agents alive after the case: {:?} (model {:?}, ops {:?})",
        pids.iter()
            .filter(|&&p| converge::process_info(p).is_some())
            .collect::<Vec<_>>(),
        model.alive,
        ops
    );
    while let Ok(ev) = me.try_recv_event() {
        // Late reports of agents that died last are fine; a Down is not: each
        // monitor had exactly one, already taken.
        prop_assert!(matches!(ev, Event::Message(_)), "stray {:?}", ev);
    }
    Ok(())
}

fn links_and_monitors_follow_the_model() {
    let cases = std::env::var("CONVERGE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..14), |ops| run_case(&ops))
        .unwrap();
}

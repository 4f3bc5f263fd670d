//! Lightweight actors: started from the node, processes and actors; ended
//! by return, panic, kill and exit signals; linked, monitored, named and
//! supervised like processes; stepped fairly; watched by the step
//! watchdog; and ended with their scheduler's reason when it dies.

mod util;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use converge::pool::{self, Actor, ActorBuilder, ActorCtx};
use converge::supervisor::{ChildSpec, Strategy, Supervisor};
use converge::{Config, Ctx, Event, ExitReason, Mailbox, Pid, ReplyTo};
use serde::{Deserialize, Serialize};
use util::{HelperProcess, PATIENCE, helper, node, say, wait_until};

fn main() {
    util::run_with(
        Config::new()
            .schedulers(2)
            .scheduler_class("solo", 1)
            .actor_step_limit(Some(Duration::from_millis(100))),
        &[
            ("an_actor_answers_calls", an_actor_answers_calls),
            (
                "messages_sent_before_it_starts_wait",
                messages_sent_before_it_starts_wait,
            ),
            (
                "a_panic_ends_the_actor_not_its_scheduler",
                a_panic_ends_the_actor_not_its_scheduler,
            ),
            ("stop_kill_and_exit_signals", stop_kill_and_exit_signals),
            ("links_between_actors_and_processes", links_between_actors_and_processes),
            ("an_actor_monitors_a_process", an_actor_monitors_a_process),
            (
                "messages_between_actors_of_one_scheduler_use_no_socket",
                messages_between_actors_of_one_scheduler_use_no_socket,
            ),
            (
                "killing_a_scheduler_ends_its_actors_with_the_reason",
                killing_a_scheduler_ends_its_actors_with_the_reason,
            ),
            (
                "a_busy_actor_does_not_starve_another",
                a_busy_actor_does_not_starve_another,
            ),
            ("actors_start_actors", actors_start_actors),
            ("an_actor_waits_for_a_task", an_actor_waits_for_a_task),
            ("a_supervisor_restarts_an_actor", a_supervisor_restarts_an_actor),
            ("the_watchdog_reports_a_long_step", the_watchdog_reports_a_long_step),
            ("the_watchdog_can_kill_a_long_step", the_watchdog_can_kill_a_long_step),
        ],
        &[("watchdog_kills", helper_watchdog_kills)],
    )
}

/// What the probe tells the test.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Report {
    /// An event other than a message, as text.
    Event(String),
}

/// What the probe is told to do.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    Add(u64),
    Get(ReplyTo<u64>),
    Panic(String),
    Stop(ExitReason),
    Monitor(Pid),
    Trap(bool),
    Sleep(u64),
    /// A step that ends once the file `path` exists (10 s at most).
    WaitFor(String),
    /// Its pid and its scheduler's OS pid.
    WhoAmI(ReplyTo<(Pid, u32)>),
    SpawnChild(ReplyTo<Pid>),
    /// Send `Add(1)` to this actor, `n` times.
    AddTo(Mailbox<Cmd>, u64),
    /// A step that logs `tag` in its scheduler's step log.
    Log(String),
    /// The step log of its scheduler.
    ReadLog(ReplyTo<Vec<String>>),
    /// Square this on the pool's class, waiting for the value in the step.
    Square(String, u64, ReplyTo<Result<u64, String>>),
}

fn square(x: u64) -> u64 {
    x * x
}

/// The steps of the actors of one scheduler, in order (actors of one
/// scheduler share its memory).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Probe {
    n: u64,
    report: Mailbox<Report>,
}

impl Actor for Probe {
    type Msg = Cmd;
    type Args = Mailbox<Report>;

    fn start(report: Mailbox<Report>, _: &mut ActorCtx<'_, Cmd>) -> Probe {
        Probe { n: 0, report }
    }

    fn handle(&mut self, event: Event<Cmd>, ctx: &mut ActorCtx<'_, Cmd>) {
        let cmd = match event {
            Event::Message(cmd) => cmd,
            Event::Down(d) => {
                let text = format!("down {} {}", d.pid, d.reason);
                self.report.send(Report::Event(text)).unwrap();
                return;
            }
            Event::Exit(e) => {
                let text = format!("exit {} {}", e.from, e.reason);
                self.report.send(Report::Event(text)).unwrap();
                return;
            }
            other => panic!("unexpected {other:?}"),
        };
        match cmd {
            Cmd::Add(k) => self.n += k,
            Cmd::Get(r) => {
                let _ = r.reply(self.n);
            }
            Cmd::Panic(m) => panic!("{m}"),
            Cmd::Stop(reason) => ctx.stop(reason),
            Cmd::Monitor(p) => {
                ctx.monitor(p);
            }
            Cmd::Trap(on) => ctx.trap_exits(on),
            Cmd::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Cmd::WaitFor(path) => {
                let deadline = std::time::Instant::now() + PATIENCE;
                while !std::path::Path::new(&path).exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Cmd::WhoAmI(r) => {
                let _ = r.reply((ctx.pid(), std::process::id()));
            }
            Cmd::SpawnChild(r) => {
                let child = pool::spawn_actor::<Probe>(self.report).unwrap();
                let _ = r.reply(child.pid());
            }
            Cmd::AddTo(to, n) => {
                for _ in 0..n {
                    to.send(Cmd::Add(1)).unwrap();
                }
            }
            Cmd::Log(tag) => LOG.lock().unwrap().push(tag),
            Cmd::ReadLog(r) => {
                let _ = r.reply(LOG.lock().unwrap().clone());
            }
            Cmd::Square(class, x, r) => {
                let value = pool::submit_to(&class, square, x).and_then(|t| t.join());
                let _ = r.reply(value.map_err(|e| e.to_string()));
            }
        }
    }
}

fn report_box() -> Ctx<Report> {
    node().ctx::<Report>()
}

fn probe(class: &str) -> Mailbox<Cmd> {
    ActorBuilder::new()
        .class(class)
        .spawn::<Probe>(report_box().mailbox())
        .unwrap()
}

#[track_caller]
fn get(a: Mailbox<Cmd>) -> u64 {
    a.call(Cmd::Get, PATIENCE).unwrap()
}

/// Ends `actors` and waits for each to be gone.
fn end_all(actors: &[Mailbox<Cmd>]) {
    for a in actors {
        let r = node().ctx::<()>().monitor(a.pid());
        a.kill();
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    }
}

/// The next report, within the patience.
fn next_report() -> String {
    match report_box().recv_timeout(PATIENCE).unwrap() {
        Report::Event(t) => t,
    }
}

fn open_fds(ospid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{ospid}/fd")).unwrap().count()
}

fn an_actor_answers_calls() {
    let a = ActorBuilder::new()
        .name("counter")
        .register("the-counter")
        .spawn::<Probe>(report_box().mailbox())
        .unwrap();
    a.send(Cmd::Add(40)).unwrap();
    a.send(Cmd::Add(2)).unwrap();
    assert_eq!(get(a), 42);
    // A process like any other: named, listed, with its parent.
    assert_eq!(converge::whereis("the-counter"), Some(a.pid()));
    // A second one under the same name never runs.
    let (_, r) = ActorBuilder::new()
        .register("the-counter")
        .spawn_monitor::<Probe>(report_box().mailbox())
        .unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Error("the name the-counter is registered already".into())
    );
    assert!(node().processes().contains(&a.pid()));
    let info = converge::process_info(a.pid()).unwrap();
    assert_eq!(info.name.as_deref(), Some("counter"));
    assert_eq!(info.parent, converge::self_pid());
    // Its pid is its own, not its scheduler's.
    let (pid, ospid) = a.call(Cmd::WhoAmI, PATIENCE).unwrap();
    assert_eq!(pid, a.pid());
    assert!(pool::schedulers().iter().all(|(_, s)| *s != pid));
    assert_ne!(ospid, std::process::id());
    end_all(&[a]);
    assert_eq!(converge::whereis("the-counter"), None);
}

fn messages_sent_before_it_starts_wait() {
    let a = probe(pool::DEFAULT_CLASS);
    for _ in 0..500 {
        a.send(Cmd::Add(1)).unwrap();
    }
    assert_eq!(get(a), 500);
    end_all(&[a]);
}

fn a_panic_ends_the_actor_not_its_scheduler() {
    let before: HashSet<Pid> = pool::schedulers().into_iter().map(|s| s.1).collect();
    let a = probe("solo");
    let b = probe("solo");
    b.send(Cmd::Add(7)).unwrap();
    let r = node().ctx::<()>().monitor(a.pid());
    a.send(Cmd::Panic("bad input".into())).unwrap();
    let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::Panic("bad input".into()));
    // Its neighbour on the same scheduler lives on; so does the scheduler.
    assert_eq!(get(b), 7);
    let after: HashSet<Pid> = pool::schedulers().into_iter().map(|s| s.1).collect();
    assert_eq!(before, after);
    end_all(&[b]);
}

fn stop_kill_and_exit_signals() {
    let me = converge::self_pid().unwrap();
    // Stopping itself.
    let a = probe(pool::DEFAULT_CLASS);
    let r = node().ctx::<()>().monitor(a.pid());
    a.send(Cmd::Stop(ExitReason::Exit("done".into()))).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Exit("done".into())
    );
    // Killed.
    let a = probe(pool::DEFAULT_CLASS);
    let r = node().ctx::<()>().monitor(a.pid());
    a.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
    // A normal exit signal does nothing to an actor that does not trap; any
    // other ends it with that reason.
    let a = probe(pool::DEFAULT_CLASS);
    let r = node().ctx::<()>().monitor(a.pid());
    a.exit(ExitReason::Normal);
    assert_eq!(get(a), 0);
    a.exit(ExitReason::Exit("told to".into()));
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Exit("told to".into())
    );
    // A trapping actor gets the signal as an event, except a kill.
    let a = probe(pool::DEFAULT_CLASS);
    let r = node().ctx::<()>().monitor(a.pid());
    a.send(Cmd::Trap(true)).unwrap();
    assert_eq!(get(a), 0);
    a.exit(ExitReason::Exit("told to".into()));
    assert_eq!(next_report(), format!("exit {me} exit: told to"));
    assert_eq!(get(a), 0);
    a.kill();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Killed
    );
}

fn links_between_actors_and_processes() {
    // An actor started linked by a process that fails goes with it.
    let back = node().ctx::<Pid>();
    let out = back.mailbox();
    let (p, pr) = converge::spawn_monitor(move |ctx: Ctx<()>| -> Result<(), String> {
        let a = ActorBuilder::new()
            .spawn_link::<Probe>(Mailbox::from_pid(ctx.pid()))
            .unwrap();
        out.send(a.pid()).unwrap();
        let _ = ctx.recv();
        Err("the parent failed".into())
    })
    .unwrap();
    let actor = back.recv_timeout(PATIENCE).unwrap();
    let ar = node().ctx::<()>().monitor(actor);
    p.send(()).unwrap();
    let reason = ExitReason::Error("the parent failed".into());
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(pr, PATIENCE).unwrap().reason,
        reason
    );
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(ar, PATIENCE).unwrap().reason,
        reason
    );

    // A process linked to an actor that panics goes with it.
    let a = probe(pool::DEFAULT_CLASS);
    let (_, pr) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        ctx.link(a.pid()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    // Linked once the process answers through the actor.
    wait_until(PATIENCE, || {
        converge::process_info(a.pid()).is_some_and(|i| !i.links.is_empty())
    });
    a.send(Cmd::Panic("actor down".into())).unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(pr, PATIENCE).unwrap().reason,
        ExitReason::Panic("actor down".into())
    );
}

fn an_actor_monitors_a_process() {
    let a = probe(pool::DEFAULT_CLASS);
    let (p, pr) = converge::spawn_monitor(|ctx: Ctx<()>| -> Result<(), String> {
        let _ = ctx.recv();
        Err("watched".into())
    })
    .unwrap();
    a.send(Cmd::Monitor(p.pid())).unwrap();
    assert_eq!(get(a), 0);
    p.send(()).unwrap();
    node().ctx::<()>().recv_down_timeout(pr, PATIENCE).unwrap();
    assert_eq!(next_report(), format!("down {} error: watched", p.pid()));
    // A monitor of something already gone says NoProc at once.
    a.send(Cmd::Monitor(p.pid())).unwrap();
    assert_eq!(next_report(), format!("down {} no such process", p.pid()));
    end_all(&[a]);
}

fn messages_between_actors_of_one_scheduler_use_no_socket() {
    let a = probe("solo");
    let b = probe("solo");
    // Every connection this test needs exists after these calls.
    let (_, ospid) = a.call(Cmd::WhoAmI, PATIENCE).unwrap();
    let (_, same) = b.call(Cmd::WhoAmI, PATIENCE).unwrap();
    assert_eq!(ospid, same, "both on the one scheduler of the class");
    assert_eq!(get(a), 0);
    assert_eq!(get(b), 0);
    let fds = open_fds(ospid);
    a.send(Cmd::AddTo(b, 10_000)).unwrap();
    assert!(wait_until(PATIENCE, || get(b) == 10_000));
    assert_eq!(open_fds(ospid), fds, "no connection was opened between them");
    end_all(&[a, b]);
}

fn killing_a_scheduler_ends_its_actors_with_the_reason() {
    let actors: Vec<Mailbox<Cmd>> = (0..3).map(|_| probe("solo")).collect();
    let (_, ospid) = actors[0].call(Cmd::WhoAmI, PATIENCE).unwrap();
    let monitors: Vec<_> = actors.iter().map(|a| node().ctx::<()>().monitor(a.pid())).collect();
    // A trapping process linked to one of them hears of it.
    let heard = node().ctx::<String>();
    let out = heard.mailbox();
    let first = actors[0].pid();
    let (_, pr) = converge::spawn_monitor(move |ctx: Ctx<()>| {
        ctx.trap_exits(true);
        ctx.link(first).unwrap();
        out.send("linked".to_string()).unwrap();
        if let Ok(Event::Exit(e)) = ctx.recv_event_timeout(PATIENCE) {
            out.send(format!("{} {}", e.from, e.reason)).unwrap();
        }
    })
    .unwrap();
    assert_eq!(heard.recv_timeout(PATIENCE).unwrap(), "linked");
    let scheduler = pool::schedulers().into_iter().find(|s| s.0 == "solo").unwrap().1;
    // SAFETY: plain kill(2) of the scheduler, from outside.
    assert_eq!(unsafe { libc::kill(ospid as i32, libc::SIGKILL) }, 0);
    for (a, r) in actors.iter().zip(monitors) {
        let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
        assert_eq!((down.pid, down.reason), (a.pid(), ExitReason::Killed));
    }
    assert_eq!(heard.recv_timeout(PATIENCE).unwrap(), format!("{first} killed"));
    node().ctx::<()>().recv_down_timeout(pr, PATIENCE).unwrap();
    // The pool is back to full strength, with a new scheduler for the class.
    assert!(wait_until(PATIENCE, || pool::schedulers().len() == 3
        && pool::schedulers().iter().all(|s| s.1 != scheduler)));
    let a = probe("solo");
    assert_eq!(get(a), 0);
    end_all(&[a]);
}

fn a_busy_actor_does_not_starve_another() {
    let busy = probe("solo");
    let other = probe("solo");
    assert_eq!(get(busy) + get(other), 0);
    LOG.lock().unwrap().clear();
    busy.send(Cmd::Log("clear".into())).unwrap();
    // Wait until the log was cleared in the scheduler.
    assert!(wait_until(PATIENCE, || {
        busy.call(Cmd::ReadLog, PATIENCE).unwrap() == ["clear"]
    }));
    // The scheduler is held in a step of the busy actor until all is
    // sent: both actors then have events queued.
    let gate = std::env::temp_dir().join(format!("converge-actors-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    busy.send(Cmd::WaitFor(gate.display().to_string())).unwrap();
    for i in 0..2000 {
        busy.send(Cmd::Log(format!("busy {i}"))).unwrap();
    }
    other.send(Cmd::Log("other".into())).unwrap();
    converge::flush();
    std::fs::write(&gate, b"").unwrap();
    let log = loop {
        let log = other.call(Cmd::ReadLog, PATIENCE).unwrap();
        if log.iter().any(|l| l == "other") {
            break log;
        }
    };
    let _ = std::fs::remove_file(&gate);
    let at = log.iter().position(|l| l == "other").unwrap();
    assert!(at < 1000, "the other actor waited for {at} steps of the busy one");
    end_all(&[busy, other]);
}

fn actors_start_actors() {
    let a = probe(pool::DEFAULT_CLASS);
    let child = a.call(Cmd::SpawnChild, PATIENCE).unwrap();
    let child: Mailbox<Cmd> = Mailbox::from_pid(child);
    child.send(Cmd::Add(5)).unwrap();
    assert_eq!(get(child), 5);
    assert_eq!(converge::process_info(child.pid()).unwrap().parent, Some(a.pid()));
    end_all(&[a, child]);
}

fn a_supervisor_restarts_an_actor() {
    let sup = Supervisor::new(Strategy::OneForOne)
        .child(ChildSpec::actor::<Probe>(
            "probe",
            ActorBuilder::new().register("supervised-probe"),
            report_box().mailbox(),
        ))
        .spawn()
        .unwrap();
    let first = converge::whereis("supervised-probe").unwrap();
    Mailbox::<Cmd>::from_pid(first)
        .send(Cmd::Panic("crash".into()))
        .unwrap();
    assert!(wait_until(PATIENCE, || {
        converge::whereis("supervised-probe").is_some_and(|p| p != first)
    }));
    let second = converge::whereis("supervised-probe").unwrap();
    assert_eq!(get(Mailbox::from_pid(second)), 0);
    let children = sup.which_children().unwrap();
    assert_eq!(children[0].restarts, 1);
    let r = node().ctx::<()>().monitor(second);
    sup.stop().unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Shutdown
    );
}

fn the_watchdog_reports_a_long_step() {
    let a = probe(pool::DEFAULT_CLASS);
    let before = pool::actor_stats().overruns;
    a.send(Cmd::Sleep(400)).unwrap();
    // Reported, not killed: the actor answers once the step ends.
    assert_eq!(get(a), 0);
    assert_eq!(pool::actor_stats().overruns, before + 1);
    end_all(&[a]);
}

fn the_watchdog_can_kill_a_long_step() {
    let mut h = HelperProcess::start(helper("watchdog_kills"));
    assert!(h.expect("slow").starts_with("error: its step ran over the limit of"));
    assert_eq!(h.expect("neighbour"), "killed");
    assert_eq!(h.expect("overruns"), "1");
    assert_eq!(h.expect("replaced"), "true");
    assert!(h.wait(PATIENCE).unwrap().success());
}

fn helper_watchdog_kills() {
    let node = Config::new()
        .schedulers(1)
        .actor_step_limit(Some(Duration::from_millis(50)))
        .kill_overrunning_actors(true)
        .init()
        .unwrap();
    let report = node.ctx::<Report>().mailbox();
    let (slow, sr) = ActorBuilder::new().spawn_monitor::<Probe>(report).unwrap();
    let (neighbour, nr) = ActorBuilder::new().spawn_monitor::<Probe>(report).unwrap();
    assert_eq!(neighbour.call(Cmd::Get, PATIENCE).unwrap(), 0);
    let scheduler = pool::schedulers()[0].1;
    slow.send(Cmd::Sleep(5_000)).unwrap();
    say("slow", node.ctx::<()>().recv_down_timeout(sr, PATIENCE).unwrap().reason);
    say(
        "neighbour",
        node.ctx::<()>().recv_down_timeout(nr, PATIENCE).unwrap().reason,
    );
    say("overruns", pool::actor_stats().overruns);
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline && pool::schedulers().first().is_none_or(|s| s.1 == scheduler) {
        std::thread::sleep(Duration::from_millis(5));
    }
    say("replaced", pool::schedulers().first().is_some_and(|s| s.1 != scheduler));
    node.shutdown(PATIENCE);
}

fn an_actor_waits_for_a_task() {
    let a = probe("solo");
    // Another class's scheduler runs it.
    let got = a
        .call(|r| Cmd::Square(pool::DEFAULT_CLASS.into(), 9, r), PATIENCE)
        .unwrap();
    assert_eq!(got, Ok(81));
    // Its own scheduler, the only one of its class, waits for it: refused,
    // not a deadlock.
    let got = a.call(|r| Cmd::Square("solo".into(), 9, r), PATIENCE).unwrap();
    assert!(got.unwrap_err().contains("only its own scheduler"));
    end_all(&[a]);
}

//! The table's rules, with no socket and no process: a mock [`System`]
//! records the effects, and the tests feed events by hand.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::reason::MemoryEnd;
use super::{MAIN_SERIAL, System, Table, ZYGOTE_SERIAL};
use crate::exit::ExitReason;
use crate::pid::{NodeId, Pid};
use crate::runtime::PoolSettings;
use crate::sys::process::{SIGKILL, SIGSEGV, SIGTERM, WaitStatus};
use crate::sys::shared::map_shared_area;
use crate::wire::envelope::{NodeReply, PortInfo, Registration, ToNode, ToProcess};

/// What the table asked for.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Send(u64, Box<ToProcess>),
    Close(u64),
    Signal(u64, Option<i32>, i32),
    KillCgroup(String),
    Watch(u64),
    Unwatch(u64),
    Forget(u64),
    Reap(u64),
}

/// A system that records effects and answers from what the test set.
#[derive(Debug, Default)]
struct Mock {
    effects: Vec<Effect>,
    /// Pidfds held.
    pidfds: HashSet<u64>,
    /// Pidfds that say their process ended.
    ended: HashSet<u64>,
    /// Statuses a wait would give (the node's own children).
    statuses: HashMap<u64, WaitStatus>,
    /// Statuses a pidfd gives once another process reaped its process.
    reaped_elsewhere: HashMap<u64, WaitStatus>,
    /// Statuses read from zombies another process has not reaped yet.
    zombies: HashMap<u64, WaitStatus>,
    /// Descriptors received and not claimed, per connection.
    fds: HashMap<u64, usize>,
    /// OS parents.
    parents: HashMap<i32, i32>,
    /// Watching a pidfd fails.
    watch_fails: bool,
    /// Strays watched: (OS pid, group).
    strays: Vec<(i32, i32)>,
}

impl System for Mock {
    fn strays(&self) -> Vec<(i32, i32)> {
        self.strays.clone()
    }
    fn send(&mut self, conn: u64, msg: &ToProcess) {
        self.effects.push(Effect::Send(conn, Box::new(msg.clone())));
    }
    fn close(&mut self, conn: u64) {
        self.effects.push(Effect::Close(conn));
    }
    fn ended(&self, serial: u64) -> bool {
        self.ended.contains(&serial)
    }
    fn signal(&mut self, serial: u64, group: Option<i32>, signal: i32) -> io::Result<()> {
        self.effects.push(Effect::Signal(serial, group, signal));
        Ok(())
    }
    fn kill_cgroup(&mut self, cgroup: &str) {
        self.effects.push(Effect::KillCgroup(cgroup.into()));
    }
    fn watch(&mut self, serial: u64) -> bool {
        if self.watch_fails {
            return false;
        }
        self.effects.push(Effect::Watch(serial));
        true
    }
    fn unwatch(&mut self, serial: u64) {
        self.effects.push(Effect::Unwatch(serial));
    }
    fn rename(&mut self, from: u64, to: u64) {
        if self.pidfds.remove(&from) {
            self.pidfds.insert(to);
        }
    }
    fn forget(&mut self, serial: u64) {
        self.pidfds.remove(&serial);
        self.effects.push(Effect::Forget(serial));
    }
    fn claim_fd(&mut self, conn: u64, serial: u64) -> bool {
        match self.fds.get_mut(&conn) {
            Some(n) if *n > 0 => {
                *n -= 1;
                self.pidfds.insert(serial);
                true
            }
            _ => false,
        }
    }
    fn drop_fd(&mut self, conn: u64) {
        if let Some(n) = self.fds.get_mut(&conn) {
            *n = n.saturating_sub(1);
        }
    }
    fn wait_status(&mut self, serial: u64) -> Option<(WaitStatus, bool)> {
        match self.statuses.get(&serial) {
            Some(&s) => Some((s, true)),
            None => self.reaped_elsewhere.get(&serial).map(|&s| (s, false)),
        }
    }
    fn zombie_status(&mut self, serial: u64, _ospid: i32) -> Option<WaitStatus> {
        self.zombies.get(&serial).copied()
    }
    fn reap_quietly(&mut self, serial: u64) {
        self.effects.push(Effect::Reap(serial));
    }
    fn memory_end(&mut self, _serial: u64, sigkilled: bool) -> MemoryEnd {
        if sigkilled {
            MemoryEnd::OomKilled
        } else {
            MemoryEnd::Nothing
        }
    }
    fn release_leftovers(&mut self) {}
    fn parent_of(&self, ospid: i32) -> Option<i32> {
        self.parents.get(&ospid).copied()
    }
    fn rss(&self, _ospid: i32) -> Option<u64> {
        None
    }
}

/// The main thread's connection.
const MAIN_CONN: u64 = 1000;

fn node() -> NodeId {
    NodeId::from_bytes([7; 16])
}

fn pid(serial: u64) -> Pid {
    Pid::new(node(), serial)
}

/// A table with the node's main thread in it, serials up to 99 handed out.
fn table() -> Table<Mock> {
    let shared = map_shared_area().expect("an anonymous mapping");
    shared.next_serial.store(100, Ordering::Release);
    let mut t = Table::new(Mock::default(), node(), shared, PoolSettings::default());
    t.add_internal(MAIN_SERIAL, MAIN_CONN, 1, false, "node");
    t
}

fn reg(serial: u64, parent: u64) -> Registration {
    Registration::plain(serial, parent)
}

/// The connection of process `serial` in these tests.
fn conn(serial: u64) -> u64 {
    2000 + serial
}

/// Starts process `serial` as a process would: its registration and then
/// its pidfd on a new connection.
fn start(t: &mut Table<Mock>, r: Registration) {
    let (serial, c) = (r.serial, conn(r.serial));
    t.conn_opened(c, None);
    t.frame(c, ToNode::Register(r));
    *t.sys.fds.entry(c).or_default() += 1;
    t.frame(
        c,
        ToNode::Pidfd {
            serial,
            ospid: 10_000 + serial as i32,
        },
    );
}

/// Process `serial` ended with `status`: its pidfd fires, and every end
/// that is ready is finalized.
fn end(t: &mut Table<Mock>, serial: u64, status: WaitStatus) {
    t.sys.statuses.insert(serial, status);
    t.sys.ended.insert(serial);
    t.pidfd_readable(serial);
    finalize_all(t);
}

fn finalize_all(t: &mut Table<Mock>) {
    while let Some(s) = t.next_to_finalize() {
        t.finalize(s);
    }
}

fn monitor(t: &mut Table<Mock>, from: u64, target: u64, reference: u64) {
    let msg = ToNode::Monitor {
        reference,
        internal: false,
        target: pid(target),
    };
    if from == MAIN_SERIAL {
        t.local_request(from, msg);
    } else {
        t.frame(conn(from), msg);
    }
}

/// The Downs sent on `conn`: (reference, pid, reason).
fn downs(t: &Table<Mock>, conn: u64) -> Vec<(u64, Pid, ExitReason)> {
    t.sys
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(c, msg) if *c == conn => match &**msg {
                ToProcess::Down {
                    reference, pid, reason, ..
                } => Some((*reference, *pid, reason.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The exit signals delivered as messages on `conn`: (from, reason).
fn exits(t: &Table<Mock>, conn: u64) -> Vec<(Pid, ExitReason)> {
    t.sys
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(c, msg) if *c == conn => match &**msg {
                ToProcess::Exit { from, reason } => Some((*from, reason.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn sigkills(t: &Table<Mock>, serial: u64) -> usize {
    t.sys
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Signal(s, _, SIGKILL) if *s == serial))
        .count()
}

fn signaled(signal: i32) -> WaitStatus {
    WaitStatus::Signaled {
        signal,
        core_dumped: false,
    }
}

#[test]
fn every_monitor_gets_exactly_one_down_with_the_reason() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    start(&mut t, reg(4, MAIN_SERIAL));
    monitor(&mut t, MAIN_SERIAL, 3, 71);
    monitor(&mut t, MAIN_SERIAL, 3, 72);
    monitor(&mut t, 4, 3, 73);
    end(&mut t, 3, signaled(SIGSEGV));
    // A second wake-up of the same pidfd changes nothing.
    t.pidfd_readable(3);
    finalize_all(&mut t);
    let segv = ExitReason::from_signal(SIGSEGV, false);
    assert_eq!(
        downs(&t, MAIN_CONN),
        vec![(71, pid(3), segv.clone()), (72, pid(3), segv.clone())]
    );
    assert_eq!(downs(&t, conn(4)), vec![(73, pid(3), segv)]);
    assert!(!t.knows(3));
    assert!(t.sys.effects.contains(&Effect::Forget(3)));
}

#[test]
fn monitoring_a_process_that_is_gone_gives_noproc_at_once() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    end(&mut t, 3, WaitStatus::Exited(0));
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    // A serial never handed out, and a pid of another node.
    monitor(&mut t, MAIN_SERIAL, 500, 6);
    t.local_request(
        MAIN_SERIAL,
        ToNode::Monitor {
            reference: 7,
            internal: false,
            target: Pid::new(NodeId::from_bytes([9; 16]), 3),
        },
    );
    let reasons: Vec<_> = downs(&t, MAIN_CONN).into_iter().map(|d| (d.0, d.2)).collect();
    assert_eq!(
        reasons,
        vec![
            (5, ExitReason::NoProc),
            (6, ExitReason::NoProc),
            (7, ExitReason::NoProc)
        ]
    );
}

#[test]
fn demonitor_stops_the_down() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    t.local_request(
        MAIN_SERIAL,
        ToNode::Demonitor {
            request: None,
            reference: 5,
        },
    );
    end(&mut t, 3, signaled(SIGKILL));
    assert!(downs(&t, MAIN_CONN).is_empty());
}

#[test]
fn the_down_waits_for_the_frames_the_process_sent_before_it_ended() {
    // The exit event itself sends nothing: the end becomes signals only when
    // finalized, after the control side has applied the process's last
    // frames (its last words here).
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    t.sys.statuses.insert(3, WaitStatus::Exited(0));
    t.pidfd_readable(3);
    assert!(
        downs(&t, MAIN_CONN).is_empty(),
        "a Down before the last frames were read"
    );
    let words = ExitReason::Error("out of work".into());
    t.frame(conn(3), ToNode::LastWords { reason: words.clone() });
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), words)]);
}

#[test]
fn an_abnormal_exit_kills_linked_processes_with_its_reason() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    start(&mut t, reg(4, MAIN_SERIAL));
    t.frame(
        conn(4),
        ToNode::Link {
            request: 1,
            target: pid(3),
        },
    );
    monitor(&mut t, MAIN_SERIAL, 4, 9);
    let boom = ExitReason::Error("boom".into());
    t.frame(conn(3), ToNode::LastWords { reason: boom.clone() });
    end(&mut t, 3, WaitStatus::Exited(0));
    assert_eq!(sigkills(&t, 4), 1);
    // It dies of the SIGKILL, with the reason the link carried.
    end(&mut t, 4, signaled(SIGKILL));
    assert_eq!(downs(&t, MAIN_CONN), vec![(9, pid(4), boom)]);
}

#[test]
fn a_normal_exit_travels_no_link_but_a_trapping_process_hears_of_it() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    start(&mut t, reg(4, MAIN_SERIAL));
    let mut trapping = reg(5, MAIN_SERIAL);
    trapping.trap_exits = true;
    start(&mut t, trapping);
    for other in [4, 5] {
        t.frame(
            conn(other),
            ToNode::Link {
                request: 1,
                target: pid(3),
            },
        );
    }
    end(&mut t, 3, WaitStatus::Exited(0));
    assert_eq!(sigkills(&t, 4), 0);
    assert!(t.alive(4));
    assert_eq!(exits(&t, conn(5)), vec![(pid(3), ExitReason::Normal)]);
}

#[test]
fn trapping_turns_an_exit_signal_into_a_message_but_kill_cannot_be_trapped() {
    let mut t = table();
    let mut r = reg(3, MAIN_SERIAL);
    r.trap_exits = true;
    start(&mut t, r);
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    let shutdown = ToNode::ExitSignal {
        target: pid(3),
        reason: ExitReason::Shutdown,
        untrappable: false,
    };
    t.local_request(MAIN_SERIAL, shutdown);
    assert_eq!(exits(&t, conn(3)), vec![(pid(1), ExitReason::Shutdown)]);
    assert_eq!(sigkills(&t, 3), 0);
    t.local_request(
        MAIN_SERIAL,
        ToNode::ExitSignal {
            target: pid(3),
            reason: ExitReason::Error("ignored".into()),
            untrappable: true,
        },
    );
    assert_eq!(sigkills(&t, 3), 1);
    end(&mut t, 3, signaled(SIGKILL));
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), ExitReason::Killed)]);
}

#[test]
fn the_main_thread_always_traps_and_an_untrappable_kill_reaches_it_as_killed() {
    let mut t = table();
    let mut r = reg(3, MAIN_SERIAL);
    r.link = true;
    start(&mut t, r);
    t.frame(
        conn(3),
        ToNode::ExitSignal {
            target: pid(1),
            reason: ExitReason::Exit("x".into()),
            untrappable: true,
        },
    );
    end(&mut t, 3, signaled(SIGSEGV));
    assert_eq!(
        exits(&t, MAIN_CONN),
        vec![
            (pid(3), ExitReason::Killed),
            (pid(3), ExitReason::from_signal(SIGSEGV, false))
        ]
    );
    assert_eq!(sigkills(&t, MAIN_SERIAL), 0);
}

#[test]
fn a_kill_that_comes_after_the_end_leaves_the_processs_own_reason() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    // Its pidfd already says it ended (SIGKILLed by someone else): the
    // node's reason does not replace that.
    t.sys.ended.insert(3);
    t.kill(3, ExitReason::Error("too late".into()));
    end(&mut t, 3, signaled(SIGKILL));
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), ExitReason::Killed)]);
}

#[test]
fn a_kill_before_the_pidfd_is_known_is_sent_when_it_comes() {
    let mut t = table();
    t.conn_opened(conn(3), None);
    t.frame(conn(3), ToNode::Register(reg(3, MAIN_SERIAL)));
    t.kill(3, ExitReason::Shutdown);
    assert_eq!(sigkills(&t, 3), 0);
    *t.sys.fds.entry(conn(3)).or_default() += 1;
    t.frame(conn(3), ToNode::Pidfd { serial: 3, ospid: 42 });
    assert_eq!(sigkills(&t, 3), 1);
}

#[test]
fn a_process_whose_connection_closed_before_any_pidfd_never_ran() {
    let mut t = table();
    t.conn_opened(conn(3), None);
    let mut r = reg(3, MAIN_SERIAL);
    r.monitors = vec![(5, false)];
    t.frame(conn(3), ToNode::Register(r));
    t.conn_closed(conn(3));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), ExitReason::NoProc)]);
}

#[test]
fn a_status_reported_before_the_registration_is_kept_for_it() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    // Process 3 reaped its child 4 before 4's registration was read.
    report(&mut t, 3, 4, WaitStatus::Exited(7));
    let mut r = reg(4, 3);
    r.monitors = vec![(8, false)];
    r.link = true;
    // Its registration ends it at once: nobody else will report its end
    // (its pidfd is not watched while its parent lives).
    start(&mut t, r);
    finalize_all(&mut t);
    assert_eq!(downs(&t, conn(3)), vec![(8, pid(4), ExitReason::Code(7))]);
    // The link it had fired too.
    assert_eq!(sigkills(&t, 3), 1);
}

#[test]
fn names_are_unique_among_the_living_and_freed_at_exit() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    start(&mut t, reg(4, MAIN_SERIAL));
    let name = |request, serial| ToNode::RegisterName {
        request,
        name: "db".into(),
        pid: pid(serial),
    };
    assert_eq!(t.local_request(MAIN_SERIAL, name(1, 3)), Some(NodeReply::Done));
    assert_eq!(t.local_request(MAIN_SERIAL, name(2, 4)), Some(NodeReply::NameTaken));
    let whereis = ToNode::Whereis {
        request: 3,
        name: "db".into(),
    };
    assert_eq!(
        t.local_request(MAIN_SERIAL, whereis.clone()),
        Some(NodeReply::Pid(Some(pid(3))))
    );
    end(&mut t, 3, WaitStatus::Exited(0));
    assert_eq!(t.local_request(MAIN_SERIAL, whereis), Some(NodeReply::Pid(None)));
    assert_eq!(t.local_request(MAIN_SERIAL, name(4, 4)), Some(NodeReply::Done));
    assert_eq!(t.local_request(MAIN_SERIAL, name(5, 500)), Some(NodeReply::NoProc));
}

#[test]
fn a_frame_naming_a_serial_handed_out_but_unknown_waits_for_its_registration() {
    let t = table();
    let monitor = |serial| ToNode::Monitor {
        reference: 1,
        internal: false,
        target: pid(serial),
    };
    // Handed out (below the counter) and not registered: awaited.
    assert_eq!(t.awaits(&monitor(50)), Some(50));
    // Never handed out, or known: nothing to wait for.
    assert_eq!(t.awaits(&monitor(500)), None);
    assert_eq!(t.awaits(&monitor(MAIN_SERIAL)), None);
    // A child's registration waits for its parent's, and a parent's report
    // of a child's status for the child's registration.
    assert_eq!(t.awaits(&ToNode::Register(reg(60, 50))), Some(50));
    let reaped = ToNode::ChildExited {
        serial: 60,
        status: WaitStatus::Exited(0),
    };
    assert_eq!(t.awaits(&reaped), Some(60));
}

#[test]
fn the_spawners_end_stops_its_ports_in_order_and_kills_them_at_the_deadline() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    let mut r = reg(4, 3);
    r.reaper = Some(ZYGOTE_SERIAL);
    r.monitors = vec![(6, false)];
    *t.sys.fds.entry(conn(3)).or_default() += 1;
    t.frame(
        conn(3),
        ToNode::Port {
            reg: r,
            ospid: 4444,
            port: PortInfo {
                shutdown_ms: 50,
                cgroup: Some("cg".into()),
            },
        },
    );
    end(&mut t, 3, WaitStatus::Exited(0));
    assert!(t.sys.effects.contains(&Effect::Signal(4, Some(4444), SIGTERM)));
    assert!(t.take_timer_armed());
    let deadline = t.next_timer().expect("a timer for the port");
    t.run_timers(deadline - Duration::from_millis(1));
    assert_eq!(sigkills(&t, 4), 0);
    t.run_timers(deadline.max(Instant::now()));
    assert_eq!(sigkills(&t, 4), 1);
    // The zygote is gone in this table: the node kills the cgroup too.
    assert!(t.sys.effects.contains(&Effect::KillCgroup("cg".into())));
    end(&mut t, 4, signaled(SIGKILL));
    assert_eq!(downs(&t, conn(3)), Vec::new(), "its owner is gone");
    // The kill was needed: it is the reason, as in OTP.
    assert_eq!(t.counters().exits.get("killed"), Some(&1));
}

/// A port that ends on its SIGTERM is `Shutdown`; one killed at the end of
/// its time is `Killed`; an infinite time sets no timer.
#[test]
fn a_port_asked_to_stop_is_shutdown_unless_it_had_to_be_killed() {
    let mut t = table();
    start(&mut t, reg(3, MAIN_SERIAL));
    for (serial, ospid, shutdown_ms) in [(4u64, 4444, 50u64), (5, 5555, 50), (6, 6666, u64::MAX)] {
        let mut r = reg(serial, 3);
        r.reaper = Some(ZYGOTE_SERIAL);
        r.monitors = vec![(serial * 10, false)];
        *t.sys.fds.entry(conn(3)).or_default() += 1;
        t.frame(
            conn(3),
            ToNode::Port {
                reg: r,
                ospid,
                port: PortInfo {
                    shutdown_ms,
                    cgroup: None,
                },
            },
        );
        let stop = ToNode::ExitSignal {
            target: pid(serial),
            reason: ExitReason::Shutdown,
            untrappable: false,
        };
        t.local_request(MAIN_SERIAL, stop);
        assert!(t.sys.effects.contains(&Effect::Signal(serial, Some(ospid), SIGTERM)));
    }
    // Port 4 stops on its SIGTERM.
    end(&mut t, 4, signaled(SIGTERM));
    // Port 5 does not: killed at its deadline.
    assert!(t.next_timer().is_some(), "a timer for port 5");
    t.run_timers(Instant::now() + Duration::from_secs(1));
    assert_eq!(sigkills(&t, 5), 1);
    end(&mut t, 5, signaled(SIGKILL));
    // Port 6 waits as long as it takes: no timer; killed by hand at last.
    assert_eq!(t.next_timer(), None);
    let kill = ToNode::ExitSignal {
        target: pid(6),
        reason: ExitReason::Killed,
        untrappable: true,
    };
    t.local_request(MAIN_SERIAL, kill);
    end(&mut t, 6, signaled(SIGKILL));
    let reasons: Vec<ExitReason> = downs(&t, conn(3)).into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(
        reasons,
        vec![ExitReason::Shutdown, ExitReason::Killed, ExitReason::Killed]
    );
}

#[test]
fn an_oom_kill_is_the_memory_limit_and_a_pidfd_for_nobody_is_refused() {
    let mut t = table();
    let mut r = reg(3, MAIN_SERIAL);
    r.memory_limited = true;
    start(&mut t, r);
    monitor(&mut t, MAIN_SERIAL, 3, 5);
    end(&mut t, 3, signaled(SIGKILL));
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), ExitReason::MemoryLimit)]);
    // A pidfd for a serial nobody registered is dropped, not kept.
    *t.sys.fds.entry(conn(9)).or_default() += 1;
    t.conn_opened(conn(9), None);
    t.frame(conn(9), ToNode::Pidfd { serial: 77, ospid: 1 });
    assert!(!t.sys.pidfds.contains(&77));
    assert_eq!(t.sys.fds[&conn(9)], 0);
}

#[test]
fn a_spare_that_is_not_the_zygotes_child_is_refused() {
    let mut t = table();
    t.conn_opened(conn(8), None);
    *t.sys.fds.entry(conn(8)).or_default() += 1;
    t.sys.parents.insert(555, 12345);
    t.frame(conn(8), ToNode::ZygoteSpare { serial: 8, ospid: 555 });
    assert!(!t.knows(8));
    assert_eq!(t.counters().refused, 1);
    assert!(t.sys.effects.contains(&Effect::Close(conn(8))));
}

#[test]
fn a_pidfd_that_cannot_be_watched_is_not_kept_and_the_process_never_ran() {
    let mut t = table();
    t.sys.watch_fails = true;
    let mut r = reg(3, MAIN_SERIAL);
    r.monitors = vec![(5, false)];
    start(&mut t, r);
    assert!(!t.sys.pidfds.contains(&3), "a pidfd kept that nobody watches");
    t.conn_closed(conn(3));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(5, pid(3), ExitReason::NoProc)]);
}

#[test]
fn a_child_of_a_zygote_that_is_gone_is_watched_even_after_its_spare_took_over() {
    let mut t = table();
    // The zygote now running is a spare that took over, OS pid 500.
    t.add_internal(ZYGOTE_SERIAL, 900, 1, false, "zygote");
    t.conn_opened(conn(8), None);
    *t.sys.fds.entry(conn(8)).or_default() += 1;
    t.sys.parents.insert(500, 1);
    t.frame(conn(8), ToNode::ZygoteSpare { serial: 8, ospid: 500 });
    // Strays the node watches: one of a group that chose to outlive it.
    t.sys.strays = vec![(700, 70), (710, 71)];
    t.exempt_groups.insert(71);
    t.sys.statuses.insert(ZYGOTE_SERIAL, signaled(SIGKILL));
    t.finalize(ZYGOTE_SERIAL);
    assert!(
        t.sys
            .effects
            .contains(&Effect::Send(conn(8), Box::new(ToProcess::TakeOver)))
    );
    // The new zygote learns the strays to kill if the node dies.
    let told: Vec<i32> = t
        .sys
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(c, m) if *c == conn(8) => match **m {
                ToProcess::Stray { ospid } => Some(ospid),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![700]);
    let child_of = |t: &mut Table<Mock>, serial: u64, os_parent: i32| {
        let mut r = reg(serial, MAIN_SERIAL);
        r.reaper = Some(ZYGOTE_SERIAL);
        t.conn_opened(conn(serial), None);
        t.frame(conn(serial), ToNode::Register(r));
        let ospid = 10_000 + serial as i32;
        t.sys.parents.insert(ospid, os_parent);
        *t.sys.fds.entry(conn(serial)).or_default() += 1;
        t.frame(conn(serial), ToNode::Pidfd { serial, ospid });
    };
    // The running zygote reaps its own children and reports them; the node
    // watches them all the same, to read their status as zombies first.
    child_of(&mut t, 3, 500);
    assert!(t.sys.effects.contains(&Effect::Watch(3)));
    // A child of the zygote that died is the node's (its subreaper).
    child_of(&mut t, 4, 1);
    assert!(t.sys.effects.contains(&Effect::Watch(4)));
}

#[test]
fn a_spare_that_registers_while_the_zygotes_end_waits_takes_over_only_once_it_is_finalized() {
    let mut t = table();
    t.add_internal(ZYGOTE_SERIAL, 900, 1, false, "zygote");
    t.add_internal(50, conn(50), 1, false, "watcher");
    monitor(&mut t, 50, ZYGOTE_SERIAL, 7);
    // The zygote ended (its status known), not finalized yet.
    t.child_exited(ZYGOTE_SERIAL, signaled(SIGKILL));
    // Its spare registers now.
    t.conn_opened(conn(8), None);
    *t.sys.fds.entry(conn(8)).or_default() += 1;
    t.sys.parents.insert(500, 1);
    t.frame(conn(8), ToNode::ZygoteSpare { serial: 8, ospid: 500 });
    assert!(
        !t.sys
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Send(_, m) if **m == ToProcess::TakeOver))
    );
    finalize_all(&mut t);
    // One Down, for the zygote that died, and the spare took over.
    assert_eq!(downs(&t, conn(50)), vec![(7, pid(ZYGOTE_SERIAL), ExitReason::Killed)]);
    assert!(
        t.sys
            .effects
            .contains(&Effect::Send(conn(8), Box::new(ToProcess::TakeOver)))
    );
    assert!(t.alive(ZYGOTE_SERIAL));
    assert!(!t.knows(8));
}

/// A process whose parent is another process: the node reads its status
/// from it as a zombie, and signals its end without waiting for the parent's
/// report; the report, when it comes, is dropped (no second signal), and
/// the pidfd kept until then. A parent that ends before it reports leaves
/// the node to reap it.
#[test]
fn the_status_of_another_process_child_is_read_from_its_zombie() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    // 100 starts 101 and 102 (a closure spawn: it forks them).
    start(&mut t, reg(101, 100));
    start(&mut t, reg(102, 100));
    monitor(&mut t, MAIN_SERIAL, 101, 7);
    monitor(&mut t, MAIN_SERIAL, 102, 8);
    // Watched although their parent lives.
    assert!(t.sys.effects.contains(&Effect::Watch(101)));
    ends_as_zombie(&mut t, 101, WaitStatus::Exited(5));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(7, pid(101), ExitReason::Code(5))]);
    assert!(
        !t.sys.effects.contains(&Effect::Forget(101)),
        "its pidfd stays until the report"
    );
    // The parent's report comes later: dropped.
    report(&mut t, 100, 101, WaitStatus::Exited(5));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN).len(), 1);
    assert!(t.sys.effects.contains(&Effect::Forget(101)));
    assert!(t.early_status.is_empty() && t.reports_due.is_empty());
    // 102 ends the same way, then its parent ends before it reports: the
    // node reaps 102 (its child now) and forgets it.
    ends_as_zombie(&mut t, 102, WaitStatus::Exited(3));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN)[1], (8, pid(102), ExitReason::Code(3)));
    assert!(!t.sys.effects.contains(&Effect::Reap(102)));
    end(&mut t, 100, WaitStatus::Exited(0));
    assert!(t.sys.effects.contains(&Effect::Reap(102)));
    assert!(t.sys.effects.contains(&Effect::Forget(102)));
    assert!(t.reports_due.is_empty());
}

/// The parent reaped the child first: its pidfd gives the status (Linux
/// 6.15 and later). The parent's report, read after the child's end was
/// finalized, is dropped all the same: nothing waits for a registration.
#[test]
fn a_report_after_the_status_came_from_the_pidfd_is_dropped() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    start(&mut t, reg(101, 100));
    monitor(&mut t, MAIN_SERIAL, 101, 7);
    t.sys.reaped_elsewhere.insert(101, WaitStatus::Exited(0));
    t.sys.ended.insert(101);
    t.pidfd_readable(101);
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(7, pid(101), ExitReason::Normal)]);
    report(&mut t, 100, 101, WaitStatus::Exited(0));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN).len(), 1);
    assert!(t.early_status.is_empty() && t.reports_due.is_empty());
    assert!(t.sys.effects.contains(&Effect::Forget(101)));
}

/// The parent's report comes after the node read the status and before it
/// finalized the end: nothing is left waiting for another report.
#[test]
fn a_report_before_the_end_is_finalized_leaves_nothing_due() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    start(&mut t, reg(101, 100));
    ends_as_zombie(&mut t, 101, WaitStatus::Exited(2));
    report(&mut t, 100, 101, WaitStatus::Exited(2));
    finalize_all(&mut t);
    assert!(t.early_status.is_empty() && t.reports_due.is_empty());
    assert!(t.sys.effects.contains(&Effect::Forget(101)));
}

/// The parent ended (not finalized yet) when its child's status was read:
/// the report may still be in its connection, so it stays due until the
/// parent's end is finalized, which drops it or reaps the child.
#[test]
fn a_report_of_a_parent_that_ended_stays_due_until_its_end_is_finalized() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    start(&mut t, reg(101, 100));
    t.sys.statuses.insert(100, WaitStatus::Exited(0));
    t.sys.ended.insert(100);
    t.pidfd_readable(100);
    ends_as_zombie(&mut t, 101, WaitStatus::Exited(0));
    // 101 is finalized first (as if its end came first); then the report
    // left in 100's connection is read, before 100's end is finalized.
    assert_eq!(t.next_to_finalize(), Some(100));
    assert_eq!(t.next_to_finalize(), Some(101));
    t.finalize(101);
    assert_eq!(t.reports_due.get(&101), Some(&100));
    report(&mut t, 100, 101, WaitStatus::Exited(0));
    t.finalize(100);
    assert!(t.early_status.is_empty() && t.reports_due.is_empty());
    assert!(t.sys.effects.contains(&Effect::Forget(101)));
    // A child whose parent's end is finalized with its report still due
    // (none came) is reaped by the node.
    start(&mut t, reg(200, MAIN_SERIAL));
    start(&mut t, reg(201, 200));
    ends_as_zombie(&mut t, 201, WaitStatus::Exited(0));
    finalize_all(&mut t);
    assert_eq!(t.reports_due.get(&201), Some(&200));
    end(&mut t, 200, WaitStatus::Exited(0));
    assert!(t.reports_due.is_empty());
    assert!(t.sys.effects.contains(&Effect::Reap(201)));
    assert!(t.sys.effects.contains(&Effect::Forget(201)));
}

/// A port's status is never read from its zombie (its program's main
/// thread may end first): the zygote's report gives it.
#[test]
fn a_port_status_waits_for_the_zygotes_report() {
    let mut t = table();
    t.add_internal(ZYGOTE_SERIAL, 900, 1, false, "zygote");
    start(&mut t, reg(3, MAIN_SERIAL));
    let mut r = reg(4, 3);
    r.reaper = Some(ZYGOTE_SERIAL);
    r.monitors = vec![(6, false)];
    *t.sys.fds.entry(conn(3)).or_default() += 1;
    let port = PortInfo {
        shutdown_ms: 50,
        cgroup: None,
    };
    t.frame(
        conn(3),
        ToNode::Port {
            reg: r,
            ospid: 4444,
            port,
        },
    );
    assert!(!t.sys.effects.contains(&Effect::Watch(4)));
    ends_as_zombie(&mut t, 4, WaitStatus::Exited(0));
    finalize_all(&mut t);
    assert!(downs(&t, conn(3)).is_empty(), "ended before its status is known");
    t.frame(
        900,
        ToNode::ChildExited {
            serial: 4,
            status: WaitStatus::Exited(1),
        },
    );
    finalize_all(&mut t);
    assert_eq!(downs(&t, conn(3)), vec![(6, pid(4), ExitReason::Code(1))]);
}

/// The node reaped a process whose registered parent had not ended in the
/// table (the zygote's children, once its spare took the zygote's serial):
/// no report is to come, and its pidfd goes at once.
#[test]
fn a_process_the_node_reaped_itself_waits_for_no_report() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    start(&mut t, reg(101, 100));
    end(&mut t, 101, WaitStatus::Exited(0));
    assert!(t.reports_due.is_empty());
    assert!(t.sys.effects.contains(&Effect::Forget(101)));
}

/// A process watched only to read its status first: if the watch fails,
/// it runs on, and its parent's report ends it with its reason.
#[test]
fn a_failed_watch_leaves_the_report_to_end_a_process() {
    let mut t = table();
    start(&mut t, reg(100, MAIN_SERIAL));
    t.sys.watch_fails = true;
    start(&mut t, reg(101, 100));
    t.sys.watch_fails = false;
    monitor(&mut t, MAIN_SERIAL, 101, 7);
    assert!(!t.sys.effects.contains(&Effect::Forget(101)));
    report(&mut t, 100, 101, WaitStatus::Exited(9));
    finalize_all(&mut t);
    assert_eq!(downs(&t, MAIN_CONN), vec![(7, pid(101), ExitReason::Code(9))]);
}

/// Process `parent` reports the status of its child `serial`.
fn report(t: &mut Table<Mock>, parent: u64, serial: u64, status: WaitStatus) {
    t.frame(conn(parent), ToNode::ChildExited { serial, status });
}

/// Process `serial`, another process's child, ended: its pidfd fires while
/// it is a zombie whose status reads `status`.
fn ends_as_zombie(t: &mut Table<Mock>, serial: u64, status: WaitStatus) {
    t.sys.zombies.insert(serial, status);
    t.sys.ended.insert(serial);
    t.pidfd_readable(serial);
}

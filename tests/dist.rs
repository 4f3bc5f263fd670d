//! Distribution (feature `dist`): nodes as separate OS processes on
//! loopback, each a cluster node driven by commands on its standard input.

mod util;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use converge::dist::{Cluster, ClusterConfig, NodeEvent, Secret};
use converge::{Config, Ctx, Event, ExitReason, Mailbox, Pid};
use util::{helper, say};

fn main() {
    util::run_skipping(
        converge::Config::new(),
        &[
            ("nodes_join_through_any_member", nodes_join_through_any_member),
            (
                "messages_reach_a_process_of_another_node_in_order",
                messages_reach_a_process_of_another_node_in_order,
            ),
            (
                "messages_from_any_process_of_a_node_keep_their_order",
                messages_from_any_process_of_a_node_keep_their_order,
            ),
            (
                "a_64_mib_message_does_not_hold_up_small_ones_nor_ticks",
                a_64_mib_message_does_not_hold_up_small_ones_nor_ticks,
            ),
            (
                "pool_tasks_run_on_another_node_by_name",
                pool_tasks_run_on_another_node_by_name,
            ),
            (
                "simultaneous_connects_with_messages_in_flight_lose_nothing",
                simultaneous_connects_with_messages_in_flight_lose_nothing,
            ),
            (
                "a_remote_monitor_gets_the_reason_after_every_message",
                a_remote_monitor_gets_the_reason_after_every_message,
            ),
            (
                "a_remote_monitor_of_a_killed_node_is_noconnection",
                a_remote_monitor_of_a_killed_node_is_noconnection,
            ),
            ("a_killed_node_is_down_within_2s", a_killed_node_is_down_within_2s),
            ("a_node_that_leaves_is_down_at_once", a_node_that_leaves_is_down_at_once),
            ("a_wrong_secret_is_refused", a_wrong_secret_is_refused),
            (
                "whereis_on_another_node_and_a_name_that_is_not_there",
                whereis_on_another_node_and_a_name_that_is_not_there,
            ),
            (
                "a_partition_is_seen_within_2s_and_heals",
                a_partition_is_seen_within_2s_and_heals,
            ),
            (
                "hostile_bytes_are_refused_and_disturb_nothing",
                hostile_bytes_are_refused_and_disturb_nothing,
            ),
            (
                "a_stopped_node_is_down_within_2s_and_comes_back_as_a_new_session",
                a_stopped_node_is_down_within_2s_and_comes_back_as_a_new_session,
            ),
            (
                "a_restarted_node_never_gets_frames_for_its_old_pids",
                a_restarted_node_never_gets_frames_for_its_old_pids,
            ),
            ("sixteen_nodes_form_one_cluster", sixteen_nodes_form_one_cluster),
            (
                "remote_spawn_starts_registered_functions_only",
                remote_spawn_starts_registered_functions_only,
            ),
            (
                "links_across_nodes_carry_exit_signals_both_ways",
                links_across_nodes_carry_exit_signals_both_ways,
            ),
            (
                "exit_signals_and_kills_reach_processes_of_other_nodes",
                exit_signals_and_kills_reach_processes_of_other_nodes,
            ),
            (
                "a_link_across_a_lost_session_is_noconnection",
                a_link_across_a_lost_session_is_noconnection,
            ),
            (
                "monitor_node_of_an_unknown_node_is_down_at_once",
                monitor_node_of_an_unknown_node_is_down_at_once,
            ),
            (
                "a_transport_of_the_programs_own_carries_sessions",
                a_transport_of_the_programs_own_carries_sessions,
            ),
            (
                "idle_sessions_close_oldest_first_and_open_again_on_use",
                idle_sessions_close_oldest_first_and_open_again_on_use,
            ),
            (
                "a_stalled_peer_blocks_no_send_and_its_session_goes_past_its_cap",
                a_stalled_peer_blocks_no_send_and_its_session_goes_past_its_cap,
            ),
            (
                "direct_sessions_switch_both_ways_in_order",
                direct_sessions_switch_both_ways_in_order,
            ),
            (
                "direct_hellos_are_handed_only_to_processes_that_take_them",
                direct_hellos_are_handed_only_to_processes_that_take_them,
            ),
        ],
        &[("node", helper_node)],
        |name| {
            if name.contains("partition") {
                netns_unavailable()
            } else {
                None
            }
        },
    )
}

/// Why network namespaces cannot be made here, if they cannot.
fn netns_unavailable() -> Option<String> {
    let probe = format!("cvprobe{}", std::process::id());
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status();
    match made {
        Ok(s) if s.success() => {
            let _ = std::process::Command::new("ip").args(["netns", "del", &probe]).status();
            None
        }
        Ok(_) => Some("cannot make a network namespace (needs root)".into()),
        Err(e) => Some(format!("no `ip` command to make network namespaces: {e}")),
    }
}

const SECRET: &str = "a cluster secret for the tests of converge";

/// A node of the cluster, in its own OS process: it prints its address,
/// node events and what its `echo` process gets, and obeys commands.
fn helper_node() {
    // Warnings (a refused peer, a broken session) on standard error.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    converge::dist::spawnable("counter", counter);
    converge::dist::task("square", square);
    converge::dist::task("lost", lost);
    converge::dist::task("nap", nap);
    let name = std::env::var("NODE_NAME").unwrap();
    let secret = Secret::from_bytes(std::env::var("NODE_SECRET").unwrap().as_bytes()).unwrap();
    let node = Config::new().schedulers(1).init().unwrap();
    let listen = std::env::var("NODE_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let mut config = ClusterConfig::new(name, listen.parse().unwrap(), secret);
    if std::env::var("NODE_TRANSPORT").as_deref() == Ok("masked") {
        config = config.transport(Masked);
    }
    if let Ok(n) = std::env::var("NODE_MAX_SESSIONS") {
        config.max_sessions = n.parse().unwrap();
    }
    if let Ok(ms) = std::env::var("NODE_IDLE_MS") {
        config.idle_after = Duration::from_millis(ms.parse().unwrap());
    }
    if let Ok(n) = std::env::var("NODE_MAX_QUEUED") {
        config.max_queued = n.parse().unwrap();
    }
    let cluster = Cluster::start(&node, config).unwrap();
    let echo = converge::spawn(|ctx: Ctx<u64>| {
        while let Ok(n) = ctx.recv() {
            say("got", n);
        }
    })
    .unwrap();
    converge::register("echo", echo.pid()).unwrap();
    // Its pid, for a node to send to before any session between them.
    let encoded = postcard::to_stdvec(&echo.pid()).unwrap();
    say(
        "echo-pid",
        encoded.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    );
    // Says the length and a checksum of each large message (as a "got" line:
    // its place among the small ones shows).
    let big = converge::spawn(|ctx: Ctx<Vec<u8>>| {
        while let Ok(v) = ctx.recv() {
            let sum = v
                .iter()
                .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
            say("got", format!("big:{}:{sum}", v.len()));
        }
    })
    .unwrap();
    converge::register("bigsink", big.pid()).unwrap();
    // Sends `n` numbers to the pid it is given, then ends with `code`.
    let burst = converge::spawn(|ctx: Ctx<(Pid, u64, i32)>| {
        let (to, n, code) = ctx.recv().unwrap();
        let to = Mailbox::<u64>::from_pid(to);
        for i in 0..n {
            to.send(i).unwrap();
        }
        ExitReason::Code(code)
    })
    .unwrap();
    converge::register("burst", burst.pid()).unwrap();
    // Sends `n` blobs of 64 KiB, numbered in their first bytes, to the pid
    // it is given, then ends with `code`.
    let blobs = converge::spawn(|ctx: Ctx<(Pid, u64, i32)>| {
        let (to, n, code) = ctx.recv().unwrap();
        send_blobs(&Mailbox::from_pid(to), n);
        ExitReason::Code(code)
    })
    .unwrap();
    converge::register("blobs", blobs.pid()).unwrap();
    // The same blobs, then an exit signal with `code` to their receiver (it
    // lives on), and says so.
    let signaller = converge::spawn(|ctx: Ctx<(Pid, u64, i32)>| {
        while let Ok((to, n, code)) = ctx.recv() {
            let to = Mailbox::from_pid(to);
            send_blobs(&to, n);
            to.exit(ExitReason::Code(code));
            converge::flush();
            say("signalled", n);
        }
    })
    .unwrap();
    converge::register("signaller", signaller.pid()).unwrap();
    // Blobs on a direct session. Mode 0: blob 0, then says whether its
    // direct session to the receiver opened (within 10 s). Then mode 1:
    // blobs 1 to `n - 1`, and ends with `code`; or mode 2: the same blobs,
    // then an exit signal with `code` to the receiver, then blob `n`, and
    // says so; or mode 3: as mode 2, but it says so (with its OS pid) and
    // stops itself right after the signal, most blobs still unwritten. Mode
    // 4: blob 0, then, as soon as its direct session opened, blob 1, an exit
    // signal with `code`, and blob 2.
    let direct = converge::spawn(|ctx: Ctx<(Pid, u64, i32, u8)>| {
        while let Ok((to, n, code, mode)) = ctx.recv() {
            let mailbox = Mailbox::<Vec<u8>>::from_pid(to);
            if mode == 4 {
                mailbox.send(blob(0)).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !converge::dist::has_direct_session(to) && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                mailbox.send(blob(1)).unwrap();
                mailbox.exit(ExitReason::Code(code));
                mailbox.send(blob(2)).unwrap();
                converge::flush();
                continue;
            }
            if mode == 0 {
                mailbox.send(blob(0)).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !converge::dist::has_direct_session(to) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                say("direct", converge::dist::has_direct_session(to));
                continue;
            }
            for i in 1..n {
                mailbox.send(blob(i)).unwrap();
            }
            if mode == 1 {
                return ExitReason::Code(code);
            }
            mailbox.exit(ExitReason::Code(code));
            if mode == 3 {
                say("signalled", format!("{n} {}", std::process::id()));
                let me = std::process::id().to_string();
                let stop = std::process::Command::new("kill").args(["-STOP", &me]).status();
                assert!(stop.unwrap().success());
            }
            mailbox.send(blob(n)).unwrap();
            converge::flush();
            if mode == 2 {
                say("signalled", n);
            }
        }
        ExitReason::Normal
    })
    .unwrap();
    converge::register("direct-blobs", direct.pid()).unwrap();
    // Traps exits and reports each exit signal it gets.
    let linker = converge::spawn(|ctx: Ctx<()>| {
        ctx.trap_exits(true);
        say("linker", "ready");
        while let Ok(e) = ctx.recv_event() {
            if let Event::Exit(x) = e {
                say("linker-exit", format!("{:?}", x.reason));
            }
        }
    })
    .unwrap();
    converge::register("linker", linker.pid()).unwrap();
    let watcher = converge::spawn(|ctx: Ctx<NodeEvent>| {
        while let Ok(e) = ctx.recv() {
            match e {
                NodeEvent::NodeUp { node, .. } => say("up", node),
                NodeEvent::NodeDown { node, reason } => say("down", format!("{node} {reason:?}")),
                _ => {}
            }
        }
    })
    .unwrap();
    cluster.monitor_nodes(watcher);
    say("addr", cluster.local_addr());
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut saved: Option<Pid> = None;
    let mut aimed: Option<Pid> = None;
    let mut spawned: Option<Pid> = None;
    let mut direct_run: Option<(Pid, Pid, u64, i32, u8)> = None;
    while {
        line.clear();
        stdin.read_line(&mut line).unwrap_or(0) > 0
    } {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["join", addr] => cluster.join(addr.parse().unwrap()),
            ["wait-member", name] => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !cluster.nodes().iter().any(|n| n.name == *name) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let found = cluster.nodes().iter().any(|n| n.name == *name);
                say("member", format!("{name} {found}"));
            }
            ["whereis", node, name] => {
                let pid = cluster.whereis(node, name, Duration::from_secs(2));
                say("whereis", format!("{pid:?}"));
            }
            ["send", node, n] => {
                let Some(pid) = cluster.whereis(node, "echo", Duration::from_secs(2)) else {
                    say("sent", "none: no echo there");
                    continue;
                };
                let to = Mailbox::<u64>::from_pid(pid);
                for i in 0..n.parse::<u64>().unwrap() {
                    to.send(i).unwrap();
                }
                say("sent", n);
            }
            ["big", node, n] => {
                // From a thread of the main program (the only sender of
                // messages over 16 MiB), while the loop goes on.
                let pid = cluster
                    .whereis(node, "bigsink", Duration::from_secs(2))
                    .expect("bigsink is registered there");
                let v: Vec<u8> = (0..n.parse::<usize>().unwrap()).map(|i| (i % 251) as u8).collect();
                let sum = v
                    .iter()
                    .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
                say("big-sum", sum);
                std::thread::spawn(move || Mailbox::<Vec<u8>>::from_pid(pid).send(v).unwrap());
            }
            ["relay", node, n] => {
                // From a process of this node, not its main program.
                let pid = cluster
                    .whereis(node, "echo", Duration::from_secs(2))
                    .expect("echo is registered there");
                let n: u64 = n.parse().unwrap();
                converge::spawn(move |_: Ctx<()>| {
                    let to = Mailbox::<u64>::from_pid(pid);
                    for i in 0..n {
                        to.send(i).unwrap();
                    }
                })
                .unwrap();
                say("relayed", n);
            }
            // The node's main program watches a sender there (whose messages
            // come from this node's readers on its own connection), taking
            // them slowly: 64 KiB blobs, or numbers.
            ["watch-blobs-main", on, n, code] => watch_from_main::<Vec<u8>>(
                (&node, &cluster),
                (on, "blobs"),
                (n.parse().unwrap(), code.parse().unwrap()),
                16,
                |b: &Vec<u8>| blob_number(b),
            ),
            ["watch-burst-main", on, n, code] => watch_from_main::<u64>(
                (&node, &cluster),
                (on, "burst"),
                (n.parse().unwrap(), code.parse().unwrap()),
                5000,
                |i| Some(*i),
            ),
            ["watch-burst", node, n, code] => {
                // A process here monitors `burst` there, which sends it `n`
                // numbers and ends: all of them come before the Down.
                let burst = cluster
                    .whereis(node, "burst", Duration::from_secs(2))
                    .expect("burst is registered there");
                let (n, code): (u64, i32) = (n.parse().unwrap(), code.parse().unwrap());
                converge::spawn(move |ctx: Ctx<u64>| {
                    ctx.monitor(burst);
                    Mailbox::<(Pid, u64, i32)>::from_pid(burst)
                        .send((ctx.pid(), n, code))
                        .unwrap();
                    watch_until_down(&ctx, |i| Some(*i), 0);
                    // It is gone: a new monitor is NoProc at once.
                    let again = ctx.monitor(burst);
                    if let Ok(d) = ctx.recv_down(again) {
                        say("watched-again", format!("{:?}", d.reason));
                    }
                })
                .unwrap();
            }
            ["blobs-to-stopped", name, node, n, code] => {
                // A process here (trapping exits) monitors `name` there
                // (`blobs` or `signaller`), asks it for `n` blobs, and stops
                // (SIGSTOP) until told `cont`: this node holds what the
                // stopped process's socket cannot take, and the Down or
                // the exit signal behind it.
                let sender = cluster
                    .whereis(node, name, Duration::from_secs(2))
                    .expect("registered there");
                let (n, code): (u64, i32) = (n.parse().unwrap(), code.parse().unwrap());
                let watcher = converge::spawn(move |ctx: Ctx<Vec<u8>>| {
                    ctx.trap_exits(true);
                    ctx.monitor(sender);
                    Mailbox::<(Pid, u64, i32)>::from_pid(sender)
                        .send((ctx.pid(), n, code))
                        .unwrap();
                    converge::flush();
                    let me = std::process::id().to_string();
                    std::process::Command::new("kill")
                        .args(["-STOP", &me])
                        .status()
                        .unwrap();
                    watch_until_down(&ctx, |b: &Vec<u8>| blob_number(b), 0);
                })
                .unwrap();
                let os_pid = converge::process_info(watcher.pid())
                    .and_then(|i| i.os_pid)
                    .expect("the watcher runs");
                let stat = format!("/proc/{os_pid}/stat");
                let deadline = Instant::now() + Duration::from_secs(10);
                while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") T ")) {
                    assert!(Instant::now() < deadline, "the watcher never stopped");
                    std::thread::sleep(Duration::from_millis(5));
                }
                say("stopped", os_pid);
            }
            ["direct-to-stopped", node, n, code, mode] => {
                // A process here (trapping exits) monitors `direct-blobs`
                // there and has it send blob 0 (its direct session to it
                // opens meanwhile); `stop-and-go` stops it and has the rest
                // sent.
                let sender = cluster
                    .whereis(node, "direct-blobs", Duration::from_secs(2))
                    .expect("registered there");
                let signalled = *mode == "2" || *mode == "3";
                let watcher = converge::spawn(move |ctx: Ctx<Vec<u8>>| {
                    ctx.trap_exits(true);
                    ctx.monitor(sender);
                    Mailbox::<(Pid, u64, i32, u8)>::from_pid(sender)
                        .send((ctx.pid(), 1, 0, 0))
                        .unwrap();
                    watch_until_down(&ctx, |b: &Vec<u8>| blob_number(b), 0);
                    if signalled {
                        // What its sender sent after the signal.
                        let after = ctx.recv_timeout(Duration::from_secs(10)).ok();
                        say("after", format!("{:?}", after.as_deref().and_then(blob_number)));
                    }
                })
                .unwrap();
                let os_pid = converge::process_info(watcher.pid())
                    .and_then(|i| i.os_pid)
                    .expect("the watcher runs");
                direct_run = Some((
                    sender,
                    watcher.pid(),
                    n.parse().unwrap(),
                    code.parse().unwrap(),
                    mode.parse().unwrap(),
                ));
                say("watcher", os_pid);
            }
            ["direct-at-once", node, code] => {
                // A process here (trapping exits) has `direct-blobs` there
                // send it blob 0, and blob 1, an exit signal and blob 2 as
                // soon as their direct session opened; says what came, in
                // order, up to the signal and one blob after it.
                let sender = cluster
                    .whereis(node, "direct-blobs", Duration::from_secs(2))
                    .expect("registered there");
                let code: i32 = code.parse().unwrap();
                converge::spawn(move |ctx: Ctx<Vec<u8>>| {
                    ctx.trap_exits(true);
                    Mailbox::<(Pid, u64, i32, u8)>::from_pid(sender)
                        .send((ctx.pid(), 0, code, 4))
                        .unwrap();
                    let mut seen: Vec<String> = Vec::new();
                    while seen.len() < 4 {
                        match ctx.recv_event_timeout(Duration::from_secs(10)) {
                            Ok(Event::Message(m)) => seen.push(format!("{:?}", blob_number(&m))),
                            Ok(Event::Exit(x)) => seen.push(format!("{:?}", x.reason)),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    say("at-once", seen.join(" "));
                })
                .unwrap();
            }
            ["stop-and-go", os_pid] => {
                let (sender, watcher, n, code, mode) = direct_run.take().expect("a direct run");
                stop(os_pid);
                Mailbox::<(Pid, u64, i32, u8)>::from_pid(sender)
                    .send((watcher, n, code, mode))
                    .unwrap();
                say("going", n);
            }
            ["orderly", n] => {
                // Takes numbers, and says after `n` of them whether they
                // came in order.
                let n: u64 = n.parse().unwrap();
                let orderly = converge::spawn(move |ctx: Ctx<u64>| {
                    let (mut got, mut in_order) = (0u64, true);
                    while let Ok(i) = ctx.recv() {
                        in_order &= i == got;
                        got += 1;
                        if got == n {
                            say("ordered", format!("{got} {in_order}"));
                        }
                    }
                })
                .unwrap();
                converge::register("orderly", orderly.pid()).unwrap();
                let os_pid = converge::process_info(orderly.pid())
                    .and_then(|i| i.os_pid)
                    .expect("it runs");
                say("orderly", os_pid);
            }
            ["switch-back", node, n] => {
                // A process here sends `n` numbers to `orderly` there: the
                // first through the nodes; once its direct session is open,
                // and it is told to go on, the next on it, then an exit
                // signal that changes nothing (`Normal`), and the rest
                // through the nodes again while the session drains.
                let to = cluster
                    .whereis(node, "orderly", Duration::from_secs(2))
                    .expect("registered there");
                let n: u64 = n.parse().unwrap();
                let switcher = converge::spawn(move |ctx: Ctx<()>| {
                    let mailbox = Mailbox::<u64>::from_pid(to);
                    mailbox.send(0).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !converge::dist::has_direct_session(to) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let direct = converge::dist::has_direct_session(to);
                    say("direct", direct);
                    ctx.recv().unwrap();
                    for i in 1..n / 2 {
                        mailbox.send(i).unwrap();
                    }
                    mailbox.exit(ExitReason::Normal);
                    for i in n / 2..n {
                        mailbox.send(i).unwrap();
                    }
                    say("switched", converge::dist::has_direct_session(to));
                })
                .unwrap();
                aimed = Some(switcher.pid());
            }
            ["go-switch"] => {
                Mailbox::<()>::from_pid(aimed.take().expect("a switcher"))
                    .send(())
                    .unwrap();
            }
            ["fan-out", node, n] => {
                // Starts `n` counters there, then sends each one number from
                // this node's main program, all at once: more sessions than
                // the node opens at a time.
                let n: u64 = n.parse().unwrap();
                let counters: Vec<Pid> = (0..n)
                    .map(|i| {
                        cluster
                            .spawn_on(node, "counter", &(i * 1000), Duration::from_secs(5))
                            .expect("a counter there")
                    })
                    .collect();
                for c in &counters {
                    Mailbox::<u64>::from_pid(*c).send(7).unwrap();
                }
                say("fanned", n);
            }
            ["stop", os_pid] => {
                stop(os_pid);
                say("stopped", os_pid);
            }
            ["delivered", n] => {
                // Waits until this node delivered `n` messages from others.
                let n: u64 = n.parse().unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while cluster.stats().delivered < n && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                say("delivered", cluster.stats().delivered >= n);
            }
            ["cont", os_pid] => {
                let cont = std::process::Command::new("kill").args(["-CONT", os_pid]).status();
                assert!(cont.unwrap().success());
            }
            ["link-burst", node, n, code] => {
                // Linked (trapping exits) with `burst` there, which sends `n`
                // numbers and ends: all of them come before the exit signal.
                let burst = cluster
                    .whereis(node, "burst", Duration::from_secs(2))
                    .expect("burst is registered there");
                let (n, code): (u64, i32) = (n.parse().unwrap(), code.parse().unwrap());
                converge::spawn(move |ctx: Ctx<u64>| {
                    ctx.trap_exits(true);
                    ctx.link(burst).unwrap();
                    Mailbox::<(Pid, u64, i32)>::from_pid(burst)
                        .send((ctx.pid(), n, code))
                        .unwrap();
                    let (mut got, mut in_order) = (0u64, true);
                    while let Ok(e) = ctx.recv_event() {
                        match e {
                            Event::Message(i) => {
                                in_order &= i == got;
                                got += 1;
                            }
                            Event::Exit(x) => {
                                say("link-exit", format!("{got} {in_order} {:?}", x.reason));
                                return;
                            }
                            _ => {}
                        }
                    }
                })
                .unwrap();
            }
            ["link-echo", node] => {
                let echo = cluster
                    .whereis(node, "echo", Duration::from_secs(2))
                    .expect("echo is registered there");
                converge::spawn(move |ctx: Ctx<u64>| {
                    ctx.trap_exits(true);
                    ctx.link(echo).unwrap();
                    say("linked", "echo");
                    while let Ok(e) = ctx.recv_event() {
                        if let Event::Exit(x) = e {
                            say("echo-exit", format!("{:?}", x.reason));
                            return;
                        }
                    }
                })
                .unwrap();
            }
            ["link-and-end", node, code] => {
                // Links with `linker` there, then ends with `code`.
                let linker = cluster
                    .whereis(node, "linker", Duration::from_secs(2))
                    .expect("linker is registered there");
                let code: i32 = code.parse().unwrap();
                converge::spawn(move |ctx: Ctx<()>| {
                    ctx.link(linker).unwrap();
                    ExitReason::Code(code)
                })
                .unwrap();
            }
            ["kill-echo", node] => {
                // Monitors `echo` there, then kills it from here.
                let echo = cluster
                    .whereis(node, "echo", Duration::from_secs(2))
                    .expect("echo is registered there");
                converge::spawn(move |ctx: Ctx<()>| {
                    let watch = ctx.monitor(echo);
                    Mailbox::<u64>::from_pid(echo).kill();
                    if let Ok(d) = ctx.recv_down(watch) {
                        say("killed-echo", format!("{:?}", d.reason));
                    }
                })
                .unwrap();
            }
            ["exit-linker", node] => {
                let linker = cluster
                    .whereis(node, "linker", Duration::from_secs(2))
                    .expect("linker is registered there");
                Mailbox::<()>::from_pid(linker).exit(ExitReason::Error("told to".into()));
                say("exited", "linker");
            }
            ["watch-echo", node] => {
                let echo = cluster
                    .whereis(node, "echo", Duration::from_secs(2))
                    .expect("echo is registered there");
                converge::spawn(move |ctx: Ctx<u64>| {
                    let watch = ctx.monitor(echo);
                    say("watching", "echo");
                    if let Ok(d) = ctx.recv_down(watch) {
                        say("echo-down", format!("{:?}", d.reason));
                    }
                })
                .unwrap();
            }
            ["monitor", name] => {
                let one = converge::spawn(|ctx: Ctx<NodeEvent>| {
                    if let Ok(NodeEvent::NodeDown { node, reason }) = ctx.recv() {
                        say("monitor-down", format!("{node} {reason:?}"));
                    }
                })
                .unwrap();
                cluster.monitor_node(name, one);
                say("monitoring", name);
            }
            ["aim", node] => {
                aimed = cluster.whereis(node, "bigsink", Duration::from_secs(2));
                say("aimed", format!("{}", aimed.is_some()));
            }
            ["flood", n] => {
                // A large message to the sink aimed at, from a thread.
                let to = Mailbox::<Vec<u8>>::from_pid(aimed.expect("aimed first"));
                let v = vec![7u8; n.parse::<usize>().unwrap()];
                std::thread::spawn(move || {
                    let _ = to.send(v);
                });
                say("flooding", n);
            }
            ["save", node] => {
                saved = cluster.whereis(node, "echo", Duration::from_secs(2));
                say("saved", format!("{}", saved.is_some()));
            }
            ["send-saved", n] => {
                let to = Mailbox::<u64>::from_pid(saved.expect("a saved pid"));
                for i in 0..n.parse::<u64>().unwrap() {
                    to.send(1000 + i).unwrap();
                }
                say("sent-saved", n);
            }
            ["count-members"] => say("members", cluster.nodes().len()),
            ["connected"] => {
                let names: Vec<String> = cluster
                    .nodes()
                    .into_iter()
                    .filter(|n| n.connected)
                    .map(|n| n.name)
                    .collect();
                say("connected", names.join(","));
            }
            ["load-of", node] => {
                let load = cluster
                    .nodes()
                    .into_iter()
                    .find(|n| n.name == *node)
                    .and_then(|n| n.load);
                say("load", format!("{load:?}"));
            }
            ["send-to", pid, n] => {
                let to = Mailbox::<u64>::from_pid(decode_pid(pid));
                for i in 0..n.parse::<u64>().unwrap() {
                    to.send(i).unwrap();
                }
                say("sent-to", n);
            }
            ["task-on", node, name, arg] => {
                let r = cluster.run_task::<u64, u64>(node, name, &arg.parse().unwrap(), Duration::from_secs(5));
                say("task", format!("{r:?}"));
            }
            ["spawn-on", node, name, arg] => {
                let arg: u64 = arg.parse().unwrap();
                match cluster.spawn_on(node, name, &arg, Duration::from_secs(2)) {
                    Ok(pid) => {
                        spawned = Some(pid);
                        say("spawned", "ok");
                    }
                    Err(e) => say("spawned", format!("err {e}")),
                }
            }
            ["spawn-on-text", node, name, text] => match cluster.spawn_on(node, name, text, Duration::from_secs(2)) {
                Ok(_) => say("spawned", "ok"),
                Err(e) => say("spawned", format!("err {e}")),
            },
            ["send-spawned", n] => {
                let to = Mailbox::<u64>::from_pid(spawned.expect("a spawned pid"));
                for i in 0..n.parse::<u64>().unwrap() {
                    to.send(i).unwrap();
                }
                say("sent-spawned", n);
            }
            ["stats"] => {
                let s = cluster.stats();
                say(
                    "stats",
                    format!(
                        "refused={} stale={} lost={} backlogged={} closed_idle={} sent={} direct={} direct_refusals={}",
                        s.refused, s.stale, s.lost, s.backlogged, s.closed_idle, s.sent, s.direct, s.direct_refused
                    ),
                );
            }
            ["leave"] => break,
            _ => say("unknown", line.trim()),
        }
    }
    drop(cluster);
    node.shutdown(Duration::from_secs(2));
}

/// What another node may start here: counts from `start`.
/// A task other nodes may run here.
fn square(n: u64) -> u64 {
    n * n
}

/// The node's main program monitors `name` on node `on`, asks it for `n`
/// messages and to end with `code`, takes them (pausing every `every`: a
/// slow receiver, behind which what the readers hand it backs up), and says
/// how many came, whether in order (`number` reads a message's), and the
/// Down's reason.
fn watch_from_main<M: serde::Serialize + serde::de::DeserializeOwned>(
    (node, cluster): (&converge::Node, &Cluster),
    (on, name): (&str, &str),
    (n, code): (u64, i32),
    every: u64,
    number: impl Fn(&M) -> Option<u64>,
) {
    let target = cluster
        .whereis(on, name, Duration::from_secs(2))
        .expect("registered there");
    let ctx = node.ctx::<M>();
    ctx.monitor(target);
    Mailbox::<(Pid, u64, i32)>::from_pid(target)
        .send((ctx.pid(), n, code))
        .unwrap();
    watch_until_down(&ctx, number, every);
}

/// Sends `n` blobs of 64 KiB to `to`, numbered in their first bytes.
fn send_blobs(to: &Mailbox<Vec<u8>>, n: u64) {
    for i in 0..n {
        to.send(blob(i)).unwrap();
    }
}

/// A blob of 64 KiB numbered `i` in its first bytes.
fn blob(i: u64) -> Vec<u8> {
    let mut blob = vec![0u8; 64 << 10];
    blob[..8].copy_from_slice(&i.to_le_bytes());
    blob
}

/// Takes messages (numbered by `number`) until a `Down` or an exit signal, pausing 2 ms
/// after every `every` of them (0: never), and says how many came, whether
/// in order, and the Down's reason ("nothing" if none came within 30 s).
fn watch_until_down<M: serde::Serialize + serde::de::DeserializeOwned>(
    ctx: &Ctx<M>,
    number: impl Fn(&M) -> Option<u64>,
    every: u64,
) {
    let (mut got, mut in_order) = (0u64, true);
    loop {
        match ctx.recv_event_timeout(Duration::from_secs(30)) {
            Ok(Event::Message(m)) => {
                in_order &= number(&m) == Some(got);
                got += 1;
                if every > 0 && got % every == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(Event::Down(d)) => {
                say("watched", format!("{got} {in_order} {:?}", d.reason));
                return;
            }
            Ok(Event::Exit(x)) => {
                say("watched", format!("{got} {in_order} exit {:?}", x.reason));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                say("watched", format!("{got} {in_order} nothing"));
                return;
            }
        }
    }
}

/// The number a blob of `blobs` carries in its first bytes.
fn blob_number(blob: &[u8]) -> Option<u64> {
    blob.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// A task that takes `ms` milliseconds, and gives them back.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A task that panics.
fn lost(n: u64) -> u64 {
    panic!("lost at {n}")
}

fn counter(ctx: Ctx<u64>, start: u64) {
    while let Ok(n) = ctx.recv() {
        say("counted", start + n);
    }
}

/// The longest a test waits for a line from a node.
const EXPECT: Duration = Duration::from_secs(30);

/// A node process and the pipe of its commands.
struct TestNode {
    child: std::process::Child,
    /// Its output's lines, as they come (read by a thread of their own, so
    /// that a wait for one is bounded).
    lines: std::sync::mpsc::Receiver<(String, String)>,
    stdin: std::process::ChildStdin,
    addr: SocketAddr,
    /// Lines read while waiting for others, by their first word.
    backlog: HashMap<String, VecDeque<String>>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TestNode {
    fn start(name: &str) -> TestNode {
        TestNode::start_with(name, SECRET)
    }

    /// A node listening on `listen`.
    fn start_at(name: &str, listen: SocketAddr) -> TestNode {
        let mut cmd = helper("node");
        cmd.env("NODE_NAME", name)
            .env("NODE_SECRET", SECRET)
            .env("NODE_LISTEN", listen.to_string());
        TestNode::spawn(cmd)
    }

    /// A node with settings of its own (environment of the helper).
    fn start_env(name: &str, env: &[(&str, &str)]) -> TestNode {
        let mut cmd = helper("node");
        cmd.env("NODE_NAME", name).env("NODE_SECRET", SECRET);
        cmd.envs(env.iter().copied());
        TestNode::spawn(cmd)
    }

    /// How many lines of `key` were read and not taken.
    fn unread(&self, key: &str) -> usize {
        self.backlog.get(key).map_or(0, VecDeque::len)
    }

    /// Waits (10 s at most) until the node's counters (`stats`) say what
    /// `what` says, `holds` checks (they are counted on the node's own
    /// threads, after what the test saw), and returns them.
    fn wait_stats(&mut self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.tell("stats");
            let stats = self.expect("stats");
            if holds(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "never {what}: {stats}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (10 s at most) until the nodes it has a session with are
    /// `names` (comma-separated, by name).
    fn wait_connected(&mut self, names: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.tell("connected");
            let now = self.expect("connected");
            if now == names {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connected to {now:?}, never to {names:?} only"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A node whose sessions run on [`Masked`].
    fn start_masked(name: &str) -> TestNode {
        let mut cmd = helper("node");
        cmd.env("NODE_NAME", name)
            .env("NODE_SECRET", SECRET)
            .env("NODE_TRANSPORT", "masked");
        TestNode::spawn(cmd)
    }

    fn start_with(name: &str, secret: &str) -> TestNode {
        let mut cmd = helper("node");
        cmd.env("NODE_NAME", name).env("NODE_SECRET", secret);
        TestNode::spawn(cmd)
    }

    /// A node in the network namespace `ns`, listening on `ip`.
    fn start_in(ns: &str, ip: &str, name: &str) -> TestNode {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(std::env::current_exe().unwrap())
            .env(util::HELPER, "node")
            .env("NODE_NAME", name)
            .env("NODE_SECRET", SECRET)
            .env("NODE_LISTEN", format!("{ip}:0"))
            .stdout(Stdio::piped());
        TestNode::spawn(cmd)
    }

    fn spawn(mut cmd: std::process::Command) -> TestNode {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let (k, rest) = line.split_once(' ').unwrap_or((&line, ""));
                if tx.send((k.to_string(), rest.to_string())).is_err() {
                    return;
                }
            }
        });
        let mut node = TestNode {
            child,
            lines,
            stdin,
            addr: "0.0.0.0:0".parse().unwrap(),
            backlog: HashMap::new(),
        };
        // What its processes print before it (`linker ready`) is kept.
        node.addr = node.expect("addr").parse().unwrap();
        node
    }

    fn tell(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line of `key` (read before, or now).
    fn expect(&mut self, key: &str) -> String {
        if let Some(rest) = self.backlog.get_mut(key).and_then(VecDeque::pop_front) {
            return rest;
        }
        loop {
            let (k, rest) = match self.lines.recv_timeout(EXPECT) {
                Ok(line) => line,
                Err(e) => panic!(
                    "no {key:?} from the node within {EXPECT:?} ({e}); unread: {:?}",
                    self.backlog
                ),
            };
            if k == key {
                return rest;
            }
            self.backlog.entry(k).or_default().push_back(rest);
        }
    }

    /// `alpha` and `beta`, beta joined through alpha.
    fn pair() -> (TestNode, TestNode) {
        let a = TestNode::start("alpha");
        let mut b = TestNode::start("beta");
        b.join(a.addr, "alpha");
        (a, b)
    }

    /// Waits (20 s at most) until `node` answers where its `echo` is: after a
    /// stop, a partition or a restart, a session can be had again.
    fn reach_echo_of(&mut self, node: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.tell(&format!("whereis {node} echo"));
            if self.expect("whereis").starts_with("Some(") {
                return;
            }
            assert!(Instant::now() < deadline, "{why}");
        }
    }

    /// Joins through `seed` and waits until it sees `other` as a member.
    fn join(&mut self, seed: SocketAddr, other: &str) {
        self.tell(&format!("join {seed}"));
        self.tell(&format!("wait-member {other}"));
        assert_eq!(self.expect("member"), format!("{other} true"));
    }
}

fn nodes_join_through_any_member() {
    let mut a = TestNode::start("alpha");
    let mut b = TestNode::start("beta");
    let mut c = TestNode::start("gamma");
    b.join(a.addr, "alpha");
    // gamma joins through beta and learns of alpha from the cluster.
    c.join(b.addr, "beta");
    c.tell("wait-member alpha");
    assert_eq!(c.expect("member"), "alpha true");
    a.tell("wait-member gamma");
    assert_eq!(a.expect("member"), "gamma true");
    let mut ups = vec![a.expect("up"), a.expect("up")];
    ups.sort();
    assert_eq!(ups, ["beta", "gamma"]);
}

fn messages_reach_a_process_of_another_node_in_order() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("send alpha 500");
    assert_eq!(b.expect("sent"), "500");
    // In order, none lost, none twice.
    for i in 0..500u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
    a.tell("stats");
    assert!(a.expect("stats").contains("stale=0"));
}

fn a_64_mib_message_does_not_hold_up_small_ones_nor_ticks() {
    let (mut a, mut b) = TestNode::pair();
    // The largest message a node takes by default, then small messages from
    // a process of the same node: they pass it, in order.
    let len = (64 << 20) - 64;
    b.tell(&format!("big alpha {len}"));
    let sum = b.expect("big-sum");
    b.tell("relay alpha 200");
    assert_eq!(b.expect("relayed"), "200");
    let mut small = 0u64;
    let mut big_at = None;
    for at in 0..201 {
        let got = a.expect("got");
        if let Some(rest) = got.strip_prefix("big:") {
            assert_eq!(rest, format!("{len}:{sum}"));
            assert!(big_at.is_none(), "the large message came twice");
            big_at = Some(at);
        } else {
            assert_eq!(got, small.to_string());
            small += 1;
        }
    }
    assert_eq!(small, 200);
    assert!(
        big_at.is_some_and(|at| at > 0),
        "no small message passed the large one: {big_at:?}"
    );
    // The session held all along: nothing lost, nothing torn down.
    for node in [&mut a, &mut b] {
        node.tell("stats");
        let stats = node.expect("stats");
        assert!(stats.contains("lost=0") && stats.contains("backlogged=0"), "{stats}");
    }
}

fn messages_from_any_process_of_a_node_keep_their_order() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("relay alpha 300");
    assert_eq!(b.expect("relayed"), "300");
    for i in 0..300u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
}

fn a_remote_monitor_gets_the_reason_after_every_message() {
    let (_a, mut b) = TestNode::pair();
    b.tell("watch-burst alpha 2000 7");
    // Every number, in order, then the Down with the exit code; then a
    // monitor of the process gone is NoProc.
    assert_eq!(b.expect("watched"), "2000 true Code(7)");
    assert_eq!(b.expect("watched-again"), "NoProc");
    // Many, to a node's main program (they come from this node's readers,
    // batched, on its own connection): all before the Down too. (A node's
    // `burst` ends after one burst: a new pair each time.)
    for _ in 0..2 {
        let (_a, mut b) = TestNode::pair();
        b.tell("watch-burst-main alpha 100000 3");
        assert_eq!(b.expect("watched"), "100000 true Code(3)");
    }
    // Large ones, to a main program that takes them slowly.
    for _ in 0..2 {
        let (_a, mut b) = TestNode::pair();
        b.tell("watch-blobs-main alpha 800 5");
        assert_eq!(b.expect("watched"), "800 true Code(5)");
    }
    // To a process that is stopped until well after the sender ended (2 s:
    // its Down is here by then, and the node's old one-second wait for the
    // receiver was over): its node holds what the process's socket cannot
    // take, the Down behind it.
    let (_a, mut b) = TestNode::pair();
    b.tell("blobs-to-stopped blobs alpha 800 6");
    let stopped = b.expect("stopped");
    std::thread::sleep(Duration::from_secs(2));
    b.tell(&format!("cont {stopped}"));
    assert_eq!(b.expect("watched"), "800 true Code(6)");
    // The same with an exit signal the sender sends after its messages (it
    // lives on); once it is sent, a moment for it to reach the other node.
    let (mut a, mut b) = TestNode::pair();
    b.tell("blobs-to-stopped signaller alpha 800 9");
    let stopped = b.expect("stopped");
    assert_eq!(a.expect("signalled"), "800");
    std::thread::sleep(Duration::from_millis(300));
    b.tell(&format!("cont {stopped}"));
    assert_eq!(b.expect("watched"), "800 true exit Code(9)");
    // On a direct session between the two processes: the Down, then the
    // exit signal, after all of them too, the receiver stopped while they
    // are sent (its sender holds what the socket cannot take). All but the
    // first went on the session, not through the nodes.
    for (mode, code, end) in [(1, 6, "Code(6)"), (2, 9, "exit Code(9)")] {
        let (mut a, mut b) = TestNode::pair();
        b.tell(&format!("direct-to-stopped alpha 800 {code} {mode}"));
        let watcher = b.expect("watcher");
        assert_eq!(a.expect("direct"), "true");
        b.tell(&format!("stop-and-go {watcher}"));
        assert_eq!(b.expect("going"), "800");
        if mode == 1 {
            std::thread::sleep(Duration::from_secs(2));
        } else {
            assert_eq!(a.expect("signalled"), "800");
            std::thread::sleep(Duration::from_millis(300));
        }
        b.tell(&format!("cont {watcher}"));
        assert_eq!(b.expect("watched"), format!("800 true {end}"));
        if mode == 2 {
            assert_eq!(b.expect("after"), "Some(800)");
        }
        a.tell("stats");
        let stats = a.expect("stats");
        let count = |name: &str| -> u64 {
            stats
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .expect("a count")
        };
        assert!(count("sent") < 10, "{stats}");
        assert!(count("direct") >= 1, "{stats}");
    }
    // The sender stops right after its exit signal, most blobs still in its
    // memory, for longer than a receiver ever waited for a session to end
    // (2 s): the receiver holds the signal until the session ends, when the
    // sender goes on.
    let (mut a, mut b) = TestNode::pair();
    b.tell("direct-to-stopped alpha 800 9 3");
    let watcher = b.expect("watcher");
    assert_eq!(a.expect("direct"), "true");
    b.tell(&format!("stop-and-go {watcher}"));
    assert_eq!(b.expect("going"), "800");
    let signalled = a.expect("signalled");
    let (n, sender) = signalled.split_once(' ').expect("a count and a pid");
    assert_eq!(n, "800");
    b.tell(&format!("cont {watcher}"));
    std::thread::sleep(Duration::from_secs(3));
    a.tell(&format!("cont {sender}"));
    assert_eq!(b.expect("watched"), "800 true exit Code(9)");
    assert_eq!(b.expect("after"), "Some(800)");
    // Blob 1 on a session that has just opened, then an exit signal, then
    // blob 2 through the nodes: blob 1 first, though the session is read
    // only once its fence came, and the signal after it. (The signal and
    // blob 2 take two ways from the other node: either may come first, as
    // a message sent after a signal through a node can.)
    for _ in 0..3 {
        let (_a, mut b) = TestNode::pair();
        b.tell("direct-at-once alpha 9");
        let seen = b.expect("at-once");
        let seen: Vec<&str> = seen.split(' ').collect();
        assert_eq!(seen[..2], ["Some(0)", "Some(1)"], "{seen:?}");
        let mut rest = seen[2..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, ["Code(9)", "Some(2)"], "{seen:?}");
    }
}

fn a_remote_monitor_of_a_killed_node_is_noconnection() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("watch-echo alpha");
    assert_eq!(b.expect("watching"), "echo");
    // The monitor has reached alpha (a message sent after it, answered).
    b.tell("send alpha 1");
    assert_eq!(b.expect("sent"), "1");
    assert_eq!(a.expect("got"), "0");
    let t = Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert_eq!(b.expect("echo-down"), "NoConnection");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

fn a_killed_node_is_down_within_2s() {
    let (mut a, mut b) = TestNode::pair();
    // A session between them: the loss shows through ticks as well.
    b.tell("send alpha 1");
    assert_eq!(b.expect("sent"), "1");
    assert_eq!(a.expect("got"), "0");
    a.tell("monitor beta");
    assert_eq!(a.expect("monitoring"), "beta");
    let t = Instant::now();
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let down = a.expect("monitor-down");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(down.starts_with("beta "), "{down}");
    assert!(a.expect("down").starts_with("beta "));
}

fn a_node_that_leaves_is_down_at_once() {
    let (mut a, mut b) = TestNode::pair();
    assert_eq!(a.expect("up"), "beta");
    let t = Instant::now();
    b.tell("leave");
    let down = a.expect("down");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    assert!(down.starts_with("beta "), "{down}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "beta did not end after leaving");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
}

fn a_wrong_secret_is_refused() {
    let mut a = TestNode::start("alpha");
    let mut intruder = TestNode::start_with("intruder", "not the secret of this cluster at all");
    intruder.tell(&format!("join {}", a.addr));
    intruder.tell("wait-member alpha");
    assert_eq!(intruder.expect("member"), "alpha false");
    a.wait_stats("a refusal counted", |stats| !stats.contains("refused=0"));
    // A member with the secret still joins.
    let mut b = TestNode::start("beta");
    b.join(a.addr, "alpha");
    a.tell("wait-member intruder");
    assert_eq!(a.expect("member"), "intruder false");
}

/// A transport of the program's own, as an application composes one: TCP
/// with every byte masked. Its streams cannot write without waiting, so
/// every record goes through the session's writer.
#[derive(Debug)]
struct Masked;

const MASK: u8 = 0x5A;

struct MaskedStream(std::net::TcpStream);

struct MaskedListener(std::net::TcpListener);

impl std::io::Read for MaskedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        buf[..n].iter_mut().for_each(|b| *b ^= MASK);
        Ok(n)
    }
}

impl std::io::Write for MaskedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let masked: Vec<u8> = buf.iter().map(|b| b ^ MASK).collect();
        self.0.write_all(&masked)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl converge::dist::Stream for MaskedStream {
    fn try_clone(&self) -> std::io::Result<Box<dyn converge::dist::Stream>> {
        Ok(Box::new(MaskedStream(self.0.try_clone()?)))
    }

    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.0.peer_addr().ok()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
}

impl converge::dist::Listener for MaskedListener {
    fn accept(&self) -> std::io::Result<Box<dyn converge::dist::Stream>> {
        let (s, _) = self.0.accept()?;
        s.set_nodelay(true)?;
        Ok(Box::new(MaskedStream(s)))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl converge::dist::Transport for Masked {
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<Box<dyn converge::dist::Stream>> {
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        Ok(Box::new(MaskedStream(s)))
    }

    fn listen(&self, addr: SocketAddr) -> std::io::Result<Box<dyn converge::dist::Listener>> {
        Ok(Box::new(MaskedListener(std::net::TcpListener::bind(addr)?)))
    }
}

/// `from` sends 0..n to the echo of `to` (named `name`), which gets them
/// all, in order.
fn send(from: &mut TestNode, to: &mut TestNode, name: &str, n: u64) {
    from.tell(&format!("send {name} {n}"));
    assert_eq!(from.expect("sent"), n.to_string());
    for i in 0..n {
        assert_eq!(to.expect("got"), i.to_string());
    }
}

fn a_transport_of_the_programs_own_carries_sessions() {
    let mut a = TestNode::start_masked("alpha");
    let mut b = TestNode::start_masked("beta");
    b.join(a.addr, "alpha");
    send(&mut b, &mut a, "alpha", 300);
    // And the other way, on the same session.
    send(&mut a, &mut b, "beta", 3);
    a.tell("stats");
    assert!(a.expect("stats").contains("refused=0"));
    // A node on plain TCP joins (membership is not on the transport), but
    // its bytes are not what the masked nodes read: no session forms with
    // it, and its handshakes are refused and counted.
    let mut c = TestNode::start("gamma");
    c.join(a.addr, "alpha");
    c.tell("send alpha 1");
    assert_eq!(c.expect("sent"), "none: no echo there");
    a.wait_stats("a refusal counted", |stats| !stats.contains("refused=0"));
    // The masked pair goes on.
    send(&mut b, &mut a, "alpha", 2);
}

fn idle_sessions_close_oldest_first_and_open_again_on_use() {
    // Alpha keeps one session at most; one unused for 300 ms is idle.
    let mut a = TestNode::start_env("alpha", &[("NODE_MAX_SESSIONS", "1"), ("NODE_IDLE_MS", "300")]);
    let mut b = TestNode::start("beta");
    let mut c = TestNode::start("gamma");
    b.join(a.addr, "alpha");
    c.join(a.addr, "alpha");
    send(&mut a, &mut b, "beta", 5);
    send(&mut a, &mut c, "gamma", 5);
    // Two sessions, one over the cap: beta's, used longest ago, closes.
    a.wait_connected("gamma");
    // Used again: a new session, every message in order; now gamma's is
    // the idle one used longest ago.
    send(&mut a, &mut b, "beta", 50);
    a.wait_connected("beta");
    send(&mut a, &mut c, "gamma", 50);
    a.wait_connected("gamma");
    let closed_idle = |stats: &str| !stats.contains("closed_idle=0");
    let stats = a.wait_stats("an idle session closed", closed_idle);
    assert!(stats.contains("lost=0"), "{stats}");
    // Quietly, at both ends: no NodeDown, no session counted as lost.
    let stats = b.wait_stats("an idle session closed", closed_idle);
    assert!(stats.contains("lost=0"), "{stats}");
    for node in [&a, &b, &c] {
        assert_eq!(node.unread("down"), 0, "a NodeDown for an idle session");
    }
    // Sends that meet a session being closed wait for the answer, and go on
    // the same session or on a new one: none lost, none doubled, in order.
    // (The pauses only vary when sends meet closes; the checks are on what
    // arrives.)
    for pause in [280, 300, 310, 320, 340] {
        send(&mut a, &mut b, "beta", 20);
        std::thread::sleep(Duration::from_millis(pause));
        send(&mut a, &mut c, "gamma", 20);
        std::thread::sleep(Duration::from_millis(pause));
    }
    // A task running there keeps its session open however long it takes,
    // while gamma keeps using its own: the task's answer comes back.
    a.tell("task-on beta nap 1500");
    for _ in 0..6 {
        send(&mut c, &mut a, "alpha", 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(a.expect("task"), "Ok(1500)");
    // A session with a link across it is never idle: alpha links to
    // beta's echo, then uses gamma; gamma's session is the one that closes.
    a.tell("link-echo beta");
    a.expect("linked");
    send(&mut a, &mut c, "gamma", 1);
    a.wait_connected("beta");
}

fn a_stalled_peer_blocks_no_send_and_its_session_goes_past_its_cap() {
    // Alpha queues 4 MiB at most for a peer.
    let mut a = TestNode::start_env("alpha", &[("NODE_MAX_QUEUED", "4194304")]);
    let mut b = TestNode::start("beta");
    let mut c = TestNode::start("gamma");
    b.join(a.addr, "alpha");
    c.join(a.addr, "alpha");
    send(&mut a, &mut b, "beta", 3);
    a.tell("aim beta");
    assert_eq!(a.expect("aimed"), "true");
    a.tell("save beta");
    assert_eq!(a.expect("saved"), "true");
    a.tell("monitor beta");
    assert_eq!(a.expect("monitoring"), "beta");
    // Beta stops reading: 48 MiB for it (more than its cap and what the
    // sockets hold).
    let pid = b.child.id().to_string();
    let stop = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().unwrap();
    stop("-STOP");
    let t = Instant::now();
    a.tell("flood 50331648");
    assert_eq!(a.expect("flooding"), "50331648");
    // Sends to it never wait, and its session goes for what was queued
    // (before its ticks would tell it is silent).
    a.tell("send-saved 100");
    assert_eq!(a.expect("sent-saved"), "100");
    assert_eq!(a.expect("monitor-down"), "beta Backlogged");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Other peers go on.
    send(&mut a, &mut c, "gamma", 5);
    a.wait_stats("one session backlogged", |stats| stats.contains("backlogged=1"));
    // Back: a new session, messages in order. Of what was sent while beta
    // was stopped (from 1000), what was in flight when the session was
    // torn down may be lost (at most once); what is left comes in order,
    // and before anything sent after it: then 0..999 whole, then a last 0.
    stop("-CONT");
    a.reach_echo_of("beta", "beta never came back");
    a.tell("send beta 1000");
    assert_eq!(a.expect("sent"), "1000");
    a.tell("send beta 1");
    assert_eq!(a.expect("sent"), "1");
    let mut next = || -> u64 { b.expect("got").parse().unwrap() };
    let mut saved = Vec::new();
    let mut got = next();
    while got >= 1000 {
        saved.push(got);
        got = next();
    }
    assert!(
        saved.windows(2).all(|w| w[0] < w[1]) && saved.iter().all(|&n| n < 1100),
        "what was sent while beta was stopped, out of order or doubled: {saved:?}"
    );
    for i in 0..1000 {
        assert_eq!(got, i, "after {saved:?}");
        got = next();
    }
    assert_eq!(got, 0, "the last message came after everything sent before it");
}

fn whereis_on_another_node_and_a_name_that_is_not_there() {
    let (_a, mut b) = TestNode::pair();
    b.tell("whereis alpha echo");
    assert!(b.expect("whereis").starts_with("Some("));
    b.tell("whereis alpha nobody");
    assert_eq!(b.expect("whereis"), "None");
    b.tell("whereis nowhere echo");
    assert_eq!(b.expect("whereis"), "None");
}

/// Two network namespaces joined by a veth pair, removed at the end.
struct Net {
    names: [String; 2],
    links: [String; 2],
}

impl Net {
    const IPS: [&str; 2] = ["10.231.7.1", "10.231.7.2"];

    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let names = [format!("cvA{id}"), format!("cvB{id}")];
        let links = [format!("cva{id}"), format!("cvb{id}")];
        let net = Net { names, links };
        let ip = |args: &[&str]| {
            let s = std::process::Command::new("ip").args(args).status().unwrap();
            assert!(s.success(), "ip {args:?}");
        };
        for n in &net.names {
            ip(&["netns", "add", n]);
        }
        ip(&[
            "link",
            "add",
            &net.links[0],
            "type",
            "veth",
            "peer",
            "name",
            &net.links[1],
        ]);
        for i in 0..2 {
            let (ns, link) = (&net.names[i], &net.links[i]);
            ip(&["link", "set", link, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{}/24", Net::IPS[i]), "dev", link]);
            ip(&["-n", ns, "link", "set", link, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Sets the second namespace's end of the link down or up.
    fn link(&self, up: bool) {
        let s = std::process::Command::new("ip")
            .args([
                "-n",
                &self.names[1],
                "link",
                "set",
                &self.links[1],
                if up { "up" } else { "down" },
            ])
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn a_partition_is_seen_within_2s_and_heals() {
    let net = Net::new();
    let mut a = TestNode::start_in(&net.names[0], Net::IPS[0], "alpha");
    let mut b = TestNode::start_in(&net.names[1], Net::IPS[1], "beta");
    b.join(a.addr, "alpha");
    b.tell("send alpha 3");
    assert_eq!(b.expect("sent"), "3");
    for i in 0..3u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
    a.tell("monitor beta");
    assert_eq!(a.expect("monitoring"), "beta");
    b.tell("monitor alpha");
    assert_eq!(b.expect("monitoring"), "alpha");
    // Cut: each side sees the other down, through its session's ticks or
    // membership, whichever first.
    let t = Instant::now();
    net.link(false);
    let down_a = a.expect("monitor-down");
    let down_b = b.expect("monitor-down");
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
    assert!(down_a.starts_with("beta "), "{down_a}");
    assert!(down_b.starts_with("alpha "), "{down_b}");
    // Healed: back in one cluster, and messages flow on a new session.
    net.link(true);
    b.reach_echo_of("alpha", "the partition never healed");
    b.tell("send alpha 2");
    assert_eq!(b.expect("sent"), "2");
    for i in 0..2u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
}

fn hostile_bytes_are_refused_and_disturb_nothing() {
    let (mut a, mut b) = TestNode::pair();
    // Garbage, a huge length prefix, and a handshake cut short, on the
    // session port; garbage on the membership port.
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0xff, 0xff],
        &[0, 48, 1, 2, 3],
    ] {
        let mut s = std::net::TcpStream::connect(a.addr).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        udp.send_to(&[0x43, 1, 0, 0, 0, 0], a.addr).unwrap();
    }
    // Counted, and the cluster goes on.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.tell("stats");
        let stats = a.expect("stats");
        let refused: u64 = stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix("refused="))
            .unwrap()
            .parse()
            .unwrap();
        if refused >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.tell("send alpha 10");
    assert_eq!(b.expect("sent"), "10");
    for i in 0..10u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
}

fn a_stopped_node_is_down_within_2s_and_comes_back_as_a_new_session() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("send alpha 1");
    assert_eq!(b.expect("sent"), "1");
    assert_eq!(a.expect("got"), "0");
    a.tell("monitor beta");
    assert_eq!(a.expect("monitoring"), "beta");
    let pid = b.child.id().to_string();
    let t = Instant::now();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let down = a.expect("monitor-down");
    let took = t.elapsed();
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(down.starts_with("beta "), "{down}");
    // Back: messages flow again, on a new session.
    b.reach_echo_of("alpha", "beta never came back");
    b.tell("send alpha 3");
    assert_eq!(b.expect("sent"), "3");
    for i in 0..3u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
}

fn a_restarted_node_never_gets_frames_for_its_old_pids() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("save alpha");
    assert_eq!(b.expect("saved"), "true");
    // alpha restarts on the same address: a new incarnation.
    let addr = a.addr;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let mut again = TestNode::start_at("alpha", addr);
    again.tell(&format!("join {}", b.addr));
    // Until beta knows the new alpha (the old one may be listed a moment
    // longer).
    b.reach_echo_of("alpha", "alpha never came back");
    // Frames for the old echo: dropped and counted; the new echo gets only
    // what is sent to it.
    b.tell("send-saved 5");
    assert_eq!(b.expect("sent-saved"), "5");
    b.tell("send alpha 2");
    assert_eq!(b.expect("sent"), "2");
    assert_eq!(again.expect("got"), "0");
    assert_eq!(again.expect("got"), "1");
    b.tell("stats");
    let stats = b.expect("stats");
    assert!(!stats.contains("stale=0"), "{stats}");
}

fn sixteen_nodes_form_one_cluster() {
    let mut first = TestNode::start("n00");
    let mut rest: Vec<TestNode> = (1..16).map(|i| TestNode::start(&format!("n{i:02}"))).collect();
    for n in &mut rest {
        n.tell(&format!("join {}", first.addr));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in rest.iter_mut().chain(std::iter::once(&mut first)) {
        loop {
            n.tell("count-members");
            if n.expect("members") == "15" {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never formed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The last node reaches the first through a session of its own.
    let last = rest.last_mut().unwrap();
    last.tell("send n00 5");
    assert_eq!(last.expect("sent"), "5");
    for i in 0..5u64 {
        assert_eq!(first.expect("got"), i.to_string());
    }
}

fn remote_spawn_starts_registered_functions_only() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("spawn-on alpha counter 100");
    assert_eq!(b.expect("spawned"), "ok");
    b.tell("send-spawned 3");
    for i in 100..103u64 {
        assert_eq!(a.expect("counted"), i.to_string());
    }
    // Nothing else can be started; arguments of another type are refused;
    // a node not there does not answer.
    b.tell("spawn-on alpha sh 1");
    assert_eq!(b.expect("spawned"), "err nothing named \"sh\" may be started there");
    b.tell("spawn-on-text alpha counter hello");
    let bad = b.expect("spawned");
    assert!(
        bad.starts_with("err the arguments of \"counter\" do not decode"),
        "{bad}"
    );
    b.tell("spawn-on nowhere counter 1");
    assert_eq!(b.expect("spawned"), "err no answer from the node: nowhere");
}

fn simultaneous_connects_with_messages_in_flight_lose_nothing() {
    for _ in 0..3 {
        let mut a = TestNode::start("alpha");
        let mut b = TestNode::start("beta");
        let (pa, pb) = (a.expect("echo-pid"), b.expect("echo-pid"));
        // Members of one cluster, with no session yet: both send at once,
        // each opening one; the two settle on one, and what was queued
        // meanwhile goes through it.
        b.join(a.addr, "alpha");
        a.tell(&format!("send-to {pb} 300"));
        b.tell(&format!("send-to {pa} 300"));
        for node in [&mut a, &mut b] {
            for i in 0..300u64 {
                assert_eq!(node.expect("got"), i.to_string());
            }
            node.tell("stats");
            let stats = node.expect("stats");
            assert!(stats.contains("stale=0") && stats.contains("lost=0"), "{stats}");
        }
    }
}

fn pool_tasks_run_on_another_node_by_name() {
    let (mut a, _b) = TestNode::pair();
    // Its pool is its load, as it advertises it: one scheduler, idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        a.tell("load-of beta");
        let load = a.expect("load");
        if load == "Some(Load { slots: 1, busy: 0, queued: 0 })" {
            break;
        }
        assert!(Instant::now() < deadline, "beta's load: {load}");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.tell("task-on beta square 7");
    assert_eq!(a.expect("task"), "Ok(49)");
    // Only what is registered there; a panic there comes back as one.
    a.tell("task-on beta rm 1");
    assert_eq!(a.expect("task"), "Err(NotRegistered(\"rm\"))");
    a.tell("task-on beta lost 3");
    assert_eq!(a.expect("task"), "Err(Panicked(\"lost at 3\"))");
    a.tell("task-on nowhere square 1");
    assert_eq!(a.expect("task"), "Err(NoConnection(\"nowhere\"))");
}

fn links_across_nodes_carry_exit_signals_both_ways() {
    let (mut a, mut b) = TestNode::pair();
    assert_eq!(a.expect("linker"), "ready");
    // There to here: the reason, after every message.
    b.tell("link-burst alpha 1000 9");
    assert_eq!(b.expect("link-exit"), "1000 true Code(9)");
    // Here to there.
    b.tell("link-and-end alpha 4");
    assert_eq!(a.expect("linker-exit"), "Code(4)");
}

fn exit_signals_and_kills_reach_processes_of_other_nodes() {
    let (mut a, mut b) = TestNode::pair();
    assert_eq!(a.expect("linker"), "ready");
    // A trappable signal to a process that traps: a message there.
    b.tell("exit-linker alpha");
    assert_eq!(b.expect("exited"), "linker");
    assert_eq!(a.expect("linker-exit"), "Error(\"told to\")");
    // A kill, from a process that monitors its target: Down Killed.
    b.tell("kill-echo alpha");
    assert_eq!(b.expect("killed-echo"), "Killed");
}

fn a_link_across_a_lost_session_is_noconnection() {
    let (mut a, mut b) = TestNode::pair();
    b.tell("link-echo alpha");
    assert_eq!(b.expect("linked"), "echo");
    b.tell("send alpha 1");
    assert_eq!(b.expect("sent"), "1");
    assert_eq!(a.expect("got"), "0");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert_eq!(b.expect("echo-exit"), "NoConnection");
}

fn monitor_node_of_an_unknown_node_is_down_at_once() {
    let mut a = TestNode::start("alpha");
    a.tell("monitor nowhere");
    assert_eq!(a.expect("monitoring"), "nowhere");
    assert_eq!(a.expect("monitor-down"), "nowhere Unknown");
}

fn direct_sessions_switch_both_ways_in_order() {
    let (mut a, mut b) = TestNode::pair();
    // Through the nodes, on a direct session, back through the nodes after
    // an exit signal: one sequence, in order, with no gap. The receiver is
    // stopped from the switch back until everything reached its node: the
    // end of its session and the frames through the node wait for it
    // together.
    b.tell("orderly 20000");
    let orderly = b.expect("orderly");
    a.tell("switch-back beta 20000");
    assert_eq!(a.expect("direct"), "true");
    b.tell(&format!("stop {orderly}"));
    assert_eq!(b.expect("stopped"), orderly);
    a.tell("go-switch");
    assert_eq!(a.expect("switched"), "false");
    // The first number, the fence and the last half, through the nodes.
    b.tell("delivered 10002");
    assert_eq!(b.expect("delivered"), "true");
    b.tell(&format!("cont {orderly}"));
    assert_eq!(b.expect("ordered"), "20000 true");
    // The node's main program sends to more processes of another node than
    // it opens sessions to at once: every message arrives, none waits.
    a.tell("fan-out beta 40");
    assert_eq!(a.expect("fanned"), "40");
    let mut counted: Vec<u64> = (0..40).map(|_| b.expect("counted").parse().unwrap()).collect();
    counted.sort_unstable();
    assert_eq!(counted, (0..40).map(|i| i * 1000 + 7).collect::<Vec<_>>());
    a.tell("stats");
    let stats = a.expect("stats");
    assert!(!stats.contains("direct=0 "), "{stats}");
}

/// Stops the process `os_pid` (`SIGSTOP`) and waits until it is stopped.
fn stop(os_pid: &str) {
    let stop = std::process::Command::new("kill").args(["-STOP", os_pid]).status();
    assert!(stop.unwrap().success());
    let stat = format!("/proc/{os_pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") T ")) {
        assert!(Instant::now() < deadline, "{os_pid} never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pid as a node says it (`echo-pid`: its encoding, in hex).
fn decode_pid(hex: &str) -> Pid {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    postcard::from_bytes(&bytes).unwrap()
}

/// The pid of serial `serial` on node `node` (its id as 128 bits), made
/// as a peer would write it.
fn pid_of(node: u128, serial: u64) -> Pid {
    postcard::from_bytes(&postcard::to_stdvec(&(node, serial)).unwrap()).unwrap()
}

/// A node's id (128 bits) from a pid of it.
fn node_bits(pid: Pid) -> u128 {
    postcard::from_bytes::<(u128, u64)>(&postcard::to_stdvec(&pid).unwrap())
        .unwrap()
        .0
}

fn direct_hellos_are_handed_only_to_processes_that_take_them() {
    use converge::dist::{Hello, Tcp};
    let (mut a, mut b) = TestNode::pair();
    let echo: Pid = decode_pid(&a.expect("echo-pid"));
    let beta_echo: Pid = decode_pid(&b.expect("echo-pid"));
    let alpha = node_bits(echo);
    let mallory: u128 = 0x006d_616c_6c6f_7279;
    let secret = Secret::from_bytes(SECRET.as_bytes()).unwrap();
    let node_id = |bits: u128| pid_of(bits, 1).node();
    // A peer holding the secret asks, as a process of its own node, for a
    // session to: a process that is not there, the zygote (a part of the
    // runtime), a process of another node, and, as a process of another
    // node than its own, the echo. Each is closed unanswered, and counted.
    let refused = [
        (pid_of(mallory, 9), pid_of(alpha, 999_999)),
        (pid_of(mallory, 9), pid_of(alpha, 2)),
        (pid_of(mallory, 9), beta_echo),
        (pid_of(node_bits(beta_echo), 9), echo),
    ];
    let addr = a.addr;
    let ask = |from: Pid, to: Pid| {
        let mut hello = Hello::new(node_id(mallory), "mallory");
        hello.direct = Some((from, to));
        let (mut session, _, mut stream) =
            converge::dist::connect(&Tcp, addr, &secret, hello, 1 << 20, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut frames = Vec::new();
        let mut buf = [0u8; 256];
        let mut n = 0;
        loop {
            // The answer may have come with the handshake's last message:
            // the session holds it before anything is read.
            session.open(&buf[..n], &mut frames).unwrap();
            if !frames.is_empty() {
                return (frames, stream);
            }
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) | Err(_) => return (frames, stream),
                Ok(read) => n = read,
            }
        }
    };
    for (from, to) in refused {
        assert!(ask(from, to).0.is_empty(), "{from} to {to}");
    }
    // The echo takes one (it answers on it), and waits for a fence that
    // only its node can send: what a peer writes meanwhile is never read.
    let accepted = vec![(0, b"accepted".to_vec())];
    assert_eq!(ask(pid_of(mallory, 9), echo).0, accepted);
    a.wait_stats("4 refused and 1 handed over", |stats| {
        stats.contains("direct_refusals=4") && stats.contains("direct=1")
    });
    // One session per sender waits at a time. That one was closed unused
    // (its connection is gone): the next makes its way. While that next one
    // waits, open, another from the same sender is refused; a session of
    // another sender is not.
    let (answer, waiting) = ask(pid_of(mallory, 9), echo);
    assert_eq!(answer, accepted);
    assert!(
        ask(pid_of(mallory, 9), echo).0.is_empty(),
        "a second session of one sender"
    );
    assert_eq!(ask(pid_of(mallory, 10), echo).0, accepted);
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if ask(pid_of(mallory, 9), echo).0 == accepted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting session was closed: the next is taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The cluster goes on.
    b.tell("send alpha 10");
    assert_eq!(b.expect("sent"), "10");
    for i in 0..10u64 {
        assert_eq!(a.expect("got"), i.to_string());
    }
}

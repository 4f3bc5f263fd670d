//! Sending and receiving: order, selective receive, timeouts, signals in
//! arrival order, large and oversized messages, wrong types, calls.

mod util;

use std::time::{Duration, Instant};

use converge::{CallError, Ctx, Event, ExitReason, Mailbox, ReplyTo, TryRecvError};
use serde::{Deserialize, Serialize};
use util::{PATIENCE, node};

fn main() {
    util::run(
        &[
            ("messages_arrive_in_order", messages_arrive_in_order),
            ("every_sender_keeps_its_order", every_sender_keeps_its_order),
            (
                "sends_from_threads_of_one_program_all_go_out",
                sends_from_threads_of_one_program_all_go_out,
            ),
            (
                "selective_receive_leaves_the_rest_in_order",
                selective_receive_leaves_the_rest_in_order,
            ),
            ("recv_timeout_times_out", recv_timeout_times_out),
            (
                "a_busy_waiting_process_receives_and_times_out_alike",
                a_busy_waiting_process_receives_and_times_out_alike,
            ),
            ("try_recv_sees_what_is_waiting", try_recv_sees_what_is_waiting),
            ("events_come_in_arrival_order", events_come_in_arrival_order),
            (
                "down_comes_after_the_senders_messages",
                down_comes_after_the_senders_messages,
            ),
            ("queue_length_is_readable", queue_length_is_readable),
            (
                "queue_length_counts_what_was_not_read_yet",
                queue_length_counts_what_was_not_read_yet,
            ),
            (
                "queue_info_shows_waiting_messages_by_type",
                queue_info_shows_waiting_messages_by_type,
            ),
            ("large_messages_arrive_intact", large_messages_arrive_intact),
            ("oversized_message_is_a_send_error", oversized_message_is_a_send_error),
            ("wrong_type_is_an_event_not_a_value", wrong_type_is_an_event_not_a_value),
            (
                "typed_views_keep_each_others_messages",
                typed_views_keep_each_others_messages,
            ),
            (
                "a_process_receives_through_two_views",
                a_process_receives_through_two_views,
            ),
            ("mailboxes_travel_inside_messages", mailboxes_travel_inside_messages),
            ("send_to_a_dead_process_is_dropped", send_to_a_dead_process_is_dropped),
            (
                "send_never_blocks_on_a_slow_receiver",
                send_never_blocks_on_a_slow_receiver,
            ),
            ("call_gets_its_reply", call_gets_its_reply),
            (
                "call_fails_at_once_when_the_callee_dies",
                call_fails_at_once_when_the_callee_dies,
            ),
            ("call_to_a_dead_process_is_noproc", call_to_a_dead_process_is_noproc),
            ("call_times_out", call_times_out),
            ("bounded_mailbox_drops_newest", bounded_mailbox_drops_newest),
            ("bounded_mailbox_drops_oldest", bounded_mailbox_drops_oldest),
            (
                "many_threads_receive_and_call_at_once",
                many_threads_receive_and_call_at_once,
            ),
            ("an_idle_process_uses_no_cpu", an_idle_process_uses_no_cpu),
            ("order_holds_across_reconnections", order_holds_across_reconnections),
        ],
        &[("few_connections", few_connections)],
    )
}

fn messages_arrive_in_order() {
    let me = node().ctx::<Vec<u64>>();
    let back = me.mailbox();
    let sink = converge::spawn(move |ctx: Ctx<u64>| {
        let mut got = Vec::new();
        while got.len() < 10_000 {
            got.push(ctx.recv().unwrap());
        }
        back.send(got).unwrap();
    })
    .unwrap();
    for i in 0..10_000u64 {
        sink.send(i).unwrap();
    }
    let got = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
}

fn every_sender_keeps_its_order() {
    let me = node().ctx::<Vec<(u8, u32)>>();
    let back = me.mailbox();
    let sink = converge::spawn(move |ctx: Ctx<(u8, u32)>| {
        let mut got = Vec::new();
        while got.len() < 3 * 2000 {
            got.push(ctx.recv().unwrap());
        }
        back.send(got).unwrap();
    })
    .unwrap();
    for s in 0..3u8 {
        converge::spawn(move |_: Ctx<()>| {
            for i in 0..2000 {
                sink.send((s, i)).unwrap();
            }
        })
        .unwrap();
    }
    let got = me.recv_timeout(PATIENCE).unwrap();
    for s in 0..3u8 {
        let seq: Vec<u32> = got.iter().filter(|m| m.0 == s).map(|m| m.1).collect();
        assert_eq!(seq, (0..2000).collect::<Vec<_>>(), "sender {s}");
    }
}

#[derive(Serialize, Deserialize)]
enum Count {
    One,
    Ask(Mailbox<u64>),
}

/// Threads of the main program send on and on (coalesced, written when a
/// batch fills or by the flush timer): after they stop, with the main thread
/// not pumping, the last frames still go out. A timer setting lost between
/// a sender and the timer's flush once left them unsent for good.
fn sends_from_threads_of_one_program_all_go_out() {
    let me = node().ctx::<u64>();
    let back = me.mailbox();
    let counter = converge::spawn(|ctx: Ctx<Count>| {
        let mut n = 0u64;
        while let Ok(m) = ctx.recv() {
            match m {
                Count::One => n += 1,
                Count::Ask(to) => to.send(n).unwrap(),
            }
        }
    })
    .unwrap();
    let per_thread = 100_000u64;
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    counter.send(Count::One).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let sent = 2 * per_thread;
    // The main thread does not pump meanwhile: only the timer flushes
    // (within its delay, far less than this).
    std::thread::sleep(Duration::from_millis(200));
    // Asked by another process: this one's pumping would flush.
    converge::spawn(move |ctx: Ctx<u64>| {
        counter.send(Count::Ask(ctx.mailbox())).unwrap();
        back.send(ctx.recv().unwrap()).unwrap();
    })
    .unwrap();
    let n = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!(n, sent, "what the senders sent arrived");
    let watch = me.monitor(counter);
    counter.kill();
    me.recv_down_timeout(watch, PATIENCE).unwrap();
}

fn selective_receive_leaves_the_rest_in_order() {
    let me = node().ctx::<u32>();
    for i in 0..10 {
        me.mailbox().send(i).unwrap();
    }
    assert_eq!(me.recv_matching_timeout(|&m| m == 7, PATIENCE).unwrap(), 7);
    assert_eq!(me.recv_matching_timeout(|&m| m % 2 == 1, PATIENCE).unwrap(), 1);
    // The same without waiting: what is there is taken, what is not is Empty.
    assert_eq!(me.try_recv_matching(|&m| m == 5), Ok(5));
    assert_eq!(me.try_recv_matching(|&m| m == 5), Err(TryRecvError::Empty));
    let rest: Vec<u32> = (0..7).map(|_| me.recv_timeout(PATIENCE).unwrap()).collect();
    assert_eq!(rest, vec![0, 2, 3, 4, 6, 8, 9]);
    assert!(
        me.recv_matching_timeout(|&m| m == 100, Duration::from_millis(20))
            .is_err()
    );
}

fn recv_timeout_times_out() {
    let me = node().ctx::<u32>();
    let t = Instant::now();
    assert_eq!(
        me.recv_timeout(Duration::from_millis(50)),
        Err(converge::RecvTimeoutError::Timeout)
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
}

fn a_busy_waiting_process_receives_and_times_out_alike() {
    // A process that polls 20 ms before it sleeps: a ping-pong of 200, a
    // timeout shorter than its polling, one longer, and a message that comes
    // after it went to sleep.
    let me = node().ctx::<u32>();
    let back = me.mailbox();
    let (p, r) = converge::spawn_monitor(move |ctx: Ctx<u32>| {
        ctx.busy_wait(Duration::from_millis(20));
        for _ in 0..200 {
            let n = ctx.recv().unwrap();
            back.send(n + 1).unwrap();
        }
        let t = Instant::now();
        assert_eq!(
            ctx.recv_timeout(Duration::from_millis(5)),
            Err(converge::RecvTimeoutError::Timeout)
        );
        let short = t.elapsed();
        assert!(
            short >= Duration::from_millis(5) && short < Duration::from_millis(200),
            "{short:?}"
        );
        let t = Instant::now();
        assert_eq!(
            ctx.recv_timeout(Duration::from_millis(60)),
            Err(converge::RecvTimeoutError::Timeout)
        );
        assert!(t.elapsed() >= Duration::from_millis(60));
        back.send(0).unwrap();
        // Sent once this process said it waits, and well after its polling.
        assert_eq!(ctx.recv_timeout(PATIENCE), Ok(7));
    })
    .unwrap();
    let to = p;
    for i in 0..200 {
        to.send(i * 2).unwrap();
        assert_eq!(me.recv_timeout(PATIENCE), Ok(i * 2 + 1));
    }
    assert_eq!(me.recv_timeout(PATIENCE), Ok(0));
    // Past its polling (the check holds either way: this only makes the
    // message find it asleep).
    std::thread::sleep(Duration::from_millis(50));
    to.send(7).unwrap();
    let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::Normal);
}

fn try_recv_sees_what_is_waiting() {
    let me = node().ctx::<u32>();
    assert_eq!(me.try_recv(), Err(TryRecvError::Empty));
    let back = me.mailbox();
    let (_p, r) = converge::spawn_monitor(move |_: Ctx<()>| back.send(5).unwrap()).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    // The message was written before its sender exited: it waits in the socket.
    assert_eq!(me.try_recv(), Ok(5));
    assert_eq!(me.try_recv(), Err(TryRecvError::Empty));
}

fn events_come_in_arrival_order() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let (p, r) = converge::spawn_monitor(move |ctx: Ctx<()>| -> Result<(), String> {
        back.send("first".into()).unwrap();
        let _ = ctx.recv_timeout(PATIENCE);
        back.send("second".into()).unwrap();
        Err("done".into())
    })
    .unwrap();
    assert_eq!(
        me.recv_event_timeout(PATIENCE).unwrap(),
        Event::Message("first".to_string())
    );
    p.send(()).unwrap();
    assert_eq!(
        me.recv_event_timeout(PATIENCE).unwrap(),
        Event::Message("second".to_string())
    );
    match me.recv_event_timeout(PATIENCE).unwrap() {
        Event::Down(d) => {
            assert_eq!(d.reference, r);
            assert_eq!(d.reason, ExitReason::Error("done".into()));
        }
        other => panic!("expected the Down, got {other:?}"),
    }
}

fn down_comes_after_the_senders_messages() {
    for round in 0..20 {
        let me = node().ctx::<u32>();
        let back = me.mailbox();
        let (_p, r) = converge::spawn_monitor(move |_: Ctx<()>| {
            for i in 0..500 {
                back.send(i).unwrap();
            }
        })
        .unwrap();
        let mut got = Vec::new();
        loop {
            match me.recv_event_timeout(PATIENCE).unwrap() {
                Event::Message(m) => got.push(m),
                Event::Down(d) => {
                    assert_eq!(d.reference, r);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "round {round}");
    }
}

fn queue_length_is_readable() {
    let me = node().ctx::<u32>();
    let back = me.mailbox();
    let (p, r) = converge::spawn_monitor(move |ctx: Ctx<u32>| {
        // Take one message, then stop receiving for a while: the runtime
        // keeps draining the socket into the queue.
        ctx.recv().unwrap();
        back.send(0).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while ctx.len() < 26 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut n = 0;
        while ctx.try_recv().is_ok() {
            n += 1;
        }
        back.send(n).unwrap();
    })
    .unwrap();
    p.send(0).unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    for i in 0..25 {
        p.send(i).unwrap();
    }
    assert!(util::wait_until(PATIENCE, || converge::process_info(p)
        .is_some_and(|i| i.queue_len == 25)));
    p.send(25).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), 26);
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
}

/// Erlang's `message_queue_len` of another process: counted as messages are
/// sent (before the receiver reads them) and as they are taken.
fn queue_length_counts_what_was_not_read_yet() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let (p, r) = converge::spawn_monitor(move |ctx: Ctx<Vec<u8>>| {
        // Receive nothing until told (the signal is a message of another type).
        let go = ctx.view::<String>();
        back.send("ready".into()).unwrap();
        assert_eq!(go.recv_timeout(PATIENCE).unwrap(), "go");
        for _ in 0..5 {
            ctx.recv_timeout(PATIENCE).unwrap();
        }
        back.send("took 5".into()).unwrap();
        let _ = go.recv_timeout(PATIENCE);
    })
    .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "ready");
    for i in 0..5u8 {
        p.send(vec![i; 100]).unwrap();
    }
    // Written to its connection (not held back to be batched).
    converge::flush();
    let info = converge::process_info(p).unwrap();
    assert_eq!(info.queue_len, 5, "{info:?}");
    // Five bodies of a length byte and 100 bytes.
    assert_eq!(info.queue_bytes, 5 * 101, "{info:?}");
    Mailbox::<String>::from_pid(p.pid()).send("go".into()).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "took 5");
    let info = converge::process_info(p).unwrap();
    assert_eq!((info.queue_len, info.queue_bytes), (0, 0), "{info:?}");
    Mailbox::<String>::from_pid(p.pid()).send("end".into()).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
}

/// Erlang's `process_info(self(), messages)`, summarized: what waits, by type.
fn queue_info_shows_waiting_messages_by_type() {
    type Summary = (usize, usize, usize, usize, Vec<(Option<String>, usize, usize)>);
    let me = node().ctx::<Summary>();
    let back = me.mailbox();
    let (p, r) = converge::spawn_monitor(move |ctx: Ctx<u32>| {
        let _texts = ctx.view::<String>();
        // A Down waits in the same queue, as a signal.
        let gone = converge::spawn(|_: Ctx<()>| {}).unwrap();
        ctx.monitor(gone);
        back.send((0, 0, 0, 0, Vec::new())).unwrap();
        let deadline = Instant::now() + PATIENCE;
        let mut info = ctx.queue_info();
        while info.len < 6 && Instant::now() < deadline {
            std::thread::yield_now();
            info = ctx.queue_info();
        }
        let types = info
            .by_type
            .iter()
            .map(|t| (t.type_name.map(String::from), t.count, t.bytes))
            .collect();
        back.send((info.len, info.messages, info.signals, info.bytes, types))
            .unwrap();
    })
    .unwrap();
    me.recv_timeout(PATIENCE).unwrap();
    for i in 0..3u32 {
        p.send(i).unwrap();
    }
    Mailbox::<String>::from_pid(p.pid()).send("hi".into()).unwrap();
    Mailbox::<Stray>::from_pid(p.pid()).send(Stray(9)).unwrap();
    let (len, messages, signals, bytes, types) = me.recv_timeout(PATIENCE).unwrap();
    assert_eq!((len, messages, signals), (6, 5, 1));
    // u32s of one byte each, a length byte and "hi", a Stray of one byte.
    assert_eq!(bytes, 3 + 3 + 1);
    assert_eq!(
        types,
        vec![
            (Some("u32".to_string()), 3, 3),
            (Some("alloc::string::String".to_string()), 1, 3),
            (None, 1, 1),
        ]
    );
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
}

fn large_messages_arrive_intact() {
    let me = node().ctx::<u64>();
    let back = me.mailbox();
    let sink = converge::spawn(move |ctx: Ctx<Vec<u8>>| {
        for _ in 0..2 {
            let v = ctx.recv().unwrap();
            let sum = v
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as u64) * (i as u64 % 7 + 1))
                .sum::<u64>();
            back.send(v.len() as u64).unwrap();
            back.send(sum).unwrap();
        }
    })
    .unwrap();
    for size in [1usize << 20, 16 << 20] {
        let v: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let want = v
            .iter()
            .enumerate()
            .map(|(i, &b)| (b as u64) * (i as u64 % 7 + 1))
            .sum::<u64>();
        sink.send(v).unwrap();
        assert_eq!(me.recv_timeout(PATIENCE).unwrap(), size as u64);
        assert_eq!(me.recv_timeout(PATIENCE).unwrap(), want);
    }
}

fn oversized_message_is_a_send_error() {
    let target = converge::spawn(|ctx: Ctx<Vec<u8>>| {
        let _ = ctx.recv_timeout(PATIENCE);
    })
    .unwrap();
    let big = vec![0u8; (64 << 20) + 1];
    let err = target.send(big).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert_eq!(err.into_inner().len(), (64 << 20) + 1);
    // Exactly at the limit is fine.
    let at_limit = vec![0u8; (64 << 20) - 4];
    let r = node().ctx::<()>().monitor(target);
    target.send(at_limit).unwrap();
    let down = node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(down.reason, ExitReason::Normal);
}

fn wrong_type_is_an_event_not_a_value() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let p = converge::spawn(move |ctx: Ctx<String>| {
        for _ in 0..3 {
            let ev = ctx.recv_event_timeout(PATIENCE).unwrap();
            back.send(format!("{ev:?}")).unwrap();
        }
    })
    .unwrap();
    // The same process, addressed with the wrong type.
    Mailbox::<u64>::from_pid(p.pid()).send(42).unwrap();
    Mailbox::<(u8, u8)>::from_pid(p.pid()).send((1, 2)).unwrap();
    p.send("right".to_string()).unwrap();
    assert!(me.recv_timeout(PATIENCE).unwrap().starts_with("Undecodable(WrongType"));
    assert!(me.recv_timeout(PATIENCE).unwrap().starts_with("Undecodable(WrongType"));
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "Message(\"right\")");
    assert!(util::wait_until(PATIENCE, || node().processes().is_empty()));
}

/// A type no view in this test binary receives.
#[derive(Debug, Serialize, Deserialize)]
struct Stray(u8);

fn typed_views_keep_each_others_messages() {
    let numbers = node().ctx::<u64>();
    let texts = node().ctx::<String>();
    let undecodable = || converge::process_info(node().pid()).unwrap().undecodable;
    let undecodable_before = undecodable();
    texts.mailbox().send("first".into()).unwrap();
    Mailbox::<Stray>::from_pid(numbers.pid()).send(Stray(1)).unwrap();
    numbers.mailbox().send(7).unwrap();
    // The number view passes over the text (another view's) and takes its own.
    assert_eq!(numbers.recv_timeout(PATIENCE).unwrap(), 7);
    // The text waited for its view.
    assert_eq!(texts.recv_timeout(PATIENCE).unwrap(), "first");
    // The stray, which no view decodes, was dropped on the way and counted.
    assert_eq!(undecodable(), undecodable_before + 1);
    assert!(matches!(texts.try_recv_event(), Err(TryRecvError::Empty)));
    // Received as events, a stray is an event once; another view's message
    // stays for that view.
    Mailbox::<Stray>::from_pid(numbers.pid()).send(Stray(2)).unwrap();
    texts.mailbox().send("second".into()).unwrap();
    numbers.mailbox().send(8).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        match numbers.try_recv_event() {
            Err(TryRecvError::Empty) if Instant::now() < deadline => std::thread::yield_now(),
            other => break other,
        }
    };
    assert!(matches!(first, Ok(Event::Undecodable(_))), "{first:?}");
    assert!(matches!(numbers.recv_event_timeout(PATIENCE), Ok(Event::Message(8))));
    assert_eq!(texts.recv_timeout(PATIENCE).unwrap(), "second");
    assert_eq!(undecodable(), undecodable_before + 2);
}

fn a_process_receives_through_two_views() {
    let me = node().ctx::<String>();
    let back = me.mailbox();
    let p = converge::spawn(move |numbers: Ctx<u64>| {
        let texts = numbers.view::<String>();
        back.send("ready".into()).unwrap();
        // Both arrive before either view receives.
        let text = texts.recv_timeout(PATIENCE).unwrap();
        let number = numbers.recv_timeout(PATIENCE).unwrap();
        back.send(format!("{text} {number}")).unwrap();
    })
    .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "ready");
    p.send(42).unwrap();
    Mailbox::<String>::from_pid(p.pid()).send("answer".into()).unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "answer 42");
}

fn mailboxes_travel_inside_messages() {
    #[derive(Serialize, Deserialize)]
    struct Forward {
        to: Mailbox<String>,
        text: String,
    }
    let me = node().ctx::<String>();
    let relay = converge::spawn(|ctx: Ctx<Forward>| {
        let f = ctx.recv().unwrap();
        f.to.send(f.text.to_uppercase()).unwrap();
    })
    .unwrap();
    relay
        .send(Forward {
            to: me.mailbox(),
            text: "relayed".into(),
        })
        .unwrap();
    assert_eq!(me.recv_timeout(PATIENCE).unwrap(), "RELAYED");
}

fn send_to_a_dead_process_is_dropped() {
    let (p, r) = converge::spawn_monitor(|_: Ctx<u32>| {}).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    for i in 0..10 {
        p.send(i).unwrap();
    }
}

/// 12.8 MB go to a process that is not reading (it is blocked on a pipe):
/// every send returns, the frames wait in the sender, and all arrive once the
/// receiver reads.
fn send_never_blocks_on_a_slow_receiver() {
    let (gate_r, gate_w) = std::io::pipe().unwrap();
    let slow = converge::Builder::new()
        .keep_fd(&gate_r)
        .spawn(move |ctx: Ctx<Vec<u8>>| {
            let mut byte = [0u8; 1];
            std::io::Read::read_exact(&mut &gate_r, &mut byte).unwrap();
            for _ in 0..200 {
                assert_eq!(ctx.recv().unwrap().len(), 64 * 1024);
            }
        })
        .unwrap();
    let r = node().ctx::<()>().monitor(slow);
    for _ in 0..200 {
        slow.send(vec![0u8; 64 * 1024]).unwrap();
    }
    // Every send returned while the receiver read nothing. What reached its
    // socket counts as waiting for it; the rest waits in this process.
    let info = converge::process_info(slow).unwrap();
    assert!((1..200).contains(&info.queue_len), "{info:?}");
    std::io::Write::write_all(&mut &gate_w, b"g").unwrap();
    assert_eq!(
        node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap().reason,
        ExitReason::Normal
    );
}

#[derive(Serialize, Deserialize)]
enum Req {
    Add(u64, u64, ReplyTo<u64>),
    Die(ReplyTo<u64>),
    Ignore(ReplyTo<u64>),
}

fn server(ctx: Ctx<Req>) -> Result<(), String> {
    loop {
        match ctx.recv().map_err(|e| e.to_string())? {
            Req::Add(a, b, r) => r.reply(a + b).map_err(|e| e.to_string())?,
            Req::Die(_) => return Err("asked to die".into()),
            Req::Ignore(_) => {}
        }
    }
}

fn call_gets_its_reply() {
    let s = converge::spawn(server).unwrap();
    for i in 0..100 {
        assert_eq!(s.call(|r| Req::Add(i, 1, r), PATIENCE).unwrap(), i + 1);
    }
    s.kill();
}

fn call_fails_at_once_when_the_callee_dies() {
    let s = converge::spawn(server).unwrap();
    let t = Instant::now();
    assert_eq!(
        s.call(Req::Die, PATIENCE),
        Err(CallError::Exited(ExitReason::Error("asked to die".into())))
    );
    assert!(t.elapsed() < PATIENCE / 2);
}

fn call_to_a_dead_process_is_noproc() {
    let (s, r) = converge::spawn_monitor(|_: Ctx<Req>| {}).unwrap();
    node().ctx::<()>().recv_down_timeout(r, PATIENCE).unwrap();
    assert_eq!(s.call(Req::Die, PATIENCE), Err(CallError::Exited(ExitReason::NoProc)));
}

fn call_times_out() {
    let s = converge::spawn(server).unwrap();
    let t = Instant::now();
    assert_eq!(s.call(Req::Ignore, Duration::from_millis(100)), Err(CallError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(100));
    // The server is fine, and a late reply would not confuse the next call.
    assert_eq!(s.call(|r| Req::Add(2, 2, r), PATIENCE).unwrap(), 4);
    s.kill();
}

fn bounded(policy: converge::Overflow) -> Vec<u32> {
    let me = node().ctx::<Vec<u32>>();
    let back = me.mailbox();
    let p = converge::Builder::new()
        .mailbox_bound(5, policy)
        .spawn(move |ctx: Ctx<u32>| {
            // Wait until all 20 were read into the queue (or dropped).
            let first = ctx.recv().unwrap();
            let deadline = Instant::now() + PATIENCE;
            while converge::process_info(ctx.pid()).is_some_and(|i| i.queue_len + i.dropped < 19)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            let mut got = vec![first];
            while let Ok(m) = ctx.try_recv() {
                got.push(m);
            }
            back.send(got).unwrap();
        })
        .unwrap();
    p.send(0).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    for i in 1..20 {
        p.send(i).unwrap();
    }
    me.recv_timeout(PATIENCE).unwrap()
}

fn bounded_mailbox_drops_newest() {
    let got = bounded(converge::Overflow::DropNewest);
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
}

fn bounded_mailbox_drops_oldest() {
    let got = bounded(converge::Overflow::DropOldest);
    assert_eq!(got, vec![0, 15, 16, 17, 18, 19]);
}

/// Several threads of one process receive, call and send at once: the
/// receive path is shared without losing or duplicating anything.
fn many_threads_receive_and_call_at_once() {
    let s = converge::spawn(server).unwrap();
    let me = node().ctx::<u32>();
    let back = me.mailbox();
    let producer = converge::spawn(move |_: Ctx<()>| {
        for i in 0..4000 {
            back.send(i).unwrap();
        }
    })
    .unwrap();
    let _ = producer;
    let received = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let ctx = node().ctx::<u32>();
                while let Ok(m) = ctx.recv_timeout(Duration::from_millis(500)) {
                    received.lock().unwrap().push(m);
                }
            });
        }
        for t in 0..2u64 {
            scope.spawn(move || {
                for i in 0..200 {
                    assert_eq!(s.call(|r| Req::Add(i, t, r), PATIENCE).unwrap(), i + t);
                }
            });
        }
    });
    let mut got = received.into_inner().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..4000).collect::<Vec<_>>());
    s.kill();
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A process that batched a frame (so its flush timer was armed), then
/// flushed it by receiving, and now waits: its runtime must sleep, not spin on
/// a timer that has nothing left to flush.
fn an_idle_process_uses_no_cpu() {
    let me = node().ctx::<u32>();
    let back = me.mailbox();
    let h = converge::spawn_join(move |ctx: Ctx<u32>| {
        for i in 0..3 {
            back.send(i).unwrap();
        }
        let _ = ctx.recv_timeout(Duration::from_millis(20));
        let before = cpu_time();
        let _ = ctx.recv_timeout(Duration::from_millis(500));
        cpu_time() - before
    })
    .unwrap();
    let used = h.join().unwrap();
    assert!(
        used < Duration::from_millis(150),
        "an idle process used {used:?} of CPU in 500 ms"
    );
    for i in 0..3 {
        assert_eq!(me.recv_timeout(PATIENCE).unwrap(), i);
    }
}

/// A node whose processes keep at most 2 outgoing connections: sending to 4
/// targets in turn closes and reopens connections all the time.
fn few_connections() {
    let node = converge::Config::new().max_connections(2).init().unwrap();
    let me = node.ctx::<bool>();
    let targets: Vec<_> = (0..4)
        .map(|_| {
            let back = me.mailbox();
            converge::spawn(move |ctx: Ctx<u32>| {
                let in_order = (0..500).all(|i| ctx.recv_timeout(PATIENCE) == Ok(i));
                back.send(in_order).unwrap();
            })
            .unwrap()
        })
        .collect();
    let sender = converge::spawn(move |_: Ctx<()>| {
        for i in 0..500 {
            for t in &targets {
                t.send(i).unwrap();
                // Nothing left pending: the least recently used
                // connection can be closed at the next send.
                converge::flush();
            }
        }
    })
    .unwrap();
    let _ = sender;
    let ok = (0..4).all(|_| me.recv_timeout(PATIENCE) == Ok(true));
    util::say("in_order", ok);
}

/// Connections closed least-recently-used first and reopened keep every
/// sender's order.
fn order_holds_across_reconnections() {
    let mut h = util::HelperProcess::start(util::helper("few_connections"));
    assert_eq!(h.expect("in_order"), "true");
    assert!(h.wait(PATIENCE).unwrap().success());
}

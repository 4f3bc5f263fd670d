//! Sealed packets, and small clusters over loopback UDP driven by one loop:
//! joining, a silent member, leaving, a wrong secret, a restart under the
//! same name, a partition and its healing.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;

fn secret() -> Secret {
    Secret::from_bytes(b"a cluster secret of some length").unwrap()
}

#[test]
fn sealed_packets_open_once_and_only_with_the_key() {
    let key = PacketKey::new(&secret());
    let now = now_ms();
    let p = key.seal(b"hello", now);
    let mut replays = Replays::default();
    assert_eq!(key.open(&p, now, &mut replays), Ok(&b"hello"[..]));
    assert_eq!(key.open(&p, now, &mut replays), Err(PacketError::Replayed));
    // Any altered byte.
    for i in 0..p.len() {
        let mut bad = p.clone();
        bad[i] ^= 0x20;
        let r = key.open(&bad, now, &mut Replays::default());
        assert!(
            matches!(r, Err(PacketError::BadMac | PacketError::Malformed)),
            "byte {i}: {r:?}"
        );
    }
    // Another cluster's key.
    let other = PacketKey::new(&Secret::from_bytes(b"another secret, same length!!").unwrap());
    assert_eq!(
        other.open(&key.seal(b"x", now), now, &mut Replays::default()),
        Err(PacketError::BadMac)
    );
    // Too old, too new, too short.
    let old = key.seal(b"x", now - 31_000);
    assert!(matches!(
        key.open(&old, now, &mut Replays::default()),
        Err(PacketError::Stale(_))
    ));
    let new = key.seal(b"x", now + 31_000);
    assert!(matches!(
        key.open(&new, now, &mut Replays::default()),
        Err(PacketError::Stale(_))
    ));
    assert_eq!(
        key.open(&p[..20], now, &mut Replays::default()),
        Err(PacketError::Malformed)
    );
    assert_eq!(key.open(b"", now, &mut Replays::default()), Err(PacketError::Malformed));
}

/// A member of a test cluster: its membership, its socket, what it saw.
struct Peer {
    m: Membership,
    sock: UdpSocket,
    up: bool,
    events: Vec<MemberEvent>,
}

fn peer(name: &str, n: u8, secret: &Secret) -> Peer {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let addr = sock.local_addr().unwrap();
    let me = Member::new(NodeId::from_bytes([n; 16]), name, addr, addr);
    Peer {
        m: Membership::new(me, secret, MembershipConfig::default()),
        sock,
        up: true,
        events: Vec::new(),
    }
}

fn addr(p: &Peer) -> SocketAddr {
    p.sock.local_addr().unwrap()
}

/// Drives the peers that are up until `done` holds (true) or `limit`
/// passes (false). `cut(from, to)` drops a packet.
fn pump(
    peers: &mut [Peer],
    limit: Duration,
    cut: &dyn Fn(SocketAddr, SocketAddr) -> bool,
    done: &mut dyn FnMut(&[Peer]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        for p in peers.iter_mut().filter(|p| p.up) {
            while let Ok((n, _)) = p.sock.recv_from(&mut buf) {
                let _ = p.m.handle_packet(&buf[..n], now);
            }
            p.m.handle_timers(now);
            let from = p.sock.local_addr().unwrap();
            for (to, packet) in p.m.take_packets() {
                if !cut(from, to) {
                    let _ = p.sock.send_to(&packet, to);
                }
            }
            p.events.extend(p.m.take_events());
        }
        if done(peers) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn none(_: SocketAddr, _: SocketAddr) -> bool {
    false
}

fn names(p: &Peer) -> Vec<String> {
    let mut v: Vec<String> = p.m.members().into_iter().map(|m| m.name).collect();
    v.sort();
    v
}

fn everyone_knows(peers: &[Peer], n: usize) -> bool {
    peers.iter().filter(|p| p.up).all(|p| p.m.members().len() == n - 1)
}

fn cluster(n: usize, s: &Secret) -> Vec<Peer> {
    let mut peers: Vec<Peer> = (0..n).map(|i| peer(&format!("n{i}"), i as u8 + 1, s)).collect();
    let first = addr(&peers[0]);
    let now = Instant::now();
    for p in &mut peers[1..] {
        p.m.join(first, now);
    }
    assert!(
        pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| everyone_knows(
            ps, n
        )),
        "the cluster formed: {:?}",
        peers
            .iter()
            .map(|p| (p.m.stats(), p.m.members().len(), &p.events))
            .collect::<Vec<_>>()
    );
    peers
}

#[test]
fn members_join_through_any_member_and_learn_the_others() {
    let s = secret();
    let mut peers = cluster(3, &s);
    // A fourth joins through the last one, not the first.
    let mut d = peer("n3", 4, &s);
    d.m.join(addr(&peers[2]), Instant::now());
    peers.push(d);
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        everyone_knows(ps, 4)
    }));
    assert_eq!(names(&peers[3]), ["n0", "n1", "n2"]);
    assert!(peers[3].events.contains(&MemberEvent::Joined));
    assert!(peers.iter().all(|p| p.m.stats().refused == 0));
}

#[test]
fn a_silent_member_is_down_within_two_seconds() {
    let mut peers = cluster(3, &secret());
    peers[2].up = false;
    let gone = peers[2].m.me().clone();
    let t = Instant::now();
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| ps[..2]
        .iter()
        .all(|p| p.events.contains(&MemberEvent::Down(gone.clone())))));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(names(&peers[0]), ["n1"]);
}

#[test]
fn a_member_that_leaves_is_down_at_once() {
    let mut peers = cluster(3, &secret());
    let gone = peers[1].m.me().clone();
    let now = Instant::now();
    peers[1].m.leave(now);
    let t = Instant::now();
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        [&ps[0], &ps[2]]
            .iter()
            .all(|p| p.events.contains(&MemberEvent::Down(gone.clone())))
    }));
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
}

#[test]
fn a_member_without_the_secret_cannot_join_nor_disturb() {
    let mut peers = cluster(2, &secret());
    let intruder = peer(
        "evil",
        9,
        &Secret::from_bytes(b"not the cluster's secret at all").unwrap(),
    );
    peers.push(intruder);
    let first = addr(&peers[0]);
    peers[2].m.join(first, Instant::now());
    // Garbage too, straight at the first member.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(b"\x43\x01 not a packet at all, but long enough", addr(&peers[0]))
        .unwrap();
    junk.send_to(&[0xff; 1500], addr(&peers[0])).unwrap();
    let joined = pump(&mut peers, Duration::from_secs(1), &none, &mut |ps| {
        ps[0].m.members().iter().any(|m| m.name == "evil") || !ps[2].m.members().is_empty()
    });
    assert!(!joined, "the intruder joined");
    assert!(peers[0].m.stats().refused >= 3, "{:?}", peers[0].m.stats());
    assert_eq!(names(&peers[0]), ["n1"]);
    assert_eq!(names(&peers[1]), ["n0"]);
}

#[test]
fn a_restarted_node_replaces_its_earlier_incarnation() {
    let s = secret();
    let mut peers = cluster(3, &s);
    // n2 dies; a new incarnation binds its address.
    peers[2].up = false;
    let old = peers.pop().unwrap();
    let at = addr(&old);
    drop(old);
    std::thread::sleep(Duration::from_millis(2));
    let sock = UdpSocket::bind(at).unwrap();
    sock.set_nonblocking(true).unwrap();
    let me = Member::new(NodeId::from_bytes([42; 16]), "n2", at, at);
    let mut again = Peer {
        m: Membership::new(me, &s, MembershipConfig::default()),
        sock,
        up: true,
        events: Vec::new(),
    };
    again.m.join(addr(&peers[0]), Instant::now());
    peers.push(again);
    let new = NodeId::from_bytes([42; 16]);
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        ps[..2].iter().all(|p| {
            let m = p.m.members();
            m.len() == 2 && m.iter().any(|m| m.name == "n2" && m.node == new)
        })
    }));
}

#[test]
fn a_partition_heals() {
    let mut peers = cluster(3, &secret());
    let lone = addr(&peers[0]);
    let cut = move |from: SocketAddr, to: SocketAddr| (from == lone) != (to == lone);
    // Cut off: each side sees the other down.
    assert!(pump(&mut peers, Duration::from_secs(5), &cut, &mut |ps| {
        ps[0].m.members().is_empty()
            && ps[1..]
                .iter()
                .all(|p| names(p) == [if p.m.me().name == "n1" { "n2" } else { "n1" }])
    }));
    // Healed: whole again.
    assert!(pump(&mut peers, Duration::from_secs(10), &none, &mut |ps| {
        everyone_knows(ps, 3)
    }));
}

#[cfg(feature = "fuzzing")]
#[test]
fn the_fuzz_entry_takes_any_bytes() {
    for data in [&b""[..], b"\x43\x01", &[0u8; 64], &[0xff; 1400]] {
        crate::fuzzing::membership_packet(data);
    }
}

#[test]
fn loads_spread_by_gossip_the_latest_winning_and_go_with_their_node() {
    let mut peers = cluster(4, &secret());
    let n0 = peers[0].m.me().node;
    let now = Instant::now();
    peers[0].m.advertise(Load::new(4, 1, 0), now);
    assert_eq!(peers[0].m.load_of(n0), Some(Load::new(4, 1, 0)));
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        ps.iter().all(|p| p.m.load_of(n0) == Some(Load::new(4, 1, 0)))
    }));
    // A newer note replaces it everywhere; an older one heard late does not.
    peers[0].m.advertise(Load::new(4, 4, 7), Instant::now());
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        ps.iter().all(|p| p.m.load_of(n0) == Some(Load::new(4, 4, 7)))
    }));
    assert_eq!(Load::new(4, 4, 7).free(), 0);
    assert_eq!(Load::new(4, 1, 0).free(), 3);
    let stale = postcard::to_stdvec(&LoadNote {
        node: n0,
        version: 1,
        load: Load::new(1, 0, 0),
    })
    .unwrap();
    let mut handler = peers[1].m.loads.clone();
    assert!(handler.receive_item(&stale, None).unwrap().is_none());
    assert!(handler.receive_item(b"\xff\xff\xff", None).is_err());
    assert_eq!(peers[1].m.load_of(n0), Some(Load::new(4, 4, 7)));
    // A node that leaves takes its load with it.
    peers[0].m.leave(Instant::now());
    assert!(pump(&mut peers, Duration::from_secs(5), &none, &mut |ps| {
        ps[1..].iter().all(|p| p.m.load_of(n0).is_none())
    }));
    assert!(peers.iter().all(|p| p.m.stats().refused == 0));
}

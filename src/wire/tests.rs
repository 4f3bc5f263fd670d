//! Property tests of the wire format: arbitrary bytes never panic the
//! decoders, and encoding then decoding is the identity, however the bytes are
//! split on the way.

use proptest::prelude::*;

use super::envelope::{Hello, NodeReply, Registration, ToNode, ToProcess};
use super::frame::{self, Decoder, Kind};
use super::port::{Framing, PortOutput, port_cut};
use super::*;
use crate::exit::ExitReason;
use crate::pid::{NodeId, Pid};

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Hello), Just(Kind::Msg), Just(Kind::Reply), Just(Kind::Ctl)]
}

fn encode(frames: &[(Kind, Vec<u8>)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (kind, body) in frames {
        let start = frame::begin(&mut buf, *kind);
        buf.extend_from_slice(body);
        frame::finish(&mut buf, start);
    }
    buf
}

/// Feeds `bytes` split at `cuts`, stopping after every frame when `stop` says
/// so, and returns the frames decoded.
fn decode_split(bytes: &[u8], cuts: &[usize], stop_every: Option<usize>) -> Result<Vec<(Kind, Vec<u8>)>, FrameError> {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut count = 0usize;
    for w in points.windows(2) {
        let mut input = &bytes[w[0]..w[1]];
        loop {
            let stopped = d.feed(input, 1 << 20, |k, b| {
                out.push((k, b.to_vec()));
                count += 1;
                stop_every.is_none_or(|n| !count.is_multiple_of(n))
            })?;
            input = &[];
            if !stopped {
                break;
            }
        }
    }
    Ok(out)
}

proptest! {
    #[test]
    fn frames_round_trip_across_any_split(
        frames in proptest::collection::vec((kind_strategy(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        stop_every in proptest::option::of(1usize..4),
    ) {
        let bytes = encode(&frames);
        let got = decode_split(&bytes, &cuts, stop_every).unwrap();
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let _ = decode_split(&bytes, &cuts, None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
        let _ = decode_exact::<ToNode>(&bytes);
        let _ = decode_exact::<ToProcess>(&bytes);
        let _ = decode_exact::<Hello>(&bytes);
    }

    #[test]
    fn control_frames_round_trip(serial in any::<u64>(), parent in any::<u64>(), name in proptest::option::of(".{0,20}"),
        reference in any::<u64>(), text in ".{0,40}", node in any::<u128>()) {
        let pid = Pid::new(NodeId::from_bytes(node.to_le_bytes()), serial);
        let msgs = vec![
            ToNode::Register(Registration {
                serial, parent, name, link: serial % 2 == 0, monitors: vec![(reference, true)],
                trap_exits: true, cpu_limited: false, memory_limited: true, reaper: Some(parent), scheduler: None,
                leave_strays: true,
            }),
            ToNode::Monitor { reference, internal: false, target: pid },
            ToNode::ExitSignal { target: pid, reason: ExitReason::Exit(text.clone()), untrappable: false },
            ToNode::LastWords { reason: ExitReason::Panic(text.clone()) },
            ToNode::Whereis { request: reference, name: text.clone() },
            ToNode::MonitorName { reference, name: text.clone() },
            ToNode::Demonitor { request: Some(reference), reference },
        ];
        for m in msgs {
            let bytes = postcard::to_stdvec(&m).unwrap();
            prop_assert_eq!(decode_exact::<ToNode>(&bytes).unwrap(), m);
        }
        let down = ToProcess::Down { reference, internal: true, pid, reason: ExitReason::Signal { signal: 11, core_dumped: true }, name: Some("n".into()) };
        let bytes = postcard::to_stdvec(&down).unwrap();
        prop_assert_eq!(decode_exact::<ToProcess>(&bytes).unwrap(), down);
        let reply = ToProcess::Reply { request: reference, reply: NodeReply::Pid(Some(pid)) };
        let bytes = postcard::to_stdvec(&reply).unwrap();
        prop_assert_eq!(decode_exact::<ToProcess>(&bytes).unwrap(), reply);
    }

    #[test]
    fn trailing_bytes_are_refused(value in any::<u64>(), extra in proptest::collection::vec(any::<u8>(), 1..10)) {
        let mut bytes = postcard::to_stdvec(&value).unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert!(decode_exact::<u64>(&bytes).is_err());
    }
}

#[test]
fn oversized_prefix_is_refused_before_its_body() {
    let mut d = Decoder::default();
    let header = [0xff, 0xff, 0xff, 0x7f, Kind::Msg as u8];
    let err = d.feed(&header, 1024, |_, _| true).unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLarge {
            len: 0x7fff_ffff,
            max: 1024
        }
    );
}

#[test]
fn unknown_kind_is_refused() {
    let mut d = Decoder::default();
    assert_eq!(
        d.feed(&[0, 0, 0, 0, 99], 1024, |_, _| true).unwrap_err(),
        FrameError::UnknownKind(99)
    );
}

#[test]
fn fingerprints_tell_types_apart() {
    assert_ne!(fingerprint::<u64>(), fingerprint::<i64>());
    assert_ne!(fingerprint::<String>(), fingerprint::<Vec<u8>>());
    assert_eq!(fingerprint::<u64>(), fingerprint::<u64>());
}

/// Cuts `stream` as port output, fed in pieces at `cuts`, then its end.
fn cut_port_output(framing: Framing, stream: &[u8], cuts: &[usize]) -> Result<Vec<PortOutput>, String> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.push(stream.len());
    let mut partial = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        let (events, broken) = port_cut(framing, 4096, &mut partial, &stream[at..p], false);
        out.extend(events);
        broken?;
        at = p;
    }
    let (events, broken) = port_cut(framing, 4096, &mut partial, &[], true);
    out.extend(events);
    broken?;
    Ok(out)
}

/// A port that announces a packet under the limit and sends 10 bytes of it:
/// what is held is what arrived, not what was announced.
#[test]
fn an_announced_port_packet_reserves_nothing() {
    let mut partial = Vec::new();
    let mut data = (60u32 << 20).to_be_bytes().to_vec();
    data.extend_from_slice(&[7; 10]);
    let (out, broken) = port_cut(Framing::Packet(4), 64 << 20, &mut partial, &data, false);
    assert!(out.is_empty() && broken.is_ok());
    assert_eq!(partial.len(), 14);
    assert!(partial.capacity() < 4096, "held {} bytes", partial.capacity());
}

/// Packets before a length over the limit, in the same read, are delivered;
/// then the framing is broken and what was held is let go.
#[test]
fn packets_before_a_broken_prefix_are_kept() {
    let mut data = crate::port::stdio::frame(4, b"one").unwrap();
    data.extend(crate::port::stdio::frame(4, b"two").unwrap());
    data.extend((65u32 << 20).to_be_bytes());
    data.extend_from_slice(b"rest");
    let mut partial = Vec::new();
    let (out, broken) = port_cut(Framing::Packet(4), 64 << 20, &mut partial, &data, false);
    assert_eq!(
        out,
        [PortOutput::Packet(b"one".to_vec()), PortOutput::Packet(b"two".to_vec())]
    );
    let e = broken.unwrap_err();
    assert!(e.contains("over the limit"), "{e}");
    assert!(partial.is_empty());
}

proptest! {
    #[test]
    fn port_packets_round_trip_across_any_split(
        size in prop_oneof![Just(1u8), Just(2u8), Just(4u8)],
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..255), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend(crate::port::stdio::frame(size, p).unwrap());
        }
        let got = cut_port_output(Framing::Packet(size), &stream, &cuts).unwrap();
        let want: Vec<PortOutput> = packets.into_iter().map(PortOutput::Packet).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn port_lines_keep_every_byte(
        stream in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..600),
        max in 1usize..40,
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let got = cut_port_output(Framing::Lines { max }, &stream, &cuts).unwrap();
        // The lines, with the newlines that ended them, are the stream.
        let mut again = Vec::new();
        for e in got {
            let PortOutput::Line { data, cut } = e else { panic!("not a line") };
            prop_assert!(data.len() <= max);
            again.extend(&data);
            if !cut {
                again.push(b'\n');
            }
        }
        prop_assert_eq!(again, stream);
    }

    #[test]
    fn arbitrary_port_output_never_panics(
        mode in 0u8..5,
        stream in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let framing = match mode {
            0 => Framing::Raw,
            1 => Framing::Lines { max: 16 },
            2 => Framing::Packet(1),
            3 => Framing::Packet(2),
            _ => Framing::Packet(4),
        };
        if let Ok(events) = cut_port_output(framing, &stream, &cuts) {
            let total: usize = events
                .iter()
                .map(|e| match e {
                    PortOutput::Data(d) | PortOutput::Packet(d) => d.len(),
                    PortOutput::Line { data, .. } => data.len(),
                    _ => 0,
                })
                .sum();
            prop_assert!(total <= stream.len());
        }
    }

    #[test]
    fn the_packet_reader_never_panics(
        size in prop_oneof![Just(1u8), Just(2u8), Just(4u8)],
        stream in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let mut reader = crate::port::stdio::PacketReader::new(std::io::Cursor::new(&stream), size).max_packet(512);
        while let Ok(Some(p)) = reader.read() {
            prop_assert!(p.len() <= 512);
        }
    }
}

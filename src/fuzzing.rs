//! Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`; not
//! part of the API). Each feeds arbitrary bytes to one wire decoder and
//! checks what must hold for any input: no panic, no memory reserved from a
//! length prefix before its bytes, and whatever decodes re-encodes to a
//! value that decodes the same.

use crate::port::Framing;
use crate::wire::decode_exact;
use crate::wire::envelope::{Hello, Registration, ToNode, ToProcess};
use crate::wire::frame::{self, Decoder, Kind};

/// The frame decoder: the bytes after the first are fed in chunks whose size
/// the first byte sets, with a small size limit. Every frame it yields is
/// within the limit, and the frames it yields, encoded again, are a prefix of
/// the input.
pub fn frames(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let limit = 4096;
    let mut decoder = Decoder::default();
    let mut got: Vec<(Kind, Vec<u8>)> = Vec::new();
    for piece in stream.chunks(chunk) {
        let r = decoder.feed(piece, limit, |kind, body| {
            assert!(body.len() <= limit, "a frame over the limit was yielded");
            got.push((kind, body.to_vec()));
            true
        });
        if r.is_err() {
            break;
        }
    }
    let mut again = Vec::new();
    for (kind, body) in &got {
        let start = frame::begin(&mut again, *kind);
        again.extend_from_slice(body);
        frame::finish(&mut again, start);
    }
    assert!(
        stream.starts_with(&again),
        "decoded frames do not re-encode to the input"
    );
}

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode_exact::<T>(data) {
        let bytes = postcard::to_stdvec(&value).expect("a decoded value encodes");
        let again = decode_exact::<T>(&bytes).expect("a re-encoded value decodes");
        assert_eq!(value, again);
    }
}

/// The envelope decoders: control frames both ways, hellos, registrations.
pub fn envelopes(data: &[u8]) {
    round_trip::<ToNode>(data);
    round_trip::<ToProcess>(data);
    round_trip::<Hello>(data);
    round_trip::<Registration>(data);
}

/// A port's output cutter: the first byte picks the framing (raw, lines of
/// at most 1 to 64 bytes, packets of 1, 2 or 4 byte prefixes with a limit of
/// 256 bytes), the second the chunk size. What comes out never holds more
/// bytes than went in, no line or packet is over its maximum, and a broken
/// framing stops the output.
pub fn port_output(data: &[u8]) {
    let [mode, chunk, stream @ ..] = data else {
        return;
    };
    let framing = match mode % 5 {
        0 => Framing::Raw,
        1 => Framing::Lines {
            max: usize::from(mode / 5 % 64) + 1,
        },
        2 => Framing::Packet(1),
        3 => Framing::Packet(2),
        _ => Framing::Packet(4),
    };
    let max_packet = 256;
    let mut partial = Vec::new();
    let mut out_bytes = 0;
    let pieces: Vec<&[u8]> = stream.chunks(usize::from(*chunk).max(1)).collect();
    let last = pieces.len();
    for (i, piece) in pieces.into_iter().chain(std::iter::once(&[][..])).enumerate() {
        let (events, broken) = crate::wire::port::port_cut(framing, max_packet, &mut partial, piece, i == last);
        for e in events {
            let n = match e {
                crate::port::PortOutput::Data(d) => d.len(),
                crate::port::PortOutput::Line { data, .. } => {
                    if let Framing::Lines { max } = framing {
                        assert!(data.len() <= max, "a line over its maximum");
                    }
                    data.len()
                }
                crate::port::PortOutput::Packet(p) => {
                    assert!(p.len() <= max_packet, "a packet over the limit");
                    p.len()
                }
                other => panic!("unexpected {other:?}"),
            };
            out_bytes += n;
        }
        assert!(out_bytes <= stream.len(), "more bytes out than in");
        if broken.is_err() {
            return;
        }
    }
}

/// The Rust side's packet reader (`port::stdio::PacketReader`): the first
/// byte picks the prefix size.
pub fn packet_reader(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let size = [1, 2, 4][usize::from(mode % 3)];
    let mut reader = crate::port::stdio::PacketReader::new(std::io::Cursor::new(stream), size).max_packet(1024);
    let mut total = 0;
    while let Ok(Some(p)) = reader.read() {
        assert!(p.len() <= 1024, "a packet over the limit");
        total += p.len() + usize::from(size);
        assert!(total <= stream.len(), "more bytes out than in");
    }
}

/// A node id for the distribution fuzz targets (a node makes its own at
/// `init()`; nothing else builds one).
pub fn node_id(n: u128) -> crate::NodeId {
    crate::NodeId::from_bytes(n.to_le_bytes())
}

fn no_tool(_: u64) -> Result<u64, String> {
    Err("not called".into())
}

/// The decoders of convergent jobs: traces and checkpoints (round trips),
/// and the effect lines a program agent writes, each line parsed against a
/// small job: whatever parses holds values of the keys' types, in their
/// canonical encoding.
pub fn job_records(data: &[u8]) {
    use crate::job::{Checkpoint, Effect, Job, Tool, Trace};
    round_trip::<Trace>(data);
    round_trip::<Checkpoint>(data);
    let mut job = Job::new("fuzz");
    job.union::<String>("names");
    job.max::<u64>("score");
    job.single::<Vec<(String, bool)>>("pairs");
    job.tool(Tool::function("tool", no_tool));
    let run = job.start().expect("a job without agents starts without a node");
    for line in String::from_utf8_lossy(data).lines() {
        if let Ok(effect) = run.effect_from_json(line) {
            match effect {
                Effect::Put { key, value, .. } | Effect::Resolve { key, value, .. } => {
                    run.check(&key, &value).expect("a parsed value is canonical");
                }
                Effect::Call { tool, answer, .. } => assert!(tool == "tool" && !answer.is_empty()),
            }
        }
    }
}

/// The membership packet wrapper: arbitrary bytes never open (no MAC); the
/// same bytes sealed with the cluster's key open to themselves once, and
/// handed to SWIM as an authentic packet are refused or used, never a
/// panic.
#[cfg(feature = "dist")]
pub fn membership_packet(data: &[u8]) {
    use crate::dist::{Member, Membership, MembershipConfig, PacketError, PacketKey, Replays, Secret};
    let secret = Secret::from_bytes(b"the fuzzing cluster secret").expect("a long enough secret");
    let key = PacketKey::new(&secret);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut replays = Replays::default();
    assert!(key.open(data, now, &mut replays).is_err(), "unsealed bytes opened");
    let sealed = key.seal(data, now);
    assert_eq!(key.open(&sealed, now, &mut replays), Ok(data));
    assert_eq!(key.open(&sealed, now, &mut replays), Err(PacketError::Replayed));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7));
    let mut m = Membership::new(
        Member::new(node_id(1), "fuzz", addr, addr),
        &secret,
        MembershipConfig::default(),
    );
    let _ = m.handle_packet(&sealed, std::time::Instant::now());
}

/// A frame of a cluster session (after its record layer): refused or
/// decoded, never a panic, and what decodes encodes back the same.
#[cfg(feature = "dist")]
pub fn cluster_frame(data: &[u8]) {
    crate::dist::fuzz_frame(data);
}

/// A frame of the local protocol between the `converge` command and a node
/// daemon, as either side reads it: a clear error for anything that is not
/// a frame, nothing reserved from a length prefix past the limit, and what
/// decodes encodes back the same.
#[cfg(feature = "cli")]
pub fn daemon_frame(data: &[u8]) {
    use crate::daemon::{Reply, Request, read_frame, write_frame};
    if let Ok(request) = read_frame::<Request>(&mut &data[..]) {
        let mut again = Vec::new();
        write_frame(&mut again, &request).expect("BUG: a decoded request encodes");
        assert_eq!(read_frame::<Request>(&mut &again[..]).ok(), Some(request));
    }
    if let Ok(reply) = read_frame::<Reply>(&mut &data[..]) {
        let mut again = Vec::new();
        write_frame(&mut again, &reply).expect("BUG: a decoded reply encodes");
        assert_eq!(read_frame::<Reply>(&mut &again[..]).ok(), Some(reply));
    }
}

//! The session between two nodes: the shared secret, the Noise `NNpsk0`
//! handshake with the protocol version and the nodes' identities, and the
//! record layer that carries frames on numbered channels.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use blake2::{Blake2s256, Digest};
use serde::{Deserialize, Serialize};

use crate::pid::{NodeId, Pid};

/// The version of the distribution protocol, checked in the handshake.
pub const PROTOCOL_VERSION: u16 = 4;

/// The Noise protocol: a pre-shared key mixed in at the first message,
/// ephemeral keys on both sides (forward secrecy), ChaCha20-Poly1305.
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: a session of another protocol that
/// happened to share the secret does not verify.
const PROLOGUE: &[u8] = b"converge distribution v1";
/// Largest Noise message (`snow::constants::MAXMSGLEN`).
const MAX_RECORD: usize = 65535;
/// The authentication tag of a sealed record.
const TAG: usize = 16;
/// Largest handshake message accepted (they are under 200 bytes).
const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// A fragment's header: channel (u32), kind (u8), for the first fragment of
/// a frame its total length (u32), then the fragment's own length (u32),
/// all big-endian. A record holds fragments back to back.
const FIRST_HEADER: usize = 13;
const NEXT_HEADER: usize = 9;
/// A record with less room than this left is sealed as it is.
const RECORD_SLACK: usize = 64;
const FIRST: u8 = 1;
const NEXT: u8 = 2;
/// Most frames being reassembled at once, across channels.
const MAX_OPEN_CHANNELS: usize = 1024;

/// A distribution session could not be set up, or broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// The secret is too short to be one (at least 16 bytes).
    #[error("a cluster secret needs at least 16 bytes, this one has {0}")]
    ShortSecret(usize),
    /// The secret file could not be read, or others may read it.
    #[error("secret file {path}: {why}")]
    SecretFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The peer does not hold the cluster secret, or what it sent was
    /// altered, replayed or reordered: nothing of it is trusted.
    #[error("the peer failed authentication (another secret, or an altered, replayed or reordered message)")]
    Authentication,
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks distribution protocol {theirs}, this node {ours}")]
    Version {
        /// This node's version.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// A frame over the size limit was announced; it was refused before
    /// anything was allocated for it.
    #[error("the peer announced a frame of {size} bytes, over the limit of {limit} bytes")]
    FrameTooLarge {
        /// The size announced.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The peer broke the protocol.
    #[error("the peer broke the protocol: {0}")]
    Malformed(String),
    /// The connection ended, or its I/O failed.
    #[error("the connection failed: {0}")]
    Io(String),
}

/// The cluster's shared secret: every node of a cluster holds the same one,
/// and a peer that does not is refused at its first message.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    /// A secret from bytes (at least 16; a passphrase or random bytes),
    /// stretched to the 32-byte key Noise takes with BLAKE2s.
    pub fn from_bytes(secret: &[u8]) -> Result<Secret, DistError> {
        if secret.len() < 16 {
            return Err(DistError::ShortSecret(secret.len()));
        }
        let mut h = Blake2s256::new();
        h.update(b"converge cluster secret\0");
        h.update(secret);
        Ok(Secret(h.finalize().into()))
    }

    /// A key for one purpose (`label`), derived from the secret.
    pub(crate) fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut h = Blake2s256::new();
        h.update(b"converge derived key\0");
        h.update(label);
        h.update(b"\0");
        h.update(self.0);
        h.finalize().into()
    }

    /// A secret from a file, its content less one trailing newline. The file
    /// must not be readable or writable by other users (as `ssh` refuses a
    /// private key that is).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret, DistError> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let err = |why: String| DistError::SecretFile {
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "other users may read or write it (mode {:o}); chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let mut bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Secret::from_bytes(&bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What each end of a session says of itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Its node's id: fresh at every start, so a restarted node is a new
    /// incarnation.
    pub node: NodeId,
    /// Its node's name (`alpha`, or `alpha@host`).
    pub name: String,
    /// Set when the node connects only to ask the other to connect back, to
    /// this port at the address the connection came from: of two nodes, only
    /// the one with the smaller id opens the session that carries messages,
    /// so two that connect at once never replace a session with what was
    /// sent on it.
    pub callback: Option<u16>,
    /// Set when the connection is not a session between the two nodes but
    /// a direct one from a process of the connecting node to a process of
    /// the other (sender, receiver): the receiving node hands the socket
    /// and the session's keys to the receiver, the connecting node to the
    /// sender, and messages then flow from process to process.
    pub direct: Option<(Pid, Pid)>,
}

impl Hello {
    /// This node's hello, at the current protocol version.
    pub fn new(node: NodeId, name: impl Into<String>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node,
            name: name.into(),
            callback: None,
            direct: None,
        }
    }
}

/// What a handshake step asks of its driver.
#[derive(Debug)]
pub enum Step {
    /// More bytes from the peer are needed.
    Pending,
    /// The handshake is done: send `send` (if any), then use the session.
    Done {
        /// The session.
        session: Box<Session>,
        /// The peer's hello (its version already checked).
        peer: Hello,
        /// The last handshake message, for the peer.
        send: Option<Vec<u8>>,
    },
    /// The peer is authenticated but speaks another version: send `send` (so
    /// that it learns why), then close.
    Refused {
        /// The answer, for the peer.
        send: Vec<u8>,
        /// Why.
        error: DistError,
    },
}

/// One end of the handshake. The driver moves bytes: it sends what
/// [`Handshake::initiate`] returns, feeds what arrives to
/// [`Handshake::feed`] and acts on the [`Step`]. It also enforces a
/// deadline on the whole handshake: a peer that stops halfway is dropped.
pub struct Handshake {
    /// `None` once the handshake ended (done, refused or failed).
    state: Option<snow::HandshakeState>,
    initiator: bool,
    ours: Hello,
    records: Records,
    max_frame: usize,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.initiator)
            .field("ours", &self.ours)
            .finish()
    }
}

fn noise_builder(secret: &Secret) -> snow::Builder<'_> {
    let params = PATTERN.parse().expect("BUG: the pattern is a valid Noise name");
    snow::Builder::new(params)
        .psk(0, &secret.0)
        .expect("BUG: location 0 is NNpsk0's")
        .prologue(PROLOGUE)
        .expect("BUG: a prologue is set once")
}

impl Handshake {
    /// The connecting end: its first message (to send) and the handshake.
    /// `max_frame`: the largest frame the session will accept.
    pub fn initiate(secret: &Secret, ours: Hello, max_frame: usize) -> (Handshake, Vec<u8>) {
        let state = noise_builder(secret)
            .build_initiator()
            .expect("BUG: the builder is complete");
        let mut hs = Handshake {
            state: Some(state),
            initiator: true,
            ours,
            records: Records::new(MAX_HANDSHAKE_MESSAGE),
            max_frame,
        };
        let first = hs.write(&encode_hello(&hs.ours));
        (hs, first)
    }

    /// The accepting end.
    pub fn respond(secret: &Secret, ours: Hello, max_frame: usize) -> Handshake {
        Handshake {
            state: Some(
                noise_builder(secret)
                    .build_responder()
                    .expect("BUG: the builder is complete"),
            ),
            initiator: false,
            ours,
            records: Records::new(MAX_HANDSHAKE_MESSAGE),
            max_frame,
        }
    }

    /// Feeds bytes from the peer. An error, or a step other than
    /// [`Step::Pending`], ends the handshake (on an error: close the
    /// connection, count it).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Step, DistError> {
        let result = self.step(bytes);
        if !matches!(result, Ok(Step::Pending)) {
            self.state = None;
        }
        result
    }

    fn step(&mut self, bytes: &[u8]) -> Result<Step, DistError> {
        if self.state.is_none() {
            return Err(DistError::Malformed("bytes after the handshake ended".into()));
        }
        self.records.push(bytes)?;
        let Some(message) = self.records.next_record() else {
            return Ok(Step::Pending);
        };
        // Past the last handshake message, the responder (done first) may
        // already send records: the initiator's session takes them. Nothing
        // may follow the responder's only message.
        let rest = self.records.take_rest();
        if !rest.is_empty() && !self.initiator {
            return Err(DistError::Malformed("bytes after a handshake message".into()));
        }
        let state = self.state.as_mut().expect("BUG: checked above");
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = state
            .read_message(&message, &mut payload)
            .map_err(|_| DistError::Authentication)?;
        let peer = decode_hello(&payload[..n])?;
        let send = if self.initiator {
            None
        } else {
            Some(self.write(&encode_hello(&self.ours)))
        };
        if peer.version != self.ours.version {
            let error = DistError::Version {
                ours: self.ours.version,
                theirs: peer.version,
            };
            return match send {
                Some(send) => Ok(Step::Refused { send, error }),
                None => Err(error),
            };
        }
        let mut state = self.state.take().expect("BUG: checked above");
        if !state.is_handshake_finished() {
            return Err(DistError::Malformed("the handshake did not finish".into()));
        }
        // The split's first key seals what the initiator sends.
        let (to_responder, to_initiator) = state.dangerously_get_raw_split();
        let hash = state.get_handshake_hash();
        let id = u64::from_le_bytes(
            hash[..8]
                .try_into()
                .expect("BUG: a handshake hash has 32 bytes or more"),
        );
        let keys = if self.initiator {
            Keys {
                id,
                send: to_responder,
                receive: to_initiator,
            }
        } else {
            Keys {
                id,
                send: to_initiator,
                receive: to_responder,
            }
        };
        let mut session = Box::new(Session::from_keys(&keys, self.max_frame));
        session.opener.records.push(&rest)?;
        session.keys = Some(keys);
        Ok(Step::Done { session, peer, send })
    }

    /// Runs the handshake over a blocking stream (its read timeout is the
    /// deadline of each step). The initiator sends `first` (from
    /// [`initiate`](Self::initiate)) itself.
    pub fn run<S: Read + Write>(mut self, stream: &mut S, first: Option<&[u8]>) -> Result<(Session, Hello), DistError> {
        let io = |e: std::io::Error| DistError::Io(e.to_string());
        if let Some(first) = first {
            stream.write_all(first).map_err(io)?;
        }
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Err(DistError::Io(
                    "the peer closed the connection during the handshake".into(),
                ));
            }
            match self.feed(&buf[..n])? {
                Step::Pending => {}
                Step::Done { session, peer, send } => {
                    if let Some(send) = send {
                        stream.write_all(&send).map_err(io)?;
                    }
                    return Ok((*session, peer));
                }
                Step::Refused { send, error } => {
                    let _ = stream.write_all(&send);
                    return Err(error);
                }
            }
        }
    }

    /// Writes the next handshake message around `payload`, framed.
    fn write(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = self
            .state
            .as_mut()
            .expect("BUG: written only while the handshake runs")
            .write_message(payload, &mut message)
            .expect("BUG: a hello fits a handshake message");
        let mut out = Vec::with_capacity(n + 2);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&message[..n]);
        out
    }
}

/// Most bytes of a hello's name.
const MAX_NAME: usize = 255;

fn encode_hello(hello: &Hello) -> Vec<u8> {
    postcard::to_stdvec(hello).expect("BUG: a hello always encodes")
}

fn decode_hello(bytes: &[u8]) -> Result<Hello, DistError> {
    // The version first, alone: a peer of another version may have changed
    // what follows it.
    let (version, _) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| DistError::Malformed(format!("a hello without a version: {e}")))?;
    if version != PROTOCOL_VERSION {
        // Only its version is read: the caller refuses it.
        return Ok(Hello {
            version,
            node: NodeId::from_bytes([0; 16]),
            name: String::new(),
            callback: None,
            direct: None,
        });
    }
    let hello: Hello = crate::wire::decode_exact(bytes).map_err(|e| DistError::Malformed(format!("a hello: {e}")))?;
    if hello.name.len() > MAX_NAME {
        return Err(DistError::Malformed(format!(
            "a node name of {} bytes",
            hello.name.len()
        )));
    }
    Ok(hello)
}

/// An established session: seals frames into records and opens the
/// records of the peer back into frames. Its two halves work apart
/// ([`split`](Session::split)): one thread may seal while another opens.
#[derive(Debug)]
pub struct Session {
    sealer: Sealer,
    opener: Opener,
    /// The keys it was made from, for a session handed to a process.
    keys: Option<Keys>,
}

/// The two keys of a session, as one end sees them: to hand a session
/// over to another process of the same node, which makes it again with
/// [`Session::from_keys`]. Nothing was sealed or opened with them yet.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Keys {
    /// The session's name, the same at both ends and new with each
    /// handshake (the first 8 bytes of its hash): a direct session's fence
    /// names the session it is for.
    pub(crate) id: u64,
    /// Seals what this end sends.
    pub(crate) send: [u8; 32],
    /// Opens what the other end sends.
    pub(crate) receive: [u8; 32],
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// The session's cipher, keyed.
fn cipher(key: &[u8; 32]) -> Box<dyn snow::types::Cipher> {
    use snow::resolvers::CryptoResolver;
    let mut cipher = snow::resolvers::RingResolver
        .resolve_cipher(&snow::params::CipherChoice::ChaChaPoly)
        .expect("BUG: ring has ChaChaPoly");
    cipher.set(key);
    cipher
}

/// The sending half of a [`Session`]: frames into sealed records, each
/// with the next nonce.
pub struct Sealer {
    cipher: Box<dyn snow::types::Cipher>,
    /// The nonce of the next record sealed.
    nonce: u64,
    max_frame: usize,
    /// The record being filled with fragments, not sealed yet.
    building: Vec<u8>,
}

/// The receiving half of a [`Session`]: the peer's records, opened each
/// with the next nonce (a replayed, reordered or altered record does not
/// open), back into frames.
pub struct Opener {
    cipher: Box<dyn snow::types::Cipher>,
    /// The nonce of the next record opened.
    nonce: u64,
    records: Records,
    /// Frames being reassembled, by channel.
    partial: HashMap<u32, Partial>,
    max_frame: usize,
    /// Decryption buffer.
    plain: Vec<u8>,
    /// Most frames being reassembled at once.
    max_open: usize,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .field("partial", &self.partial.len())
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

/// A frame being reassembled.
#[derive(Debug)]
struct Partial {
    total: usize,
    data: Vec<u8>,
}

impl Session {
    /// A session from its keys, fresh (no record sealed or opened yet):
    /// one end of a session handed over by the process that made it.
    pub(crate) fn from_keys(keys: &Keys, max_frame: usize) -> Session {
        Session {
            sealer: Sealer {
                cipher: cipher(&keys.send),
                nonce: 0,
                max_frame,
                building: Vec::new(),
            },
            opener: Opener {
                cipher: cipher(&keys.receive),
                nonce: 0,
                records: Records::new(MAX_RECORD),
                partial: HashMap::new(),
                max_frame,
                plain: vec![0u8; MAX_RECORD],
                max_open: MAX_OPEN_CHANNELS,
            },
            keys: None,
        }
    }

    /// Opens frames of one channel at a time (a direct session uses one):
    /// a peer cannot hold more than one frame open.
    pub(crate) fn one_channel(mut self) -> Session {
        self.opener.max_open = 1;
        self
    }

    /// The keys of a session just made by a handshake, to hand it over
    /// (taken once: they leave with it).
    pub(crate) fn take_keys(&mut self) -> Option<Keys> {
        self.keys.take()
    }

    /// Its two halves, to seal on one thread and open on another (its keys,
    /// if not taken, are dropped).
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }

    /// See [`Sealer::seal`].
    pub fn seal(&mut self, channel: u32, frame: &[u8], out: &mut Vec<u8>) -> Result<(), DistError> {
        self.sealer.seal(channel, frame, out)
    }

    /// See [`Sealer::seal_next`].
    pub fn seal_next(
        &mut self,
        channel: u32,
        frame: &[u8],
        sent: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, DistError> {
        self.sealer.seal_next(channel, frame, sent, out)
    }

    /// See [`Sealer::end_record`].
    pub fn end_record(&mut self, out: &mut Vec<u8>) -> Result<(), DistError> {
        self.sealer.end_record(out)
    }

    /// See [`Sealer::seal_raw`].
    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    pub fn seal_raw(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), DistError> {
        self.sealer.seal_raw(plain, out)
    }

    /// See [`Opener::open`].
    pub fn open(&mut self, bytes: &[u8], frames: &mut Vec<(u32, Vec<u8>)>) -> Result<(), DistError> {
        self.opener.open(bytes, frames)
    }

    /// See [`Opener::open_into`].
    pub fn open_into(&mut self, bytes: &[u8], frames: &mut Frames) -> Result<(), DistError> {
        self.opener.open_into(bytes, frames)
    }

    /// See [`Opener::receiving`].
    pub fn receiving(&self) -> bool {
        self.opener.receiving()
    }
}

impl Sealer {
    /// Appends to `out` the records of all of `frame` on `channel` (and of
    /// the fragments that were waiting for a record before it).
    pub fn seal(&mut self, channel: u32, frame: &[u8], out: &mut Vec<u8>) -> Result<(), DistError> {
        let mut sent = 0;
        while !self.seal_next(channel, frame, &mut sent, out)? {}
        self.end_record(out)
    }

    /// Adds the next fragment of `frame` on `channel`, from `*sent` bytes on
    /// (start at 0), to the record being filled: as much of the frame as the
    /// record has room for. A full record is sealed into `out`; call
    /// [`end_record`](Sealer::end_record) to seal one that is not full.
    /// Returns whether the frame is complete. Fragments of frames on other
    /// channels may come in between: that is how a large frame lets small
    /// ones pass, and many small frames share one record (one seal).
    pub fn seal_next(
        &mut self,
        channel: u32,
        frame: &[u8],
        sent: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, DistError> {
        if frame.len() > self.max_frame || frame.len() > u32::MAX as usize {
            return Err(DistError::FrameTooLarge {
                size: frame.len() as u64,
                limit: self.max_frame,
            });
        }
        let header = if *sent == 0 { FIRST_HEADER } else { NEXT_HEADER };
        let capacity = MAX_RECORD - TAG;
        // A record without room for the rest, or for a good piece of it, is
        // sealed first.
        if capacity.saturating_sub(self.building.len() + header) < RECORD_SLACK.min(frame.len() - *sent) {
            self.end_record(out)?;
        }
        let room = capacity - self.building.len() - header;
        let piece = &frame[*sent..(*sent + room).min(frame.len())];
        self.building.extend_from_slice(&channel.to_be_bytes());
        if *sent == 0 {
            self.building.push(FIRST);
            self.building.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        } else {
            self.building.push(NEXT);
        }
        self.building.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        self.building.extend_from_slice(piece);
        *sent += piece.len();
        if self.building.len() + RECORD_SLACK >= capacity {
            self.end_record(out)?;
        }
        Ok(*sent == frame.len())
    }

    /// Seals `plain` as a record of its own, whatever it holds (tests and
    /// fuzzing of the fragment layer: what a peer holding the secret could
    /// send).
    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    pub fn seal_raw(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), DistError> {
        self.end_record(out)?;
        self.building.extend_from_slice(plain);
        self.end_record(out)
    }

    /// Seals the record being filled, if it holds anything, into `out`.
    pub fn end_record(&mut self, out: &mut Vec<u8>) -> Result<(), DistError> {
        if self.building.is_empty() {
            return Ok(());
        }
        let nonce = self.nonce;
        // A nonce is never used twice: past the last one, the session ends.
        self.nonce = nonce
            .checked_add(1)
            .ok_or_else(|| DistError::Malformed("the session's nonces ran out".into()))?;
        let at = out.len();
        out.resize(at + 2 + self.building.len() + TAG, 0);
        let n = self.cipher.encrypt(nonce, &[], &self.building, &mut out[at + 2..]);
        out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(at + 2 + n);
        self.building.clear();
        Ok(())
    }
}

/// Frames opened by [`Opener::open_into`], laid end to end in one buffer.
#[derive(Debug, Default)]
pub struct Frames {
    data: Vec<u8>,
    /// Each frame's channel and where it ends in `data`.
    ends: Vec<(u32, usize)>,
}

impl Frames {
    fn push(&mut self, channel: u32, frame: &[u8]) {
        self.data.extend_from_slice(frame);
        self.ends.push((channel, self.data.len()));
    }

    /// Forgets the frames, keeping the memory (unless a large frame made it
    /// large: that goes).
    pub fn clear(&mut self) {
        if self.data.capacity() > 1 << 20 {
            self.data = Vec::new();
        }
        self.data.clear();
        self.ends.clear();
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The frames in order, with their channels.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(channel, end)| {
            let frame = &self.data[start..end];
            start = end;
            (channel, frame)
        })
    }
}

impl Opener {
    /// Whether a frame of the peer has come in part, the rest to follow.
    pub fn receiving(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds bytes from the peer; appends every frame they complete, with its
    /// channel, to `frames`. An error ends the session: nothing after it is
    /// trusted.
    pub fn open(&mut self, bytes: &[u8], frames: &mut Vec<(u32, Vec<u8>)>) -> Result<(), DistError> {
        self.open_each(bytes, &mut |channel, frame| frames.push((channel, frame.to_vec())))
    }

    /// [`open`](Opener::open), the frames laid end to end in `frames` (which
    /// keeps its memory from one call to the next): no allocation per frame.
    pub fn open_into(&mut self, bytes: &[u8], frames: &mut Frames) -> Result<(), DistError> {
        self.open_each(bytes, &mut |channel, frame| frames.push(channel, frame))
    }

    fn open_each(&mut self, bytes: &[u8], frames: &mut impl FnMut(u32, &[u8])) -> Result<(), DistError> {
        self.records.push(bytes)?;
        while let Some(record) = self.records.next_record() {
            if record.len() < TAG {
                // Not even its tag: nothing to authenticate.
                return Err(DistError::Authentication);
            }
            let nonce = self.nonce;
            let n = self
                .cipher
                .decrypt(nonce, &[], &record, &mut self.plain)
                .map_err(|_| DistError::Authentication)?;
            self.nonce = nonce.checked_add(1).ok_or(DistError::Authentication)?;
            let mut at = 0;
            while at < n {
                at += self.fragment(at, n, frames)?;
            }
        }
        Ok(())
    }

    /// Takes the fragment at `self.plain[at..n]`; returns its length with
    /// its header.
    fn fragment(&mut self, at: usize, n: usize, frames: &mut impl FnMut(u32, &[u8])) -> Result<usize, DistError> {
        let plain = &self.plain[at..n];
        let word = |i: usize| u32::from_be_bytes(plain[i..i + 4].try_into().expect("4 bytes")) as usize;
        if plain.len() < NEXT_HEADER {
            return Err(DistError::Malformed("a fragment shorter than its header".into()));
        }
        let channel = word(0) as u32;
        let (header, total) = match plain[4] {
            FIRST if plain.len() < FIRST_HEADER => {
                return Err(DistError::Malformed("a first fragment shorter than its header".into()));
            }
            FIRST => (FIRST_HEADER, Some(word(5))),
            NEXT => (NEXT_HEADER, None),
            kind => return Err(DistError::Malformed(format!("a fragment of kind {kind}"))),
        };
        let len = word(header - 4);
        let Some(data) = header.checked_add(len).and_then(|end| plain.get(header..end)) else {
            return Err(DistError::Malformed(format!(
                "channel {channel}: a fragment longer than its record"
            )));
        };
        match total {
            Some(_) if self.partial.contains_key(&channel) => {
                return Err(DistError::Malformed(format!(
                    "a new frame on channel {channel} before the last one ended"
                )));
            }
            Some(total) if total > self.max_frame => {
                return Err(DistError::FrameTooLarge {
                    size: total as u64,
                    limit: self.max_frame,
                });
            }
            Some(total) if len > total => {
                return Err(DistError::Malformed(format!(
                    "channel {channel}: more bytes than its frame's length"
                )));
            }
            // A whole frame in one fragment, as most are.
            Some(total) if len == total => frames(channel, data),
            Some(_) if self.partial.len() >= self.max_open => {
                return Err(DistError::Malformed(format!(
                    "more than {} frames open at once",
                    self.max_open
                )));
            }
            Some(total) => {
                // Grows as the data comes, not by what the header says.
                self.partial.insert(
                    channel,
                    Partial {
                        total,
                        data: data.to_vec(),
                    },
                );
            }
            None => {
                let Some(partial) = self.partial.get_mut(&channel) else {
                    return Err(DistError::Malformed(format!(
                        "a fragment on channel {channel} with no frame begun"
                    )));
                };
                if partial.data.len() + len > partial.total {
                    return Err(DistError::Malformed(format!(
                        "channel {channel}: more bytes than its frame's length"
                    )));
                }
                partial.data.extend_from_slice(data);
                if partial.data.len() == partial.total {
                    let done = self.partial.remove(&channel).expect("BUG: present");
                    frames(channel, &done.data);
                }
            }
        }
        Ok(header + data.len())
    }
}

/// Length-prefixed records arriving in pieces.
#[derive(Debug)]
struct Records {
    buf: Vec<u8>,
    at: usize,
    max: usize,
}

impl Records {
    fn new(max: usize) -> Records {
        Records {
            buf: Vec::new(),
            at: 0,
            max,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), DistError> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
        // The length of the next record is checked as soon as it is known.
        if let Some(len) = self.peek_len()
            && len > self.max
        {
            return Err(DistError::Malformed(format!(
                "a message of {len} bytes, over the limit of {} bytes",
                self.max
            )));
        }
        Ok(())
    }

    /// The bytes past the records taken so far.
    fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.at);
        self.buf.clear();
        self.at = 0;
        rest
    }

    fn peek_len(&self) -> Option<usize> {
        let b = self.buf.get(self.at..self.at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn next_record(&mut self) -> Option<Vec<u8>> {
        let len = self.peek_len()?;
        let start = self.at + 2;
        let record = self.buf.get(start..start + len)?.to_vec();
        self.at = start + len;
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 1 << 20 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        Some(record)
    }
}

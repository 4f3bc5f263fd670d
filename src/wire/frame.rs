//! Frames: `[u32 little-endian body length][u8 kind][body]`.
//!
//! The decoder is incremental (bytes arrive in any split), never reserves memory
//! from a length prefix before the bytes arrive, and rejects a prefix over its
//! limit at once, before reading the body.

use serde::Serialize;

/// Bytes before the body: the length and the kind.
pub(crate) const HEADER: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// First frame of a data connection: who is sending.
    Hello = 1,
    /// A message: `[u64 fingerprint][postcard body]`.
    Msg = 2,
    /// A reply to a call or a join: `[u64 reference][u64 fingerprint][body]`.
    Reply = 3,
    /// A control frame between a process and its node.
    Ctl = 4,
    /// From a process of another node, through the nodes: what it sends
    /// from here on comes on its direct session (feature `dist`), handed
    /// to this process by the node. Its body: the session it is for (the
    /// session keys' `id`, a `u64`, little endian).
    Fence = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Msg,
            3 => Kind::Reply,
            4 => Kind::Ctl,
            5 => Kind::Fence,
            _ => return None,
        })
    }
}

/// A framing error: the stream cannot be read past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is over the receiver's limit.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The kind byte is not one this side knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// Starts a frame of `kind` at the end of `buf`; returns its start offset for
/// [`finish`].
pub(crate) fn begin(buf: &mut Vec<u8>, kind: Kind) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, kind as u8]);
    start
}

/// Patches the length of the frame that starts at `start`; returns the body
/// length.
pub(crate) fn finish(buf: &mut [u8], start: usize) -> usize {
    let body = buf.len() - start - HEADER;
    buf[start..start + 4].copy_from_slice(&(body as u32).to_le_bytes());
    body
}

/// Appends a whole frame of `kind` whose body is `value` postcard-encoded.
pub(crate) fn push<T: Serialize + ?Sized>(buf: &mut Vec<u8>, kind: Kind, value: &T) -> Result<(), postcard::Error> {
    let start = begin(buf, kind);
    match postcard::to_extend(value, std::mem::take(buf)) {
        Ok(v) => {
            *buf = v;
            finish(buf, start);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Incremental frame decoder for one byte stream.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Bytes carried over from earlier input: whole frames left when a caller
    /// stopped early, then at most one incomplete frame.
    pending: Vec<u8>,
}

impl Decoder {
    /// Feeds `input` and calls `each(kind, body)` for every complete frame, in
    /// order, while it returns `true`. When it returns `false` decoding stops
    /// after that frame, the rest is kept, and `Ok(true)` is returned: call
    /// again (with empty input) to go on.
    ///
    /// On a framing error the stream is unusable: the error is returned and
    /// nothing after it is decoded. No memory is reserved from a length prefix:
    /// the buffer grows only with bytes that arrived.
    pub(crate) fn feed(
        &mut self,
        mut input: &[u8],
        max: usize,
        mut each: impl FnMut(Kind, &[u8]) -> bool,
    ) -> Result<bool, FrameError> {
        if !self.pending.is_empty() {
            // Whole frames left by an early stop come first.
            let mut at = 0;
            while self.pending.len() - at >= HEADER {
                let (len, kind) = parse_header(&self.pending[at..], max)?;
                if self.pending.len() - at - HEADER < len {
                    break;
                }
                let go_on = each(kind, &self.pending[at + HEADER..at + HEADER + len]);
                at += HEADER + len;
                if !go_on {
                    self.pending.drain(..at);
                    self.pending.extend_from_slice(input);
                    return Ok(true);
                }
            }
            self.pending.drain(..at);
            // What is left is one incomplete frame: complete it from the input.
            if !self.pending.is_empty() {
                if self.pending.len() < HEADER {
                    let take = (HEADER - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.pending.len() < HEADER {
                        return Ok(false);
                    }
                }
                let (len, kind) = parse_header(&self.pending, max)?;
                let take = (len + HEADER - self.pending.len()).min(input.len());
                self.pending.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.pending.len() - HEADER < len {
                    return Ok(false);
                }
                let go_on = each(kind, &self.pending[HEADER..]);
                self.pending.clear();
                if self.pending.capacity() > 1 << 20 {
                    self.pending = Vec::new();
                }
                if !go_on {
                    self.pending.extend_from_slice(input);
                    return Ok(true);
                }
            }
        }
        // Decode straight from the input, keeping only what is left over.
        while input.len() >= HEADER {
            let (len, kind) = parse_header(input, max)?;
            if input.len() - HEADER < len {
                break;
            }
            let go_on = each(kind, &input[HEADER..HEADER + len]);
            input = &input[HEADER + len..];
            if !go_on {
                self.pending.extend_from_slice(input);
                return Ok(true);
            }
        }
        if input.len() >= HEADER {
            // Refuse an oversized prefix before its body arrives.
            parse_header(input, max)?;
        }
        self.pending.extend_from_slice(input);
        Ok(false)
    }
}

fn parse_header(b: &[u8], max: usize) -> Result<(usize, Kind), FrameError> {
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let kind = Kind::from_u8(b[4]).ok_or(FrameError::UnknownKind(b[4]))?;
    Ok((len, kind))
}

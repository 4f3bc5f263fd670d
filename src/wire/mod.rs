//! The wire format: length-prefixed frames carrying postcard-encoded bodies.
//!
//! 1. [`frame`]: the frame header, an incremental decoder with a size limit,
//!    and helpers that encode a frame in place at the end of a buffer.
//! 2. [`envelope`]: what the frames carry: the hello of a data connection, the
//!    control protocol between a process and its node.
//! 3. [`body`]: the layout of a message body (fingerprint, value) and of a
//!    reply body (reference, fingerprint, value).
//! 4. [`port`]: a port's standard output cut into records (chunks, lines,
//!    `{packet, N}` packets), and the types that name those records.
//!
//! postcard is not self-describing, so every message frame carries a 64-bit
//! fingerprint of the Rust type it was encoded from, and a message decodes only
//! if the fingerprints match and the decoder consumes the whole body: a frame
//! of the wrong type becomes a decode error, never a wrong value.

pub(crate) mod body;
pub(crate) mod envelope;
pub(crate) mod frame;
pub(crate) mod port;

pub use frame::FrameError;

use serde::de::DeserializeOwned;

/// FNV-1a, 64-bit, of a string.
pub(crate) const fn fingerprint_str(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The fingerprint of a message type: FNV-1a of its type name.
pub(crate) fn fingerprint<T: ?Sized>() -> u64 {
    fingerprint_str(std::any::type_name::<T>())
}

/// Why a frame body could not be turned into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame was encoded from a different type than the receiver expects.
    #[error("message type mismatch (fingerprint {found:#018x}, expected {expected:#018x})")]
    WrongType {
        /// Fingerprint carried by the frame.
        found: u64,
        /// Fingerprint of the receiver's type.
        expected: u64,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// The body decoded but left bytes unread.
    #[error("message body has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The frame itself was broken (bad length, unknown kind).
    #[error("broken frame: {0}")]
    Frame(#[from] FrameError),
}

/// Decodes `bytes` as exactly one `T`: trailing bytes are an error.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Bytes that encode as one length-prefixed run (postcard's `bytes`), not as
/// a sequence of `u8`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests;

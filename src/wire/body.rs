//! The bodies of message and reply frames: the only place that knows their
//! layout.
//!
//! A message body is the 64-bit fingerprint of the value's type (little
//! endian) followed by the postcard-encoded value; a reply body puts the
//! request's 64-bit reference before that.

use serde::Serialize;

use super::fingerprint;
use super::frame::{self, HEADER, Kind};

/// Bytes before the value in a message body.
pub(crate) const MESSAGE_PREFIX: usize = 8;
/// Bytes before the value in a reply body.
pub(crate) const REPLY_PREFIX: usize = 16;

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Encodes `value` as a message body: its type's fingerprint, then the value.
pub(crate) fn message<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, fingerprint::<T>().to_le_bytes().to_vec())
}

/// Appends a message frame carrying `value` to `buf`.
pub(crate) fn push_message<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), postcard::Error> {
    push(buf, Kind::Msg, &[fingerprint::<T>()], value)
}

/// Appends a reply frame for request `reference` carrying `value` to `buf`.
pub(crate) fn push_reply<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    reference: u64,
    value: &T,
) -> Result<(), postcard::Error> {
    push(buf, Kind::Reply, &[reference, fingerprint::<T>()], value)
}

fn push<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    kind: Kind,
    prefix: &[u64],
    value: &T,
) -> Result<(), postcard::Error> {
    let start = frame::begin(buf, kind);
    for p in prefix {
        buf.extend_from_slice(&p.to_le_bytes());
    }
    // On an error the buffer is gone with `to_extend`: the caller's frame
    // is abandoned whole.
    *buf = postcard::to_extend(value, std::mem::take(buf))?;
    frame::finish(buf, start);
    Ok(())
}

/// Splits a message body into its fingerprint and its value's bytes.
pub(crate) fn split_message(body: &[u8]) -> Option<(u64, &[u8])> {
    Some((u64_at(body, 0)?, &body[MESSAGE_PREFIX..]))
}

/// Splits a reply body into its reference, its fingerprint and its value's
/// bytes.
pub(crate) fn split_reply(body: &[u8]) -> Option<(u64, u64, &[u8])> {
    Some((u64_at(body, 0)?, u64_at(body, 8)?, &body[REPLY_PREFIX..]))
}

/// The fingerprint of the whole message frame at the start of `frame`, and
/// where its value starts; `None` if it is not a message frame.
pub(crate) fn message_frame(frame: &[u8]) -> Option<(u64, usize)> {
    if frame.get(4) != Some(&(Kind::Msg as u8)) {
        return None;
    }
    Some((u64_at(frame, HEADER)?, HEADER + MESSAGE_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_as_they_were_built() {
        let body = message(&(7u32, "x".to_string())).unwrap();
        let (fp, value) = split_message(&body).unwrap();
        assert_eq!(fp, fingerprint::<(u32, String)>());
        assert_eq!(postcard::from_bytes::<(u32, String)>(value).unwrap(), (7, "x".into()));
        let mut buf = Vec::new();
        push_reply(&mut buf, 99, &5u8).unwrap();
        let (reference, fp, value) = split_reply(&buf[HEADER..]).unwrap();
        assert_eq!((reference, fp, value), (99, fingerprint::<u8>(), &[5u8][..]));
        let mut buf = Vec::new();
        push_message(&mut buf, &5u8).unwrap();
        assert_eq!(
            message_frame(&buf),
            Some((fingerprint::<u8>(), HEADER + MESSAGE_PREFIX))
        );
        assert_eq!(message_frame(&[0, 0, 0, 0, Kind::Reply as u8]), None);
        assert_eq!(split_message(&[1, 2, 3]), None);
        assert_eq!(split_reply(&[0; 12]), None);
    }
}

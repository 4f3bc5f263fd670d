//! A port's standard output as records: raw chunks, lines of a bounded
//! length, or Erlang's `{packet, N}` packets (a big-endian length of 1, 2 or
//! 4 bytes, then that many bytes). [`port_cut`] is the decoder; it never
//! holds more than one record's bytes and refuses a packet over the limit
//! before it is read.

use serde::{Deserialize, Serialize};

use crate::exit::ExitReason;

/// How a port's output is cut into events (and its input framed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Framing {
    /// Chunks as they are read ([`PortOutput::Data`]); input is written as is.
    Raw,
    /// Lines ([`PortOutput::Line`]) of at most `max` bytes, without their
    /// newline; a longer line comes in pieces marked `cut`. Input is written as
    /// is ([`Port::send_line`](crate::port::Port::send_line) adds the newline).
    Lines {
        /// The longest line delivered in one piece.
        max: usize,
    },
    /// Packets ([`PortOutput::Packet`]) with a big-endian length prefix of 1,
    /// 2 or 4 bytes, both ways: Erlang's `{packet, N}`.
    Packet(u8),
}

/// What happens to a port's standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Stderr {
    /// Delivered as [`PortOutput::Stderr`] chunks.
    Separate,
    /// Merged into the standard output stream (and its framing).
    Merge,
    /// Logged line by line through `tracing` (at `warn` level).
    Log,
}

/// An event from a port.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortOutput {
    /// A chunk of standard output ([`Framing::Raw`]).
    Data(Vec<u8>),
    /// A line of standard output, without its newline ([`Framing::Lines`]).
    /// `cut` is true when the line was longer than the maximum (the rest
    /// follows) or ended without a newline.
    Line {
        /// The bytes of the line.
        data: Vec<u8>,
        /// The line did not end here with a newline.
        cut: bool,
    },
    /// A packet of standard output ([`Framing::Packet`]).
    Packet(Vec<u8>),
    /// A chunk of standard error ([`Stderr::Separate`]).
    Stderr(Vec<u8>),
    /// Standard output broke its framing (a packet over
    /// [`PortBuilder::max_packet`](crate::port::PortBuilder::max_packet), or the output ended inside a packet):
    /// what follows it is not read. The port is ended with
    /// `ExitReason::Error` of the same text if it still runs; a program that
    /// had already ended keeps its own reason. The owner counts it in its
    /// [`ProcessInfo::undecodable`](crate::ProcessInfo::undecodable).
    Broken(String),
    /// Standard output reached its end.
    Eof,
    /// The program ended (always the last event of a port).
    Exit(ExitReason),
}

impl PortOutput {
    /// The line's text (lossy UTF-8), for [`PortOutput::Line`].
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            PortOutput::Line { data, .. } => Some(String::from_utf8_lossy(data)),
            _ => None,
        }
    }
}

/// Cuts fresh standard output of a port into events (`end`: the pipe ended),
/// `partial` holding what is left of an incomplete line or packet. An error
/// is a broken framing, after the events cut before it: the output is not
/// read further.
pub(crate) fn port_cut(
    framing: Framing,
    max_packet: usize,
    partial: &mut Vec<u8>,
    data: &[u8],
    end: bool,
) -> (Vec<PortOutput>, Result<(), String>) {
    let mut out = Vec::new();
    let broken = cut_into(&mut out, framing, max_packet, partial, data, end);
    (out, broken)
}

fn cut_into(
    out: &mut Vec<PortOutput>,
    framing: Framing,
    max_packet: usize,
    partial: &mut Vec<u8>,
    data: &[u8],
    end: bool,
) -> Result<(), String> {
    match framing {
        Framing::Raw => {
            if !data.is_empty() {
                out.push(PortOutput::Data(data.to_vec()));
            }
        }
        Framing::Lines { max } => {
            for &b in data {
                if b == b'\n' {
                    out.push(PortOutput::Line {
                        data: std::mem::take(partial),
                        cut: false,
                    });
                } else {
                    partial.push(b);
                    if partial.len() >= max {
                        out.push(PortOutput::Line {
                            data: std::mem::take(partial),
                            cut: true,
                        });
                    }
                }
            }
            if end && !partial.is_empty() {
                out.push(PortOutput::Line {
                    data: std::mem::take(partial),
                    cut: true,
                });
            }
        }
        Framing::Packet(size) => {
            partial.extend_from_slice(data);
            let n = size as usize;
            let mut at = 0;
            while partial.len() - at >= n {
                let p = &partial[at..];
                let len = match n {
                    1 => p[0] as usize,
                    2 => u16::from_be_bytes([p[0], p[1]]) as usize,
                    _ => u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
                };
                if len > max_packet {
                    partial.clear();
                    return Err(format!(
                        "port output broke its framing: a packet of {len} bytes is over the limit of {} bytes",
                        max_packet
                    ));
                }
                if p.len() - n < len {
                    break;
                }
                out.push(PortOutput::Packet(p[n..n + len].to_vec()));
                at += n + len;
            }
            partial.drain(..at);
            if end && !partial.is_empty() {
                let left = partial.len();
                partial.clear();
                return Err(format!(
                    "port output broke its framing: it ended inside a packet ({left} bytes)"
                ));
            }
        }
    }
    Ok(())
}

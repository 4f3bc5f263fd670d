//! The other side of a port, in Rust: read and write length-prefixed packets
//! (Erlang's `{packet, N}`: a big-endian length of 1, 2 or 4 bytes, then the
//! bytes) on standard input and output.
//!
//! ```no_run
//! use converge::port::stdio::{PacketReader, PacketWriter};
//!
//! // An echo port program: every packet comes back upper-cased.
//! let mut input = PacketReader::new(std::io::stdin().lock(), 4);
//! let mut output = PacketWriter::new(std::io::stdout().lock(), 4);
//! while let Some(packet) = input.read().expect("a well-formed packet") {
//!     output.write(&packet.to_ascii_uppercase()).expect("stdout is open");
//! }
//! ```

use std::io::{self, Read, Write};

/// Frames `data` with a big-endian length prefix of `size` bytes.
pub fn frame(size: u8, data: &[u8]) -> Result<Vec<u8>, String> {
    let len = data.len();
    let mut out = Vec::with_capacity(len + size as usize);
    match size {
        1 if len <= u8::MAX as usize => out.push(len as u8),
        2 if len <= u16::MAX as usize => out.extend_from_slice(&(len as u16).to_be_bytes()),
        4 if len <= u32::MAX as usize => out.extend_from_slice(&(len as u32).to_be_bytes()),
        1 | 2 | 4 => {
            return Err(format!(
                "a packet of {len} bytes does not fit a {size}-byte length prefix"
            ));
        }
        _ => return Err(format!("packet length prefix of {size} bytes: use 1, 2 or 4")),
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Reads length-prefixed packets.
#[derive(Debug)]
pub struct PacketReader<R> {
    inner: R,
    size: u8,
    max: usize,
}

impl<R: Read> PacketReader<R> {
    /// Reads packets with a `size`-byte prefix (1, 2 or 4) from `inner`.
    pub fn new(inner: R, size: u8) -> PacketReader<R> {
        assert!(
            matches!(size, 1 | 2 | 4),
            "packet length prefix of {size} bytes: use 1, 2 or 4"
        );
        PacketReader {
            inner,
            size,
            max: usize::MAX,
        }
    }

    /// Refuses packets longer than `max` bytes (`InvalidData`).
    pub fn max_packet(mut self, max: usize) -> PacketReader<R> {
        self.max = max;
        self
    }

    /// The next packet, or `None` at a clean end of input. A packet cut short
    /// by the end of input is an `UnexpectedEof` error.
    pub fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut prefix = [0u8; 4];
        let n = self.size as usize;
        let mut got = 0;
        while got < n {
            match self.inner.read(&mut prefix[got..n])? {
                0 if got == 0 => return Ok(None),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "input ended inside a length prefix",
                    ));
                }
                k => got += k,
            }
        }
        let len = match n {
            1 => prefix[0] as usize,
            2 => u16::from_be_bytes([prefix[0], prefix[1]]) as usize,
            _ => u32::from_be_bytes(prefix) as usize,
        };
        if len > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("packet of {len} bytes over the limit of {}", self.max),
            ));
        }
        // Grow with the bytes that arrive, not with the announced length.
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        let read = (&mut self.inner).take(len as u64).read_to_end(&mut body)?;
        if read < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "input ended inside a packet",
            ));
        }
        Ok(Some(body))
    }
}

/// Writes length-prefixed packets.
#[derive(Debug)]
pub struct PacketWriter<W> {
    inner: W,
    size: u8,
}

impl<W: Write> PacketWriter<W> {
    /// Writes packets with a `size`-byte prefix (1, 2 or 4) to `inner`.
    pub fn new(inner: W, size: u8) -> PacketWriter<W> {
        assert!(
            matches!(size, 1 | 2 | 4),
            "packet length prefix of {size} bytes: use 1, 2 or 4"
        );
        PacketWriter { inner, size }
    }

    /// Writes one packet and flushes.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let framed = frame(self.size, data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.inner.write_all(&framed)?;
        self.inner.flush()
    }
}

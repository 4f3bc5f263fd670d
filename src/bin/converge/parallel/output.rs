//! Jobs' output: spooled (in memory up to a cap, then in an unlinked file)
//! until it is its turn to be printed, whole (grouped) or line by line.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Bytes of a stream kept in memory before it goes to a file.
const IN_MEMORY: usize = 64 * 1024;

/// One stream of one job.
#[derive(Default)]
pub(crate) struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
}

impl Spool {
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(f) = &mut self.file {
            return f.write_all(bytes);
        }
        if self.memory.len() + bytes.len() <= IN_MEMORY {
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        let mut f = spool_file()?;
        f.write_all(&self.memory)?;
        f.write_all(bytes)?;
        self.memory = Vec::new();
        self.file = Some(f);
        Ok(())
    }

    /// Reads everything back, in chunks, and empties the spool.
    pub(crate) fn drain(&mut self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let memory = std::mem::take(&mut self.memory);
        if let Some(mut f) = self.file.take() {
            f.seek(SeekFrom::Start(0))?;
            let mut buf = vec![0u8; IN_MEMORY];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                each(&buf[..n])?;
            }
        } else if !memory.is_empty() {
            each(&memory)?;
        }
        Ok(())
    }
}

/// A file in the temporary directory that has no name: it goes away with
/// its last descriptor, whatever happens to this process. Where the file
/// system cannot make one (`O_TMPFILE`), a file made and removed at once.
fn spool_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let unnamed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(&dir);
    if let Ok(f) = unnamed {
        return Ok(f);
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".converge-spool-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// Writes `bytes` to `out`, each line after `tag` when there is one;
/// `at_line_start` carries whether the next byte starts a line.
pub(crate) fn write_tagged(
    out: &mut impl Write,
    tag: Option<&str>,
    at_line_start: &mut bool,
    bytes: &[u8],
) -> io::Result<()> {
    let Some(tag) = tag else {
        return out.write_all(bytes);
    };
    for piece in bytes.split_inclusive(|&b| b == b'\n') {
        if *at_line_start {
            out.write_all(tag.as_bytes())?;
            out.write_all(b"\t")?;
        }
        out.write_all(piece)?;
        *at_line_start = piece.ends_with(b"\n");
    }
    Ok(())
}

/// A job's output, one spool per stream.
#[derive(Default)]
pub(crate) struct JobOutput {
    pub(crate) stdout: Spool,
    pub(crate) stderr: Spool,
    /// Bytes the job wrote to its standard output (the job log's Receive),
    /// printed or spooled.
    pub(crate) received: u64,
}

/// One stream's lines as they come (`--line-buffer`): whole lines are
/// printed at once when the job may print; the rest waits.
#[derive(Default)]
pub(crate) struct LineStream {
    partial: Vec<u8>,
}

impl LineStream {
    /// The whole lines of what came so far (with `bytes`), keeping the
    /// last partial line.
    pub(crate) fn complete_lines(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(bytes);
        match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                let rest = self.partial.split_off(end + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => Vec::new(),
        }
    }

    /// What is left at the end.
    pub(crate) fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }
}

/// `bytes` (UTF-8 where valid, each invalid byte as U+FFFD) as a JSON
/// string's contents, for output that is streamed in chunks: an incomplete
/// character at the end of a chunk is held for the next.
#[derive(Default)]
pub(crate) struct JsonText {
    held: Vec<u8>,
    pub(crate) text: String,
}

impl JsonText {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        let held = std::mem::take(&mut self.held);
        let mut chunks = held.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            self.text.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // The last chunk's invalid tail may be a character cut in two.
            let cut = chunks.peek().is_none() && invalid.len() < 4 && std::str::from_utf8(invalid).is_err() && {
                let lead = invalid[0];
                let need = if lead >= 0xF0 {
                    4
                } else if lead >= 0xE0 {
                    3
                } else if lead >= 0xC0 {
                    2
                } else {
                    0
                };
                need > invalid.len()
            };
            if cut {
                self.held = invalid.to_vec();
            } else {
                self.text.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }

    pub(crate) fn finish(mut self) -> String {
        if !self.held.is_empty() {
            self.text.push(char::REPLACEMENT_CHARACTER);
        }
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_goes_to_a_file_past_its_cap_and_reads_back_whole() {
        let mut s = Spool::default();
        let chunk: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for _ in 0..200 {
            s.write(&chunk).unwrap();
        }
        assert!(s.file.is_some());
        let mut back = Vec::new();
        s.drain(|b| {
            back.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(back.len(), 200_000);
        assert!(back.chunks(1000).all(|c| c == chunk.as_slice()));
    }

    #[test]
    fn tags_start_each_line() {
        let mut out = Vec::new();
        let mut start = true;
        write_tagged(&mut out, Some("a b"), &mut start, b"one\ntw").unwrap();
        write_tagged(&mut out, Some("a b"), &mut start, b"o\nthree").unwrap();
        assert_eq!(out, b"a b\tone\na b\ttwo\na b\tthree");
    }

    #[test]
    fn lines_wait_until_complete() {
        let mut l = LineStream::default();
        assert_eq!(l.complete_lines(b"ab"), b"");
        assert_eq!(l.complete_lines(b"c\nd\nef"), b"abc\nd\n");
        assert_eq!(l.rest(), b"ef");
    }

    #[test]
    fn json_text_holds_a_cut_character() {
        let mut j = JsonText::default();
        let e = "é".as_bytes();
        j.push(&[b'a', e[0]]);
        j.push(&[e[1], 0xff, b'b']);
        assert_eq!(j.finish(), "aé\u{fffd}b");
    }
}

//! GNU parallel's job log: a tab-separated file with a header and a row per
//! finished job, read back by `--resume` and `--resume-failed`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

pub(crate) const HEADER: &str = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// A finished job's row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) host: String,
    /// Seconds since the epoch.
    pub(crate) start: f64,
    /// Seconds.
    pub(crate) runtime: f64,
    pub(crate) send: u64,
    pub(crate) receive: u64,
    pub(crate) exitval: i64,
    pub(crate) signal: i32,
    pub(crate) command: String,
}

impl Row {
    /// The row as GNU parallel writes it (`%.3f` and `%10.3f` seconds).
    pub(crate) fn line(&self) -> String {
        format!(
            "{}\t{}\t{:.3}\t{:10.3}\t{}\t{}\t{}\t{}\t{}",
            self.seq,
            self.host,
            self.start,
            self.runtime,
            self.send,
            self.receive,
            self.exitval,
            self.signal,
            // A row is one line.
            self.command.replace('\n', " ")
        )
    }
}

/// The log being written.
pub(crate) struct JobLog {
    file: File,
}

impl JobLog {
    /// Opens `path`: appended to when resuming (with a header if it is new),
    /// started over otherwise.
    pub(crate) fn open(path: &Path, resume: bool) -> io::Result<JobLog> {
        let mut options = File::options();
        if resume {
            options.append(true).create(true);
        } else {
            options.write(true).create(true).truncate(true);
        }
        let mut file = options.open(path)?;
        if file.metadata()?.len() == 0 {
            writeln!(file, "{HEADER}")?;
        }
        Ok(JobLog { file })
    }

    pub(crate) fn write(&mut self, row: &Row) -> io::Result<()> {
        // One write per row, so that a reader never sees half of one.
        self.file.write_all(format!("{}\n", row.line()).as_bytes())
    }
}

/// What an earlier run's log says: the sequence numbers it has a row for,
/// and those with no row that passed (GNU parallel's "failed").
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub(crate) seen: HashSet<u64>,
    pub(crate) failed: HashSet<u64>,
}

/// Reads the log at `path` (a missing file is an empty log).
pub(crate) fn read(path: &Path) -> Result<Done, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Done::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // Whether any row of the job passed.
    let mut passed: HashMap<u64, bool> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || (n == 0 && line.starts_with("Seq\t")) {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let parsed = (cols.len() >= 9)
            .then(|| {
                Some((
                    cols[0].parse::<u64>().ok()?,
                    cols[6].trim().parse::<i64>().ok()?,
                    cols[7].trim().parse::<i64>().ok()?,
                ))
            })
            .flatten();
        let Some((seq, exitval, signal)) = parsed else {
            return Err(format!("{}:{}: not a job log row: {line:?}", path.display(), n + 1));
        };
        *passed.entry(seq).or_default() |= exitval == 0 && signal == 0;
    }
    Ok(Done {
        seen: passed.keys().copied().collect(),
        failed: passed.iter().filter(|(_, p)| !**p).map(|(s, _)| *s).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_as_gnu_parallel_writes_them() {
        let row = Row {
            seq: 1,
            host: ":".into(),
            start: 1796335012.3714,
            runtime: 0.0004,
            send: 0,
            receive: 2,
            exitval: 0,
            signal: 9,
            command: "echo a".into(),
        };
        assert_eq!(row.line(), "1\t:\t1796335012.371\t     0.000\t0\t2\t0\t9\techo a");
    }

    #[test]
    fn a_job_with_a_row_that_passed_is_done() {
        let dir = std::env::temp_dir().join(format!("converge-joblog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(
            &path,
            format!(
                "{HEADER}\n1\t:\t1.000\t     0.1\t0\t0\t1\t0\tx\n2\t:\t1.0\t0.1\t0\t0\t0\t0\ty\n1\t:\t2.0\t0.1\t0\t0\t0\t0\tx\n\
                 3\t:\t1.0\t0.1\t0\t0\t-1\t15\tz\n2\t:\t3.0\t0.1\t0\t0\t2\t0\ty\n"
            ),
        )
        .unwrap();
        let done = read(&path).unwrap();
        assert_eq!(done.seen, HashSet::from([1, 2, 3]));
        assert_eq!(done.failed, HashSet::from([3]));
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(read(&path).unwrap_err().contains("not a job log row"));
        assert!(read(&dir.join("missing")).unwrap().seen.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

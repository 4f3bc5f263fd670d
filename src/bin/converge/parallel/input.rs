//! What `converge parallel` runs: argument sources (`:::` lists, `::::`
//! files, standard input), their combinations, and the command template with
//! GNU parallel's replacement strings.

use std::io::BufRead;

/// One job: its sequence number (from 1, in input order) and its arguments
/// (one per input source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub(crate) seq: u64,
    pub(crate) args: Vec<String>,
}

/// Where the jobs' arguments come from.
pub(crate) enum Source {
    /// Every combination of the lists, the first list outermost.
    Lists {
        lists: Vec<Vec<String>>,
        next: u64,
        total: u64,
    },
    /// One argument a line.
    Lines {
        lines: Box<dyn Iterator<Item = std::io::Result<String>>>,
        next: u64,
    },
}

impl Source {
    pub(crate) fn lists(lists: Vec<Vec<String>>) -> Result<Source, String> {
        let total = lists.iter().try_fold(1u64, |n, l| n.checked_mul(l.len() as u64));
        let total = total.ok_or("too many combinations of arguments")?;
        Ok(Source::Lists { lists, next: 0, total })
    }

    pub(crate) fn lines(input: impl BufRead + 'static) -> Source {
        Source::Lines {
            lines: Box::new(input.lines()),
            next: 0,
        }
    }

    /// Every line read now, so that the number of jobs is known (`--halt`
    /// with a percentage needs it, as GNU parallel reads its input first).
    pub(crate) fn read_all(self) -> Result<Source, String> {
        match self {
            Source::Lines { lines, .. } => {
                let all = lines
                    .collect::<std::io::Result<Vec<String>>>()
                    .map_err(|e| format!("reading the arguments: {e}"))?;
                Source::lists(vec![all])
            }
            lists => Ok(lists),
        }
    }

    /// How many jobs there are, when known before reading them all.
    pub(crate) fn total(&self) -> Option<u64> {
        match self {
            Source::Lists { total, .. } => Some(*total),
            Source::Lines { .. } => None,
        }
    }

    /// The next job, or the error reading it.
    pub(crate) fn next_job(&mut self) -> Option<Result<Job, String>> {
        match self {
            Source::Lists { lists, next, total } => {
                if *next >= *total {
                    return None;
                }
                // The index's digits, the last list the fastest.
                let mut rest = *next;
                let mut args = vec![String::new(); lists.len()];
                for (i, list) in lists.iter().enumerate().rev() {
                    let len = list.len() as u64;
                    args[i] = list[(rest % len) as usize].clone();
                    rest /= len;
                }
                *next += 1;
                Some(Ok(Job { seq: *next, args }))
            }
            Source::Lines { lines, next } => {
                let line = lines.next()?;
                *next += 1;
                Some(
                    line.map(|l| Job {
                        seq: *next,
                        args: vec![l],
                    })
                    .map_err(|e| format!("reading the arguments: {e}")),
                )
            }
        }
    }
}

/// Lists of arguments, one per `:::` or `::::`.
pub(crate) type Lists = Vec<Vec<String>>;

/// Splits the words after the options into the command and its argument
/// lists: `:::` starts a list of arguments, `::::` a list of files whose
/// lines are arguments.
pub(crate) fn split(words: &[String]) -> Result<(Vec<String>, Option<Lists>), String> {
    let Some(first) = words.iter().position(|w| w == ":::" || w == "::::") else {
        return Ok((words.to_vec(), None));
    };
    let mut lists: Lists = Vec::new();
    let mut files = false;
    for w in &words[first..] {
        match w.as_str() {
            ":::" => {
                files = false;
                lists.push(Vec::new());
            }
            "::::" => {
                files = true;
                lists.push(Vec::new());
            }
            _ if files => {
                let text = if w == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(w)
                }
                .map_err(|e| format!("{w}: {e}"))?;
                let list = lists.last_mut().expect("a list was started");
                list.extend(text.lines().map(str::to_string));
            }
            _ => lists.last_mut().expect("a list was started").push(w.clone()),
        }
    }
    Ok((words[..first].to_vec(), Some(lists)))
}

/// How a replacement string transforms its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    /// `{}`: as it is.
    Whole,
    /// `{.}`: without its extension.
    NoExtension,
    /// `{/}`: its file name.
    Basename,
    /// `{//}`: its directory.
    Dirname,
    /// `{/.}`: its file name without extension.
    BasenameNoExtension,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// An argument (`Some(n)`: the n-th, from 1; `None`: all of them).
    Arg(Option<usize>, Transform),
    /// `{#}`: the job's sequence number.
    Seq,
    /// `{%}`: the job's slot number.
    Slot,
}

/// A command with GNU parallel's replacement strings: `{}`, `{.}`, `{/}`,
/// `{//}`, `{/.}`, their positional forms `{1}`, `{1.}`, ..., `{#}` and `{%}`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
    /// Whether the command has any replacement string (when not, the
    /// arguments are appended).
    replaces: bool,
    /// No command: each job's arguments are its command.
    empty: bool,
}

impl Template {
    /// The command's words, joined by spaces as shell text.
    pub(crate) fn parse(words: &[String]) -> Template {
        let text = words.join(" ");
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open..];
            match after
                .find('}')
                .and_then(|close| replacement(&after[1..close]).map(|p| (p, close)))
            {
                Some((piece, close)) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                    rest = &after[close + 1..];
                }
                None => {
                    literal.push('{');
                    rest = &after[1..];
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        let replaces = pieces.iter().any(|p| !matches!(p, Piece::Text(_)));
        Template {
            pieces,
            replaces,
            empty: words.is_empty(),
        }
    }

    /// The command of `job`, run in `slot`.
    pub(crate) fn render(&self, job: &Job, slot: usize) -> String {
        if self.empty {
            return job.args.join(" ");
        }
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Seq => out.push_str(&job.seq.to_string()),
                Piece::Slot => out.push_str(&slot.to_string()),
                Piece::Arg(None, how) => {
                    let quoted: Vec<String> = job.args.iter().map(|a| shell_quote(&transform(a, *how))).collect();
                    out.push_str(&quoted.join(" "));
                }
                Piece::Arg(Some(n), how) => {
                    if let Some(a) = job.args.get(n - 1) {
                        out.push_str(&shell_quote(&transform(a, *how)));
                    }
                }
            }
        }
        if !self.replaces {
            for a in &job.args {
                out.push(' ');
                out.push_str(&shell_quote(a));
            }
        }
        out
    }
}

/// The replacement string between `{` and `}`, if `inner` is one.
fn replacement(inner: &str) -> Option<Piece> {
    match inner {
        "#" => return Some(Piece::Seq),
        "%" => return Some(Piece::Slot),
        _ => {}
    }
    let digits = inner.len() - inner.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, how) = inner.split_at(digits);
    let how = match how {
        "" => Transform::Whole,
        "." => Transform::NoExtension,
        "/" => Transform::Basename,
        "//" => Transform::Dirname,
        "/." => Transform::BasenameNoExtension,
        _ => return None,
    };
    if number.is_empty() {
        return Some(Piece::Arg(None, how));
    }
    match number.parse::<usize>() {
        Ok(n) if n > 0 => Some(Piece::Arg(Some(n), how)),
        _ => None,
    }
}

fn without_extension(s: &str) -> &str {
    // The last `.` of the last path component, if there is one.
    match s.rfind(['.', '/']) {
        Some(i) if s.as_bytes()[i] == b'.' => &s[..i],
        _ => s,
    }
}

fn basename(s: &str) -> &str {
    s.rsplit_once('/').map_or(s, |(_, b)| b)
}

/// `dirname` as the shell utility gives it.
fn dirname(s: &str) -> String {
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return if s.starts_with('/') { "/".into() } else { ".".into() };
    }
    match trimmed.rfind('/') {
        None => ".".into(),
        Some(i) => {
            let dir = trimmed[..i].trim_end_matches('/');
            if dir.is_empty() { "/".into() } else { dir.into() }
        }
    }
}

fn transform(arg: &str, how: Transform) -> String {
    match how {
        Transform::Whole => arg.into(),
        Transform::NoExtension => without_extension(arg).into(),
        Transform::Basename => basename(arg).into(),
        Transform::Dirname => dirname(arg),
        Transform::BasenameNoExtension => without_extension(basename(arg)).into(),
    }
}

/// `s` quoted for a Bourne shell as GNU parallel quotes it: as it is when it
/// has only letters, digits and `-_.+/`; `''` when empty; otherwise in
/// single quotes, each `'` written `'"'"'`.
pub(crate) fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".into();
    }
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+/".contains(&b)) {
        return s.into();
    }
    let quoted = format!("'{}'", s.replace('\'', r#"'"'"'"#));
    let quoted = quoted.strip_prefix("''").unwrap_or(&quoted);
    quoted.strip_suffix("''").unwrap_or(quoted).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    fn job(args: &[&str]) -> Job {
        Job {
            seq: 7,
            args: words(args),
        }
    }

    #[test]
    fn quoting_as_gnu_parallel() {
        assert_eq!(shell_quote("plain"), "plain");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("c'd"), r#"'c'"'"'d'"#);
        assert_eq!(shell_quote("'x"), r#""'"'x'"#);
        assert_eq!(shell_quote("x'"), r#"'x'"'""#);
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("é"), "'é'");
        assert_eq!(shell_quote("-n"), "-n");
    }

    #[test]
    fn replacement_strings() {
        let t = Template::parse(&words(&["echo", "{//} {/} {.} {/.} {#} {%} {1/} {2.}"]));
        assert_eq!(
            t.render(&job(&["a/b.c.d", "q.r"]), 2),
            "echo a . b.c.d q.r a/b.c q b.c q 7 2 b.c.d q"
        );
        let t = Template::parse(&words(&["echo", "{3}x", "{", "{a}", "{0}"]));
        assert_eq!(t.render(&job(&["a", "b"]), 1), "echo x { {a} {0}");
    }

    #[test]
    fn arguments_are_appended_without_replacement_strings() {
        let t = Template::parse(&words(&["echo"]));
        assert_eq!(t.render(&job(&["a b", "c"]), 1), "echo 'a b' c");
        let t = Template::parse(&[]);
        assert_eq!(t.render(&job(&["echo  \"b c\""]), 1), "echo  \"b c\"");
    }

    #[test]
    fn every_combination_first_list_outermost() {
        let mut s = Source::lists(vec![words(&["a", "b"]), words(&["1", "2", "3"])]).unwrap();
        assert_eq!(s.total(), Some(6));
        let all: Vec<_> = std::iter::from_fn(|| s.next_job()).map(|j| j.unwrap()).collect();
        assert_eq!(
            all[0],
            Job {
                seq: 1,
                args: words(&["a", "1"])
            }
        );
        assert_eq!(
            all[4],
            Job {
                seq: 5,
                args: words(&["b", "2"])
            }
        );
        assert_eq!(all.len(), 6);
        let mut none = Source::lists(vec![words(&["a"]), vec![]]).unwrap();
        assert!(none.next_job().is_none());
    }

    #[test]
    fn dirnames() {
        for (path, dir) in [
            ("a/b", "a"),
            ("b", "."),
            ("/b", "/"),
            ("/", "/"),
            ("a//b/", "a"),
            ("", "."),
        ] {
            assert_eq!(dirname(path), dir, "{path}");
        }
    }
}

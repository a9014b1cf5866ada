//! Small helpers for the words of messages that reach people: a name
//! quoted as JSON writes it ([`quoted`], never Rust's `{:?}`), a count with
//! its noun in the right number ([`count`]), and "did you mean" suggestions
//! by edit distance ([`closest`], [`did_you_mean`]), and a name that is
//! not UTF-8 shown with its bytes ([`escaped_bytes`]).

use std::fmt;

/// `s` between double quotes, escaped as in JSON (`"é"` stays `"é"`; a
/// quote or a control character is escaped): how a name from a file or a
/// command line is shown in a message.
pub fn quoted(s: &str) -> Quoted<'_> {
    Quoted(s)
}

/// See [`quoted`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self.0) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "\"{}\"", self.0),
        }
    }
}

/// Bytes (a file name that is not UTF-8) as one readable line: the UTF-8
/// in them as it is, every other byte, a backslash and a control
/// character as `\xNN` — so that the original bytes can be told back.
pub fn escaped_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `n` and the noun, singular for 1 and plural otherwise: `1 problem`,
/// `2 problems`, `0 problems`.
pub fn count(n: usize, singular: &str) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        format!("{n} {}", plural(singular))
    }
}

/// The plural of one of the nouns messages count.
fn plural(singular: &str) -> String {
    let consonant_y = singular
        .strip_suffix('y')
        .filter(|stem| stem.chars().last().is_some_and(|c| !"aeiou".contains(c)));
    if let Some(stem) = consonant_y {
        format!("{stem}ies")
    } else if singular.ends_with('s') || singular.ends_with('x') || singular.ends_with("sh") {
        format!("{singular}es")
    } else {
        format!("{singular}s")
    }
}

/// The most edits (insertions, deletions, substitutions, transpositions)
/// a suggestion may be away from what was typed: a third of its length,
/// at least 1 (`prioity` → `priority`, `org.exmaple` → `org.example`,
/// but never `a` → `b` from nothing alike).
pub fn threshold(typed: &str) -> usize {
    (typed.chars().count() / 3).max(1)
}

/// The candidate closest to `typed` by edit distance (Damerau-Levenshtein),
/// if it is within [`threshold`] and is not `typed` itself; the first of
/// equally close candidates wins.
pub fn closest<I, S>(typed: &str, candidates: I) -> Option<S>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let max = threshold(typed);
    let mut best: Option<(usize, S)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(typed, c.as_ref());
        if d == 0 || d > max {
            continue;
        }
        if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// ` (did you mean "x"?)` when a candidate is close to `typed`, else empty:
/// to append to a message.
pub fn did_you_mean<I, S>(typed: &str, candidates: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    match closest(typed, candidates) {
        Some(c) => format!(" (did you mean {}?)", quoted(c.as_ref())),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_1_problem_and_2_problems() {
        assert_eq!(count(0, "problem"), "0 problems");
        assert_eq!(count(1, "problem"), "1 problem");
        assert_eq!(count(2, "problem"), "2 problems");
        assert_eq!(count(1, "taskmaster"), "1 taskmaster");
        assert_eq!(count(3, "tasker"), "3 taskers");
        assert_eq!(count(2, "process"), "2 processes");
        assert_eq!(count(2, "entry"), "2 entries");
        assert_eq!(count(1, "entry"), "1 entry");
        assert_eq!(count(2, "day"), "2 days");
    }

    #[test]
    fn names_are_quoted_as_json_not_as_rust_debug() {
        assert_eq!(quoted("prioity").to_string(), "\"prioity\"");
        assert_eq!(quoted("é").to_string(), "\"é\"");
        assert_eq!(quoted("a\"b\n").to_string(), "\"a\\\"b\\n\"");
    }

    #[test]
    fn the_closest_candidate_within_the_threshold_is_suggested() {
        let keys = ["domain", "tasker", "priority", "payload", "retries"];
        assert_eq!(closest("prioity", keys), Some("priority"));
        assert_eq!(closest("domian", keys), Some("domain"));
        assert_eq!(closest("taskr", keys), Some("tasker"));
        assert_eq!(closest("colour", keys), None);
        // What was typed is never suggested back.
        assert_eq!(closest("domain", keys), None);
        assert_eq!(
            closest("org.exmaple", ["org.other", "org.example"]),
            Some("org.example")
        );
        assert_eq!(closest("billing", ["org.example"]), None);
        assert_eq!(closest("x", Vec::<String>::new()), None);
        assert_eq!(
            did_you_mean("prioity", keys),
            " (did you mean \"priority\"?)"
        );
        assert_eq!(did_you_mean("zzz", keys), "");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_escaped() {
        assert_eq!(escaped_bytes(b"bad\xff.json"), "bad\\xff.json");
        assert_eq!(escaped_bytes("é\u{1}\\".as_bytes()), "é\\x01\\x5c");
        assert_eq!(escaped_bytes(b"\xc3\x28a\n"), "\\xc3(a\\x0a");
    }

    #[test]
    fn the_threshold_grows_with_the_length() {
        assert_eq!(threshold("ab"), 1);
        assert_eq!(threshold("prioity"), 2);
        assert_eq!(threshold("org.exmaple.sales"), 5);
    }
}

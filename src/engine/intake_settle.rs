//! When intake looks at an entry of `in/`: a file a scan found still
//! changing, or cut short while its writer may still be at work, is put
//! off ([`settle`], [`hold`]) until its own deadline ([`Settling`]); what
//! intake keeps between looks (entries that could not be moved, watched
//! directories found missing) is kept here too. Pure decisions, with their
//! unit tests; the engine's side is in `engine::intake`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How old a file must be for a scan (not an event) to take it once the
/// engine runs.
pub(super) const SETTLE: Duration = Duration::from_secs(2);
/// How long a file cut short that a scan found (no close event seen) is
/// kept in `in/` after its last change when the engine cannot tell
/// whether a writer still has it open: its writer may only be pausing.
pub(super) const QUIET: Duration = Duration::from_secs(60);

/// What tells a change of a file: its status-change time (`ctime`, set by
/// this machine's clock on every write, and on `chmod` or `touch -d`, which
/// a modification time is not) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) ctime: Option<std::time::SystemTime>,
    len: u64,
}

impl Stamp {
    pub(super) fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let ctime = u64::try_from(meta.ctime()).ok().map(|s| {
            std::time::UNIX_EPOCH
                + Duration::from_secs(s)
                + Duration::from_nanos(meta.ctime_nsec().clamp(0, 999_999_999) as u64)
        });
        Stamp {
            ctime,
            len: meta.len(),
        }
    }
}

/// What tells that an entry changed since it was found stuck: its device
/// and inode (another file put at its path) and its status-change time,
/// which a write, a `chown` or a `chmod` (the likely fixes) all set.
pub(super) type Mark = (u64, u64, i64, i64);

/// The [`Mark`] of the entry at `path` (a link itself, not its target).
pub(super) fn mark_of(path: &Path) -> Option<Mark> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// What a scan does with a regular file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settle {
    Take,
    /// Look again after this long.
    Wait(Duration),
}

/// Whether a file a scan found (stamped `stamp` at `now`) is taken now.
/// `writing`: whether a writer has it open, if that could be told — if
/// not, it is taken once it has not changed for [`SETTLE`]. `before`: its
/// stamp when it was put off, if its deadline has come — unchanged since,
/// it has settled, whatever its clock says (a time in the future, after
/// the clock was set back or from a file server's clock, would otherwise
/// keep it young for ever).
pub(super) fn settle(
    now: std::time::SystemTime,
    stamp: Stamp,
    before: Option<Stamp>,
    writing: Option<bool>,
) -> Settle {
    match writing {
        Some(false) => return Settle::Take,
        Some(true) => return Settle::Wait(SETTLE),
        None => {}
    }
    if before == Some(stamp) {
        return Settle::Take;
    }
    let Some(changed) = stamp.ctime else {
        return Settle::Take;
    };
    match now.duration_since(changed) {
        Ok(age) if age >= SETTLE => Settle::Take,
        Ok(age) => Settle::Wait(SETTLE - age),
        Err(_) => Settle::Wait(SETTLE),
    }
}

/// What intake keeps between looks at `in/`: entries put off by a scan,
/// each with its own deadline; entries that could not be moved; watched
/// directories found missing.
#[derive(Debug, Default)]
pub(in crate::engine) struct Settling {
    /// Entries that could not be moved (rejected or claimed) or read (a
    /// domain's directory): path → its [`Mark`] then. Not looked at again
    /// until it changes.
    pub(super) stuck: std::collections::HashMap<PathBuf, Mark>,
    /// Watched directories found deleted or moved away, until made again.
    pub(super) lost: std::collections::HashSet<PathBuf>,
    /// path → (its stamp when put off, its deadline).
    pending: std::collections::HashMap<PathBuf, (Stamp, tokio::time::Instant)>,
    /// The deadlines in order (an entry whose deadline moved since is
    /// stale and skipped).
    order: std::collections::BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, PathBuf)>>,
}

impl Settling {
    pub(super) fn get(&self, path: &Path) -> Option<(Stamp, tokio::time::Instant)> {
        self.pending.get(path).copied()
    }

    pub(super) fn wait(&mut self, path: &Path, stamp: Stamp, at: tokio::time::Instant) {
        self.pending.insert(path.to_path_buf(), (stamp, at));
        self.order.push(std::cmp::Reverse((at, path.to_path_buf())));
    }

    /// Forgets a put-off entry; whether it was one.
    pub(super) fn forget(&mut self, path: &Path) -> bool {
        self.pending.remove(path).is_some()
    }

    /// Whether an entry of `in/` is put off: one whose task id is not
    /// known yet (a request naming an unknown id waits for it).
    pub(in crate::engine) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The earliest deadline armed.
    pub(in crate::engine) fn next_due(&self) -> Option<tokio::time::Instant> {
        self.order.peek().map(|r| r.0 .0)
    }

    /// The paths whose deadline is at or before `now` (they stay pending,
    /// with their stamp, until looked at).
    pub(super) fn due(&mut self, now: tokio::time::Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((at, _))) = self.order.peek() {
            if *at > now {
                break;
            }
            let Some(std::cmp::Reverse((at, path))) = self.order.pop() else {
                break;
            };
            if self.pending.get(&path).is_some_and(|(_, a)| *a == at) {
                due.push(path);
            }
        }
        due
    }
}

/// How an entry of `in/` came to be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Its event: its writer closed it, or it was renamed or made there.
    Event,
    /// A scan (start-up, overflow, a request for an unknown id, the safety
    /// net): its writer may still have it open.
    Scan,
}

/// Whether a file cut short is rejected now ([`Settle::Take`]) or looked
/// at again later. `writing`: whether a writer has it open, if that could
/// be told (a read lease: see `store::intake::open_for_writing`). `age`:
/// how long since it last changed, if known. Told: rejected once nobody
/// writes it. Not told: after its close or rename event it is complete
/// as it is; found by a scan, it is kept until [`QUIET`] has passed since
/// its last change (a change brings its own event, or a new deadline).
pub(super) fn hold(found: Found, writing: Option<bool>, age: Option<Duration>) -> Settle {
    match (writing, found) {
        (Some(true), _) => Settle::Wait(SETTLE),
        (Some(false), _) | (None, Found::Event) => Settle::Take,
        (None, Found::Scan) => match age {
            Some(age) if age < QUIET => Settle::Wait(QUIET - age),
            // Quiet long enough, or a time that cannot be trusted.
            _ => Settle::Take,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{hold, settle, Found, Settle, Settling, Stamp, QUIET, SETTLE};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    fn stamp(ctime: SystemTime, len: u64) -> Stamp {
        Stamp {
            ctime: Some(ctime),
            len,
        }
    }

    #[test]
    fn a_file_is_taken_once_it_has_not_changed_for_the_settle_time() {
        let now = SystemTime::now();
        let ms = Duration::from_millis;
        // Old enough: taken.
        assert_eq!(
            settle(now, stamp(now - SETTLE, 1), None, None),
            Settle::Take
        );
        assert_eq!(
            settle(now, stamp(now - ms(60_000), 1), None, None),
            Settle::Take
        );
        // Young: looked at again exactly when its settle time has passed.
        assert_eq!(
            settle(now, stamp(now - ms(500), 1), None, None),
            Settle::Wait(SETTLE - ms(500))
        );
        assert_eq!(settle(now, stamp(now, 1), None, None), Settle::Wait(SETTLE));
        // Changed since it was put off: waits again, from its new change.
        assert_eq!(
            settle(
                now,
                stamp(now - ms(100), 2),
                Some(stamp(now - ms(2100), 1)),
                None
            ),
            Settle::Wait(SETTLE - ms(100))
        );
        // A time in the future (the clock set back, a file server's
        // clock): waits once, then, unchanged, is taken, not young for ever.
        let future = stamp(now + ms(3_600_000), 1);
        assert_eq!(settle(now, future, None, None), Settle::Wait(SETTLE));
        assert_eq!(
            settle(now + SETTLE, future, Some(future), None),
            Settle::Take
        );
        // No time at all: nothing to wait for.
        let none = Stamp {
            ctime: None,
            len: 1,
        };
        assert_eq!(settle(now, none, None, None), Settle::Take);
        // Told: a file nobody writes is taken however young; one a writer
        // has open waits for its close, however old.
        let young = stamp(now, 1);
        assert_eq!(settle(now, young, None, Some(false)), Settle::Take);
        let old = stamp(now - ms(60_000), 1);
        assert_eq!(
            settle(now, old, Some(old), Some(true)),
            Settle::Wait(SETTLE)
        );
    }

    #[test]
    fn a_file_cut_short_is_rejected_only_once_its_writer_cannot_be_at_work() {
        let s = Duration::from_secs;
        // Told by a lease: held while open for writing, rejected once not.
        for found in [Found::Event, Found::Scan] {
            assert_eq!(hold(found, Some(true), Some(s(600))), Settle::Wait(SETTLE));
            assert_eq!(hold(found, Some(false), Some(s(0))), Settle::Take);
        }
        // Not told: its close or rename event says it is complete.
        assert_eq!(hold(Found::Event, None, Some(s(0))), Settle::Take);
        // Not told, found by a scan: kept until quiet for QUIET.
        assert_eq!(hold(Found::Scan, None, Some(s(0))), Settle::Wait(QUIET));
        assert_eq!(
            hold(Found::Scan, None, Some(s(3))),
            Settle::Wait(QUIET - s(3))
        );
        assert_eq!(hold(Found::Scan, None, Some(QUIET)), Settle::Take);
        // A time that cannot be trusted (in the future): not kept for ever.
        assert_eq!(hold(Found::Scan, None, None), Settle::Take);
    }

    #[test]
    fn entries_put_off_come_back_each_at_its_own_deadline() {
        let t0 = tokio::time::Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let st = stamp(SystemTime::now(), 1);
        let mut settling = Settling::default();
        assert_eq!(settling.next_due(), None);
        settling.wait(Path::new("b"), st, s(2000));
        settling.wait(Path::new("a"), st, s(500));
        settling.wait(Path::new("c"), st, s(1000));
        assert_eq!(settling.next_due(), Some(s(500)));
        assert!(settling.due(s(499)).is_empty());
        assert_eq!(settling.due(s(500)), [PathBuf::from("a")]);
        // Moved later: its first deadline is stale.
        settling.wait(Path::new("c"), st, s(3000));
        assert!(settling.due(s(1500)).is_empty());
        // Forgotten (taken on its event meanwhile): never comes back.
        settling.forget(Path::new("b"));
        assert!(settling.due(s(2500)).is_empty());
        assert_eq!(settling.due(s(3000)), [PathBuf::from("c")]);
        // A due entry keeps its stamp until looked at.
        assert_eq!(settling.get(Path::new("c")), Some((st, s(3000))));
        assert_eq!(settling.next_due(), None);
    }
}

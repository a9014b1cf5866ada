//! What one inotify event of the spool means to the engine: a pure
//! function of the watched directory's role, the entry's name and the
//! event's mask ([`translate`]), and the mask each role is watched with.
//!
//! The masks hold only what the engine acts on, so that the engine's own
//! work (opening a task file to read it, moving it into `run/`, opening
//! `done/` to fsync it) queues no event and wakes no thread.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use inotify::{EventMask, WatchMask};

use super::WatchEvent;

/// What a watched directory is to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `var/spool/` itself: only its entries that are watched directories
    /// (`in/`, `cancel/`, `priority/`) count, when they go or come back.
    Spool,
    /// `in/` or a directory below it (watched recursively).
    In,
    /// `var/spool/cancel/`.
    Cancel,
    /// `var/spool/priority/`.
    Priority,
    /// The taskers' points directory (data appended counts too).
    Points,
}

impl Role {
    /// The events a directory of this role is watched for.
    pub fn mask(self) -> WatchMask {
        let entries = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE;
        let kind = match self {
            Role::Spool => WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVE,
            Role::In | Role::Cancel | Role::Priority => entries,
            Role::Points => entries | WatchMask::MODIFY,
        };
        kind | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW
    }
}

/// The directories of `var/spool/` that are watched, by path.
#[derive(Debug, Clone)]
pub struct SpoolDirs {
    pub spool_in: PathBuf,
    pub cancel: PathBuf,
    pub priority: PathBuf,
}

impl SpoolDirs {
    fn is_watched(&self, p: &Path) -> bool {
        p == self.spool_in || p == self.cancel || p == self.priority
    }
}

/// What the watcher does with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Tell(WatchEvent),
    /// A directory appeared under `in/`: it (and every directory in it)
    /// is watched first, then the engine is told.
    WatchAndTell(PathBuf),
}

/// What an event on `dir` (watched as `role`) about its entry `name` asks
/// for. `is_regular` says whether a just-created entry is a regular file:
/// such a file waits for its writer's close; a symlink, FIFO or directory
/// never sees one and is told at once.
pub fn translate(
    role: Role,
    dir: &Path,
    name: Option<&OsStr>,
    mask: EventMask,
    spool: &SpoolDirs,
    is_regular: impl Fn(&Path) -> bool,
) -> Action {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Action::Tell(WatchEvent::Rescan);
    }
    // Events on the watched directory itself (its removal, the watch
    // dropped) are told by its parent's watch, if at all.
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Action::Nothing;
    };
    let path = dir.join(name);
    if role == Role::Spool {
        return spool_entry(path, mask, spool);
    }
    let tell = |path: PathBuf| {
        Action::Tell(match role {
            Role::In => WatchEvent::Input(path),
            Role::Cancel => WatchEvent::Cancel(path),
            Role::Priority => WatchEvent::Priority(path),
            Role::Points | Role::Spool => WatchEvent::Points(path),
        })
    };
    let is_dir = mask.contains(EventMask::ISDIR);
    if mask.contains(EventMask::MODIFY) {
        // Data written: only points files are read while their writer goes on.
        return if role == Role::Points {
            tell(path)
        } else {
            Action::Nothing
        };
    }
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) && is_dir && role == Role::In {
        return Action::WatchAndTell(path);
    }
    if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
        return tell(path);
    }
    if mask.contains(EventMask::CREATE) && (is_dir || !is_regular(&path)) {
        return tell(path);
    }
    // A regular file made: a write in place begins (its close is told
    // above), or a file was published by a hard link, which has no other
    // event. A writer's temporary or a dotfile is never a task or request.
    let ignored = crate::store::intake::is_ignored_bytes(name.as_encoded_bytes());
    if mask.contains(EventMask::CREATE) && role != Role::Points && !ignored {
        return Action::Tell(WatchEvent::Made(role, path));
    }
    Action::Nothing
}

/// An entry of `var/spool/` made, removed or moved: told only when it is
/// one of the watched directories.
fn spool_entry(path: PathBuf, mask: EventMask, spool: &SpoolDirs) -> Action {
    if !spool.is_watched(&path) {
        return Action::Nothing;
    }
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        Action::Tell(WatchEvent::DirBack(path))
    } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
        Action::Tell(WatchEvent::DirGone(path))
    } else {
        Action::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> SpoolDirs {
        SpoolDirs {
            spool_in: "/r/in".into(),
            cancel: "/r/cancel".into(),
            priority: "/r/priority".into(),
        }
    }

    fn at(role: Role, dir: &str, name: &str, mask: EventMask) -> Action {
        translate(
            role,
            Path::new(dir),
            Some(OsStr::new(name)),
            mask,
            &spool(),
            |p| !p.ends_with("fifo"),
        )
    }

    fn tell(ev: WatchEvent) -> Action {
        Action::Tell(ev)
    }

    #[test]
    fn an_overflow_asks_for_a_rescan() {
        let a = translate(
            Role::In,
            Path::new("/r/in"),
            None,
            EventMask::Q_OVERFLOW,
            &spool(),
            |_| true,
        );
        assert_eq!(a, tell(WatchEvent::Rescan));
    }

    #[test]
    fn entries_of_in_are_announced_when_complete() {
        let input = |p: &str| tell(WatchEvent::Input(p.into()));
        assert_eq!(
            at(Role::In, "/r/in", "a.json", EventMask::CLOSE_WRITE),
            input("/r/in/a.json")
        );
        assert_eq!(
            at(Role::In, "/r/in/org.x", "b.json", EventMask::MOVED_TO),
            input("/r/in/org.x/b.json")
        );
        // A regular file just made is told as made (it may be a write in
        // place beginning, or a file published by a hard link); a FIFO (or
        // a symlink) never sees a close and is told as an entry at once.
        assert_eq!(
            at(Role::In, "/r/in", "c.json", EventMask::CREATE),
            tell(WatchEvent::Made(Role::In, "/r/in/c.json".into()))
        );
        assert_eq!(
            at(Role::In, "/r/in", "fifo", EventMask::CREATE),
            input("/r/in/fifo")
        );
        // A directory made or moved in is watched before it is told.
        let dir = EventMask::CREATE | EventMask::ISDIR;
        assert_eq!(
            at(Role::In, "/r/in", "org.y", dir),
            Action::WatchAndTell("/r/in/org.y".into())
        );
        let moved = EventMask::MOVED_TO | EventMask::ISDIR;
        assert_eq!(
            at(Role::In, "/r/in", "org.z", moved),
            Action::WatchAndTell("/r/in/org.z".into())
        );
    }

    #[test]
    fn a_regular_file_made_is_told_unless_a_temporary_or_a_points_file() {
        for (role, dir) in [
            (Role::In, "/r/in/org.x"),
            (Role::Cancel, "/r/cancel"),
            (Role::Priority, "/r/priority"),
        ] {
            assert_eq!(
                at(role, dir, "t1", EventMask::CREATE),
                tell(WatchEvent::Made(role, format!("{dir}/t1").into()))
            );
            for temporary in [".t1", "t1.tmp"] {
                assert_eq!(at(role, dir, temporary, EventMask::CREATE), Action::Nothing);
            }
        }
        assert_eq!(
            at(Role::Points, "/r/points", "p", EventMask::CREATE),
            Action::Nothing
        );
    }

    #[test]
    fn data_written_counts_only_in_the_points_directory() {
        assert_eq!(
            at(Role::In, "/r/in", "a.json", EventMask::MODIFY),
            Action::Nothing
        );
        assert_eq!(
            at(Role::Points, "/r/points", "p", EventMask::MODIFY),
            tell(WatchEvent::Points("/r/points/p".into()))
        );
        assert_eq!(
            at(Role::Cancel, "/r/cancel", "t1", EventMask::MOVED_TO),
            tell(WatchEvent::Cancel("/r/cancel/t1".into()))
        );
        assert_eq!(
            at(Role::Priority, "/r/priority", "t1", EventMask::CLOSE_WRITE),
            tell(WatchEvent::Priority("/r/priority/t1".into()))
        );
    }

    #[test]
    fn a_watched_directory_gone_or_back_is_told() {
        let gone = |p: &str| tell(WatchEvent::DirGone(p.into()));
        let back = |p: &str| tell(WatchEvent::DirBack(p.into()));
        let d = EventMask::ISDIR;
        assert_eq!(
            at(Role::Spool, "/r", "in", EventMask::DELETE | d),
            gone("/r/in")
        );
        assert_eq!(
            at(Role::Spool, "/r", "cancel", EventMask::MOVED_FROM | d),
            gone("/r/cancel")
        );
        assert_eq!(
            at(Role::Spool, "/r", "in", EventMask::CREATE | d),
            back("/r/in")
        );
        assert_eq!(
            at(Role::Spool, "/r", "priority", EventMask::MOVED_TO | d),
            back("/r/priority")
        );
        // Other entries of var/spool/ are nothing to the engine.
        assert_eq!(
            at(Role::Spool, "/r", "done", EventMask::CREATE | d),
            Action::Nothing
        );
        assert_eq!(
            at(Role::Spool, "/r", "in.old", EventMask::MOVED_TO | d),
            Action::Nothing
        );
        // An event on a watched directory itself (no name) tells nothing.
        let a = translate(
            Role::In,
            Path::new("/r/in"),
            None,
            EventMask::DELETE_SELF,
            &spool(),
            |_| true,
        );
        assert_eq!(a, Action::Nothing);
    }

    #[test]
    fn the_masks_leave_out_opens_reads_and_removals_of_entries() {
        for role in [Role::In, Role::Cancel, Role::Priority, Role::Points] {
            let m = role.mask();
            assert!(!m.intersects(
                WatchMask::OPEN
                    | WatchMask::ACCESS
                    | WatchMask::CLOSE_NOWRITE
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::ATTRIB
            ));
        }
        assert!(!Role::Spool
            .mask()
            .intersects(WatchMask::OPEN | WatchMask::CLOSE_NOWRITE));
    }
}

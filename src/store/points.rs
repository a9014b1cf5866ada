//! The append-only points logs `var/log/tsk/<exid>.log` (SPEC section 4).
//!
//! Each point is one `write` of one complete line on a file opened with
//! `O_APPEND`, so concurrent writers never interleave; readers ignore a torn
//! last line. Open handles live in a small bounded cache ([`PointsLog`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::model::names::Exid;
use crate::model::point::{parse_points, Point};

/// Appends points to per-execution logs, keeping at most `capacity` files
/// open.
#[derive(Debug)]
pub struct PointsLog {
    dir: PathBuf,
    open: HashMap<Exid, File>,
    capacity: usize,
}

impl PointsLog {
    pub fn new(dir: PathBuf, capacity: usize) -> PointsLog {
        PointsLog {
            dir,
            open: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends `point` to `<exid>.log` in one write.
    pub fn append(&mut self, point: &Point) -> io::Result<()> {
        let line = point.to_line();
        if !self.open.contains_key(&point.exid) && self.open.len() >= self.capacity {
            // Evict everything: O(1) amortized, and a reopen is cheap.
            self.open.clear();
        }
        let file = match self.open.entry(point.exid.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(open_append(&self.dir.join(format!("{}.log", point.exid)))?)
            }
        };
        file.write_all(&line)
    }

    /// Closes the handle of an execution that ended.
    pub fn close(&mut self, exid: &Exid) {
        self.open.remove(exid);
    }
}

/// Appends one complete line to a points log in one write (`O_APPEND`).
pub fn append_line(path: &Path, line: &[u8]) -> io::Result<()> {
    open_append(path)?.write_all(line)
}

/// Reads the points of a log, skipping a torn (unterminated or unparsable)
/// line.
pub fn read_points(path: &Path) -> io::Result<Vec<Point>> {
    let mut f = regular(OpenOptions::new().read(true), path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(parse_points(&bytes))
}

/// Opens a file under `var/` to read it (a points or stderr log, a
/// rejection's reason), as [`regular`] does: never through a link, never
/// waiting on a FIFO, only a regular file.
pub fn open_to_read(path: &Path) -> io::Result<File> {
    regular(OpenOptions::new().read(true), path)
}

/// Opens a points log to append to it, creating it if needed.
fn open_append(path: &Path) -> io::Result<File> {
    regular(OpenOptions::new().create(true).append(true), path)
}

/// Opens a file that anyone able to write under the root may have
/// replaced: never through a symbolic link, never waiting (a FIFO without
/// a reader fails at once), and only a regular file is kept.
fn regular(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = options
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A link (O_NOFOLLOW), or a FIFO nobody reads (O_NONBLOCK).
            Some(nix::libc::ELOOP | nix::libc::ENXIO) => match std::fs::symlink_metadata(path) {
                Ok(m) => io::Error::other(format!(
                    "it is {}, not a regular file",
                    kind_in_words(&m.file_type())
                )),
                Err(_) => e,
            },
            _ => e,
        })?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        return Err(io::Error::other(format!(
            "it is {}, not a regular file",
            kind_in_words(&ft)
        )));
    }
    Ok(f)
}

/// What a path holds when it is no regular file, in words.
pub fn kind_in_words(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "something other than a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::{Nid, TaskId};
    use crate::model::point::Kind;

    fn ids() -> (TaskId, Nid) {
        ("t1".parse().unwrap(), Nid::root())
    }

    #[test]
    fn a_fifo_or_a_link_in_place_of_a_log_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("f.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = append_line(&fifo, b"x\n").unwrap_err();
        assert!(e.to_string().contains("it is a FIFO"), "{e}");
        let e = read_points(&fifo).unwrap_err();
        assert!(e.to_string().contains("it is a FIFO"), "{e}");
        let target = tmp.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = tmp.path().join("l.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = append_line(&link, b"x\n").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn log_appends_and_reader_skips_torn_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = PointsLog::new(tmp.path().to_path_buf(), 1);
        let (id, nid) = ids();
        let other: TaskId = "t2".parse().unwrap();
        log.append(&Point::new(Kind::Created, &id, &id, &nid))
            .unwrap();
        log.append(&Point::new(Kind::Created, &other, &other, &nid))
            .unwrap();
        log.append(&Point::new(Kind::Offered, &id, &id, &nid))
            .unwrap();
        let path = tmp.path().join("t1.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ts\":\"torn").unwrap();
        let points = read_points(&path).unwrap();
        assert_eq!(
            points.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(),
            ["created", "offered"]
        );
    }
}

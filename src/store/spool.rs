//! Durable file operations on the spool: [`write_atomic`] (the only way a
//! record or task file is written), directory fsyncs, claims (renames),
//! rejections and the no-overwrite rename that guards final records.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags};

/// A failed spool operation, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to fsync {path}: {source}; the page cache can no longer be trusted")]
    Fsync { path: PathBuf, source: io::Error },
    #[error("failed to move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("refusing to overwrite {0}: a final record is never overwritten")]
    Exists(PathBuf),
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("the directory {dir} is missing (removed while the engine ran)")]
    Missing { dir: PathBuf },
}

impl SpoolError {
    /// Whether this error means the disk failed, whatever the file: any
    /// failed fsync (the page cache can no longer be trusted), and a write
    /// or rename that failed with `EIO`, `ENOSPC`, `EDQUOT` or `EROFS`. The
    /// engine stops on it. Other errors (`EACCES` or `EPERM` on an input
    /// someone else owns, say) may be about one file only.
    pub fn is_fatal(&self) -> bool {
        match self {
            SpoolError::Fsync { .. } | SpoolError::Missing { .. } => true,
            SpoolError::Write { source, .. } | SpoolError::Rename { source, .. } => {
                is_disk_failure(source)
            }
            _ => false,
        }
    }

    /// The files this error is about, for a short message.
    pub fn paths(&self) -> String {
        match self {
            SpoolError::Write { path, .. }
            | SpoolError::Fsync { path, .. }
            | SpoolError::Read { path, .. }
            | SpoolError::TooLarge { path, .. }
            | SpoolError::Exists(path)
            | SpoolError::Missing { dir: path } => path.display().to_string(),
            SpoolError::Rename { from, to, .. } => {
                format!("{} (moving it to {})", from.display(), to.display())
            }
        }
    }

    /// Whether the file acted on was not there (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            SpoolError::Rename { source, .. }
            | SpoolError::Read { source, .. }
            | SpoolError::Write { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Whether an I/O error says the disk failed (rather than one file):
/// `EIO`, `ENOSPC`, `EDQUOT`, `EROFS`.
pub fn is_disk_failure(e: &io::Error) -> bool {
    use nix::libc::{EDQUOT, EIO, ENOSPC, EROFS};
    matches!(e.raw_os_error(), Some(EIO | ENOSPC | EDQUOT | EROFS))
}

/// The disk operations a fault can be injected into (see [`fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Writing a file's bytes (a record, a task file, a journal line, a
    /// rejection's reason).
    Write,
    /// An fsync of a file or of a directory.
    Fsync,
    /// A rename (a claim, a record or rewrite put into place, a rejection).
    Rename,
}

/// Fault injection (debug builds only): see the module.
#[path = "fault.rs"]
pub mod fault;

/// fsyncs a directory so that the renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    let f = open_dir(dir)?;
    fault::inject(Op::Fsync, dir, None)
        .and_then(|()| f.sync_all())
        .map_err(|source| SpoolError::Fsync {
            path: dir.to_path_buf(),
            source,
        })
}

/// Opens a directory to fsync it: one that is not there is
/// [`SpoolError::Missing`] (an operator removed it), not a failed fsync.
fn open_dir(dir: &Path) -> Result<File, SpoolError> {
    File::open(dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpoolError::Missing {
            dir: dir.to_path_buf(),
        },
        _ => SpoolError::Fsync {
            path: dir.to_path_buf(),
            source,
        },
    })
}

/// A failed write into `dir`: [`SpoolError::Missing`] when `dir` is gone.
fn write_error(dir: &Path, path: &Path, source: io::Error) -> SpoolError {
    if source.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(dir).is_err() {
        SpoolError::Missing {
            dir: dir.to_path_buf(),
        }
    } else {
        SpoolError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A failed rename: [`SpoolError::Missing`] when the directory of `to` is
/// gone.
fn rename_error(from: &Path, to: &Path, source: io::Error) -> SpoolError {
    let to_dir = to.parent().unwrap_or(Path::new("."));
    if source.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(to_dir).is_err() {
        SpoolError::Missing {
            dir: to_dir.to_path_buf(),
        }
    } else {
        SpoolError::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        }
    }
}

/// Makes durable every write to the filesystem that holds `dir`
/// (`syncfs(2)`): one call where a batch of new files would otherwise need
/// an fsync each. Since Linux 5.8 it also reports a writeback error of any
/// file of that filesystem, so a failure is taken as a failed fsync.
pub fn sync_filesystem(dir: &Path) -> Result<(), SpoolError> {
    use std::os::fd::AsRawFd;
    let f = open_dir(dir)?;
    fault::inject(Op::Fsync, dir, None)
        .and_then(|()| nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from))
        .map_err(|source| SpoolError::Fsync {
            path: dir.to_path_buf(),
            source,
        })
}

/// Asks the filesystem to spread the subdirectories of `dir` over the disk
/// rather than keep them near `dir` (ext4's "top directory" flag, which
/// its Orlov allocator reads; other filesystems refuse it and nothing
/// changes). Best effort: it only places inodes.
///
/// Why: a file's inode is allocated in its directory's block group, and on
/// ext4 without a journal every allocation first skips each inode of that
/// group freed in the last minute or so, one block lookup each. Where other
/// work creates and removes many files (a busy `/tmp`, a spool's own
/// `run/`), that made creating a file cost 150–225 µs on the development
/// machine; in a subdirectory of a directory so flagged, 10 µs.
pub fn spread_subdirs(dir: &Path) {
    use rustix::fs::IFlags;
    let Ok(d) = File::open(dir) else { return };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&d) {
        if !flags.contains(IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(&d, flags | IFlags::TOPDIR);
        }
    }
}

/// Creates the file `path` (never over an existing one; mode 0600) holding
/// `bytes`, and fsyncs it when `fsync`. Without, the file is not durable
/// until its filesystem is synced ([`sync_filesystem`]): for a caller that
/// writes many files into a directory nobody reads and makes them durable
/// at once, before renaming them into place.
pub fn write_new(path: &Path, bytes: &[u8], fsync: bool) -> Result<(), SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| SpoolError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    fill(&mut file, path, bytes, fsync)
}

/// Writes all of `bytes` into `file`, which becomes `target`, and fsyncs
/// it when `fsync` (each with its fault injection).
fn fill(file: &mut File, target: &Path, bytes: &[u8], fsync: bool) -> Result<(), SpoolError> {
    fault::inject(Op::Write, target, None)
        .and_then(|()| file.write_all(bytes))
        .map_err(|source| SpoolError::Write {
            path: target.to_path_buf(),
            source,
        })?;
    if fsync {
        sync_file(file, target)?;
    }
    Ok(())
}

/// Fsyncs `file`, which becomes `target` (with its fault injection).
fn sync_file(file: &File, target: &Path) -> Result<(), SpoolError> {
    fault::inject(Op::Fsync, target, None)
        .and_then(|()| file.sync_all())
        .map_err(|source| SpoolError::Fsync {
            path: target.to_path_buf(),
            source,
        })
}

/// Appends `bytes` to the file at `path` (created if missing) in one
/// write and fsyncs it; true when it created the file (its directory must
/// then be fsynced for the file to be durable).
pub fn append_durable(path: &Path, bytes: &[u8]) -> Result<bool, SpoolError> {
    let write_err = |source| SpoolError::Write {
        path: path.to_path_buf(),
        source,
    };
    let (mut file, created) = match std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(write_err)?,
            false,
        ),
        Err(e) => return Err(write_err(e)),
    };
    fault::inject(Op::Write, path, None)
        .and_then(|()| file.write_all(bytes))
        .map_err(write_err)?;
    fault::inject(Op::Fsync, path, None)
        .and_then(|()| file.sync_data())
        .map_err(|source| SpoolError::Fsync {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(created)
}

/// Writes `bytes` to `dir/name` durably: a temporary created with `O_EXCL`
/// (mode 0600) in `dir`, all bytes written, fsync, rename into place (never
/// over an existing file when `no_replace`), and, when `sync_dir`, an fsync
/// of `dir`. Callers that commit many files at once pass `sync_dir = false`
/// and call [`fsync_dir`] once for the batch.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    no_replace: bool,
    sync_dir: bool,
) -> Result<PathBuf, SpoolError> {
    let target = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| write_error(dir, &target, e))?;
    fill(tmp.as_file_mut(), &target, bytes, true)?;
    if no_replace {
        rename_no_replace(tmp.path(), &target)?;
        // The temporary's name is gone; do not let its drop unlink anything.
        let _ = tmp.into_temp_path().keep();
    } else {
        fault::inject(Op::Rename, tmp.path(), Some(&target)).map_err(|source| {
            SpoolError::Rename {
                from: tmp.path().to_path_buf(),
                to: target.clone(),
                source,
            }
        })?;
        tmp.persist(&target)
            .map_err(|e| rename_error(e.file.path(), &target, e.error))?;
    }
    if sync_dir {
        fsync_dir(dir)?;
    }
    Ok(target)
}

/// Writes `bytes` durably to `dir/name` through `spare`, an existing file
/// of this engine's (a recycled `run/` file kept in `var/spool/.spare/`,
/// see `commit`): write all over it from its start, cut what is left of
/// its old bytes, fsync, no-replace rename into place. It allocates no
/// inode, which on ext4 is the largest cost of writing a record, and
/// writes over the blocks the file has instead of freeing them (a
/// truncation to zero frees them, and on a disk mounted with `discard`
/// each free is a discard request). On [`SpoolError::Exists`] the spare is
/// still there; on another error it may be gone.
pub fn write_recycled(
    spare: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, SpoolError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let target = dir.join(name);
    let write_err = |source| SpoolError::Write {
        path: target.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(spare)
        .map_err(write_err)?;
    let meta = file.metadata().map_err(write_err)?;
    if meta.mode() & 0o7777 != 0o600 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
    }
    fill(&mut file, &target, bytes, false)?;
    if meta.len() > bytes.len() as u64 {
        file.set_len(bytes.len() as u64).map_err(write_err)?;
    }
    sync_file(&file, &target)?;
    rename_no_replace(spare, &target)?;
    Ok(target)
}

/// Renames `from` to `to`, failing with [`SpoolError::Exists`] rather than
/// replacing an existing `to`.
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<(), SpoolError> {
    if let Err(source) = fault::inject(Op::Rename, from, Some(to)) {
        return Err(SpoolError::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source,
        });
    }
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(SpoolError::Exists(to.to_path_buf())),
        Err(e) => Err(rename_error(from, to, io::Error::from(e))),
    }
}

/// Removes the file at `path` only if it is the file `ident` (device and
/// inode; any file without one): it is first moved aside, in one rename,
/// to a dotfile of its directory (which intake ignores), and removed only
/// once the moved file is seen to be `ident`. A new file a writer renamed
/// to `path` meanwhile is put back, not removed (checking, then removing
/// by name, would lose it). `between` runs just after the move (a test's
/// seam; `|| {}` otherwise).
pub fn remove_if_same(
    path: &Path,
    ident: Option<(u64, u64)>,
    between: impl FnOnce(),
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    static ASIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ASIDE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    };
    let short = format!("{ASIDE_PREFIX}{}.{n}", std::process::id());
    let mut aside_name = std::ffi::OsString::from(format!("{short}."));
    aside_name.push(name);
    let mut aside = path.with_file_name(aside_name);
    let mut moved = fs::rename(path, &aside);
    if matches!(&moved, Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG)) {
        // A name too long to carry: aside under a short one (which a start
        // after a crash cannot put back).
        aside = path.with_file_name(short);
        moved = fs::rename(path, &aside);
    }
    match moved {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    between();
    let moved = fs::symlink_metadata(&aside).map(|m| (m.dev(), m.ino()))?;
    if ident.is_none_or(|i| i == moved) {
        return fs::remove_file(&aside);
    }
    renameat2(None, &aside, None, path, RenameFlags::RENAME_NOREPLACE).map_err(|e| {
        io::Error::other(format!(
            "a new file at {} was moved aside to {} and cannot be put back: {e}",
            path.display(),
            aside.display()
        ))
    })
}

/// How a file [`remove_if_same`] moved aside begins: `<prefix><pid>.<n>.`
/// then its own name, so that a start after a crash in between puts it
/// back ([`put_back_asides`]).
const ASIDE_PREFIX: &str = ".spoolflow-aside.";

/// Puts back, under their own names, the files of `dir` that
/// [`remove_if_same`] moved aside when the process died before it removed
/// or restored them: each may be a file dropped meanwhile (a task file
/// the engine never examined). One whose name is taken again stays, with
/// an error logged naming it.
pub fn put_back_asides(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let aside = e.file_name();
        let Some(rest) = aside
            .as_encoded_bytes()
            .strip_prefix(ASIDE_PREFIX.as_bytes())
        else {
            continue;
        };
        // `<pid>.<n>.<name>`
        let mut parts = rest.splitn(3, |b| *b == b'.');
        let (Some(_), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let to = dir.join(std::ffi::OsStr::from_bytes(name));
        if let Err(err) = renameat2(None, &e.path(), None, &to, RenameFlags::RENAME_NOREPLACE) {
            tracing::error!(
                "{} was moved aside by an engine that died; it cannot go back to {}: {err}",
                e.path().display(),
                to.display()
            );
        }
    }
}

/// Renames `from` to `to` (a claim: `in/x.json` → `run/<id>.json`).
pub fn rename(from: &Path, to: &Path) -> Result<(), SpoolError> {
    fault::inject(Op::Rename, from, Some(to))
        .and_then(|()| fs::rename(from, to))
        .map_err(|source| rename_error(from, to, source))
}

/// Reads a regular file of at most `limit` bytes without reading more than
/// `limit + 1` bytes of it (an oversized file is never loaded whole). Opens
/// with `O_NOFOLLOW`: a symlink is an error, never followed.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| SpoolError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > limit {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let buf = read_to_len(file.take(limit + 1), meta.len()).map_err(read_err)?;
    if buf.len() as u64 > limit {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

/// Reads a regular file whose `stat` gave `len`: done once `len` bytes are
/// in and a read comes up short (the end of the file as it was when
/// stat'ed; no read more to see a zero), or at the end of the file
/// (shorter than `len`: truncated meanwhile). A file that grew since is
/// read on.
fn read_to_len(mut file: impl Read, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).unwrap_or(usize::MAX - 1);
    let mut buf = vec![0; len.saturating_add(1).clamp(64, 1 << 20)];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(2 * buf.len(), 0);
        }
        let want = buf.len() - filled;
        let n = match file.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        if n == 0 || (filled >= len && n < want) {
            break;
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The longest file name, in bytes, of the filesystems spoolflow runs on.
const NAME_MAX: usize = 255;
/// What `rejected/<name>` adds to its name for its reason's.
pub const REASON_SUFFIX: &str = ".reason";

/// The name an input named `name` takes in `rejected/` at its `n`th try
/// (`name`, then `name.1`, …), cut short (and marked with a `~`) where
/// needed so that its `.reason` beside it is a valid name too.
pub fn rejected_name(name: &str, n: u32) -> String {
    let tail = if n == 0 {
        String::new()
    } else {
        format!(".{n}")
    };
    let room = NAME_MAX - REASON_SUFFIX.len() - tail.len();
    if name.len() <= room {
        return format!("{name}{tail}");
    }
    let mut cut = room - 1;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{tail}", &name[..cut])
}

/// The `.reason` file's one line: the reason, and the input's whole name
/// when it is kept under a shortened one (control characters escaped).
fn reason_line(reason: &str, name: &str, kept_as: &str) -> String {
    if kept_as.starts_with(name) {
        return format!("{reason}\n");
    }
    let shown: String = name
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    format!("{reason} (its name was too long to keep beside its .reason: {shown})\n")
}

/// Moves `path` (a file, a directory, or a symlink — moved as the link,
/// never followed) into `rejected_dir` under its own name, or `name.N` when
/// that is taken, beside `<that name>.reason` holding `reason` on one line.
/// Returns the rejected path.
///
/// The reason is written (and fsynced) first, then the input moved beside
/// it: a rejected file never lacks its reason. When the reason cannot be
/// written, the input stays where it was; when the move fails after, the
/// reason is removed again. A crash between the two leaves a `.reason`
/// alone in `rejected/` and the input where it was, rejected again (under
/// the next free name) at the next start: nothing is lost. The directory
/// is fsynced once, after both, when `sync_dir`.
pub fn reject(
    path: &Path,
    rejected_dir: &Path,
    reason: &str,
    sync_dir: bool,
) -> Result<PathBuf, SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".to_string());
    let reason: String = reason
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let mut n = 0u32;
    let target = loop {
        let candidate = rejected_name(&name, n);
        n += 1;
        let line = reason_line(&reason, &name, &candidate);
        let target = rejected_dir.join(&candidate);
        if fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        let reason_name = format!("{candidate}{REASON_SUFFIX}");
        match write_atomic(rejected_dir, &reason_name, line.as_bytes(), true, false) {
            Ok(_) => {}
            Err(SpoolError::Exists(_)) => continue,
            Err(e) => return Err(e),
        }
        match rename_no_replace(path, &target) {
            Ok(()) => break target,
            Err(e) => {
                let _ = fs::remove_file(rejected_dir.join(&reason_name));
                match e {
                    SpoolError::Exists(_) => continue,
                    e => return Err(e),
                }
            }
        }
    };
    if sync_dir {
        fsync_dir(rejected_dir)?;
    }
    Ok(target)
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;

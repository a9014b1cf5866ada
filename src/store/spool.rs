//! Durable file operations on the spool: [`write_atomic`] (the only way a
//! record or task file is written), directory fsyncs, claims (renames),
//! rejections and the no-overwrite rename that guards final records.

use std::fs::{self, File};
use std::io::{self, Read, Write};
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
}

impl SpoolError {
    /// Whether this error means the disk can no longer be trusted (the
    /// engine stops on it).
    pub fn is_fatal(&self) -> bool {
        matches!(self, SpoolError::Fsync { .. })
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

/// fsyncs a directory so that the renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| SpoolError::Fsync {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `dir/name` durably: a temporary created with `O_EXCL`
/// (mode 0600) in `dir`, all bytes written, fsync, rename into place (never
/// over an existing file when `no_replace`), and, when `sync_dir`, an fsync
/// of `dir`. Callers that commit many files at once pass `sync_dir = false`
/// and call [`fsync_dir`] once for the batch.
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
    file.write_all(bytes).map_err(write_err)?;
    file.sync_data().map_err(|source| SpoolError::Fsync {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(created)
}

pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    no_replace: bool,
    sync_dir: bool,
) -> Result<PathBuf, SpoolError> {
    let target = dir.join(name);
    let write_err = |source| SpoolError::Write {
        path: target.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file()
        .sync_all()
        .map_err(|source| SpoolError::Fsync {
            path: target.clone(),
            source,
        })?;
    if no_replace {
        rename_no_replace(tmp.path(), &target)?;
        // The temporary's name is gone; do not let its drop unlink anything.
        let _ = tmp.into_temp_path().keep();
    } else {
        tmp.persist(&target).map_err(|e| SpoolError::Rename {
            from: e.file.path().to_path_buf(),
            to: target.clone(),
            source: e.error,
        })?;
    }
    if sync_dir {
        fsync_dir(dir)?;
    }
    Ok(target)
}

/// Writes `bytes` durably to `dir/name` through `spare`, an existing file
/// of this engine's (a recycled `run/` file kept in `var/spool/.spare/`, see `commit`): truncate, write
/// all, fsync, no-replace rename into place. It allocates no inode, which on
/// ext4 is the largest cost of writing a record. On [`SpoolError::Exists`]
/// the spare is still there; on another error it may be gone.
pub fn write_recycled(
    spare: &Path,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, SpoolError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let target = dir.join(name);
    let write_err = |source| SpoolError::Write {
        path: target.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(spare)
        .map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    file.sync_all().map_err(|source| SpoolError::Fsync {
        path: target.clone(),
        source,
    })?;
    rename_no_replace(spare, &target)?;
    Ok(target)
}

/// Renames `from` to `to`, failing with [`SpoolError::Exists`] rather than
/// replacing an existing `to`.
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<(), SpoolError> {
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(SpoolError::Exists(to.to_path_buf())),
        Err(e) => Err(SpoolError::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source: io::Error::from(e),
        }),
    }
}

/// Renames `from` to `to` (a claim: `in/x.json` → `run/<id>.json`).
pub fn rename(from: &Path, to: &Path) -> Result<(), SpoolError> {
    fs::rename(from, to).map_err(|source| SpoolError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
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
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if buf.len() as u64 > limit {
        return Err(SpoolError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

/// Moves `path` (a file, a directory, or a symlink — moved as the link,
/// never followed) into `rejected_dir` under its own name, or `name.N` when
/// that is taken, and writes `<that name>.reason` holding `reason` on one
/// line. Returns the rejected path.
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
    let mut n = 0u32;
    let target = loop {
        let candidate = if n == 0 {
            name.clone()
        } else {
            format!("{name}.{n}")
        };
        let target = rejected_dir.join(&candidate);
        let reason_taken = rejected_dir.join(format!("{candidate}.reason")).exists();
        if !reason_taken {
            match rename_no_replace(path, &target) {
                Ok(()) => break candidate,
                Err(SpoolError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        n += 1;
    };
    let line: String = reason
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    write_atomic(
        rejected_dir,
        &format!("{target}.reason"),
        format!("{line}\n").as_bytes(),
        false,
        sync_dir,
    )?;
    Ok(rejected_dir.join(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_writes_and_never_replaces_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write_atomic(tmp.path(), "a.json", b"one", true, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert!(matches!(
            write_atomic(tmp.path(), "a.json", b"two", true, true),
            Err(SpoolError::Exists(_))
        ));
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_atomic(tmp.path(), "a.json", b"three", false, true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        // no temporaries left behind
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_capped_refuses_large_files_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let big = tmp.path().join("big");
        fs::write(&big, vec![b'x'; 100]).unwrap();
        assert!(matches!(
            read_capped(&big, 99),
            Err(SpoolError::TooLarge { .. })
        ));
        assert_eq!(read_capped(&big, 100).unwrap().len(), 100);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert!(read_capped(&link, 1000).is_err());
    }

    #[test]
    fn reject_keeps_bytes_and_suffixes_taken_names() {
        let tmp = tempfile::tempdir().unwrap();
        let rej = tmp.path().join("rejected");
        fs::create_dir(&rej).unwrap();
        for i in 0..3 {
            let p = tmp.path().join("x.json");
            fs::write(&p, format!("bytes {i}")).unwrap();
            reject(&p, &rej, &format!("bad\nthing {i}"), true).unwrap();
        }
        assert_eq!(fs::read_to_string(rej.join("x.json")).unwrap(), "bytes 0");
        assert_eq!(
            fs::read_to_string(rej.join("x.json.reason")).unwrap(),
            "bad thing 0\n"
        );
        assert_eq!(fs::read_to_string(rej.join("x.json.2")).unwrap(), "bytes 2");
        assert_eq!(
            fs::read_to_string(rej.join("x.json.2.reason")).unwrap(),
            "bad thing 2\n"
        );
    }

    #[test]
    fn reject_moves_a_symlink_as_the_link() {
        let tmp = tempfile::tempdir().unwrap();
        let rej = tmp.path().join("rejected");
        fs::create_dir(&rej).unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let link = tmp.path().join("l.json");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        reject(&link, &rej, "symlink", true).unwrap();
        let moved = rej.join("l.json");
        assert!(fs::symlink_metadata(&moved)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&secret).unwrap(), "s");
    }
}

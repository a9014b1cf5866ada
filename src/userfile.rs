//! Reading a file an operator controls (a taskmaster, a `tasker.json`, a
//! stored flow, a tasker's `#!` line): symlinks are followed, as `tsk/`
//! allows them, but the open never blocks (a FIFO or a device at the path
//! is refused, not waited on), only a regular file is read, and never more
//! than a bound. The error names what stands at the path instead.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UserFileError {
    /// Something other than a regular file stands at the path.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// A symlink whose target does not exist.
    #[error("is a symlink to {target}, which does not exist")]
    Dangling { target: String },
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl UserFileError {
    /// Whether nothing at all is at the path (not even a dangling link).
    pub fn is_missing(&self) -> bool {
        matches!(self, UserFileError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// What a file that is not a regular file is, in words.
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "a regular file"
    }
}

/// Opens the regular file at `path` for reading without blocking.
pub fn open(path: &Path) -> Result<File, UserFileError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink reads as "not found": say it is a link.
            return Err(match std::fs::read_link(path) {
                Ok(target) => UserFileError::Dangling {
                    target: target.display().to_string(),
                },
                Err(_) => UserFileError::Io(e),
            });
        }
        Err(e) => return Err(UserFileError::Io(e)),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(UserFileError::NotRegular(kind_of(&meta)));
    }
    Ok(file)
}

/// Reads the regular file at `path`, of at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, UserFileError> {
    let file = open(path)?;
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(UserFileError::TooLarge { limit });
    }
    Ok(buf)
}

/// [`read`] as UTF-8 text.
pub fn read_string(path: &Path, limit: u64) -> Result<String, UserFileError> {
    String::from_utf8(read(path, limit)?).map_err(|_| {
        UserFileError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "is not valid UTF-8",
        ))
    })
}

/// The first `n` bytes of the regular file at `path` (fewer if shorter).
pub fn head(path: &Path, n: u64) -> Result<Vec<u8>, UserFileError> {
    let mut buf = Vec::new();
    open(path)?.take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The bound on a configuration file or script: far above any real one.
pub const CONFIG_LIMIT: u64 = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_directory_and_a_dangling_link_are_named_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read(&fifo, 10).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO (named pipe), not a regular file");
        let e = read(dir.path(), 10).unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("nowhere.rhai", &link).unwrap();
        let e = read(&link, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "is a symlink to nowhere.rhai, which does not exist"
        );
        assert!(!e.is_missing());
        assert!(read(&dir.path().join("absent"), 10)
            .unwrap_err()
            .is_missing());
    }

    #[test]
    fn a_regular_file_is_read_within_its_bound_and_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, 5).unwrap(), b"hello");
        assert!(matches!(
            read(&file, 4),
            Err(UserFileError::TooLarge { limit: 4 })
        ));
        assert_eq!(head(&file, 2).unwrap(), b"he");
    }
}

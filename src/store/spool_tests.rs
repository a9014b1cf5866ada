//! Tests of the spool's durable file operations (`spool.rs`).

use super::*;

fn ident(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Files of `dir`, names sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// A file is removed only if it is the one examined, whatever lands at
/// its path before or while it is removed: a new file is kept.
#[test]
fn remove_if_same_never_removes_a_file_put_there_since() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let drop_new = |body: &str| {
        let tmp = dir.path().join(".tmp");
        fs::write(&tmp, body).unwrap();
        fs::rename(&tmp, &path).unwrap();
    };
    // The examined file: removed, nothing left aside.
    drop_new("old");
    remove_if_same(&path, ident(&path), || {}).unwrap();
    assert!(names(dir.path()).is_empty());
    // Replaced before the removal: the new file stays.
    drop_new("old");
    let old = ident(&path);
    drop_new("new");
    remove_if_same(&path, old, || {}).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    assert_eq!(names(dir.path()), ["t.json"]);
    // Dropped while the examined file is being removed: it stays.
    let old = ident(&path);
    remove_if_same(&path, old, || drop_new("newer")).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "newer");
    assert_eq!(names(dir.path()), ["t.json"]);
    // Replaced, and again while the replacement is put back: nothing
    // is removed, the error names where the one moved aside is.
    drop_new("x");
    let gone = (0, 0);
    let e = remove_if_same(&path, Some(gone), || drop_new("y")).unwrap_err();
    assert!(e.to_string().contains(".spoolflow-aside."), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "y");
    assert_eq!(names(dir.path()).len(), 2);
    // As a start after a crash finds it: put back once its name is
    // free, with what it held.
    put_back_asides(dir.path());
    assert_eq!(names(dir.path()).len(), 2, "its name is taken: it stays");
    fs::remove_file(&path).unwrap();
    put_back_asides(dir.path());
    assert_eq!(names(dir.path()), ["t.json"]);
    assert_eq!(fs::read_to_string(&path).unwrap(), "x");
    // Gone already: nothing to do.
    let other = dir.path().join("none.json");
    remove_if_same(&other, Some(gone), || {}).unwrap();
    // A name too long to be carried by the aside name: removed all
    // the same.
    let long = dir.path().join(format!("{}.json", "l".repeat(245)));
    fs::write(&long, "long").unwrap();
    remove_if_same(&long, ident(&long), || {}).unwrap();
    assert!(!long.exists());
    assert_eq!(names(dir.path()), ["t.json"]);
}

#[test]
fn a_recycled_file_holds_exactly_the_new_bytes_whatever_it_held() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("done");
    fs::create_dir(&dir).unwrap();
    let record = br#"{"id":"t1","state":"completed"}"#;
    // Longer than the record (its tail must go), shorter, and one of
    // several blocks; each with another mode than a record's.
    for (n, old) in [vec![b'x'; 100], vec![b'y'; 3], vec![b'z'; 20_000]]
        .into_iter()
        .enumerate()
    {
        let spare = tmp.path().join(format!("spare{n}"));
        fs::write(&spare, &old).unwrap();
        fs::set_permissions(&spare, fs::Permissions::from_mode(0o644)).unwrap();
        let ino = fs::metadata(&spare).unwrap().ino();
        let name = format!("t{n}.json");
        let to = write_recycled(&spare, &dir, &name, record).unwrap();
        assert_eq!(to, dir.join(&name));
        assert_eq!(fs::read(&to).unwrap(), record, "over {} bytes", old.len());
        let meta = fs::metadata(&to).unwrap();
        assert_eq!((meta.ino(), meta.mode() & 0o7777), (ino, 0o600));
        assert!(!spare.exists());
    }
}

#[test]
fn rejected_names_leave_room_for_their_reason() {
    assert_eq!(rejected_name("a.json", 0), "a.json");
    assert_eq!(rejected_name("a.json", 2), "a.json.2");
    let long = "x".repeat(255);
    for n in [0, 1, 12] {
        let r = rejected_name(&long, n);
        assert!(
            r.len() + REASON_SUFFIX.len() <= NAME_MAX,
            "{n}: {}",
            r.len()
        );
        assert!(r.starts_with("xxx") && r.contains('~'), "{r}");
    }
    assert_ne!(rejected_name(&long, 1), rejected_name(&long, 2));
    // Cut on a character, never inside one.
    let wide = "é".repeat(200);
    let r = rejected_name(&wide, 0);
    assert!(r.len() + REASON_SUFFIX.len() <= NAME_MAX);
    assert!(r.ends_with("é~"), "{r}");
}

#[test]
fn an_input_with_a_name_too_long_for_its_reason_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool_in, rejected) = (tmp.path().join("in"), tmp.path().join("rejected"));
    fs::create_dir_all(&spool_in).unwrap();
    fs::create_dir_all(&rejected).unwrap();
    let name = format!("{}.json", "n".repeat(250));
    let input = spool_in.join(&name);
    fs::write(&input, "{").unwrap();
    let moved = reject(&input, &rejected, "not JSON", true).unwrap();
    assert!(!input.exists());
    assert_eq!(fs::read(&moved).unwrap(), b"{");
    let reason = fs::read_to_string(format!("{}{REASON_SUFFIX}", moved.display())).unwrap();
    assert!(
        reason.starts_with("not JSON (its name was too long"),
        "{reason}"
    );
    assert!(reason.trim_end().ends_with(&format!("{name})")), "{reason}");
}

#[test]
fn a_shortened_name_is_given_whole_on_the_reasons_one_line() {
    let short = reason_line("bad", "a.json", "a.json.1");
    assert_eq!(short, "bad\n");
    // Cut at its second try only: still named.
    let long = format!("{}\n.json", "m".repeat(246));
    let kept = rejected_name(&long, 1);
    assert!(!kept.starts_with(&long));
    let line = reason_line("bad", &long, &kept);
    assert_eq!(line.lines().count(), 1, "{line:?}");
    assert!(line.contains("m\\n.json)"), "{line:?}");
}

/// A reader over bytes that gives at most `chunk` per read and counts
/// its reads.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
    reads: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        let n = out.len().min(self.chunk).min(self.bytes.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn a_file_of_its_stated_length_is_read_in_one_read() {
    let data = vec![7u8; 5000];
    let mut r = Chunked {
        bytes: &data,
        chunk: usize::MAX,
        reads: 0,
    };
    assert_eq!(read_to_len(&mut r, 5000).unwrap(), data);
    assert_eq!(r.reads, 1, "no read more to see the end");
}

#[test]
fn short_reads_grown_and_truncated_files_are_read_whole() {
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    // Short reads before the stated length (a FUSE file system, say).
    let mut r = Chunked {
        bytes: &data,
        chunk: 1000,
        reads: 0,
    };
    assert_eq!(read_to_len(&mut r, 100_000).unwrap(), data);
    // Grown since its stat.
    let mut r = Chunked {
        bytes: &data,
        chunk: usize::MAX,
        reads: 0,
    };
    assert_eq!(read_to_len(&mut r, 10).unwrap(), data);
    // Truncated since its stat.
    let mut r = Chunked {
        bytes: &data[..50],
        chunk: usize::MAX,
        reads: 0,
    };
    assert_eq!(read_to_len(&mut r, 100_000).unwrap(), &data[..50]);
}

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
fn fault_rules_parse_and_bad_ones_are_refused() {
    use nix::libc::{EIO, ENOSPC};
    assert_eq!(
        fault::parse("fsync:3, rename:5:enospc@/spool/run/").unwrap(),
        vec![
            fault::Rule {
                op: Op::Fsync,
                nth: 3,
                errno: EIO,
                within: None
            },
            fault::Rule {
                op: Op::Rename,
                nth: 5,
                errno: ENOSPC,
                within: Some("/spool/run/".into())
            },
        ]
    );
    assert!(fault::parse("").unwrap().is_empty());
    // `slow` fails nothing: errno 0 holds the operation.
    assert_eq!(fault::parse("rename:2:slow").unwrap()[0].errno, 0);
    for bad in [
        "fsync",
        "fsync:0",
        "fsync:x",
        "read:1",
        "write:1:ebusy",
        "write:1@",
        "write:1:eio:2",
    ] {
        assert!(fault::parse(bad).is_err(), "{bad} is refused");
    }
}

#[test]
fn disk_failures_are_fatal_and_one_file_refusing_is_not() {
    let err = |errno| io::Error::from_raw_os_error(errno);
    let rename = |errno| SpoolError::Rename {
        from: "a".into(),
        to: "b".into(),
        source: err(errno),
    };
    let write = |errno| SpoolError::Write {
        path: "a".into(),
        source: err(errno),
    };
    for errno in [
        nix::libc::EIO,
        nix::libc::ENOSPC,
        nix::libc::EROFS,
        nix::libc::EDQUOT,
    ] {
        assert!(rename(errno).is_fatal());
        assert!(write(errno).is_fatal());
    }
    for errno in [nix::libc::EACCES, nix::libc::EPERM, nix::libc::ENOENT] {
        assert!(!rename(errno).is_fatal());
        assert!(!write(errno).is_fatal());
    }
    assert!(SpoolError::Fsync {
        path: "a".into(),
        source: err(nix::libc::EINVAL)
    }
    .is_fatal());
    assert!(!SpoolError::Exists("a".into()).is_fatal());
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
fn a_reason_that_cannot_be_written_leaves_the_input_where_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x.json");
    fs::write(&p, "bytes").unwrap();
    // No rejected/ to write the reason into.
    let rej = tmp.path().join("rejected");
    assert!(reject(&p, &rej, "bad", true).is_err());
    assert_eq!(fs::read_to_string(&p).unwrap(), "bytes");
    // A name whose reason alone is left (a crash between the two) is
    // passed over.
    fs::create_dir(&rej).unwrap();
    fs::write(rej.join("x.json.reason"), "old\n").unwrap();
    let to = reject(&p, &rej, "bad", true).unwrap();
    assert_eq!(to, rej.join("x.json.1"));
    assert_eq!(
        fs::read_to_string(rej.join("x.json.1.reason")).unwrap(),
        "bad\n"
    );
    // A move that fails takes its reason back.
    let gone = tmp.path().join("gone.json");
    assert!(reject(&gone, &rej, "bad", true).is_err());
    assert!(!rej.join("gone.json.reason").exists());
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

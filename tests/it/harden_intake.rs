//! Hardening of intake (issue 15, C and E): every entry of a directory the
//! engine reads ends somewhere, whole — taken, or in `rejected/` with its
//! bytes and a reason, or reported once when it cannot be moved, and
//! `--drain` never waits for what it will never take; a file written in
//! place is not rejected while its writer may still be at work; a watched
//! directory deleted, moved away or made again is watched again at once;
//! duplicate keys and a byte-order mark are refused with reasons that
//! name them.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::common::*;

const GOOD: &str = r#"{"domain":"org","tasker":"echo","payload":{"ok":true}}"#;

/// A deadline well below the safety rescan's default period (30 s), for
/// what must happen on an event; the engines of these tests rescan once
/// an hour, so a pass can never come from a rescan.
const PROMPT: Duration = Duration::from_secs(10);

fn cat_tasker(t: &TestRoot) {
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
}

/// Drops raw bytes under a name given as bytes (not UTF-8, say) into
/// `dir`, the safe way (temporary, then rename).
fn drop_named(dir: &Path, name: &[u8], bytes: &[u8]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(".drop.tmp");
    fs::write(&tmp, bytes).unwrap();
    let dst = dir.join(OsStr::from_bytes(name));
    fs::rename(&tmp, &dst).unwrap();
    dst
}

/// The engine binary with a safety rescan out of the tests' reach, once
/// it demonstrably runs (a first task done).
fn running_engine(t: &TestRoot) -> EngineProcess {
    let engine = t.spawn_engine(&["--workers", "2", "--rescan", "1h"]);
    t.drop_task("warm.json", GOOD);
    wait_for("warm's record", DEADLINE, || t.record("warm").is_some());
    engine
}

/// The lines of `var/log/engine.log` holding every one of `words`.
fn log_lines(t: &TestRoot, words: &[&str]) -> Vec<String> {
    fs::read_to_string(t.join("var/log/engine.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Whether the tests may run a process as `nobody` (the tests run as
/// root, who owns every file and holds every capability).
fn can_be_nobody() -> bool {
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    matches!(probe, Ok(s) if s.success())
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

/// `spoolflow run ARGS` as `nobody`.
fn engine_as_nobody(t: &TestRoot, args: &[&str]) -> EngineProcess {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_spoolflow"))
        .arg("--root")
        .arg(t.path())
        .arg("run")
        .args(args)
        .env_remove("SPOOLFLOW_ROOT")
        .current_dir(t.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    EngineProcess { child }
}

// ------------------------------------------------------------ C1

/// A task file whose name is not UTF-8, directly in `in/`, was ignored
/// for ever without a word and `--drain` never ended. Now it is rejected
/// (its rejected name is UTF-8, its bytes kept, the reason shows the
/// original name's bytes) and the run drains. A socket, a FIFO, a
/// symlink and a directory in a domain's directory go too.
#[test]
fn a_name_that_is_not_utf8_in_in_is_rejected_and_drain_ends() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let inn = t.root.spool_in();
    drop_named(&inn, b"bad\xff.json", GOOD.as_bytes());
    drop_named(&inn.join("org.x"), b"inner\xfe.json", GOOD.as_bytes());
    let dom = inn.join("org.x");
    let _socket = std::os::unix::net::UnixListener::bind(dom.join("sock.json")).unwrap();
    nix::unistd::mkfifo(
        &dom.join("pipe.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink(t.join("var/spool/done"), dom.join("link.json")).unwrap();
    fs::create_dir(dom.join("nested")).unwrap();
    t.drop_task("zz-good.json", GOOD);

    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("zz-good")["state"], "completed");
    assert_eq!(t.list("var/spool/in"), ["org.x"]);
    assert!(t.list("var/spool/in/org.x").is_empty());

    for (shown, original) in [
        ("bad\u{fffd}.json", "bad\\xff.json"),
        ("inner\u{fffd}.json", "inner\\xfe.json"),
    ] {
        let r = t.reason(shown);
        assert!(
            r.starts_with("name is not valid UTF-8") && r.contains(original),
            "{r}"
        );
        let kept = fs::read(t.join(&format!("var/spool/rejected/{shown}"))).unwrap();
        assert_eq!(kept, GOOD.as_bytes());
    }
    assert!(t.reason("sock.json").contains("not a regular file"));
    assert!(t.reason("pipe.json").contains("not a regular file"));
    assert!(t.reason("link.json").contains("symbolic link"));
    assert!(t
        .reason("nested")
        .contains("subdirectory nested of in/org.x"));
    assert!(t.list("var/spool/done") == ["zz-good.json"]);
}

/// A bad file whose name leaves no room for `.reason` beside it (249
/// bytes or more; a name that is not UTF-8 grows when shown) is rejected
/// under a shortened name, its whole name in the reason, and the run
/// drains; it used to stay in `in/`.
#[test]
fn a_bad_file_with_a_very_long_name_is_rejected_under_a_shorter_one() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let inn = t.root.spool_in();
    let long = format!("{}.json", "n".repeat(250));
    drop_named(&inn, long.as_bytes(), b"{ not json");
    let wide: Vec<u8> = [b"w".repeat(100), vec![0xff; 150]].concat();
    drop_named(&inn, &wide, GOOD.as_bytes());
    t.drop_task("zz-good.json", GOOD);
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "1"])
        .wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.list("var/spool/in").is_empty());
    assert_eq!(t.must_record("zz-good")["state"], "completed");
    let rejected = t.list("var/spool/rejected");
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    let short = rejected
        .iter()
        .find(|n| n.starts_with("nnn") && !n.ends_with(".reason"))
        .expect("the long name's input");
    assert!(short.ends_with('~') && short.len() <= 248, "{short}");
    assert_eq!(
        fs::read(t.join(&format!("var/spool/rejected/{short}"))).unwrap(),
        b"{ not json"
    );
    let r = t.reason(short);
    assert!(r.contains("too long") && r.contains(&long), "{r}");
    let w = rejected
        .iter()
        .find(|n| n.starts_with("www") && n.ends_with(".reason"))
        .expect("the reason of the name that is not UTF-8");
    let r = fs::read_to_string(t.join(&format!("var/spool/rejected/{w}"))).unwrap();
    assert!(r.starts_with("name is not valid UTF-8"), "{r}");
}

/// Entries of `cancel/` and `priority/` that are no request (a name that
/// is not UTF-8, a directory, a FIFO, a socket, a symlink) are rejected
/// with a reason on their event, never left for ever nor opened.
#[test]
fn odd_entries_of_request_directories_are_rejected_with_a_reason() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let engine = running_engine(&t);
    let cancel = t.join("var/spool/cancel");
    let priority = t.join("var/spool/priority");
    drop_named(&cancel, b"c\xff", b"");
    drop_named(&priority, b"p\xff", b"5");
    fs::create_dir(cancel.join("adir")).unwrap();
    nix::unistd::mkfifo(
        &cancel.join("apipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(priority.join("asock")).unwrap();
    std::os::unix::fs::symlink(t.join("var/spool/done/warm.json"), cancel.join("warm")).unwrap();

    wait_for("every odd request to be rejected", PROMPT, || {
        t.list("var/spool/cancel").is_empty() && t.list("var/spool/priority").is_empty()
    });
    wait_for("every reason", PROMPT, || {
        ["c\u{fffd}", "p\u{fffd}", "adir", "apipe", "asock", "warm"]
            .iter()
            .all(|n| t.rejected_reason(n).is_some())
    });
    let r = t.reason("c\u{fffd}");
    assert!(
        r.starts_with("cancel request: name is not valid UTF-8: c\\xff"),
        "{r}"
    );
    let r = t.reason("p\u{fffd}");
    assert!(
        r.starts_with("priority request: name is not valid UTF-8: p\\xff"),
        "{r}"
    );
    assert!(t.reason("adir").contains("a directory is not a request"));
    assert!(t.reason("apipe").contains("not a regular file"));
    assert!(t.reason("asock").contains("not a regular file"));
    assert!(t.reason("warm").contains("symbolic link"));
    // The link was moved as the link; the record it names is untouched.
    let link = t.join("var/spool/rejected/warm");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(t.must_record("warm")["state"], "completed");
    drop(engine);
}

/// An entry the engine may not move (someone else's file in a sticky
/// `in/`) is reported once — not at every look — and `--drain` ends
/// without it: neither a file to reject nor a valid task to claim; nor
/// a domain's directory it may not read.
#[test]
fn an_entry_that_cannot_be_moved_is_reported_once_and_not_waited_for() {
    if !can_be_nobody() {
        eprintln!("skipped: setpriv cannot switch to uid 65534 here");
        return;
    }
    let t = TestRoot::new();
    cat_tasker(&t);
    chown_tree(t.path(), 65534);
    let inn = t.root.spool_in();
    // in/ is root's and sticky: nobody may add files, and move only its own.
    std::os::unix::fs::chown(&inn, Some(0), Some(0)).unwrap();
    fs::set_permissions(&inn, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(inn.join("bad.json"), b"{ not json").unwrap();
    fs::write(inn.join("stuck.json"), GOOD).unwrap();
    fs::write(inn.join("good.json"), GOOD).unwrap();
    std::os::unix::fs::chown(inn.join("good.json"), Some(65534), Some(65534)).unwrap();
    // A domain's directory the engine may not read.
    let locked = inn.join("org.locked");
    fs::create_dir(&locked).unwrap();
    fs::write(locked.join("hidden.json"), GOOD).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();

    let (code, err) = engine_as_nobody(&t, &["--drain", "--workers", "1"]).wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record("good")["state"], "completed");
    assert_eq!(
        t.list("var/spool/in"),
        ["bad.json", "org.locked", "stuck.json"]
    );
    let unreadable = log_lines(&t, &["cannot read", "org.locked"]);
    assert_eq!(unreadable.len(), 1, "{unreadable:#?}");
    assert!(t.record("stuck").is_none());
    let rejecting = log_lines(&t, &["cannot reject", "bad.json"]);
    assert_eq!(rejecting.len(), 1, "{rejecting:#?}");
    let claiming = log_lines(&t, &["cannot claim", "stuck.json"]);
    assert_eq!(claiming.len(), 1, "{claiming:#?}");
}

// ------------------------------------------------------------ C2

/// How long ago `path` last changed (its ctime, as the engine reads it).
fn unchanged_for(path: &Path) -> Duration {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::from_secs(m.ctime() as u64)
        + Duration::from_nanos(m.ctime_nsec() as u64);
    SystemTime::now().duration_since(ctime).unwrap_or_default()
}

/// A file written in place whose writer pauses longer than the engine's
/// settle time (2 s) while a scan runs (here: a cancel request for an
/// unknown id) was taken half-written and rejected, when the engine could
/// not tell that a writer had it open (the engine runs as `nobody`, the
/// writer as root: no read lease). It is now left in `in/` and completes
/// once its writer closes it.
#[test]
fn a_file_written_in_place_is_not_rejected_while_its_writer_pauses() {
    if !can_be_nobody() {
        eprintln!("skipped: setpriv cannot switch to uid 65534 here");
        return;
    }
    let t = TestRoot::new();
    cat_tasker(&t);
    chown_tree(t.path(), 65534);
    let engine = engine_as_nobody(&t, &["--workers", "1", "--rescan", "1h"]);
    t.drop_task("warm.json", GOOD);
    wait_for("warm's record", DEADLINE, || t.record("warm").is_some());

    let body = br#"{"domain":"org","tasker":"echo","payload":{"written":"in place"}}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let path = t.join("var/spool/in/x.json");
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(first).unwrap();
    f.sync_all().unwrap();
    // The writer pauses: longer than the engine's settle time.
    wait_for("the half file to be 3 s old", DEADLINE, || {
        unchanged_for(&path) > Duration::from_secs(3)
    });

    // A cancel request for an unknown id makes the engine scan in/; a
    // task dropped after it says, once done, that the scan is over. The
    // request waits for the file put off (its id is not known yet).
    let cancel = t.join("var/spool/cancel");
    fs::write(cancel.join(".nosuch.tmp"), "").unwrap();
    fs::rename(cancel.join(".nosuch.tmp"), cancel.join("nosuch")).unwrap();
    t.drop_task("marker.json", GOOD);
    wait_for("marker's record", DEADLINE, || t.record("marker").is_some());
    assert!(path.exists(), "the half-written file is still in in/");
    assert!(t.list("var/spool/rejected").is_empty());
    assert!(cancel.join("nosuch").exists(), "the request waits");

    f.write_all(rest).unwrap();
    drop(f);
    wait_for("x's record", DEADLINE, || t.record("x").is_some());
    let rec = t.must_record("x");
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["payload"], json!({"written":"in place"}));
    // Taken on its close event, x holds the request back no longer.
    wait_for("the cancel request's rejection", DEADLINE, || {
        t.rejected_reason("nosuch").is_some()
    });
    assert_eq!(t.list("var/spool/rejected"), ["nosuch", "nosuch.reason"]);
    drop(engine);
}

// ------------------------------------------------------------ C3

/// `rm -rf in; mkdir in` under a running engine: a task dropped into the
/// new `in/` is taken at once (not at the safety rescan, an hour away
/// here), and the engine says once that `in/` is watched again.
#[test]
fn in_deleted_and_made_again_is_watched_again_at_once() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let engine = running_engine(&t);
    let inn = t.root.spool_in();
    fs::remove_dir_all(&inn).unwrap();
    fs::create_dir(&inn).unwrap();
    t.drop_task("after.json", GOOD);
    wait_for(
        "the record of a task dropped into the new in/",
        PROMPT,
        || t.record("after").is_some(),
    );
    assert_eq!(t.must_record("after")["state"], "completed");
    wait_for("the log line", PROMPT, || {
        !log_lines(&t, &["var/spool/in is there again"]).is_empty()
    });
    // A domain's directory made in the new in/ is watched too.
    t.drop_task_in("org.y", "deep.json", r#"{"tasker":"echo"}"#);
    wait_for("deep's record", PROMPT, || t.record("deep").is_some());
    assert_eq!(log_lines(&t, &["var/spool/in is there again"]).len(), 1);
    assert_eq!(
        log_lines(&t, &["var/spool/in was deleted or moved away"]).len(),
        1
    );
    drop(engine);
}

/// `mv in in.old; mkdir in`: the new `in/` is watched at once; what is
/// dropped into the old one, now outside the spool, is not taken.
#[test]
fn in_moved_away_and_made_again_is_watched_again_at_once() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let engine = running_engine(&t);
    let inn = t.root.spool_in();
    let old = t.join("var/spool/in.old");
    fs::rename(&inn, &old).unwrap();
    drop_named(&old, b"stale.json", GOOD.as_bytes());
    fs::create_dir(&inn).unwrap();
    t.drop_task("after.json", GOOD);
    wait_for(
        "the record of a task dropped into the new in/",
        PROMPT,
        || t.record("after").is_some(),
    );
    assert_eq!(t.must_record("after")["state"], "completed");
    assert!(old.join("stale.json").exists());
    assert!(t.record("stale").is_none());
    drop(engine);
}

/// A domain's directory removed and made again: tasks dropped into it are
/// taken at once.
#[test]
fn a_domain_directory_deleted_and_made_again_is_watched_again() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let engine = running_engine(&t);
    t.drop_task_in("org.x", "one.json", r#"{"tasker":"echo"}"#);
    wait_for("one's record", PROMPT, || t.record("one").is_some());
    let dom = t.join("var/spool/in/org.x");
    fs::remove_dir_all(&dom).unwrap();
    fs::create_dir(&dom).unwrap();
    t.drop_task_in("org.x", "two.json", r#"{"tasker":"echo"}"#);
    wait_for("two's record", PROMPT, || t.record("two").is_some());
    // Moved away and made again.
    fs::rename(&dom, t.join("var/spool/org.x.old")).unwrap();
    fs::create_dir(&dom).unwrap();
    t.drop_task_in("org.x", "three.json", r#"{"tasker":"echo"}"#);
    wait_for("three's record", PROMPT, || t.record("three").is_some());
    drop(engine);
}

/// `cancel/` and `priority/` deleted and made again: a request dropped
/// into each is handled at once.
#[test]
fn request_directories_deleted_and_made_again_are_watched_again() {
    let t = TestRoot::new();
    cat_tasker(&t);
    let engine = running_engine(&t);
    for dir in ["cancel", "priority"] {
        let d = t.join(&format!("var/spool/{dir}"));
        fs::remove_dir_all(&d).unwrap();
        fs::create_dir(&d).unwrap();
        let name = format!("nosuch-{dir}");
        drop_named(&d, name.as_bytes(), b"1");
        wait_for(&format!("the rejection of {name}"), PROMPT, || {
            t.rejected_reason(&name).is_some()
        });
        assert!(t.reason(&name).contains("unknown task id"));
        wait_for("the log line", PROMPT, || {
            log_lines(&t, &[&format!("var/spool/{dir} is there again")]).len() == 1
        });
    }
    drop(engine);
}

// ------------------------------------------------------------ E

/// A key given twice (at the top, or inside the payload) is refused with
/// a reason naming it, where it was silently "last wins"; a UTF-8
/// byte-order mark is named, not "expected value at column 1".
#[test]
fn duplicate_keys_and_a_byte_order_mark_are_rejected_with_reasons_that_name_them() {
    let t = TestRoot::new();
    cat_tasker(&t);
    t.drop_task(
        "twice.json",
        r#"{"domain":"org","tasker":"echo","tasker":"other"}"#,
    );
    t.drop_task(
        "nested.json",
        r#"{"domain":"org","tasker":"echo","payload":{"qty":1,"qty":100}}"#,
    );
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(GOOD.as_bytes());
    t.drop_bytes("", "bom.json", &bom);
    t.drop_task("zz-good.json", GOOD);
    t.run_drain(1);

    let r = t.reason("twice.json");
    assert!(r.starts_with(r#"duplicate key "tasker" at line 1"#), "{r}");
    let r = t.reason("nested.json");
    assert!(r.starts_with(r#"duplicate key "qty" at line 1"#), "{r}");
    assert_eq!(
        t.reason("bom.json"),
        "the file starts with a byte-order mark (EF BB BF); save it as UTF-8 without BOM"
    );
    let kept = fs::read(t.join("var/spool/rejected/bom.json")).unwrap();
    assert_eq!(kept, bom);
    for id in ["twice", "nested", "bom"] {
        assert!(t.record(id).is_none(), "{id} ran");
    }
    assert_eq!(t.must_record("zz-good")["state"], "completed");
}

/// SPEC 3: the file the claim moves to `run/` is the one the engine read.
/// A file renamed over it in the moment before the move (held 2 s here by
/// the debug build's `SPOOLFLOW_FAULT` KIND `slow`) is never run under the
/// checks of the file it replaced: it is rejected with the reason.
#[test]
fn a_file_renamed_over_one_being_claimed_is_not_run_in_its_place() {
    use std::os::unix::fs::MetadataExt;
    let t = TestRoot::new();
    t.tasker("org.x", "echo", "#!/bin/sh\ncat\n");
    t.tasker("org.other", "echo", "#!/bin/sh\ncat\n");
    let dir = t.join("var/spool/in/org.x");
    fs::create_dir_all(&dir).unwrap();
    let engine = t.spawn_engine_with_fault(
        Some("rename:1:slow@/spool/in/org.x/r.json"),
        &["--workers", "1"],
    );
    let stage = |name: &str, body: &str| {
        let p = t.join(name);
        fs::write(&p, body).unwrap();
        p
    };
    let a = stage(
        "a.json",
        r#"{"domain":"org.x","id":"r1","tasker":"echo","payload":{"v":"A"}}"#,
    );
    let b = stage(
        "b.json",
        r#"{"domain":"org.other","id":"r1","tasker":"echo","payload":{"v":"B"}}"#,
    );
    let path = dir.join("r.json");
    fs::rename(&a, &path).unwrap();
    // The engine read it (its access time moved): its claim is held now.
    wait_for("the engine to read the file", DEADLINE, || {
        fs::metadata(&path).is_ok_and(|m| (m.atime(), m.atime_nsec()) > (m.mtime(), m.mtime_nsec()))
    });
    fs::rename(&b, &path).unwrap();
    wait_for("what was renamed in to end somewhere", DEADLINE, || {
        t.record("r1").is_some() || t.rejected_reason("r1.json").is_some()
    });
    engine.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, err) = engine.wait(DEADLINE);
    assert_eq!(code, Some(0), "{err}");
    assert!(t.record("r1").is_none(), "B ran: {:#}", t.must_record("r1"));
    let reason = t.rejected_reason("r1.json").unwrap_or_default();
    assert!(
        reason.contains("replaced the file the engine had read"),
        "{reason}"
    );
    let kept = fs::read_to_string(t.join("var/spool/rejected/r1.json")).unwrap();
    assert!(kept.contains("org.other"), "{kept}");
}

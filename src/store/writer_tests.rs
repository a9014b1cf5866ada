//! The writer's batches (who waits for more, and how long) and its
//! recycled files (written over only once their move out of `run/` is
//! durable).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::spares::{SETTLE_AT, SETTLE_WITHIN};
use super::*;

fn record(n: u32) -> Job {
    let exid = format!("t0661d50653b2a5-{n:08}");
    Job::Record(RecordJob {
        key: NodeKey {
            exid: exid.parse().expect("an execution id"),
            nid: "0".parse().expect("a node id"),
        },
        dir: PathBuf::from("done"),
        name: format!("{n}.json"),
        bytes: Vec::new(),
        points_log: PathBuf::new(),
        final_point: Vec::new(),
        run_file: PathBuf::new(),
        journal: None,
    })
}

fn reject() -> Job {
    Job::Reject {
        path: PathBuf::from("in/x"),
        ident: None,
        rejected: PathBuf::from("rejected"),
        reason: "test".into(),
    }
}

fn kinds(batch: &[Job]) -> Vec<&'static str> {
    batch
        .iter()
        .map(|j| match j {
            Job::Record(_) => "record",
            _ => "other",
        })
        .collect()
}

/// The flag a writer sets with a job that ends a record's wait.
fn calm() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn a_lone_record_waits_the_linger_for_company() {
    let (_tx, rx) = mpsc::channel::<Job>();
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_millis(50), &calm());
    assert_eq!(kinds(&batch), ["record"]);
    assert!(began.elapsed() >= Duration::from_millis(50));
}

#[test]
fn what_is_there_after_the_linger_joins_the_batch() {
    let (tx, rx) = mpsc::channel();
    for n in 2..5 {
        tx.send(record(n)).unwrap();
    }
    drop(tx);
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_millis(50), &calm());
    assert!(began.elapsed() >= Duration::from_millis(50));
    assert_eq!(kinds(&batch), ["record"; 4]);
}

#[test]
fn anything_but_a_record_ends_the_wait_at_once() {
    let (tx, rx) = mpsc::channel();
    // Queued before the wait, flagged as `Writer::send` flags it: an hour
    // of linger ends at once, and the jobs behind come along.
    tx.send(record(2)).unwrap();
    tx.send(reject()).unwrap();
    tx.send(record(3)).unwrap();
    let urgent = AtomicBool::new(true);
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_secs(60 * 60), &urgent);
    assert_eq!(kinds(&batch), ["record", "record", "other", "record"]);
    assert!(began.elapsed() < Duration::from_secs(60));
    // The wait it ended cleared the flag: the next record waits again
    // until another such job sets it. (A job sent while the writer waits
    // is `a_job_sent_during_a_records_hour_of_wait_is_done_at_once`.)
    assert!(!urgent.load(std::sync::atomic::Ordering::Acquire));
    tx.send(reject()).unwrap();
    urgent.store(true, std::sync::atomic::Ordering::Release);
    let began = Instant::now();
    let batch = gather(&rx, record(4), Duration::from_secs(60 * 60), &urgent);
    assert_eq!(kinds(&batch), ["record", "other"]);
    assert!(began.elapsed() < Duration::from_secs(60));
    // A batch that starts with such a job does not wait.
    tx.send(record(5)).unwrap();
    let began = Instant::now();
    let batch = gather(&rx, reject(), Duration::from_secs(60 * 60), &calm());
    assert_eq!(kinds(&batch), ["other", "record"]);
    assert!(began.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_batch_holds_at_most_max_batch_jobs() {
    let (tx, rx) = mpsc::channel();
    for n in 0..(MAX_BATCH as u32 + 10) {
        tx.send(record(n)).unwrap();
    }
    let batch = gather(&rx, reject(), Duration::ZERO, &calm());
    assert_eq!(batch.len(), MAX_BATCH);
    assert_eq!(rx.try_iter().count(), 11);
}

#[test]
fn a_backlog_of_a_full_batch_is_written_without_waiting() {
    let (tx, rx) = mpsc::channel();
    for n in 1..(MAX_BATCH as u32 + 10) {
        tx.send(record(n)).unwrap();
    }
    let began = Instant::now();
    let batch = gather(&rx, record(0), Duration::from_secs(60), &calm());
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "a full batch waits for nothing"
    );
    assert_eq!(batch.len(), MAX_BATCH);
    assert_eq!(rx.try_iter().count(), 10);
}

/// A root's directories for a writer of its own, and a record job in it.
fn record_in(dir: &std::path::Path, n: u32) -> Job {
    let Job::Record(mut job) = record(n) else {
        unreachable!("record() makes records")
    };
    job.dir = dir.join("done");
    job.bytes = b"{}".to_vec();
    job.points_log = dir.join("log").join(format!("{n}.log"));
    job.final_point = b"{}\n".to_vec();
    job.run_file = dir.join("run").join(format!("{n}.json"));
    Job::Record(job)
}

type WriterRoot = (
    tempfile::TempDir,
    tokio::sync::mpsc::UnboundedReceiver<Vec<Done>>,
    Writer,
);

/// A writer whose records wait an hour for company.
fn writer_root() -> WriterRoot {
    writer_root_with(Duration::from_secs(60 * 60))
}

fn writer_root_with(linger: Duration) -> WriterRoot {
    let tmp = spares_root();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = Writer::start_with(
        tx,
        SpareDirs {
            spares: tmp.path().join("spares"),
            run: tmp.path().join("run"),
        },
        None,
        Waits {
            linger,
            // Never idle, nor waiting, long enough to fsync run/ by itself.
            settle_idle: Duration::from_secs(60 * 60),
            settle_within: Duration::from_secs(60 * 60),
        },
    )
    .expect("the writer thread");
    (tmp, rx, writer)
}

#[test]
fn a_job_sent_during_a_records_hour_of_wait_is_done_at_once() {
    let (tmp, done, writer) = writer_root();
    writer.send(record_in(tmp.path(), 1));
    writer.send(Job::Rewrite {
        key: NodeKey {
            exid: "t0661d50653b2a5-00000002".parse().expect("an execution id"),
            nid: "0".parse().expect("a node id"),
        },
        seq: 1,
        dir: tmp.path().join("run"),
        name: "2.json".into(),
        bytes: b"{}".to_vec(),
    });
    Reports::of(done).until(2, "the rewrite ends the record's hour of wait");
    assert!(tmp.path().join("done/1.json").is_file());
    assert!(tmp.path().join("run/2.json").is_file());
    drop(writer);
}

#[test]
fn finishing_ends_a_records_wait() {
    let (tmp, _done, writer) = writer_root();
    writer.send(record_in(tmp.path(), 1));
    let (finished_tx, finished) = mpsc::channel();
    std::thread::spawn(move || {
        writer.finish().expect("run/ fsynced");
        let _ = finished_tx.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("finish() returns without waiting out the hour");
    // The record it was waiting with is written.
    assert!(tmp.path().join("done/1.json").is_file());
}

#[test]
fn a_record_with_no_company_to_come_ends_the_wait_at_once() {
    let (tmp, done, writer) = writer_root();
    let mut reports = Reports::of(done);
    let record_job = |n| match record_in(tmp.path(), n) {
        Job::Record(job) => job,
        _ => unreachable!("record_in() makes records"),
    };
    // Other tasks may end: the record waits (here an hour) for them.
    writer.send_record(record_job(1), true);
    let early = reports.next_within(Duration::from_millis(200));
    assert!(early.is_none(), "a record with company to come waits");
    // The last one, with nothing else to come, is written at once, and
    // the one that waited goes with it.
    writer.send_record(record_job(2), false);
    reports.until(2, "a record alone does not wait out the hour");
    assert!(tmp.path().join("done/1.json").is_file());
    assert!(tmp.path().join("done/2.json").is_file());
}

/// The writer's reports, waited for on a runtime of their own.
struct Reports {
    rt: tokio::runtime::Runtime,
    done: tokio::sync::mpsc::UnboundedReceiver<Vec<Done>>,
}

impl Reports {
    fn of(done: tokio::sync::mpsc::UnboundedReceiver<Vec<Done>>) -> Reports {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        Reports { rt, done }
    }

    /// The next batch reported within `within`, if any.
    fn next_within(&mut self, within: Duration) -> Option<Vec<Done>> {
        let Reports { rt, done } = self;
        rt.block_on(async { tokio::time::timeout(within, done.recv()).await })
            .ok()
            .map(|batch| batch.expect("the writer is running"))
    }

    /// The next batch, at most a minute away (`why` says what it shows).
    fn next(&mut self, why: &str) -> Vec<Done> {
        self.next_within(Duration::from_secs(60)).expect(why)
    }

    /// Batches until `jobs` jobs are reported done.
    fn until(&mut self, jobs: usize, why: &str) {
        let mut reported = 0;
        while reported < jobs {
            reported += self.next(why).len();
        }
    }
}

/// A root with the directories a writer and its [`Spares`] work in.
fn spares_root() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    for d in ["done", "run", "log", "spares"] {
        std::fs::create_dir(tmp.path().join(d)).expect("a directory");
    }
    tmp
}

/// The spares of [`spares_root`]'s root, from its `run/`.
fn spares_in(tmp: &tempfile::TempDir) -> Spares {
    Spares::new(
        tmp.path().join("spares"),
        tmp.path().join("run"),
        SETTLE_WITHIN,
    )
}

/// Makes the task file `run/<n>.json` and returns its inode.
fn run_file(tmp: &tempfile::TempDir, n: u32) -> (PathBuf, u64) {
    use std::os::unix::fs::MetadataExt;
    let path = tmp.path().join("run").join(format!("{n}.json"));
    std::fs::write(&path, format!("{{\"n\":{n}}}")).expect("a run/ file");
    let ino = std::fs::metadata(&path).expect("its metadata").ino();
    (path, ino)
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("the file is there").ino()
}

fn record_job(tmp: &tempfile::TempDir, n: u32) -> RecordJob {
    let Job::Record(job) = record_in(tmp.path(), n) else {
        unreachable!("record_in() makes records")
    };
    job
}

#[test]
fn a_file_that_left_run_is_written_over_only_once_run_is_fsynced() {
    let tmp = spares_root();
    let mut spares = spares_in(&tmp);
    assert!(spares.due().is_none());
    let (path, ino) = run_file(&tmp, 1);
    spares.give(&path);
    assert!(!path.exists(), "the run/ file left run/");
    assert!(spares.due().is_some());
    let first = spares.write(&record_job(&tmp, 1)).expect("a record");
    assert_ne!(inode(&first), ino, "written over before run/ was fsynced");
    spares.settle().expect("run/ fsynced");
    assert!(spares.due().is_none());
    let second = spares.write(&record_job(&tmp, 2)).expect("a record");
    assert_eq!(inode(&second), ino, "a settled spare is written over");
    assert_eq!(std::fs::read(&second).expect("the record"), b"{}");
}

#[test]
fn run_is_fsynced_once_for_settle_at_files() {
    let tmp = spares_root();
    let mut spares = spares_in(&tmp);
    let mut given = std::collections::BTreeSet::new();
    let now = Instant::now();
    for n in 0..SETTLE_AT as u32 {
        assert!(!spares.must_settle(now), "{n} files given");
        let (path, ino) = run_file(&tmp, n);
        spares.give(&path);
        given.insert(ino);
    }
    assert!(spares.must_settle(now));
    spares.settle().expect("run/ fsynced");
    assert!(!spares.must_settle(now) && spares.due().is_none());
    let reused: std::collections::BTreeSet<u64> = (0..SETTLE_AT as u32)
        .map(|n| inode(&spares.write(&record_job(&tmp, n)).expect("a record")))
        .collect();
    assert_eq!(reused, given, "every settled spare is written over once");
}

#[test]
fn spares_left_by_an_earlier_run_wait_for_run_to_be_fsynced() {
    let tmp = spares_root();
    let left = tmp.path().join("spares").join("1-1");
    std::fs::write(&left, b"an earlier task").expect("a spare");
    let ino = inode(&left);
    let mut spares = spares_in(&tmp);
    assert!(
        spares.due().is_some(),
        "that run may have died before its fsync"
    );
    let first = spares.write(&record_job(&tmp, 1)).expect("a record");
    assert_ne!(inode(&first), ino);
    spares.settle().expect("run/ fsynced");
    let second = spares.write(&record_job(&tmp, 2)).expect("a record");
    assert_eq!(inode(&second), ino);
}

#[test]
fn a_run_file_removed_rather_than_kept_is_also_made_durable() {
    let tmp = spares_root();
    let mut spares = spares_in(&tmp);
    let (path, _) = run_file(&tmp, 1);
    // A second link: never recycled, removed.
    std::fs::hard_link(&path, tmp.path().join("kept")).expect("a hard link");
    spares.give(&path);
    assert!(!path.exists());
    assert!(spares.due().is_some(), "the removal waits for run/'s fsync");
    spares.settle().expect("run/ fsynced");
    assert!(spares.due().is_none());
}

#[test]
fn an_fsync_of_run_for_other_writes_settles_the_files_that_left_it() {
    let tmp = spares_root();
    let run = tmp.path().join("run");
    let mut spares = spares_in(&tmp);
    let (path, ino) = run_file(&tmp, 1);
    spares.give(&path);
    // Another directory's fsync settles nothing.
    spares.fsynced(&std::collections::BTreeSet::from([tmp.path().join("done")]));
    assert!(spares.due().is_some());
    spares.fsynced(&std::collections::BTreeSet::from([
        run,
        tmp.path().join("done"),
    ]));
    assert_eq!(spares.due(), None, "settled by the batch's fsync of run/");
    let record = spares.write(&record_job(&tmp, 1)).expect("a record");
    assert_eq!(inode(&record), ino);
}

#[test]
fn files_removed_rather_than_kept_count_towards_the_fsync_of_run() {
    let tmp = spares_root();
    let mut spares = spares_in(&tmp);
    let now = Instant::now();
    for n in 0..SETTLE_AT as u32 {
        assert!(!spares.must_settle(now), "{n} files given");
        let (path, _) = run_file(&tmp, n);
        std::fs::hard_link(&path, tmp.path().join(format!("kept-{n}"))).expect("a hard link");
        spares.give(&path);
    }
    assert!(spares.must_settle(now), "{SETTLE_AT} files left run/");
}

#[test]
fn the_first_file_to_leave_run_waits_at_most_settle_within() {
    let tmp = spares_root();
    let mut spares = spares_in(&tmp);
    assert_eq!(spares.due(), None, "nothing waits");
    let before = Instant::now();
    let (path, _) = run_file(&tmp, 1);
    spares.give(&path);
    let due = spares.due().expect("the removal waits for an fsync");
    assert!(due >= before + SETTLE_WITHIN && due <= Instant::now() + SETTLE_WITHIN);
    assert!(!spares.must_settle(due - Duration::from_millis(1)));
    assert!(spares.must_settle(due));
    // A second file does not push the deadline back.
    let (path, _) = run_file(&tmp, 2);
    spares.give(&path);
    assert_eq!(spares.due(), Some(due));
    spares.settle().expect("run/ fsynced");
    assert_eq!(spares.due(), None);
}

#[test]
fn finishing_reports_a_failed_last_fsync_of_run() {
    let (tmp, done, writer) = writer_root_with(Duration::ZERO);
    run_file(&tmp, 1);
    writer.send(record_in(tmp.path(), 1));
    Reports::of(done).next("the record is written");
    // run/ cannot be fsynced any more: it is gone.
    std::fs::remove_dir_all(tmp.path().join("run")).expect("run/ removed");
    match writer.finish() {
        Err(WriterEnd::Disk(SpoolError::Missing { dir })) => {
            assert!(dir.ends_with("run"), "{dir:?}")
        }
        other => panic!("the last fsync of run/ failed, not {other:?}"),
    }
}

/// Records sent one at a time, each after the one before is done: the
/// first [`SETTLE_AT`] are new files (their predecessors' `run/` files are
/// not written over while `run/` is not fsynced), and the next one reuses
/// one of theirs.
#[test]
fn the_writer_reuses_a_run_file_only_after_settle_at_records() {
    let (tmp, done, writer) = writer_root_with(Duration::ZERO);
    let mut reports = Reports::of(done);
    let mut run_inodes = std::collections::BTreeSet::new();
    for n in 0..=SETTLE_AT as u32 {
        let (_, ino) = run_file(&tmp, n);
        writer.send(record_in(tmp.path(), n));
        let batch = reports.next("the record is written");
        assert!(
            matches!(batch.as_slice(), [Done::Record { .. }]),
            "{batch:?}"
        );
        let record = inode(&tmp.path().join("done").join(format!("{n}.json")));
        let reused = run_inodes.contains(&record);
        assert_eq!(reused, n == SETTLE_AT as u32, "record {n}");
        run_inodes.insert(ino);
    }
    drop(writer);
}

//! The writer's batches: who waits for more, and how long.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

#[test]
fn a_lone_record_waits_the_linger_for_company() {
    let (_tx, rx) = mpsc::channel::<Job>();
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_millis(50));
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
    let batch = gather(&rx, record(1), Duration::from_millis(50));
    assert!(began.elapsed() >= Duration::from_millis(50));
    assert_eq!(kinds(&batch), ["record"; 4]);
}

#[test]
fn a_claim_behind_a_record_waits_out_its_linger_but_one_first_never_waits() {
    let (tx, rx) = mpsc::channel();
    tx.send(reject()).unwrap();
    tx.send(record(2)).unwrap();
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_millis(50));
    assert!(began.elapsed() >= Duration::from_millis(50));
    assert_eq!(kinds(&batch), ["record", "other", "record"]);
    // A batch that starts with anything but a record does not wait: an
    // hour of linger, and what is queued behind it comes along at once.
    tx.send(record(3)).unwrap();
    let began = Instant::now();
    let batch = gather(&rx, reject(), Duration::from_secs(60 * 60));
    assert_eq!(kinds(&batch), ["other", "record"]);
    assert!(began.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_batch_holds_at_most_max_batch_jobs() {
    let (tx, rx) = mpsc::channel();
    for n in 0..(MAX_BATCH as u32 + 10) {
        tx.send(record(n)).unwrap();
    }
    let batch = gather(&rx, reject(), Duration::ZERO);
    assert_eq!(batch.len(), MAX_BATCH);
    assert_eq!(rx.try_iter().count(), 11);
}

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
fn records_already_there_join_and_a_closed_channel_ends_the_wait() {
    let (tx, rx) = mpsc::channel();
    for n in 2..5 {
        tx.send(record(n)).unwrap();
    }
    drop(tx);
    // An hour of linger, ended by the channel closing (the engine
    // stopping) once the three records are taken.
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_secs(60 * 60));
    assert_eq!(kinds(&batch), ["record"; 4]);
    assert!(began.elapsed() < Duration::from_secs(60));
}

#[test]
fn anything_but_a_record_ends_the_wait_at_once() {
    let (tx, rx) = mpsc::channel();
    // An hour of linger: only the claim-like job can end this wait.
    tx.send(record(2)).unwrap();
    tx.send(reject()).unwrap();
    tx.send(record(3)).unwrap();
    let began = Instant::now();
    let batch = gather(&rx, record(1), Duration::from_secs(60 * 60));
    assert_eq!(kinds(&batch), ["record", "record", "other", "record"]);
    assert!(began.elapsed() < Duration::from_secs(60));
    // A batch that starts with such a job does not wait either.
    let began = Instant::now();
    let batch = gather(&rx, reject(), Duration::from_secs(60 * 60));
    assert_eq!(kinds(&batch), ["other"]);
    assert!(began.elapsed() < Duration::from_secs(60));
    drop(tx);
}

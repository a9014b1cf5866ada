//! Tests of the progress journal: deltas hold what changed and only that,
//! replay skips what the snapshot holds, ignores a torn last line and stops
//! at a gap, and snapshots come as the journal grows.

use serde_json::json;

use super::*;
use crate::model::task::{ErrorKind, Object};

fn running(n: i64) -> NodeProgress {
    let mut input = Object::new();
    input.insert("n".into(), json!(n));
    NodeProgress::Running { input, again: None }
}

fn line(d: &Delta) -> Vec<u8> {
    let mut b = serde_json::to_vec(d).unwrap();
    b.push(b'\n');
    b
}

fn error(nid: &str) -> NodeError {
    NodeError {
        nid: nid.into(),
        kind: ErrorKind::User,
        message: "no".into(),
    }
}

#[test]
fn a_delta_holds_what_changed_since_the_last_one() {
    let mut p = Progress::default();
    p.nodes.insert("0".into(), running(0));
    p.nodes.insert("0_0".into(), running(1));
    p.cursors.insert("0".into(), Cursor::default());
    let d1 = p.take_delta();
    assert_eq!(d1.seq, 1);
    assert_eq!(d1.nodes.len(), 2);
    assert_eq!(d1.cursors.len(), 1);

    // Nothing changed: an empty delta (it still moves the sequence on).
    let d2 = p.take_delta();
    assert_eq!((d2.seq, d2.nodes.len(), d2.cursors.len()), (2, 0, 0));

    // A change through get_mut, a removal, an error.
    if let Some(NodeProgress::Running { input, .. }) = p.nodes.get_mut("0_0") {
        input.insert("m".into(), json!(2));
    }
    p.cursors.remove("0");
    p.errors.push(error("0_1"));
    let d3 = p.take_delta();
    assert_eq!(d3.nodes.keys().collect::<Vec<_>>(), ["0_0"]);
    assert_eq!(d3.cursors.get("0"), Some(&None));
    assert_eq!((d3.errors_from, d3.errors.len()), (0, 1));
    p.errors.push(error("0_2"));
    assert_eq!(p.take_delta().errors_from, 1);
}

#[test]
fn prefix_updates_journal_only_what_they_change() {
    let mut p = Progress::default();
    for k in ["0", "0_0", "0_0_0", "0_1", "0_10"] {
        p.nodes.insert(k.into(), running(0));
    }
    p.mark_written();
    p.nodes.update_prefix("0_1", |k, v| {
        *v = running(9);
        k == "0_10"
    });
    assert_eq!(p.take_delta().nodes.keys().collect::<Vec<_>>(), ["0_10"]);
    p.nodes.remove_prefix("0_0");
    assert_eq!(
        p.take_delta().nodes.keys().collect::<Vec<_>>(),
        ["0_0", "0_0_0"]
    );
    p.nodes.clear();
    assert_eq!(p.take_delta().nodes.len(), 3);
}

#[test]
fn replay_rebuilds_the_progress_from_any_snapshot() {
    let mut live = Progress::default();
    let mut snapshots = vec![serde_json::to_string(&live).unwrap()];
    let mut journal = Vec::new();
    for i in 0..20 {
        live.nodes.insert(format!("0_{i}"), running(i));
        if i % 3 == 0 {
            live.nodes.remove(&format!("0_{}", i / 2));
        }
        if i % 7 == 0 {
            live.errors.push(error(&format!("0_{i}")));
        }
        live.spawned = i as usize;
        journal.extend(line(&live.take_delta()));
        snapshots.push(serde_json::to_string(&live).unwrap());
    }
    // Every snapshot (each holds the deltas before it), with the whole
    // journal after it, gives the live progress.
    for snap in &snapshots {
        let mut p: Progress = serde_json::from_str(snap).unwrap();
        let r = p.replay(&journal);
        assert_eq!(r.problem, None);
        assert_eq!(p, live);
        assert_eq!(p.seq, 20);
    }
}

#[test]
fn a_torn_last_line_is_ignored_and_a_gap_stops_the_replay() {
    let mut live = Progress::default();
    live.nodes.insert("0".into(), running(0));
    let d1 = line(&live.take_delta());
    live.nodes.insert("0_0".into(), running(1));
    let d2 = line(&live.take_delta());
    live.nodes.insert("0_1".into(), running(2));
    let d3 = line(&live.take_delta());

    let mut torn = [d1.clone(), d2.clone()].concat();
    torn.extend_from_slice(&d3[..d3.len() / 2]);
    let mut p = Progress::default();
    assert_eq!(
        p.replay(&torn),
        Replayed {
            applied: 2,
            problem: None
        }
    );
    assert!(p.nodes.contains_key("0_0") && !p.nodes.contains_key("0_1"));

    let gap = [d1, d3].concat();
    let mut p = Progress::default();
    let r = p.replay(&gap);
    assert_eq!(r.applied, 1);
    assert!(r.problem.unwrap().contains("from 1 to 3"));
    assert!(!p.nodes.contains_key("0_1"));
    // Past every line read: the next snapshot is newer than all of them.
    assert_eq!(p.seq, 3);

    let mut p = Progress::default();
    let r = p.replay(b"{not json}\n");
    assert!(r.problem.unwrap().contains("line 1 does not read"));
}

#[test]
fn a_snapshot_comes_once_the_journal_outgrows_the_last_one() {
    assert!(!should_snapshot(0, 0));
    assert!(!should_snapshot(JOURNAL_MIN_BYTES - 1, 10));
    assert!(should_snapshot(JOURNAL_MIN_BYTES, 10));
    assert!(!should_snapshot(JOURNAL_MIN_BYTES, 4 * JOURNAL_MIN_BYTES));
    assert!(should_snapshot(
        4 * JOURNAL_MIN_BYTES,
        4 * JOURNAL_MIN_BYTES
    ));
}

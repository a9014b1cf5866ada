//! SPEC 12 durability of a large flow through the built binary: an `each`
//! of 3 000 runs writes its progress as a journal of deltas
//! (`run/<id>.journal`) folded now and then into a snapshot (the
//! `progress` of its `run/` file). Killed with `kill -9` once both exist,
//! it goes on from snapshot + journal: no run durably finished runs again,
//! the outputs keep element order, and nothing is left in `run/`.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

const ELEMENTS: usize = 3000;
/// The run held by a gate, so that the flow cannot end before the kill.
const GATED: usize = 2500;

/// `double`: `{"item": I, ...}` -> `{"item": 2*I}`; the run of element
/// `GATED` waits for the file `open`. Appends `<nid> <attempt>` to the
/// ledger before its reply.
fn double() -> String {
    format!(
        r#"#!/bin/sh
item=$(sed -n 's/.*"item":\([0-9][0-9]*\).*/\1/p')
if [ "$item" = {GATED} ]; then
{}
fi
echo "$SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/ledger"
echo "{{\"item\":$((item * 2))}}"
"#,
        wait_file("open")
    )
}

/// How many times each nid ran to its end, from the ledger.
fn runs(t: &TestRoot) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    let text = fs::read_to_string(t.join("ledger")).unwrap_or_default();
    for line in text.lines() {
        if let Some((nid, _)) = line.split_once(' ') {
            *n.entry(nid.to_string()).or_insert(0) += 1;
        }
    }
    n
}

#[test]
fn a_large_each_killed_mid_way_goes_on_from_its_snapshot_and_journal() {
    let t = TestRoot::new();
    t.tasker("org", "double", &double());
    let xs: Vec<usize> = (0..ELEMENTS).collect();
    t.drop_task(
        "j1.json",
        &json!({"domain": "org", "id": "j1",
            "flow": {"each": "xs", "do": {"task": "double"}, "concurrency": 8},
            "payload": {"xs": xs}})
        .to_string(),
    );
    let run_file = t.join("var/spool/run/j1.json");
    let journal = t.join("var/spool/run/j1.journal");
    let snapshot_and_journal = || {
        let file: Option<Value> = fs::read(&run_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        file.is_some_and(|f| f.get("progress").is_some())
            && fs::metadata(&journal).is_ok_and(|m| m.len() > 0)
    };

    let engine = t.spawn_engine(&["--workers", "8"]);
    wait_for(
        "a snapshot, then a journal over it, after 2 000 runs",
        Duration::from_secs(120),
        || runs(&t).len() >= 2000 && snapshot_and_journal(),
    );
    engine.signal(Signal::SIGKILL);
    let (code, _) = engine.wait(DEADLINE);
    assert_eq!(code, None, "the engine was killed by a signal");
    assert!(t.record("j1").is_none(), "the gated run holds the flow");

    // What the disk says was durably finished.
    let progress = t.flow_progress("j1").expect("j1's progress");
    let nodes = progress["nodes"].as_object().expect("nodes");
    let done: Vec<String> = nodes
        .iter()
        .filter(|(nid, n)| nid.starts_with("0_") && n["state"] == "done")
        .map(|(nid, _)| nid.clone())
        .collect();
    assert!(done.len() >= 1000, "{} runs durably done", done.len());
    let ran_before = runs(&t);

    fs::write(t.join("open"), "").unwrap();
    let (code, err) = t
        .spawn_engine(&["--drain", "--workers", "8"])
        .wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "stderr: {err}");

    let rec = t.must_record("j1");
    assert_eq!(rec["state"], "completed", "{}", rec["error"]);
    // The runs' `item`s, in element order.
    let got = rec["payload"]["xs"].as_array().expect("xs");
    assert_eq!(got.len(), ELEMENTS);
    if let Some(i) = (0..ELEMENTS).find(|i| got[*i] != json!(2 * i)) {
        panic!("xs[{i}] is {}, not {}", got[i], 2 * i);
    }

    let after = runs(&t);
    assert_eq!(after.len(), ELEMENTS, "every run ran");
    for nid in &done {
        assert_eq!(
            after.get(nid),
            ran_before.get(nid),
            "{nid} was durably done at the kill: it never runs again"
        );
        assert_eq!(after[nid], 1, "{nid} ran once");
    }
    let rerun = after.values().filter(|n| **n > 1).count();
    assert!(
        rerun <= ELEMENTS - done.len(),
        "only runs not durably done at the kill ran again ({rerun})"
    );
    assert!(
        t.list("var/spool/run").is_empty(),
        "{:?}",
        t.list("var/spool/run")
    );
}

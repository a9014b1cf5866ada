//! SPEC 12 durability through the built binary, with real `kill -9`: 50
//! flows of three shapes (sequences of 5 task nodes, concurrences of 3,
//! `each` over 20 elements with concurrency 4) survive repeated engine
//! crashes. Each flow leaves exactly one record, completed, with the right
//! payload; a task node whose end was durable at a kill never runs again,
//! and only nodes running at a kill run again.
//!
//! The taskers append `<exid> <nid> <attempt>` to a ledger at their very
//! end (after their work, before their reply), so a ledger line means a
//! run finished; a run killed mid-way may or may not have written it.
//! After every kill (the engine dead, its `run/` files still) the test
//! reads each flow's progress: the task nodes `done` there (or in a flow
//! with a record) are durably finished, those `running` there (or the
//! first nodes of a flow claimed before any progress was written) may run
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::common::*;

mod edges;
mod repeated;

// ------------------------------------------------------------------ taskers

/// Every tasker: reads its payload (whitespace removed), computes its
/// reply, sleeps 0–20 ms (by pid), appends its ledger line in one
/// `O_APPEND` write, then replies.
fn tasker(body: &str) -> String {
    format!(
        r#"#!/bin/sh
in=$(tr -d ' \n')
{body}
sleep 0.0$(( $$ % 3 ))
echo "$SPOOLFLOW_EXID $SPOOLFLOW_NID $SPOOLFLOW_ATTEMPT" >> "$SPOOLFLOW_ROOT/ledger"
echo "$out"
"#
    )
}

/// `step` (sequences): `{"trail":"T"}` -> `{"trail":"T/<nid>"}`.
const STEP: &str = r#"t=$(printf '%s' "$in" | sed -n 's/.*"trail":"\([^"]*\)".*/\1/p')
out="{\"trail\":\"$t/$SPOOLFLOW_NID\"}""#;

/// `branch` (concurrences): `{"b":{"<nid>":"<exid>"}}`, deep-merged.
const BRANCH: &str = r#"out="{\"b\":{\"$SPOOLFLOW_NID\":\"$SPOOLFLOW_EXID\"}}""#;

/// `item` (each runs): `{"item":"<exid>:<item>"}` for the integer `item`.
const ITEM: &str = r#"i=$(printf '%s' "$in" | sed -n 's/.*"item":\([0-9][0-9]*\).*/\1/p')
out="{\"item\":\"$SPOOLFLOW_EXID:$i\"}""#;

/// How many `recovered` points node `nid` has.
fn recovered_of(points: &[Value], nid: &str) -> usize {
    points
        .iter()
        .filter(|p| p["point"] == "recovered" && p["nid"] == nid)
        .count()
}

/// The points of node `nid` as `point(attempt)`, for messages.
fn node_points(points: &[Value], nid: &str) -> String {
    points
        .iter()
        .filter(|p| p["nid"] == nid)
        .map(|p| {
            let name = p["point"].as_str().unwrap_or("?");
            match p["attempt"].as_u64() {
                Some(a) => format!("{name}({a})"),
                None => name.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

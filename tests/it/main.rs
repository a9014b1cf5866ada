//! Integration tests: one binary, a module per SPEC section, each on real
//! temporary roots with real tasker processes.

#[path = "../common/mod.rs"]
mod common;

// wt-mem: payloads stay in run/ until offered
mod bodies;
mod cli;
mod core;
mod crash;
mod crash_cancel;
// wt-disk (issue 10, item 2)
mod disk_faults;
mod docs;
mod engine_shape;
// wt-procs (issue 10, item 5)
mod escapes;
mod flows;
mod flows_crash;
mod flows_journal;
mod flows_lives;
mod friction;
mod harden_mix;
mod harden_taskmaster;
// a tasker against the engine's hold on it (group, stop, spawn, zombies)
mod harden_tasker;
// issue 15: A2, A3, A4 (stderr)
mod harden_reply;
// wt-points (issue 15: A1, A4 points, E dropped lines)
mod harden_points;
// issue 15, C and E (intake)
mod harden_intake;
mod hostile;
mod intake;
mod intake_burst;
// wt-engine
mod ops_edges;
mod ops_engine;
mod path_safety;
mod points_records;
mod reliability;
mod resources;
mod rewrites;
mod scheduling;
mod schema;
// wt-batch
mod submit_batch;
mod taskers;
mod taskmasters;
// lead (issue 9)
mod ops_read;
// lock (issue 15: B, D)
mod harden_lock;
// issue 12: the dashboard
mod serve;
mod serve_browser;
// Chromium over the DevTools protocol, for the dashboard's typing test
mod cdp;
// the dashboard and reading commands against FIFOs and links in var/
mod serve_hostile;
mod serve_live;
mod serve_support;
// issue 14: the Slurm development cluster (scripts/slurm-dev), and taskers on it
mod slurm_cluster;
mod slurm_exec;
mod slurm_recovery;

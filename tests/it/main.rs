//! Integration tests: one binary, a module per SPEC section, each on real
//! temporary roots with real tasker processes.

#[path = "../common/mod.rs"]
mod common;

mod core;
mod cli;

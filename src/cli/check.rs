//! `spoolflow check`: one line per problem (`path: line N: what; fix: how`),
//! exit 2 if any.

use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::text::count;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(root: Option<PathBuf>, _args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    let checked = spoolflow::check::check(&root);
    for p in &checked.problems {
        println!("{p}");
    }
    for n in &checked.notes {
        println!("{n}");
    }
    if checked.problems.is_empty() {
        println!(
            "ok: {}, {}, {}",
            count(checked.taskmasters, "taskmaster"),
            count(checked.taskers, "tasker"),
            count(checked.flows, "stored flow")
        );
        Ok(())
    } else {
        Err(Failure::new(
            exit::USAGE,
            format!("{} in tsk/", count(checked.problems.len(), "problem")),
        ))
    }
}

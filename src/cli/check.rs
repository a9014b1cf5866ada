//! `spoolflow check`: one line per problem (path: what, where), exit 2 if any.

use std::path::PathBuf;

use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(root: Option<PathBuf>, _args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    let checked = spoolflow::check::check(&root);
    for p in &checked.problems {
        println!("{p}");
    }
    if checked.problems.is_empty() {
        println!(
            "ok: {} taskmasters, {} taskers, {} stored flows",
            checked.taskmasters, checked.taskers, checked.flows
        );
        Ok(())
    } else {
        Err(Failure::new(
            exit::USAGE,
            format!("{} problems in tsk/", checked.problems.len()),
        ))
    }
}

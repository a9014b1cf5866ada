//! `spoolflow check`: one line per problem (path: what, where), exit 2 if any.

use std::path::PathBuf;

use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(root: Option<PathBuf>, _args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    let (problems, scripts, taskers) = spoolflow::check::check(&root);
    for p in &problems {
        println!("{p}");
    }
    if problems.is_empty() {
        println!("ok: {scripts} taskmasters, {taskers} taskers");
        Ok(())
    } else {
        Err(Failure::new(
            exit::USAGE,
            format!("{} problems in tsk/", problems.len()),
        ))
    }
}

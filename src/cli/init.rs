//! `spoolflow init [DIR]`.

use std::path::PathBuf;

use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the root (default: the root found from --root, $SPOOLFLOW_ROOT or the current directory).
    pub dir: Option<PathBuf>,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(args.dir.or(root))?;
    root.init().map_err(|e| Failure::new(exit::FAILURE, e))?;
    println!("initialized spoolflow root {}", root.dir().display());
    Ok(())
}

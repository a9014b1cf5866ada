//! `spoolflow init [DIR] [--here]`: creates a root's layout in DIR; without
//! DIR, in the root named by `--root`/`$SPOOLFLOW_ROOT`, else in the root
//! found at or above the current directory, else in the current directory
//! if it is empty. A non-empty directory that is no root is only made one
//! with `--here` (or by naming it), so that a mistyped `cd` does not
//! scatter `tsk/` and `var/` into a project.

use std::path::{Path, PathBuf};

use super::{exit, Failure};
use spoolflow::layout::{search_up, Root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the root (default: the root from --root or $SPOOLFLOW_ROOT, else the one
    /// found at or above the current directory, else the current directory if it is empty).
    pub dir: Option<PathBuf>,
    /// Create the root in the current directory even if it is not empty.
    #[arg(long, conflicts_with = "dir")]
    pub here: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = target(root, args)?;
    root.init().map_err(|e| Failure::new(exit::FAILURE, e))?;
    println!("initialized spoolflow root {}", root.dir().display());
    Ok(())
}

/// The directory to initialize.
fn target(flag: Option<PathBuf>, args: Args) -> Result<Root, Failure> {
    let new = |p: &Path| Root::new(p).map_err(|e| Failure::new(exit::USAGE, e));
    if let Some(dir) = args.dir {
        return new(&dir);
    }
    let cwd = std::env::current_dir().map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    if args.here {
        return new(&cwd);
    }
    if let Some(dir) = flag {
        return new(&dir);
    }
    if let Some(found) = search_up(&cwd) {
        return new(&found);
    }
    let empty = std::fs::read_dir(&cwd).is_ok_and(|mut d| d.next().is_none());
    if !empty {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "{} is not empty and not a spoolflow root: name the directory to create \
                 (`spoolflow init DIR`) or create the root here with `spoolflow init --here`",
                cwd.display()
            ),
        ));
    }
    new(&cwd)
}

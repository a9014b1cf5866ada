//! `spoolflow completions bash|zsh|fish`: prints a completion script for
//! the shell, generated from the clap definitions by `clap_complete`.

use std::path::PathBuf;

use clap::CommandFactory;

use super::{Cli, Failure};

/// The shells a script can be generated for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the script on stdout; needs no root.
pub fn run(_root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "spoolflow", &mut std::io::stdout());
    Ok(())
}

//! `spoolflow schema task|tasker|record|point`: prints the JSON Schema of a
//! format, generated from the Rust types (`spoolflow::model::schema`); the
//! same text is committed under `docs/schemas/`.

use std::path::PathBuf;

use spoolflow::model::schema::Format;

use super::Failure;

/// The formats, as the command line names them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// A task file dropped into var/spool/in/.
    Task,
    /// A tasker directory's tasker.json.
    Tasker,
    /// A final record in var/spool/done/ or var/spool/failed/.
    Record,
    /// One line of a points log, var/log/tsk/<exid>.log.
    Point,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which format.
    #[arg(value_enum)]
    pub format: Which,
}

/// Prints the schema; needs no root.
pub fn run(_root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let format = match args.format {
        Which::Task => Format::Task,
        Which::Tasker => Format::Tasker,
        Which::Record => Format::Record,
        Which::Point => Format::Point,
    };
    print!("{}", format.pretty());
    Ok(())
}

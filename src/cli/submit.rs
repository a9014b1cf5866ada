//! `spoolflow submit --domain D [--tasker T] [--id ID] [--priority P] [--force] [PAYLOAD|-]`:
//! refuses a domain that nothing serves (a typo, most often) unless `--force`.

use std::io::Read;
use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::model::names::{Domain, TaskId, Taskee};
use spoolflow::submit::{self, Submission};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task's domain, e.g. org.example.sales.
    #[arg(long)]
    pub domain: Domain,
    /// The requested taskee (the taskmaster may choose another).
    #[arg(long)]
    pub tasker: Option<Taskee>,
    /// The task id (default: a generated, time-ordered id).
    #[arg(long)]
    pub id: Option<TaskId>,
    /// Higher starts first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// The payload as a JSON object, or `-` to read it from stdin (default: {}).
    pub payload: Option<String>,
    /// Submit even if no taskmaster and no tasker serves the domain.
    #[arg(long)]
    pub force: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let text = match args.payload.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::new(exit::USAGE, format!("cannot read stdin: {e}")))?;
            s
        }
        Some(s) => s.to_string(),
        None => String::new(),
    };
    let payload = submit::parse_payload(&text).map_err(|e| Failure::new(exit::USAGE, e))?;
    if !args.force {
        submit::check_served(&root, &args.domain).map_err(|e| Failure::new(exit::USAGE, e))?;
    }
    let id = submit::submit(
        &root,
        Submission {
            domain: args.domain,
            tasker: args.tasker,
            id: args.id,
            priority: args.priority,
            payload,
        },
    )
    .map_err(|e| Failure::new(exit::USAGE, e))?;
    println!("{id}");
    Ok(())
}

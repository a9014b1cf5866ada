//! `spoolflow submit --domain D [--tasker T] [--id ID] [--priority P] [--force] [PAYLOAD|-]`:
//! refuses a domain that nothing serves (a typo, most often) unless `--force`.
//! `submit --batch FILE|-` submits JSON lines, one task file each, all or
//! nothing (see `spoolflow::submit::batch`).

use std::io::{Read, Write};
use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::model::names::{Domain, TaskId, Taskee};
use spoolflow::submit::{self, BatchOptions, Defaults, Submission, SubmitError};

/// How many bad lines of a batch are printed; the rest are counted.
const SHOWN_FAULTS: usize = 100;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
With --batch, each non-empty line of FILE (or stdin, for -) is one task file as a JSON \
object, e.g. {\"domain\":\"org.example\",\"tasker\":\"stamp\",\"payload\":{\"n\":1}}; \
--domain, --tasker and --priority fill in what a line leaves out. Every line is checked \
first: if any is bad, nothing is submitted, each bad line is reported with its number, \
and the exit status is 2. Otherwise the ids are printed one per line, in input order. \
The whole batch is made durable with one sync before any of it appears in var/spool/in/.")]
pub struct Args {
    /// The task's domain, e.g. org.example.sales (with --batch: for lines without one).
    #[arg(long, required_unless_present = "batch")]
    pub domain: Option<Domain>,
    /// The requested taskee (the taskmaster may choose another).
    #[arg(long)]
    pub tasker: Option<Taskee>,
    /// The task id (default: a generated, time-ordered id).
    #[arg(long, conflicts_with = "batch")]
    pub id: Option<TaskId>,
    /// Higher starts first (default: 0).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// The payload as a JSON object, or `-` to read it from stdin (default: {}).
    #[arg(conflicts_with = "batch")]
    pub payload: Option<String>,
    /// Submit even if no taskmaster and no tasker serves the domain.
    #[arg(long)]
    pub force: bool,
    /// Submit many tasks: JSON lines from FILE, or `-` for stdin, one task file per line; all or nothing.
    #[arg(long, value_name = "FILE|-")]
    pub batch: Option<PathBuf>,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    if let Some(source) = &args.batch {
        return run_batch(&root, source, &args);
    }
    let text = match args.payload.as_deref() {
        Some("-") => read_stdin()?,
        Some(s) => s.to_string(),
        None => String::new(),
    };
    let payload = submit::parse_payload(&text).map_err(|e| Failure::new(exit::USAGE, e))?;
    let domain = args
        .domain
        .ok_or_else(|| Failure::new(exit::USAGE, "--domain is required"))?;
    if !args.force {
        submit::check_served(&root, &domain).map_err(|e| Failure::new(exit::USAGE, e))?;
    }
    let id = submit::submit(
        &root,
        Submission {
            domain,
            tasker: args.tasker,
            id: args.id,
            priority: args.priority.unwrap_or(0),
            payload,
        },
    )
    .map_err(|e| Failure::new(exit::USAGE, e))?;
    println!("{id}");
    Ok(())
}

fn read_stdin() -> Result<String, Failure> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Failure::new(exit::USAGE, format!("cannot read stdin: {e}")))?;
    Ok(s)
}

/// `--batch FILE|-`: prints the ids, or every bad line (up to
/// [`SHOWN_FAULTS`]) and exits 2 having written nothing.
fn run_batch(root: &spoolflow::Root, source: &PathBuf, args: &Args) -> Result<(), Failure> {
    let text = if source.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::new(exit::USAGE, format!("cannot read stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(source).map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("cannot read {}: {e}", source.display()),
            )
        })?
    };
    let defaults = Defaults {
        domain: args.domain.clone(),
        tasker: args.tasker.clone(),
        priority: args.priority,
    };
    let options = BatchOptions {
        force: args.force,
        ..BatchOptions::default()
    };
    match submit::submit_lines(root, &text, &defaults, &options) {
        Ok(ids) => print_ids(&ids),
        Err(SubmitError::Refused { faults, total }) => {
            for fault in faults.iter().take(SHOWN_FAULTS) {
                eprintln!("spoolflow: {fault}");
            }
            if faults.len() > SHOWN_FAULTS {
                eprintln!(
                    "spoolflow: … and {} more bad lines",
                    faults.len() - SHOWN_FAULTS
                );
            }
            let e = SubmitError::Refused { faults, total };
            Err(Failure::new(exit::USAGE, e))
        }
        Err(SubmitError::Partial {
            submitted,
            total,
            error,
        }) => {
            print_ids(&submitted)?;
            let e = SubmitError::Partial {
                submitted,
                total,
                error,
            };
            Err(Failure::new(exit::USAGE, e))
        }
        Err(e) => Err(Failure::new(exit::USAGE, e)),
    }
}

/// The ids, one per line, in one buffered write.
fn print_ids(ids: &[TaskId]) -> Result<(), Failure> {
    let mut out = String::with_capacity(ids.len() * 26);
    for id in ids {
        out.push_str(id.as_str());
        out.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot write the ids: {e}")))
}

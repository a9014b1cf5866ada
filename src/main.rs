//! The `spoolflow` binary: parses the command line and hands over to the
//! library; errors become a message on stderr and an exit code (SPEC 11).
//! Everything about the command line (clap, output, logging set-up, exit
//! codes) lives here and in `cli/`, never in the library.

mod cli;
mod serve;

fn main() -> std::process::ExitCode {
    cli::main()
}

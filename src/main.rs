//! The `spoolflow` binary: parses the command line and hands over to the
//! library; errors become a message on stderr and an exit code (SPEC 11).

fn main() -> std::process::ExitCode {
    spoolflow::cli::main()
}

//! The user documentation against the repository and the binary: every
//! relative link of README.md and docs/ resolves to a file inside the
//! repository, and every command and flag docs/commands.md names exists in
//! the built binary's `--help`.

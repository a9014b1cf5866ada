//! `spoolflow serve [--listen ADDR] [--allow-actions] [--token T]`: the
//! web dashboard (the server itself is `crate::serve`). It prints the
//! address it listens on (`--listen 127.0.0.1:0` picks a free port) and,
//! with `--allow-actions`, the per-start action token.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on; anything but loopback requires --token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub listen: SocketAddr,
    /// Allow cancel, retry and priority changes from the dashboard.
    #[arg(long)]
    pub allow_actions: bool,
    /// A token every request must carry (at least 16 characters);
    /// required on a non-loopback address.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SPOOLFLOW_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    // An empty SPOOLFLOW_TOKEN is no token.
    let token = args.token.filter(|t| !t.is_empty());
    crate::serve::safety_check(&args.listen, token.as_deref())
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let config = crate::serve::Config {
        listen: args.listen,
        allow_actions: args.allow_actions,
        token,
    };
    crate::serve::run(root, config).map_err(|e| Failure::new(exit::FAILURE, e))
}

//! `pbchatd`: parse arguments, load the config, run the node, map the result to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// pbchat daemon: a highly available primary-backup chat server.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration and exit (0 when valid, 2 when not).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match pbchat::config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pbchatd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("pbchatd: {}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    pbchat::daemon::logging::init(&config.node_id, config.log_level.to_filter());
    match pbchat::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("pbchatd: {e}");
            ExitCode::from(1)
        }
    }
}

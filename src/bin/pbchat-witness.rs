//! `pbchat-witness`: the third party of a strict-mode pair. Parse arguments, load the
//! config, run until SIGTERM/SIGINT, map the result to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

/// pbchat witness: grants one pbchat primary at a time a lease (strict fail-over mode).
#[derive(Parser)]
// No bare `about`: it would replace the line above with Cargo.toml's description.
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration (and the secret file) and exit (0 when valid, 2 when not).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    if let Some(code) = pbchat::completions::requested::<Args>("pbchat-witness") {
        return code;
    }
    let args = Args::parse();
    let config = match pbchat::witness_config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            pbchat::daemon::logging::print_error("pbchat-witness", &e.to_string());
            return ExitCode::from(2);
        }
    };
    if args.check {
        if let Err(e) = pbchat::secret_file::load_keyring(&config.secret_file) {
            eprintln!(
                "pbchat-witness: {}: secret_file: {e}",
                args.config.display()
            );
            return ExitCode::from(2);
        }
        println!("pbchat-witness: {}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    pbchat::daemon::logging::init_as("pbchat-witness", "witness", config.log_level.to_filter());
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("pbchat-witness: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    match pbchat::daemon::witness::run(config, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            pbchat::daemon::logging::print_error("pbchat-witness", &e.to_string());
            ExitCode::from(1)
        }
    }
}

//! Shell completions for the binaries, made by clap_complete from each binary's own clap
//! definition, so that they cannot drift from its flags. `BIN --completions SHELL` prints
//! them (bash, zsh, fish, elvish, powershell); packaging/build-deb.sh runs it for the
//! package, which installs the bash, zsh and fish files. The flag is for packagers: hidden
//! from `--help` and the man pages, and read before the binary's own parser runs, because
//! each parser requires arguments (a config, a node) that a completions request lacks.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

/// The first argument that asks for completions.
pub const FLAG: &str = "--completions";

/// When the command line is `BIN --completions SHELL`, prints SHELL's completion script for
/// the command `P` run as `bin` and returns the exit code; otherwise `None`: the binary
/// goes on with its own parser.
pub fn requested<P: CommandFactory>(bin: &str) -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != FLAG {
        return None;
    }
    let shell = match (args.next(), args.next()) {
        (Some(shell), None) => shell.to_str().and_then(|s| s.parse::<Shell>().ok()),
        _ => None,
    };
    let Some(shell) = shell else {
        eprintln!("{bin}: usage: {bin} {FLAG} bash|zsh|fish|elvish|powershell");
        // As clap exits on a command line that makes no sense.
        return Some(ExitCode::from(2));
    };
    Some(print(shell, &mut P::command(), bin))
}

fn print(shell: Shell, command: &mut clap::Command, bin: &str) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, command, bin, &mut script);
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin}: writing the {shell} completions: {e}");
            ExitCode::FAILURE
        }
    }
}

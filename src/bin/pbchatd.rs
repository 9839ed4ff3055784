//! `pbchatd`: parse arguments, load the config, run the node, map the result to an exit code.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// pbchat daemon: a highly available primary-backup chat server.
#[derive(Parser)]
// No bare `about`: it would replace the line above with Cargo.toml's description.
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        required_unless_present_any = ["gen_secret", "hash_token", "gen_cert"]
    )]
    config: Option<PathBuf>,
    /// Write a new shared secret for a pair to FILE (mode 0600; an existing file is kept) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "check"])]
    gen_secret: Option<PathBuf>,
    /// Read a client token from stdin (one line) and print the `NICK:HASH` line for the users
    /// file (argon2id, a fresh salt), then exit.
    #[arg(long, value_name = "NICK", conflicts_with_all = ["config", "check", "gen_secret"])]
    hash_token: Option<String>,
    /// Make a private CA in DIR (ca.pem, ca.key; reused once there) and a certificate
    /// signed by it for one node (DIR/NAME.pem, DIR/NAME.key), then exit. Keys are mode 0600;
    /// nothing is overwritten. Give the node's names with --ip and --dns.
    #[arg(
        long,
        value_name = "DIR",
        requires = "name",
        conflicts_with_all = ["config", "check", "gen_secret", "hash_token"]
    )]
    gen_cert: Option<PathBuf>,
    /// With --gen-cert: the node certificate's file name and common name (e.g. node-a).
    #[arg(long, value_name = "NAME", requires = "gen_cert")]
    name: Option<String>,
    /// With --gen-cert: an IP address clients or the peer reach the node by (repeat it).
    #[arg(long = "ip", value_name = "IP", requires = "gen_cert")]
    ips: Vec<IpAddr>,
    /// With --gen-cert: a DNS name clients or the peer reach the node by (repeat it).
    #[arg(long = "dns", value_name = "DNSNAME", requires = "gen_cert")]
    dns: Vec<String>,
    /// Validate the configuration and exit (0 when valid, 2 when not).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    if let Some(code) = pbchat::completions::requested::<Args>("pbchatd") {
        return code;
    }
    let args = Args::parse();
    if let Some(path) = &args.gen_secret {
        return gen_secret(path);
    }
    if let Some(nick) = &args.hash_token {
        return hash_token(nick);
    }
    if let Some(dir) = &args.gen_cert {
        return gen_cert(pbchat::certs::Request {
            dir: dir.clone(),
            name: args.name.clone().expect("clap requires --name"),
            ips: args.ips.clone(),
            dns: args.dns.clone(),
        });
    }
    let config_path = args.config.expect("clap requires --config");
    let config = match pbchat::config::load(&config_path) {
        Ok(config) => config,
        Err(e) => {
            // Under systemd, at priority "err" in the journal.
            pbchat::daemon::logging::print_error("pbchatd", &e.to_string());
            return ExitCode::from(2);
        }
    };
    if args.check {
        if let Some(peer) = &config.peer {
            if let Err(e) = pbchat::secret_file::load_keyring(&peer.secret_file) {
                eprintln!(
                    "pbchatd: {}: heartbeat.secret_file: {e}",
                    config_path.display()
                );
                return ExitCode::from(2);
            }
        }
        if let Some(path) = &config.auth.users_file {
            if let Err(e) = pbchat::auth::Users::load(path) {
                eprintln!("pbchatd: {}: auth.users_file: {e}", config_path.display());
                return ExitCode::from(2);
            }
        }
        if let Err(e) = pbchat::node_tls::check_files(&config) {
            eprintln!("pbchatd: {e}");
            return ExitCode::from(2);
        }
        println!("pbchatd: {}: ok", config_path.display());
        return ExitCode::SUCCESS;
    }
    pbchat::daemon::logging::init_with(
        &config.node_id,
        config.log_level.to_filter(),
        pbchat::daemon::logging::Target {
            target: config.log_target,
            facility: config.log_facility,
            syslog_socket: &config.syslog_socket,
        },
    );
    match pbchat::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            pbchat::daemon::logging::print_error("pbchatd", &e.to_string());
            ExitCode::from(1)
        }
    }
}

/// Creates a secret file only the owner can read; never overwrites one.
fn gen_secret(path: &std::path::Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("pbchatd: {}: cannot create: {e}", dir.display());
            return ExitCode::from(1);
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("pbchatd: {}: exists; keeping it", path.display());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pbchatd: {}: cannot create: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    let line = pbchat::secret_file::generate_secret_line(1);
    let text = format!("# pbchat pair secret: copy to both nodes, mode 0600. KEY_ID HEX\n{line}\n");
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
    {
        eprintln!("pbchatd: {}: cannot write: {e}", path.display());
        return ExitCode::from(1);
    }
    println!("pbchatd: wrote a new secret to {}", path.display());
    ExitCode::SUCCESS
}

/// Makes the CA (once) and a node certificate, and says where each file goes.
fn gen_cert(request: pbchat::certs::Request) -> ExitCode {
    let made = match pbchat::certs::generate(&request) {
        Ok(made) => made,
        Err(e) => {
            eprintln!("pbchatd: --gen-cert: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let (ca, ca_key) = (made.ca_cert.display(), made.ca_key.display());
    if made.ca_created {
        println!(
            "pbchatd: made a private CA: {ca} (give it to clients: pbchat-client --tls --ca {ca}; \
             and to both nodes as replication.tls_ca) and {ca_key} (mode 0600: keep it private, \
             it signs more node certificates)"
        );
    } else {
        println!("pbchatd: signed with the CA already in {ca} and {ca_key}");
    }
    println!(
        "pbchatd: wrote {} and {} (mode 0600) for {}, valid until {}: set them as \
         client.tls_cert and client.tls_key (and replication.tls_cert and tls_key)",
        made.cert.display(),
        made.key.display(),
        made.names.join(", "),
        made.valid_until
    );
    ExitCode::SUCCESS
}

/// Prints the users-file line for NICK with the token read from stdin.
fn hash_token(nick: &str) -> ExitCode {
    if let Err(e) = pbchat::wire::client::check_nick(nick) {
        eprintln!("pbchatd: --hash-token: {}", e.message);
        return ExitCode::from(2);
    }
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut token) {
        eprintln!("pbchatd: --hash-token: cannot read the token from stdin: {e}");
        return ExitCode::from(1);
    }
    let token = token.trim_end_matches(['\n', '\r']);
    if token.is_empty() || token.len() > pbchat::auth::TOKEN_MAX_BYTES {
        eprintln!(
            "pbchatd: --hash-token: the token must be 1-{} bytes (one line on stdin)",
            pbchat::auth::TOKEN_MAX_BYTES
        );
        return ExitCode::from(2);
    }
    println!("{nick}:{}", pbchat::auth::hash_token(token));
    ExitCode::SUCCESS
}

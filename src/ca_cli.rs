//! `fusebox ca init` and `fusebox ca show` (docs/ARCHITECTURE.md §2, §13): create the local CA
//! and print its certificate for apps to trust.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::ca::{LocalCa, CERT_FILE, KEY_FILE};

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create the local CA: DIR/ca.pem (the certificate apps trust) and DIR/ca-key.pem (mode 0600).
    Init {
        /// The CA directory.
        #[arg(long, env = "FUSEBOX_CA_DIR", value_name = "DIR")]
        dir: PathBuf,
        /// Replace a CA that is already there (apps trusting the old one will stop trusting fusebox).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) for apps to add to their trust store.
    Show {
        /// The CA directory.
        #[arg(long, env = "FUSEBOX_CA_DIR", value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs `fusebox ca ...`; returns the exit code (0, or 1 with a message on stderr).
pub fn run(args: &CaArgs) -> i32 {
    match &args.command {
        CaCommand::Init { dir, force } => match LocalCa::init(dir, *force, SystemTime::now()) {
            Ok(_) => {
                let cert = dir.join(CERT_FILE);
                println!(
                    "created the fusebox local CA in {}:\n  {}  the certificate: give it to apps to trust \
                     (fusebox ca show --dir {})\n  {}  its private key (mode 0600): keep it to fusebox",
                    dir.display(),
                    cert.display(),
                    dir.display(),
                    dir.join(KEY_FILE).display(),
                );
                0
            }
            Err(error) => {
                eprintln!("fusebox: {error}");
                1
            }
        },
        CaCommand::Show { dir } => match LocalCa::load(dir) {
            Ok(ca) => {
                print!("{}", ca.certificate_pem());
                0
            }
            Err(error) => {
                eprintln!("fusebox: {error}");
                1
            }
        },
    }
}

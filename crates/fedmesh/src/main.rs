//! `fedmesh`: federated learning across the domains of a data mesh.
//!
//! A thin binary: it parses arguments, sets up logging, progress and Ctrl-C, and calls the
//! library crates, which hold all of the logic.

mod bench;
mod progress;
mod report;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fedmesh",
    version,
    about = "Train machine-learning models across the domains of a data mesh without moving their data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fraud example end to end on embedded defaults: centralized, split with label
    /// sharing, split without label sharing, and a comparison table.
    Quickstart {
        /// Where results.json and the report go (default: runs/quickstart-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seeds to run per configuration.
        #[arg(long, default_value_t = 1)]
        seeds: usize,
    },
    /// Run an example (a folder with job.yaml and contracts) in every configuration.
    Run {
        /// The example folder, e.g. examples/credit, or a job.yaml.
        example: PathBuf,
        /// Read every product from this file instead of where its contract says.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Use the first N seeds of the job (default: all of them).
        #[arg(long)]
        seeds: Option<usize>,
        /// Only these configurations (centralized, split-label-sharing, split-label-owner,
        /// single-domain:NAME), comma-separated.
        #[arg(long, value_delimiter = ',')]
        configs: Vec<String>,
        /// Override the job's epoch count.
        #[arg(long)]
        epochs: Option<usize>,
        /// Where results.json and the report go (default: runs/<example>-<time>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make the mesh's development CA and node certificates (mutual TLS identities).
    Certs {
        #[command(subcommand)]
        what: CertsCommand,
    },
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "mesh")]
        dir: PathBuf,
    },
    /// Issue a certificate for a node (a domain name, or `governance`), signed by the CA in DIR.
    Issue {
        name: String,
        #[arg(long, default_value = "mesh")]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: errors here are for users.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fedmesh=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user means it.
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current batch (Ctrl-C again to quit at once)…");
        })?;
    }
    match Cli::parse().command {
        Command::Quickstart { out, seeds } => run::quickstart(out, seeds, &stop),
        Command::Run {
            example,
            data,
            seeds,
            configs,
            epochs,
            out,
        } => run::run(
            &example,
            run::RunOptions {
                data,
                seeds,
                configs,
                epochs,
                out,
            },
            &stop,
        )
        .map(|_| ()),
        Command::Certs { what } => {
            let issued = match what {
                CertsCommand::Init { dir } => fedmesh_tls::init_ca(&dir)?,
                CertsCommand::Issue { name, dir } => fedmesh_tls::issue(&dir, &name)?,
            };
            println!(
                "wrote {} and {} (private: keep it on its node)",
                issued.certificate.display(),
                issued.key.display()
            );
            Ok(())
        }
        Command::Bench { what } => bench::bench(what),
    }
}

//! `fedmesh`: federated learning across the domains of a data mesh.
//!
//! A thin binary: it parses arguments, sets up logging, progress and Ctrl-C, and calls the
//! library crates, which hold all of the logic.

mod attack;
mod bench;
mod check;
mod init;
mod mesh;
mod ops;
mod progress;
mod report;
mod run;
mod schema;

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
        /// Where results.json and the report go (default: runs/quickstart-TIME).
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
        /// single-domain:NAME, linear; federated and federated-secure for horizontal jobs),
        /// comma-separated.
        #[arg(long, value_delimiter = ',')]
        configs: Vec<String>,
        /// Override the job's epoch count (a horizontal job's rounds).
        #[arg(long)]
        epochs: Option<usize>,
        /// Where results.json and the report go (default: runs/EXAMPLE-TIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run the configurations that keep each domain's rows at its node (split learning;
        /// federated averaging for horizontal jobs) on the mesh in DIR (started with `fedmesh
        /// mesh up`); baselines still run in this process.
        #[arg(long)]
        mesh: Option<PathBuf>,
    },
    /// Check a job's admission before running it: every domain's contract (and, with --mesh,
    /// its own policy) and governance's policies, for each split configuration; one line per
    /// reason with the file and the rule to edit. Exits with 1 when nothing would be admitted.
    Check {
        /// The job (a folder with job.yaml, or the file).
        job: PathBuf,
        /// A mesh folder (`fedmesh mesh up`): its nodes' contracts and policies, and its
        /// governance policies.
        #[arg(long)]
        mesh: Option<PathBuf>,
        /// Governance's policies, a .cedar file or a folder of them (default: the mesh's, else
        /// the example set).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Who submits the job, as the policies see it.
        #[arg(long, default_value = "operator")]
        requester: String,
    },
    /// Measure what each party of a split job could read of the labels off the gradients it
    /// receives (norm, direction and spectral attacks), without a defence and with each
    /// defence asked for; prints leak AUC per party beside the test ROC-AUC.
    Attack(attack::AttackOptions),
    /// Write a job skeleton and one data contract per file (types, key, rules and usage terms
    /// inferred from the files), for you to read and edit before `fedmesh check` and `run`.
    Init(init::InitOptions),
    /// Print the JSON Schema of job.yaml (for editors that validate and complete YAML), or with
    /// --reference its field reference in Markdown; --write DIR updates DIR/job-spec.schema.json
    /// and the reference in DIR/job-spec.md.
    Schema {
        #[arg(long)]
        reference: bool,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Serve a domain's data product as a node of the mesh (gRPC, mutual TLS).
    Node {
        /// The node's config (domain, listen address, certificates, contract, models folder).
        #[arg(long)]
        config: PathBuf,
        /// Stop when stdin closes (set by the process that started this one).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Serve the mesh's governance: catalog, policy, jobs, audit log (gRPC, mutual TLS).
    Governance {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// A mesh on this machine.
    Mesh {
        #[command(subcommand)]
        what: MeshCommand,
    },
    /// Jobs on a running mesh.
    Job {
        #[command(subcommand)]
        what: JobCommand,
    },
    /// The data products registered with a running mesh's governance.
    Catalog {
        #[command(subcommand)]
        what: CatalogCommand,
    },
    /// The model registry of a running mesh.
    Model {
        #[command(subcommand)]
        what: ModelCommand,
    },
    /// Score entities with a registered model (split inference: each domain computes its part),
    /// or rank items for users with a registered recommender.
    Predict {
        /// NAME (its latest version) or NAME@VERSION (see `fedmesh model list`).
        #[arg(long)]
        model: String,
        /// A CSV with a header row and the entities' keys in its first column (for a
        /// recommender: the users').
        #[arg(long, required_unless_present = "user", conflicts_with = "user")]
        keys: Option<PathBuf>,
        /// A recommender: a user to rank items for (repeat for more).
        #[arg(long)]
        user: Vec<String>,
        /// A recommender: items per user.
        #[arg(long, default_value_t = 10)]
        top: u32,
        /// The keys' column, when not the first.
        #[arg(long)]
        column: Option<String>,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        /// Write the scores here instead of to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The whole answer as JSON, missing keys included.
        #[arg(long)]
        json: bool,
    },
    /// Audit logs: verify their hash chains, or show their records.
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
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
enum MeshCommand {
    /// Start governance and one node per domain of EXAMPLE as separate processes on 127.0.0.1,
    /// with development certificates, and keep them running until Ctrl-C.
    Up {
        /// The example folder (or job.yaml) whose domains get nodes.
        example: PathBuf,
        /// The mesh folder: certificates, configs, logs, runs.
        #[arg(long, default_value = "mesh")]
        dir: PathBuf,
        /// Governance's port; the domains listen on the ports after it.
        #[arg(long, default_value_t = 7100)]
        port: u16,
        /// Read every product from this file instead of where its contract says.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job to the mesh's governance and follow it to its end.
    Submit {
        /// The job spec (or its folder).
        job: PathBuf,
        /// The mesh folder (as `fedmesh mesh up --dir` made it).
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        /// split-label-sharing, split-label-owner (default: both), comma-separated.
        #[arg(long, value_delimiter = ',')]
        configs: Vec<String>,
        /// Seeds (default: the job's), comma-separated.
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
        /// Override the job's epoch count.
        #[arg(long)]
        epochs: Option<u32>,
        /// Where results.json and the report go (default: runs/JOB-TIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Return once the job is admitted (or denied) instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// A job's state and why it is in it.
    Status {
        id: String,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every job, newest first.
    List {
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job after its current batch; its record and finished runs stay.
    Cancel {
        id: String,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
    },
    /// A job's log: states, runs, epochs, admission notes.
    Logs {
        id: String,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        /// Keep following until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Every product: domain, version, key, rows, last quality check.
    List {
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One product (NAME or DOMAIN/NAME), with its contract.
    Show {
        product: String,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Every registered model version.
    List {
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One model: its parts and who holds them, its inputs, its metrics.
    Show {
        /// NAME or NAME@VERSION.
        model: String,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check audit logs' hash chains: the mesh's (governance's and every node's), or the files
    /// given. Fails naming the first record that does not hold.
    Verify {
        /// Audit log files (default: every log of the mesh in --mesh).
        files: Vec<PathBuf>,
        #[arg(long, default_value = "mesh")]
        mesh: PathBuf,
        /// A head (record hash) noted earlier: also check that no record up to it was cut off.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print an audit log's records, oldest first.
    Show {
        file: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
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

/// What is logged unless `RUST_LOG` says otherwise: fedmesh's own information, and warnings
/// from everything else. A TLS handshake a server refuses is a warning of its own
/// (`fedmesh_net::server::tls_incoming`), with the peer's address.
pub const DEFAULT_LOG: &str = "fedmesh=info,fedmesh_net=info,fedmesh_node=info,fedmesh_governance=info,fedmesh_split=info,warn";

fn main() -> std::process::ExitCode {
    process_defaults();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: errors here are for users.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What every fedmesh process starts with. Files it creates (models, state, audit logs, keys,
/// results) are its user's alone: 0600, folders 0700. A closed pipe on standard output ends it
/// quietly, as it ends `cat` (`fedmesh audit show | head`), instead of with a panic. (SIGPIPE
/// itself stays ignored: a server writing to a socket its peer closed must get an error, not
/// die.)
fn process_defaults() {
    #[cfg(unix)]
    // SAFETY: sets a process-wide attribute before any thread is started.
    unsafe {
        libc::umask(0o077);
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user means it.
                std::process::exit(130);
            }
            eprintln!("\nstopping… (Ctrl-C again to quit at once)");
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
            mesh,
        } => run::run(
            &example,
            run::RunOptions {
                data,
                seeds,
                configs,
                epochs,
                out,
                mesh: mesh.as_deref().map(run::MeshClient::of).transpose()?,
            },
            &stop,
        )
        .map(|_| ()),
        Command::Check {
            job,
            mesh,
            policies,
            requester,
        } => {
            let admitted = check::run(
                &job,
                &check::CheckOptions {
                    mesh,
                    policies,
                    requester,
                },
            )?;
            if !admitted {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Attack(options) => attack::run(options, &stop).map(|_| ()),
        Command::Init(options) => init::run(&options).map(|_| ()),
        Command::Schema { reference, write } => schema::run(reference, write.as_deref()),
        Command::Node {
            config,
            exit_with_parent,
        } => {
            if exit_with_parent {
                mesh::stop_with_parent(stop.clone());
            }
            mesh::node(&config, stop)
        }
        Command::Governance {
            config,
            exit_with_parent,
        } => {
            if exit_with_parent {
                mesh::stop_with_parent(stop.clone());
            }
            mesh::governance(&config, stop)
        }
        Command::Mesh {
            what:
                MeshCommand::Up {
                    example,
                    dir,
                    port,
                    data,
                },
        } => mesh::up(&example, &dir, port, data.as_deref(), &stop),
        Command::Job { what } => match what {
            JobCommand::Submit {
                job,
                mesh,
                configs,
                seeds,
                epochs,
                out,
                detach,
            } => {
                if detach {
                    run::submit_detached(&job, &mesh, configs, seeds, epochs)
                } else {
                    run::submit(&job, &mesh, configs, seeds, epochs, out, &stop).map(|_| ())
                }
            }
            JobCommand::Status { id, mesh, json } => ops::status(&mesh, &id, json),
            JobCommand::List { mesh, json } => ops::list(&mesh, json),
            JobCommand::Cancel { id, mesh } => ops::cancel(&mesh, &id),
            JobCommand::Logs { id, mesh, follow } => ops::logs(&mesh, &id, follow, &stop),
        },
        Command::Catalog { what } => match what {
            CatalogCommand::List { mesh, json } => ops::catalog_list(&mesh, json),
            CatalogCommand::Show {
                product,
                mesh,
                json,
            } => ops::catalog_show(&mesh, &product, json),
        },
        Command::Model { what } => match what {
            ModelCommand::List { mesh, json } => ops::models(&mesh, json),
            ModelCommand::Show { model, mesh, json } => ops::model(&mesh, &model, json),
        },
        Command::Predict {
            model,
            keys,
            user,
            top,
            column,
            mesh,
            out,
            json,
        } => {
            let keys = match keys {
                Some(file) => ops::read_keys(&file, column.as_deref())?,
                None => user,
            };
            ops::predict(&mesh, &model, keys, top, out.as_deref(), json)
        }
        Command::Audit { what } => match what {
            AuditCommand::Verify { files, mesh, head } => {
                ops::verify(&files, &mesh, head.as_deref())
            }
            AuditCommand::Show { file, json } => ops::show(&file, json),
        },
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

//! `fedmesh bench`: performance measurements, printed one line each.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use fedmesh_net::{Mesh, MeshIdentity};
use fedmesh_split::bench::{SplitBench, joint_throughput, samples_per_second, split_throughput};
use fedmesh_split::job::{Job, RunConfig, WireEncoding};

use crate::mesh::{LocalMesh, Ports};
use crate::run::write_fraud_example;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training throughput of the seed's fraud model (3 bottoms 10→32→16 with BatchNorm, top
    /// 48→32→32→2, batch 256), split with label sharing, in-process transport.
    Split {
        /// Timed steps.
        #[arg(long, default_value_t = 2000)]
        steps: usize,
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Also train the same network as one module (no cut layer), for comparison.
        #[arg(long)]
        joint: bool,
        /// Also over the network: this process as governance and three domain nodes as
        /// separate processes on 127.0.0.1, mutual TLS, the fraud example's data.
        #[arg(long)]
        network: bool,
    },
    /// Wall time of private set intersection (ECDH on ristretto255) between PARTIES key sets of
    /// SIZE keys each, OVERLAP of them shared by all, run in this process (every message
    /// computed, none sent over a network yet).
    Psi {
        #[arg(long, default_value_t = 2)]
        parties: usize,
        #[arg(long, default_value_t = 1_000_000)]
        size: usize,
        #[arg(long, default_value_t = 0.5)]
        overlap: f64,
    },
}

pub fn bench(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Split {
            steps,
            batch_size,
            joint,
            network,
        } => {
            let bench = SplitBench {
                batch_size,
                warmup_steps: 100,
                steps,
            };
            if joint {
                let rate = joint_throughput(&bench);
                println!(
                    "joint training (no cut), fraud model, batch {batch_size}: {rate:.0} samples/s"
                );
            }
            if network {
                split_network(&bench)?;
            } else {
                let rate = split_throughput(&bench);
                println!(
                    "split training, fraud model, batch {batch_size}, in-process: {rate:.0} samples/s"
                );
            }
        }
        BenchCommand::Psi {
            parties,
            size,
            overlap,
        } => psi(parties, size, overlap)?,
    }
    Ok(())
}

fn psi(parties: usize, size: usize, overlap: f64) -> Result<()> {
    anyhow::ensure!(parties >= 2, "--parties must be at least 2");
    anyhow::ensure!(
        (0.0..=1.0).contains(&overlap),
        "--overlap must be between 0 and 1"
    );
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shared = (size as f64 * overlap).round() as usize;
    // Every party: the shared keys and keys of its own, in an order of its own.
    let sets: Vec<Vec<String>> = (0..parties)
        .map(|p| {
            let mut keys: Vec<String> = (0..shared)
                .map(|k| format!("shared-{k}"))
                .chain((shared..size).map(|k| format!("party{p}-{k}")))
                .collect();
            keys.shuffle(&mut rng);
            keys
        })
        .collect();
    let started = std::time::Instant::now();
    let alignments = fedmesh_psi::align(&sets, &mut rng)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        alignments.iter().all(|a| a.rows.len() == shared),
        "the intersection is not the {shared} shared keys"
    );
    println!(
        "psi, {parties} parties × {size} keys, overlap {overlap}: intersection {shared}, {seconds:.2} s wall (in this process, {} threads)",
        rayon::current_num_threads()
    );
    Ok(())
}

/// The fraud example's split model (label sharing) trained on its synthetic data, in this
/// process and then over a mesh of node processes, in f32 and in f16.
fn split_network(bench: &SplitBench) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fedmesh-bench-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut job = Job::load(&write_fraud_example(&dir.join("example"))?)?;
        let config = RunConfig::SplitLabelSharing;
        let learning_rate = job.spec.training.optimizer.learning_rate;
        let batch = bench.batch_size;

        let prepared = job.prepare(None)?;
        let mut trainer = prepared.trainer(&config, 1)?;
        let local = samples_per_second(
            trainer.as_mut(),
            &prepared.partition.train,
            bench,
            learning_rate,
        )?;
        println!(
            "split training, fraud model, batch {batch}, in-process:           {local:>9.0} samples/s"
        );

        let runtime = tokio::runtime::Runtime::new()?;
        let mut nodes = LocalMesh::start(&job, &dir.join("mesh"), Ports::Any, None, false)?;
        nodes.wait_ready(&runtime, Duration::from_secs(60))?;
        let mesh = Mesh {
            identity: MeshIdentity::load(&nodes.layout.certs(), "governance")?,
            nodes: nodes.endpoints().to_vec(),
            deadline: Duration::from_secs(30),
        };
        for encoding in [WireEncoding::F32, WireEncoding::F16] {
            job.spec.wire.encoding = encoding;
            let name = format!("{encoding:?}").to_lowercase();
            let (mut trainer, partition) = mesh.open(&job, &format!("bench-{name}"), &config, 1)?;
            let (sent, received) = trainer.transport().bytes();
            let rate = samples_per_second(&mut trainer, &partition.train, bench, learning_rate)?;
            let (sent_after, received_after) = trainer.transport().bytes();
            trainer.transport_mut().finish()?;
            let samples = ((bench.warmup_steps + bench.steps) * batch) as f64;
            println!(
                "split training, fraud model, batch {batch}, network {name} (4 processes, mTLS): {rate:>9.0} samples/s = {:.0} % of in-process; {:.1} bytes/sample to the domains, {:.1} from them",
                100.0 * rate / local,
                (sent_after - sent) as f64 / samples,
                (received_after - received) as f64 / samples,
            );
        }
        nodes.stop();
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

//! `fedmesh bench`: performance measurements, printed one line each.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Subcommand;
use fedmesh_governance::{Mesh, MeshRun};
use fedmesh_net::MeshIdentity;
use fedmesh_split::bench::{SplitBench, joint_throughput, samples_per_second, split_throughput};
use fedmesh_split::job::{Job, PsiProtocol, RunConfig, WireEncoding};

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
    /// Training throughput of the split NCF (a recommendation example, MovieLens 100K by
    /// default): in this process, then over the network with the sales, customer and product
    /// domains as separate node processes (mutual TLS on 127.0.0.1) and this process as
    /// governance. Examples are positives and their sampled negatives; each epoch's examples
    /// are drawn by sales and routed to customer and product within the timed training.
    Ncf {
        /// The recommendation example (its `job.yaml` or folder).
        #[arg(default_value = "examples/movielens")]
        example: std::path::PathBuf,
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// Only over the network.
        #[arg(long)]
        network_only: bool,
    },
    /// Wall time of private set intersection (the ECDH ring or KKRT) between PARTIES domains of
    /// SIZE keys each, OVERLAP of them shared by all: the whole protocol over the network, this
    /// process as governance and one domain node process per party (mutual TLS on 127.0.0.1),
    /// from the first message to every domain holding its aligned rows.
    Psi {
        #[arg(long, default_value_t = 2)]
        parties: usize,
        #[arg(long, default_value_t = 1_000_000)]
        size: usize,
        #[arg(long, default_value_t = 0.5)]
        overlap: f64,
        /// Run every party's share in this process instead (no network, no processes).
        #[arg(long)]
        in_process: bool,
        /// `ecdh` (the ring) or `kkrt` (OT extension), as a job spec's `alignment.protocol`.
        #[arg(long, default_value = "ecdh", value_parser = ["ecdh", "kkrt"])]
        protocol: String,
    },
    /// Cost of one secure-aggregation round (`fedmesh-secagg`) of CLIENTS updates of LENGTH
    /// values each, DROP of the clients dropping out after sharing their keys: every party in
    /// this process, each phase timed (no network).
    Secagg {
        #[arg(long, default_value_t = 3)]
        clients: u32,
        #[arg(long, default_value_t = 100_000)]
        length: usize,
        #[arg(long, default_value_t = 0)]
        drop: u32,
    },
}

pub fn bench(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Secagg {
            clients,
            length,
            drop,
        } => secagg_round(clients, length, drop)?,
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
        BenchCommand::Ncf {
            example,
            epochs,
            network_only,
        } => ncf(&example, epochs, network_only)?,
        BenchCommand::Psi {
            parties,
            size,
            overlap,
            in_process,
            protocol,
        } => {
            anyhow::ensure!(parties >= 2, "--parties must be at least 2");
            anyhow::ensure!(
                (0.0..=1.0).contains(&overlap),
                "--overlap must be between 0 and 1"
            );
            let protocol = match protocol.as_str() {
                "kkrt" => PsiProtocol::Kkrt,
                _ => PsiProtocol::Ecdh,
            };
            match (in_process, protocol) {
                (true, PsiProtocol::Kkrt) if parties == 2 => psi_kkrt(size, overlap)?,
                (true, _) => psi(parties, size, overlap, protocol)?,
                (false, _) => psi_network(parties, size, overlap, protocol)?,
            }
        }
    }
    Ok(())
}

/// Every party's keys: the `shared` keys all hold and keys of its own, in an order of its own.
fn key_sets(parties: usize, size: usize, shared: usize) -> Vec<Vec<String>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..parties)
        .map(|p| {
            let mut keys: Vec<String> = (0..shared)
                .map(|k| format!("entity-{k}"))
                .chain((shared..size).map(|k| format!("party{p}-{k}")))
                .collect();
            keys.shuffle(&mut rng);
            keys
        })
        .collect()
}

fn psi(parties: usize, size: usize, overlap: f64, protocol: PsiProtocol) -> Result<()> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shared = (size as f64 * overlap).round() as usize;
    let sets = key_sets(parties, size, shared);
    let started = std::time::Instant::now();
    let alignments = match protocol {
        PsiProtocol::Ecdh => fedmesh_psi::align(&sets, &mut rng)?,
        PsiProtocol::Kkrt => fedmesh_psi::kkrt::align(&sets, &mut rng)?,
    };
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        alignments.iter().all(|a| a.rows.len() == shared),
        "the intersection is not the {shared} shared keys"
    );
    println!(
        "psi ({protocol}), {parties} parties × {size} keys, overlap {overlap}: intersection {shared}, {seconds:.2} s wall (in this process, {} threads)",
        rayon::current_num_threads()
    );
    Ok(())
}

/// KKRT between two parties in this process, message for message; prints the wall time of
/// each phase and the bytes each way.
fn psi_kkrt(size: usize, overlap: f64) -> Result<()> {
    use fedmesh_psi::kkrt::{KkrtReceiver, KkrtSender};
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shared = (size as f64 * overlap).round() as usize;
    let sets = key_sets(2, size, shared);
    let started = std::time::Instant::now();
    let (mut receiver, setup) = KkrtReceiver::new(&sets[0], &mut rng)?;
    let (mut sender, answer) = KkrtSender::new(&sets[1], &setup, &mut rng)?;
    receiver.accept(&answer)?;
    let setup_seconds = started.elapsed().as_secs_f64();
    // The setup: A, the seed and the bin count.
    let mut to_sender = 32 + 16 + 8u64;
    while let Some(chunk) = receiver.next_chunk()? {
        to_sender += 8 + chunk.columns.len() as u64;
        sender.absorb(&chunk)?;
    }
    let extension_seconds = started.elapsed().as_secs_f64() - setup_seconds;
    let (values, _) = sender.finish()?;
    let to_receiver = (answer.base_ot.len() + 16 + values.values.len()) as u64;
    let rows = receiver.intersect(&values)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        rows.len() == shared,
        "the intersection holds {} keys, not the {shared} shared ones",
        rows.len()
    );
    println!(
        "psi kkrt, 2 parties × {size} keys, overlap {overlap}: intersection {shared}, {seconds:.2} s wall (hashing and base OTs {setup_seconds:.2} s, extension {extension_seconds:.2} s; in this process, {} threads); {:.1} MB to the sender, {:.1} MB to the receiver",
        rayon::current_num_threads(),
        to_sender as f64 / 1e6,
        to_receiver as f64 / 1e6
    );
    Ok(())
}

/// The whole protocol over a mesh: each party a `fedmesh node` process serving a product of
/// `size` keys (and one feature column; the first party also holds a label), this process as
/// governance opening a job on them. Times the alignment phase of the job's setup.
fn psi_network(parties: usize, size: usize, overlap: f64, protocol: PsiProtocol) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fedmesh-bench-psi-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let shared = (size as f64 * overlap).round() as usize;
        let mut job = Job::load(&write_psi_example(
            &dir.join("example"),
            parties,
            size,
            shared,
        )?)?;
        job.spec.alignment.protocol = protocol;
        let (mut nodes, mesh) = node_mesh(
            &crate::mesh::job_domains(&job),
            &dir.join("mesh"),
            Duration::from_secs(120),
        )?;
        let run = MeshRun {
            id: "bench-psi",
            requester: "operator",
            config: &RunConfig::SplitLabelOwner,
            seed: 1,
            save_to: None,
        };
        let (mut trainer, _) = mesh.open(&job, &run)?;
        let transport = trainer.transport();
        let intersection = transport.alignment().map_or(0, |a| a.intersection);
        let seconds = transport.alignment_seconds();
        let (sent, received) = transport.bytes();
        trainer.transport_mut().finish()?;
        nodes.stop();
        anyhow::ensure!(
            intersection == shared,
            "the intersection holds {intersection} entities, not the {shared} shared keys"
        );
        println!(
            "psi ({protocol}) over the network, {parties} parties × {size} keys, overlap {overlap}: intersection {intersection}, {seconds:.2} s wall ({parties} node processes + governance, mTLS on 127.0.0.1, {} cores; {:.1} MB to the domains, {:.1} MB from them in the whole setup)",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            sent as f64 / 1e6,
            received as f64 / 1e6,
        );
        Ok(())
    })();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // What the nodes logged is what tells why.
        eprintln!(
            "the bench failed: the nodes' logs are kept in {}",
            dir.join("mesh").display()
        );
    }
    result
}

/// One `fedmesh node` process per domain of `job`, started in `dir` and ready, and this process
/// as their governance, with `deadline` for every call.
fn node_mesh(
    domains: &[(String, std::path::PathBuf)],
    dir: &std::path::Path,
    deadline: Duration,
) -> Result<(LocalMesh, Mesh)> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut nodes = LocalMesh::start(domains, dir, Ports::Any, None, None, false)?;
    nodes.wait_ready(&runtime, Duration::from_secs(60))?;
    let mesh = Mesh::new(
        MeshIdentity::load(&nodes.layout.certs(), "governance")?,
        nodes.endpoints().to_vec(),
        deadline,
    );
    Ok((nodes, mesh))
}

/// A job over `parties` products of `size` keys each, `shared` of them common to all.
fn write_psi_example(
    dir: &std::path::Path,
    parties: usize,
    size: usize,
    shared: usize,
) -> Result<std::path::PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir.join("contracts"))?;
    let mut domains = String::new();
    for (p, keys) in key_sets(parties, size, shared).iter().enumerate() {
        let name = format!("party{p}");
        let labelled = p == 0;
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{name}.csv")))?);
        writeln!(file, "{}", if labelled { "key,x,y" } else { "key,x" })?;
        for (i, key) in keys.iter().enumerate() {
            let x = (i % 97) as f64 / 97.0;
            if labelled {
                writeln!(file, "{key},{x},{}", i % 2)?;
            } else {
                writeln!(file, "{key},{x}")?;
            }
        }
        file.flush()?;
        let label = if labelled {
            "      - { name: y, logicalType: integer, required: true }\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join(format!("contracts/{name}.odcs.yaml")),
            format!(
                "apiVersion: v3.1.0\nkind: DataContract\nid: urn:fedmesh:bench:{name}\nname: {name}\nversion: 1.0.0\nstatus: active\ndomain: {name}\ndataProduct: {name}\nservers:\n  - {{ server: local, type: local, format: csv, path: ../{name}.csv }}\nschema:\n  - name: {name}\n    physicalType: table\n    properties:\n      - {{ name: key, logicalType: string, required: true, unique: true, primaryKey: true, classification: restricted }}\n      - {{ name: x, logicalType: number, required: true }}\n{label}customProperties:\n  - {{ property: flAllowedPurposes, value: [benchmark] }}\n  - {{ property: flAllowedTechniques, value: [split-learning] }}\n"
            ),
        )?;
        domains.push_str(&format!(
            "  - {{ name: {name}, contract: contracts/{name}.odcs.yaml, features: [{{ column: x }}] }}\n"
        ));
    }
    std::fs::write(
        dir.join("job.yaml"),
        format!(
            "name: psi-bench\npurpose: benchmark\nobjective: {{ kind: cross-entropy, classes: 2 }}\nlabel: {{ domain: party0, column: y }}\nsplit: {{ test_fraction: 0.3, valid_fraction: 0.1, seed: 42 }}\ndomains:\n{domains}model:\n  bottom: {{ layers: [4] }}\n  tower: {{ layers: [4] }}\n  head: []\ntraining:\n  epochs: 1\n  batch_size: 256\n  optimizer: {{ learning_rate: 0.001 }}\nseeds: [1]\n"
        ),
    )?;
    Ok(dir.to_path_buf())
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

        let (mut nodes, mesh) = node_mesh(
            &crate::mesh::job_domains(&job),
            &dir.join("mesh"),
            Duration::from_secs(30),
        )?;
        for encoding in [WireEncoding::F32, WireEncoding::F16] {
            job.spec.wire.encoding = encoding;
            let name = format!("{encoding:?}").to_lowercase();
            let run = MeshRun {
                id: &format!("bench-{name}"),
                requester: "operator",
                config: &config,
                seed: 1,
                save_to: None,
            };
            let (mut trainer, partition) = mesh.open(&job, &run)?;
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

/// `fedmesh bench ncf`: the split NCF's training throughput in-process and over the network.
fn ncf(example: &std::path::Path, epochs: usize, network_only: bool) -> Result<()> {
    use fedmesh_split::AnyJob;
    use fedmesh_split::job::RunConfig;
    use fedmesh_split::recommend::RecommendationSpec;
    use std::sync::atomic::AtomicBool;
    anyhow::ensure!(epochs >= 1, "--epochs must be at least 1");
    let (mut spec, file) = RecommendationSpec::load(example)?;
    spec.training.epochs = epochs;
    let prepared = spec.clone().prepare(&file)?;
    let positives = prepared.split.train.len();
    let per_epoch = positives * (1 + spec.training.negatives);
    println!(
        "split NCF, {} ({} training positives, {} examples per epoch with {} negatives each), batch {}, {epochs} epochs, seed 1",
        spec.name, positives, per_epoch, spec.training.negatives, spec.training.batch_size
    );
    let stop = AtomicBool::new(false);
    let configs = [RunConfig::SplitLabelOwner, RunConfig::SplitLabelSharing];
    let mut local = Vec::new();
    if !network_only {
        for config in &configs {
            let progress =
                crate::progress::RunProgress::new(format!("{} in-process", config.name()), epochs);
            let run = prepared.run(config, 1, &progress, &stop)?;
            progress.clear();
            println!(
                "  {:<20} in-process: {:>9.0} examples/s ({:.0} positives/s), {:.1} s training; HR@10 {:.4}",
                config.name(),
                run.samples_per_second,
                run.samples_per_second / (1 + spec.training.negatives) as f64,
                run.train_seconds,
                run.metrics.headline()
            );
            local.push(run.samples_per_second);
        }
    }
    let dir = std::env::temp_dir().join(format!("fedmesh-bench-ncf-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let domains = crate::mesh::recommendation_domains(&spec, &file);
        let (mut nodes, mesh) = node_mesh(&domains, &dir.join("mesh"), Duration::from_secs(120))?;
        let job = AnyJob::Recommendation(Box::new(spec.clone()));
        for (k, config) in configs.iter().enumerate() {
            let progress =
                crate::progress::RunProgress::new(format!("{} network", config.name()), epochs);
            let run = MeshRun {
                id: &format!("bench-ncf-{}", config.name()),
                requester: "operator",
                config,
                seed: 1,
                save_to: None,
            };
            let run = mesh.run(&job, &run, &progress, &stop)?;
            progress.clear();
            let wire = run.wire.expect("network runs count their bytes");
            let share = local
                .get(k)
                .map(|l| {
                    format!(
                        " = {:.0} % of in-process",
                        100.0 * run.samples_per_second / l
                    )
                })
                .unwrap_or_default();
            println!(
                "  {:<20} network (4 processes, mTLS): {:>9.0} examples/s ({:.0} positives/s){share}, {:.1} s training; HR@10 {:.4}; {:.1} MB to the domains, {:.1} MB from them (training and ranking, all epochs)",
                config.name(),
                run.samples_per_second,
                run.samples_per_second / (1 + spec.training.negatives) as f64,
                run.train_seconds,
                run.metrics.headline(),
                wire.to_domains as f64 / 1e6,
                wire.from_domains as f64 / 1e6,
            );
        }
        nodes.stop();
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One secure-aggregation round in this process, each phase timed; checks the sum.
fn secagg_round(clients: u32, length: usize, drop: u32) -> Result<()> {
    use fedmesh_secagg::{Aggregator, Client, Config, Quantization};
    use rand::SeedableRng;
    let threshold = (clients / 2 + 1).max(2);
    anyhow::ensure!(
        drop < clients && clients - drop >= threshold,
        "{drop} of {clients} clients dropping leaves fewer than the threshold of {threshold}"
    );
    let config = Config {
        clients,
        threshold,
        length,
        quantization: Quantization::default(),
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let updates: Vec<Vec<f32>> = (0..clients)
        .map(|c| {
            (0..length)
                .map(|i| ((c as usize * 31 + i) % 17) as f32 / 8.0 - 1.0)
                .collect()
        })
        .collect();
    let timed = |label: &str, started: Instant| {
        println!("  {label}: {:.3} s", started.elapsed().as_secs_f64());
    };
    let total = Instant::now();
    let started = Instant::now();
    let (mut parties, adverts): (Vec<Client>, Vec<_>) = (0..clients)
        .map(|id| Client::new(id, config, &mut rng))
        .unzip();
    let mut server = Aggregator::new(config)?;
    let roster = server.roster(adverts)?;
    let mut sealed = Vec::new();
    for party in &mut parties {
        sealed.extend(party.share_keys(&roster, &mut rng)?);
    }
    let mut inbox = server.route(sealed)?;
    println!(
        "secure aggregation, {clients} clients × {length} values, threshold {threshold}, {drop} dropping:"
    );
    timed("keys advertised and shared (every client)", started);
    let started = Instant::now();
    let sending: Vec<u32> = (drop..clients).collect();
    for &id in &sending {
        let input = parties[id as usize].masked_input(
            &updates[id as usize],
            &inbox.remove(&id).unwrap_or_default(),
        )?;
        server.receive(input)?;
    }
    timed("inputs quantized and masked (every client)", started);
    let started = Instant::now();
    let survivors = server.survivors()?;
    let reveals = sending
        .iter()
        .map(|&id| parties[id as usize].reveal(&survivors))
        .collect::<Result<Vec<_>, _>>()?;
    let sum = server.aggregate(reveals)?;
    timed("shares revealed and the sum unmasked", started);
    timed("round", total);
    let worst = (0..length)
        .map(|i| {
            let truth: f64 = sending.iter().map(|&c| updates[c as usize][i] as f64).sum();
            (sum.values[i] - truth).abs()
        })
        .fold(0.0, f64::max);
    println!("  largest difference from the plain sum: {worst:.2e}");
    Ok(())
}

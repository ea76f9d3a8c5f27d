//! `fedmesh bench`: performance measurements, printed one line each.

use anyhow::Result;
use clap::Subcommand;
use fedmesh_split::bench::{SplitBench, joint_throughput, split_throughput};

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
    },
}

pub fn bench(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Split {
            steps,
            batch_size,
            joint,
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
            let rate = split_throughput(&bench);
            println!(
                "split training, fraud model, batch {batch_size}, in-process: {rate:.0} samples/s"
            );
        }
    }
    Ok(())
}

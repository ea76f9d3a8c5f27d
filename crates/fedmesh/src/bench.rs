//! `fedmesh bench`: performance measurements, printed one line each.

use anyhow::Result;
use clap::Subcommand;
use fedmesh_split::bench::{SplitBench, split_throughput};

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
    },
}

pub fn bench(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Split { steps, batch_size } => {
            let rate = split_throughput(&SplitBench {
                batch_size,
                warmup_steps: 100,
                steps,
            });
            println!(
                "split training, fraud model, batch {batch_size}, in-process: {rate:.0} samples/s"
            );
        }
    }
    Ok(())
}

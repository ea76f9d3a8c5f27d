//! `cargo bench -p fedmesh-split --bench split`: training throughput of the seed's fraud model,
//! split with the in-process transport. Prints one line ending in `samples/s`.

use fedmesh_split::bench::{SplitBench, split_throughput};

fn main() {
    let bench = SplitBench {
        warmup_steps: 100,
        steps: 3000,
        ..SplitBench::default()
    };
    let rate = split_throughput(&bench);
    println!(
        "split training, fraud model, batch {}, in-process: {rate:.0} samples/s",
        bench.batch_size
    );
}

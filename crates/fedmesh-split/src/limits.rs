//! The ranges a job spec's numbers must fall in.
//!
//! A job spec comes from an operator's file or a submission over the network, and every number
//! in it sizes something: an allocation (epochs × batches, layer widths, embedding tables), a
//! loop, a probability. A number outside its range is refused when the spec is read, with the
//! field, the value and the range, instead of panicking deep in training, allocating without
//! bound, or training on a model that can only produce NaN. The bounds are generous: far beyond
//! anything a 2-core node trains, well below what would exhaust one.

/// Training epochs.
pub const MAX_EPOCHS: usize = 10_000;
/// Rows in one batch.
pub const MAX_BATCH_ROWS: usize = 1 << 20;
/// Units in one layer.
pub const MAX_LAYER_WIDTH: usize = 1 << 14;
/// Layers in one part of a model.
pub const MAX_LAYERS: usize = 64;
/// Output classes.
pub const MAX_CLASSES: usize = 1 << 14;
/// Width of one embedding.
pub const MAX_EMBEDDING_WIDTH: usize = 1024;
/// Training seeds of one job.
pub const MAX_SEEDS: usize = 1000;
/// Rows a generator may be asked for.
pub const MAX_SYNTHETIC_ROWS: usize = 100_000_000;
/// Sampled negatives per positive.
pub const MAX_NEGATIVES: usize = 1000;

/// `epochs` when it is in `1..=MAX_EPOCHS`, else the sentence that says why not (for an
/// override of a spec's epochs: `--epochs`, a submission's `epochs`).
pub fn checked_epochs(field: &str, epochs: usize) -> Result<usize, String> {
    let mut limits = Limits::default();
    limits.epochs(field, epochs);
    match limits.problems().pop() {
        Some(problem) => Err(problem),
        None => Ok(epochs),
    }
}

/// Collects what is out of range, field by field.
#[derive(Debug, Default)]
pub struct Limits {
    problems: Vec<String>,
}

impl Limits {
    /// Every problem found, one sentence each.
    pub fn problems(self) -> Vec<String> {
        self.problems
    }

    /// A count in `min..=max`.
    pub fn count(&mut self, field: &str, value: usize, min: usize, max: usize) {
        if !(min..=max).contains(&value) {
            self.problems.push(format!(
                "`{field}` is {value}; it must be between {min} and {max}"
            ));
        }
    }

    /// A probability-like number in `[0, 1)` (`closed`: `[0, 1]`), or `(0, 1)` when `positive`.
    pub fn fraction(&mut self, field: &str, value: f64, positive: bool, closed: bool) {
        let above = if positive { value > 0.0 } else { value >= 0.0 };
        let below = if closed { value <= 1.0 } else { value < 1.0 };
        if !(above && below) {
            let range = match (positive, closed) {
                (true, true) => "greater than 0 and at most 1",
                (true, false) => "greater than 0 and less than 1",
                (false, true) => "between 0 and 1",
                (false, false) => "at least 0 and less than 1",
            };
            self.problems
                .push(format!("`{field}` is {value}; it must be {range}"));
        }
    }

    /// A finite number greater than 0 (`or_zero`: at least 0) and at most `max`.
    pub fn positive(&mut self, field: &str, value: f64, or_zero: bool, max: f64) {
        let low = if or_zero { value >= 0.0 } else { value > 0.0 };
        if !(value.is_finite() && low && value <= max) {
            let low = if or_zero {
                "at least 0"
            } else {
                "greater than 0"
            };
            self.problems.push(format!(
                "`{field}` is {value}; it must be a finite number {low} and at most {max}"
            ));
        }
    }

    /// Hidden layers: at most [`MAX_LAYERS`], each 1 to [`MAX_LAYER_WIDTH`] units wide;
    /// `at_least_one` for a part that must have a layer.
    pub fn layers(&mut self, field: &str, layers: &[usize], at_least_one: bool) {
        self.count(
            &format!("{field} (number of layers)"),
            layers.len(),
            usize::from(at_least_one),
            MAX_LAYERS,
        );
        for (i, &width) in layers.iter().enumerate() {
            self.count(&format!("{field}[{i}]"), width, 1, MAX_LAYER_WIDTH);
        }
    }

    /// Adam's settings.
    pub fn optimizer(&mut self, field: &str, optimizer: &crate::OptimizerSpec) {
        self.positive(
            &format!("{field}.learning_rate"),
            optimizer.learning_rate,
            false,
            10.0,
        );
        self.positive(
            &format!("{field}.epsilon"),
            optimizer.epsilon as f64,
            false,
            1.0,
        );
        self.fraction(
            &format!("{field}.beta_1"),
            optimizer.beta_1 as f64,
            false,
            false,
        );
        self.fraction(
            &format!("{field}.beta_2"),
            optimizer.beta_2 as f64,
            false,
            false,
        );
        self.positive(
            &format!("{field}.weight_decay"),
            optimizer.weight_decay as f64,
            true,
            1.0,
        );
    }

    /// Training seeds: 1 to [`MAX_SEEDS`] of them.
    pub fn seeds(&mut self, field: &str, seeds: &[u64]) {
        self.count(
            &format!("{field} (number of seeds)"),
            seeds.len(),
            1,
            MAX_SEEDS,
        );
    }

    /// Training epochs.
    pub fn epochs(&mut self, field: &str, epochs: usize) {
        self.count(field, epochs, 1, MAX_EPOCHS);
    }

    /// A spec's `training` section and its seeds: epochs, a batch of `min_batch` to
    /// [`MAX_BATCH_ROWS`] rows, Adam's settings, 1 to [`MAX_SEEDS`] seeds.
    pub fn training(
        &mut self,
        epochs: usize,
        batch_size: usize,
        min_batch: usize,
        optimizer: &crate::OptimizerSpec,
        seeds: &[u64],
    ) {
        self.epochs("training.epochs", epochs);
        self.count("training.batch_size", batch_size, min_batch, MAX_BATCH_ROWS);
        self.optimizer("training.optimizer", optimizer);
        self.seeds("seeds", seeds);
    }

    /// `training.early_stopping`: a patience of 1 to `epochs` epochs, a non-negative
    /// `min_delta`.
    pub fn early_stopping(&mut self, early: Option<&crate::EarlyStopping>, epochs: usize) {
        if let Some(early) = early {
            self.count(
                "training.early_stopping.patience",
                early.patience,
                1,
                epochs.max(1),
            );
            self.positive(
                "training.early_stopping.min_delta",
                early.min_delta,
                true,
                1e6,
            );
        }
    }
}

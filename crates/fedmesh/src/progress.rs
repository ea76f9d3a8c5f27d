//! Progress bars for training runs.

use std::cell::Cell;

use fedmesh_split::{EpochRecord, Observer};
use indicatif::{ProgressBar, ProgressStyle};

/// One bar per run: batches of the current epoch, with the last epoch's numbers.
pub struct RunProgress {
    bar: ProgressBar,
    label: String,
    epochs: usize,
    loss: Cell<f32>,
}

impl RunProgress {
    pub fn new(label: String, epochs: usize) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>34} {bar:30} {pos:>5}/{len:5} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.clone());
        Self {
            bar,
            label,
            epochs,
            loss: Cell::new(0.0),
        }
    }

    pub fn finish(&self, message: String) {
        self.bar.finish_with_message(message);
    }

    /// An epoch finished on the mesh (which reports epochs, not batches).
    pub fn remote_epoch_done(&self, record: &EpochRecord) {
        self.bar.set_length(self.epochs as u64);
        self.bar.set_position(record.epoch as u64);
        self.epoch_done(record);
    }

    /// The run's job changed state on the mesh (aligning, training, evaluating).
    pub fn state(&self, state: &str) {
        if state != "training" {
            self.bar.set_message(format!("{state}…"));
        }
    }

    /// Prints a line above the bar.
    pub fn println(&self, line: &str) {
        self.bar.println(line);
    }

    /// Removes the bar (its run's result is printed instead).
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    pub fn abandon(&self) {
        self.bar.abandon_with_message("interrupted");
    }
}

impl Observer for RunProgress {
    fn epoch_started(&self, epoch: usize, batches: usize) {
        self.bar.set_length(batches as u64);
        self.bar.set_position(0);
        self.bar
            .set_message(format!("epoch {epoch}/{}", self.epochs));
    }

    fn batch_done(&self, loss: f32) {
        self.loss.set(loss);
        self.bar.inc(1);
    }

    fn epoch_done(&self, record: &EpochRecord) {
        let valid = match record.valid_headline {
            Some(v) => format!(", valid {v:.4}"),
            None => String::new(),
        };
        self.bar.set_message(format!(
            "epoch {}/{}: loss {:.4}{valid}",
            record.epoch, self.epochs, record.train_loss
        ));
        tracing::debug!(run = %self.label, epoch = record.epoch, train_loss = record.train_loss, "epoch done");
    }
}

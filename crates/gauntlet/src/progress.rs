//! Progress bars for training (hidden when stderr is not a terminal) and epoch lines.

use gauntlet_train::{EpochRecord, Observer};
use indicatif::{ProgressBar, ProgressStyle};

/// Draws a bar over each epoch's batches and prints one line per finished epoch.
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    n_epochs: usize,
    label: String,
}

impl TrainProgress {
    pub fn new(label: &str, n_epochs: usize) -> Self {
        Self {
            bar: None,
            n_epochs,
            label: label.to_string(),
        }
    }
}

impl Observer for TrainProgress {
    fn batch_done(&mut self, epoch: usize, batch: usize, n_batches: usize, loss: f32) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(n_batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} batches, loss {msg} ({eta})",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar
        });
        bar.set_prefix(format!("{} epoch {epoch}/{}", self.label, self.n_epochs));
        bar.set_position(batch as u64);
        if batch.is_multiple_of(20) || batch == n_batches {
            bar.set_message(format!("{loss:.4}"));
        }
    }

    fn epoch_done(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let mut valid = match r.valid_error {
            Some(e) => format!(", valid error {:.2}%", 100.0 * e),
            None => String::new(),
        };
        if let (Some(e), Some(p)) = (r.valid_adv_error, r.valid_pgd_error) {
            valid.push_str(&format!(
                " (single-step {:.2}%, PGD-10 {:.2}%)",
                100.0 * e,
                100.0 * p
            ));
        }
        eprintln!(
            "{} epoch {:>3}: train loss {:.4}, train error {:.2}%{valid}, lr {:.4}, {:.1} s ({:.0} ex/s)",
            self.label,
            r.epoch,
            r.train_loss,
            100.0 * r.train_error,
            r.lr,
            r.seconds,
            r.examples_per_second
        );
    }

    fn resumed(&mut self, epoch: usize) {
        eprintln!(
            "{} resumed after epoch {epoch} from its saved training state",
            self.label
        );
    }
}

//! Seeded mini-batches.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{Dataset, Result};

/// Index sets of the mini-batches of one epoch: shuffled by a seed, or in order.
///
/// The last batch is smaller when `batch_size` does not divide the set.
#[derive(Clone, Debug)]
pub struct Batches {
    indices: Vec<u32>,
    batch_size: usize,
}

impl Batches {
    /// Batches over `0..n`, shuffled with `seed` when given.
    pub fn new(n: usize, batch_size: usize, seed: Option<u64>) -> Self {
        assert!(batch_size > 0, "batch size is validated by the caller");
        let mut indices: Vec<u32> = (0..n as u32).collect();
        if let Some(seed) = seed {
            indices.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Self {
            indices,
            batch_size,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The index chunks in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> {
        self.indices.chunks(self.batch_size)
    }

    /// The data of each batch, selected from `data`.
    pub fn of<'a>(&'a self, data: &'a Dataset) -> impl Iterator<Item = Result<Dataset>> + 'a {
        self.iter().map(move |idx| data.select(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_and_seed_reproducible() {
        let a = Batches::new(103, 10, Some(7));
        assert_eq!(a.len(), 11);
        let mut all: Vec<u32> = a.iter().flatten().copied().collect();
        let again: Vec<u32> = Batches::new(103, 10, Some(7))
            .iter()
            .flatten()
            .copied()
            .collect();
        assert_eq!(all, again);
        let other: Vec<u32> = Batches::new(103, 10, Some(8))
            .iter()
            .flatten()
            .copied()
            .collect();
        assert_ne!(all, other);
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        let ordered: Vec<u32> = Batches::new(5, 2, None).iter().flatten().copied().collect();
        assert_eq!(ordered, vec![0, 1, 2, 3, 4]);
    }
}

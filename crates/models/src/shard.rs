//! A batch split over the compute threads, one contiguous shard per thread.
//!
//! At the batch sizes of the paper's recipes (100) the matrix products of an MLP are too
//! small for gemm to use a second core well, and the element-wise passes run on one thread:
//! from one thread to two, a Maxout MLP training step went 9.5k → 9.8k examples/s. Per-example
//! work (a training step's gradient, an attack's input gradient, eval logits) is instead
//! split by examples, each shard on its own thread.

use std::cell::Cell;

use candle_core::Device;
use rayon::prelude::*;

/// The fewest examples a shard gets: smaller ones lose more to the split than they gain.
pub const MIN_SHARD: usize = 32;

/// Shards for a batch of `n` on `device`: one per compute thread, at least [`MIN_SHARD`]
/// examples each; one off the CPU, or inside a shard (a shard is not split again).
pub fn count(n: usize, device: &Device) -> usize {
    if !device.is_cpu() || IN_SHARD.get() {
        return 1;
    }
    rayon::current_num_threads().min(n / MIN_SHARD).max(1)
}

thread_local! {
    // Set while a thread runs a shard: the work inside it is not split again.
    static IN_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// `f(shard, start, len)` for each of `shards` contiguous shards of `0..n` (the first ones one
/// longer where `n` does not divide), side by side; the results in shard order. One shard
/// runs on the calling thread as `f(0, 0, n)`, so callers need no unsplit path of their own.
pub fn map<T: Send, E: Send>(
    n: usize,
    shards: usize,
    f: impl Fn(usize, usize, usize) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let shards = shards.clamp(1, n.max(1));
    let (base, extra) = (n / shards, n % shards);
    let bounds = |s: usize| (s * base + s.min(extra), base + usize::from(s < extra));
    if shards == 1 {
        return Ok(vec![f(0, 0, n)?]);
    }
    (0..shards)
        .into_par_iter()
        .map(|s| {
            let (start, len) = bounds(s);
            let outer = IN_SHARD.replace(true);
            let out = f(s, start, len);
            IN_SHARD.set(outer);
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() -> candle_core::Result<()> {
        for (n, shards) in [(100, 2), (101, 2), (7, 3), (5, 1), (3, 8)] {
            let parts = map(n, shards, |s, start, len| {
                Ok::<_, candle_core::Error>((s, start, len))
            })?;
            let mut next = 0;
            for (i, &(s, start, len)) in parts.iter().enumerate() {
                assert_eq!((s, start), (i, next), "{n} in {shards}");
                assert!(len >= 1);
                next += len;
            }
            assert_eq!(next, n);
            let lens: Vec<usize> = parts.iter().map(|p| p.2).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
        Ok(())
    }
}

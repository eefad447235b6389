//! Training throughput of the Maxout MLP (pylearn2 PI-MNIST recipe) at batch 100 on MNIST.
//!
//! Run with `make bench` on an idle machine. Prints ms per step and examples per second for
//! each measured operation, interleaving the runs so that drift affects all alike.

use std::time::Instant;

use candle_core::{Device, Tensor};
use gauntlet_data::{load, Batches, DataConfig, DatasetName};
use gauntlet_models::{build, per_example_cross_entropy, Arch, Classifier, Mode, ModelSpec};
use gauntlet_train::{Optimizer, SgdMomentum};

const BATCH: usize = 100;
const ROUNDS: usize = 5;
const STEPS: usize = 40;

fn main() -> anyhow::Result<()> {
    let mut data = DataConfig::new(DatasetName::Mnist);
    data.train_limit = Some(BATCH * STEPS);
    let splits = load(&data)?;
    let model = build(&ModelSpec::mnist(Arch::maxout_mlp(vec![240, 240], 5)), 1, &Device::Cpu)?;
    let vars = model.params().vars().map(|(_, v)| v.clone()).collect();
    let mut sgd = SgdMomentum::new(vars, 0.01, 0.5, 0.5, 1, 1.0, 0.0)?;
    let batches: Vec<(Tensor, Tensor)> = Batches::new(splits.train.len(), BATCH, Some(1))
        .of(&splits.train)
        .map(|b| b.map(|b| (b.images, b.labels)))
        .collect::<Result<_, _>>()?;

    let mut forward = Vec::new();
    let mut input_grad = Vec::new();
    let mut train_step = Vec::new();
    for round in 0..=ROUNDS {
        let t = Instant::now();
        for (xs, _) in &batches {
            model.forward(xs, Mode::Eval)?.to_vec2::<f32>()?;
        }
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (xs, ys) in &batches {
            model.loss_and_input_grad(xs, ys, Mode::Eval)?;
        }
        let g = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (i, (xs, ys)) in batches.iter().enumerate() {
            let logits = model.forward(xs, Mode::Train { seed: i as u64 })?;
            let loss = per_example_cross_entropy(&logits, ys)?.mean_all()?;
            loss.to_scalar::<f32>()?;
            sgd.step(&loss.backward()?)?;
            model.apply_constraints()?;
        }
        let s = t.elapsed().as_secs_f64();
        if round > 0 {
            // Round 0 warms caches and the allocator.
            forward.push(f);
            input_grad.push(g);
            train_step.push(s);
        }
    }
    let report = |name: &str, times: &[f64]| {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2] / STEPS as f64;
        println!(
            "{name:<34} {:>7.2} ms/batch  {:>8.0} ex/s",
            1e3 * median,
            BATCH as f64 / median
        );
        median
    };
    println!("maxout MLP 784-240x5-240x5-10, batch {BATCH}, median of {ROUNDS} rounds x {STEPS} batches");
    let f = report("forward (eval)", &forward);
    let g = report("loss + input gradient (autograd)", &input_grad);
    let s = report("train step (sgd momentum, dropout)", &train_step);
    println!("ratios: input-grad/forward {:.2}, train-step/forward {:.2}", g / f, s / f);
    Ok(())
}

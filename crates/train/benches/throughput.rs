//! Throughput of the Maxout MLP (pylearn2 PI-MNIST recipe, 784-240×5-240×5-10) on MNIST:
//! forward, input gradient, a plain training step and an FGSM adversarial-training step at
//! batch 100, and the fast-gradient attack at batch 500.
//!
//! Run with `make bench` on an idle machine. The measured operations are interleaved round by
//! round, so drift affects all alike; medians over rounds are printed with their ratios.

use std::time::Instant;

use candle_core::{Device, Tensor};
use gauntlet_attacks::{Attack, FastGradient, Goal, Norm, Pgd};
use gauntlet_data::{load, Batches, DataConfig, DatasetName};
use gauntlet_models::{build, Arch, Mode, ModelSpec};
use gauntlet_train::{Optimizer, Regularizer, SgdMomentum};

// The same allocator as the gauntlet binary, so the figures are what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 100;
const ATTACK_BATCH: usize = 500;
const ROUNDS: usize = 5;
const STEPS: usize = 30;
const PGD_STEPS: usize = 10;

fn batches(data: &gauntlet_data::Dataset, size: usize) -> anyhow::Result<Vec<(Tensor, Tensor)>> {
    Ok(Batches::new(data.len(), size, Some(1))
        .of(data)
        .map(|b| b.map(|b| (b.images, b.labels)))
        .collect::<Result<_, _>>()?)
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut data = DataConfig::new(DatasetName::Mnist);
    data.train_limit = Some(BATCH * STEPS);
    let splits = load(&data)?;
    let model = build(
        &ModelSpec::mnist(Arch::maxout_mlp(vec![240, 240], 5)),
        1,
        &Device::Cpu,
    )?;
    let vars: Vec<_> = model.params().vars().map(|(_, v)| v.clone()).collect();
    let mut sgd = SgdMomentum::new(vars, 0.01, 0.5, 0.5, 1, 1.0, 0.0)?;
    let train_batches = batches(&splits.train, BATCH)?;
    let attack_batches = batches(&splits.train, ATTACK_BATCH)?;
    let fgsm = Regularizer::Lp {
        p: Norm::Linf,
        eps: 0.25,
        alpha: 0.5,
        labels: Default::default(),
        perturb_mode: Default::default(),
        clip: false,
    };
    let attack = FastGradient::fgsm();
    // Every example runs every step: no early stop, so the time is per step and image.
    let mut pgd = Pgd::new(Norm::Linf);
    pgd.steps = PGD_STEPS;
    pgd.early_stop = false;

    let names = [
        "forward (eval), batch 100",
        "loss + input gradient, batch 100",
        "train step, batch 100",
        "FGSM adversarial train step, batch 100",
        "FGSM attack, batch 500",
        "PGD L-inf step (10-step run / 10), batch 500",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..=ROUNDS {
        let mut t = [0f64; 6];
        let start = Instant::now();
        for (xs, _) in &train_batches {
            model.forward(xs, Mode::Eval)?.to_vec2::<f32>()?;
        }
        t[0] = start.elapsed().as_secs_f64() / train_batches.len() as f64;
        let start = Instant::now();
        for (xs, ys) in &train_batches {
            model.loss_and_input_grad(xs, ys, Mode::Eval)?;
        }
        t[1] = start.elapsed().as_secs_f64() / train_batches.len() as f64;
        for (k, regularizer) in [(2, &Regularizer::None), (3, &fgsm)] {
            let start = Instant::now();
            for (i, (xs, ys)) in train_batches.iter().enumerate() {
                let step = regularizer.step(model.as_ref(), xs, ys, i as u64)?;
                sgd.step(&step.grads)?;
                model.apply_constraints()?;
            }
            t[k] = start.elapsed().as_secs_f64() / train_batches.len() as f64;
        }
        let start = Instant::now();
        for (xs, ys) in &attack_batches {
            attack.perturb(model.as_ref(), xs, &Goal::Untargeted { labels: ys }, 0.1)?;
        }
        t[4] = start.elapsed().as_secs_f64() / attack_batches.len() as f64;
        let start = Instant::now();
        for (xs, ys) in &attack_batches {
            pgd.perturb(model.as_ref(), xs, &Goal::Untargeted { labels: ys }, 0.1)?;
        }
        t[5] = start.elapsed().as_secs_f64() / (attack_batches.len() * PGD_STEPS) as f64;
        if round > 0 {
            // Round 0 warms caches and the allocator.
            for (k, v) in t.iter().enumerate() {
                times[k].push(*v);
            }
        }
    }
    println!(
        "maxout MLP 784-240x5-240x5-10, {} threads, median of {ROUNDS} rounds",
        candle_core::utils::get_num_threads()
    );
    let mut medians = Vec::new();
    for (name, t) in names.iter().zip(times.iter_mut()) {
        let m = median(t);
        let batch = if name.contains("500") {
            ATTACK_BATCH
        } else {
            BATCH
        };
        println!(
            "{name:<42} {:>8.2} ms/batch {:>9.0} ex/s",
            1e3 * m,
            batch as f64 / m
        );
        medians.push(m);
    }
    println!(
        "ratio FGSM adversarial step / plain step: {:.2}",
        medians[3] / medians[2]
    );
    println!(
        "ratio input gradient / forward:            {:.2}",
        medians[1] / medians[0]
    );
    Ok(())
}

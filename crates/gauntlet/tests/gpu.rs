//! The GPU against the CPU: same seed, same weights and dropout masks bit for bit; logits,
//! input gradients and one training step equal within float tolerance; checkpoints move
//! between devices. Every test needs a GPU (`--features cuda` or `metal` and a device that
//! opens); without one it passes after printing why it was skipped.
//!
//! `make check-cuda` compiles these with CUDA and runs them on a machine without a GPU; the
//! comparisons themselves also run CPU against CPU on every build, so they cannot rot.

use std::io::Write;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use gauntlet_models::layers::Dropout;
use gauntlet_models::{
    build, checkpoint, Arch, Classifier, CnnLayer, CnnSpec, ConvMaxoutFc, ConvMaxoutLayer,
    ConvMaxoutSpec, MaxoutMlpSpec, Mode, ModelSpec,
};
use gauntlet_train::{Optimizer, Param, Regularizer, SgdMomentum};

/// Relative tolerance of float results (f32 kernels sum in a different order on a GPU).
const TOLERANCE: f32 = 1e-4;

/// Device 0 of the compiled-in GPU backend, or `None` after printing why there is none.
fn gpu(test: &str) -> Option<Device> {
    let opened = if cfg!(feature = "cuda") {
        Some(("CUDA", Device::new_cuda(0)))
    } else if cfg!(feature = "metal") {
        Some(("Metal", Device::new_metal(0)))
    } else {
        None
    };
    let reason = match opened {
        Some((_, Ok(device))) => return Some(device),
        Some((backend, Err(e))) => {
            // Candle appends a backtrace on later lines when RUST_BACKTRACE is set.
            let e = e.to_string();
            let first = e.lines().next().unwrap_or_default().to_string();
            format!("{backend} is compiled in but device 0 did not open: {first}")
        }
        None => "built without the cuda or metal feature".to_string(),
    };
    // Straight to stderr: the test harness swallows eprintln! output of passing tests.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {reason}");
    None
}

/// Deterministic pixel values in [0, 1] that vary irregularly across the image.
fn pixels(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 1.7 + phase).sin() * (i as f32 * 0.013).cos() + 1.0) / 2.0)
        .collect()
}

/// A small model of each family the suite trains, and a batch for it (on the CPU).
fn cases() -> Result<Vec<(&'static str, ModelSpec, Tensor, Tensor)>> {
    let maxout = ModelSpec::mnist(Arch::MaxoutMlp(MaxoutMlpSpec {
        units: vec![32, 32],
        pieces: 3,
        init_range: 0.05,
        ..MaxoutMlpSpec::default()
    }));
    let layer = |channels, kernel, pad| CnnLayer {
        channels,
        kernel,
        pad,
        pool: 2,
        pool_stride: 2,
    };
    let cnn = ModelSpec::mnist(Arch::Cnn(CnnSpec {
        layers: vec![layer(4, 3, 1), layer(8, 3, 0)],
        hidden: vec![16],
        hidden_dropout: Dropout::inverted(0.5),
        max_norm: Some(1.9),
        ..CnnSpec::default()
    }));
    let conv_layer = |channels, pad, pool| ConvMaxoutLayer {
        channels,
        pieces: 2,
        kernel: 3,
        pad,
        pool,
        pool_stride: 2,
        max_kernel_norm: Some(0.9),
    };
    let conv_maxout = ModelSpec::new(
        Arch::ConvMaxout(ConvMaxoutSpec {
            layers: vec![conv_layer(4, 1, 3), conv_layer(6, 1, 2)],
            fc: Some(ConvMaxoutFc {
                units: 8,
                pieces: 2,
                max_norm: Some(1.9),
            }),
            init_range: 0.2,
            ..ConvMaxoutSpec::default()
        }),
        [3, 12, 12],
        10,
    );
    let mut out = Vec::new();
    for (i, (name, spec)) in [
        ("maxout-mlp", maxout),
        ("cnn", cnn),
        ("conv-maxout", conv_maxout),
    ]
    .into_iter()
    .enumerate()
    {
        let batch = 8;
        let [c, h, w] = spec.input;
        let xs = Tensor::from_vec(
            pixels(batch * c * h * w, i as f32),
            (batch, c, h, w),
            &Device::Cpu,
        )?;
        let ys: Vec<u32> = (0..batch as u32)
            .map(|j| j % spec.n_classes as u32)
            .collect();
        let ys = Tensor::from_vec(ys, batch, &Device::Cpu)?;
        out.push((name, spec, xs, ys));
    }
    Ok(out)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// Largest |a - b| relative to the largest |b| entry.
fn relative_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
    ensure!(
        a.shape() == b.shape(),
        "shapes {:?} and {:?}",
        a.shape(),
        b.shape()
    );
    let (a, b) = (host(a)?, host(b)?);
    let scale = b.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    Ok(worst / scale)
}

fn check_close(what: &str, gpu: &Tensor, cpu: &Tensor) -> Result<()> {
    let diff = relative_difference(gpu, cpu)?;
    ensure!(
        diff <= TOLERANCE,
        "{what}: devices differ by {diff:e} of the largest value (tolerance {TOLERANCE:e})"
    );
    Ok(())
}

fn check_same_params(
    what: &str,
    a: &dyn Classifier,
    b: &dyn Classifier,
    exact: bool,
) -> Result<()> {
    let (ta, tb) = (a.params().tensors(), b.params().tensors());
    ensure!(ta.len() == tb.len(), "{what}: parameter count");
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        ensure!(na == nb, "{what}: {na} against {nb}");
        if exact {
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(host(t)?.iter().map(|v| v.to_bits()).collect())
            };
            ensure!(bits(va)? == bits(vb)?, "{what}: {na} differs");
        } else {
            check_close(&format!("{what}: {na}"), va, vb)?;
        }
    }
    Ok(())
}

fn on_device(device: &Device, model: &dyn Classifier) -> bool {
    model
        .params()
        .vars()
        .all(|(_, v)| v.device().same_device(device))
}

fn initial_weights_and_dropout_masks(gpu: &Device) -> Result<()> {
    for (name, spec, _, _) in cases()? {
        let on_gpu = build(&spec, 7, gpu)?;
        let on_cpu = build(&spec, 7, &Device::Cpu)?;
        ensure!(
            on_device(gpu, on_gpu.as_ref()),
            "{name}: built on another device"
        );
        check_same_params(name, on_gpu.as_ref(), on_cpu.as_ref(), true)?;
    }
    let ones = Tensor::ones((64, 50), DType::F32, &Device::Cpu)?;
    let dropout = Dropout::inverted(0.5);
    let on_gpu = dropout.apply(&ones.to_device(gpu)?, 11)?;
    ensure!(on_gpu.device().same_device(gpu), "dropout moved its input");
    ensure!(
        host(&on_gpu)? == host(&dropout.apply(&ones, 11)?)?,
        "dropout masks differ"
    );
    Ok(())
}

fn logits(gpu: &Device) -> Result<()> {
    for (name, spec, xs, _) in cases()? {
        let (on_gpu, on_cpu) = (build(&spec, 3, gpu)?, build(&spec, 3, &Device::Cpu)?);
        let xs_gpu = xs.to_device(gpu)?;
        // Train mode too: the dropout masks come from the seed, not from the device.
        for mode in [Mode::Eval, Mode::Train { seed: 5 }] {
            check_close(
                &format!("{name} logits {mode:?}"),
                &on_gpu.forward(&xs_gpu, mode)?,
                &on_cpu.forward(&xs, mode)?,
            )?;
        }
    }
    Ok(())
}

fn input_gradients(gpu: &Device) -> Result<()> {
    for (name, spec, xs, ys) in cases()? {
        let (on_gpu, on_cpu) = (build(&spec, 4, gpu)?, build(&spec, 4, &Device::Cpu)?);
        let g = on_gpu.loss_and_input_grad(&xs.to_device(gpu)?, &ys.to_device(gpu)?, Mode::Eval)?;
        let c = on_cpu.loss_and_input_grad(&xs, &ys, Mode::Eval)?;
        ensure!(
            g.grad.device().same_device(gpu),
            "{name}: gradient on another device"
        );
        ensure!(
            host(&c.grad)?.iter().any(|v| *v != 0.0),
            "{name}: zero input gradient"
        );
        check_close(&format!("{name} loss"), &g.loss, &c.loss)?;
        check_close(&format!("{name} input gradient"), &g.grad, &c.grad)?;
    }
    Ok(())
}

/// One momentum-SGD step of plain cross-entropy with dropout, with the max-norm constraints
/// (fused into the update on the CPU, tensor ops on the GPU).
fn one_step(model: &dyn Classifier, xs: &Tensor, ys: &Tensor) -> Result<()> {
    let mut sgd = SgdMomentum::new(Param::of_model(model), 0.5, 0.5, 0.5, 1, 1.0, 0.0)?;
    let step = Regularizer::None.step(model, xs, ys, 9)?;
    Ok(sgd.step(&step.grads)?)
}

fn training_step(gpu: &Device) -> Result<()> {
    for (name, spec, xs, ys) in cases()? {
        let (on_gpu, on_cpu) = (build(&spec, 5, gpu)?, build(&spec, 5, &Device::Cpu)?);
        let before = build(&spec, 5, &Device::Cpu)?;
        one_step(on_gpu.as_ref(), &xs.to_device(gpu)?, &ys.to_device(gpu)?)?;
        one_step(on_cpu.as_ref(), &xs, &ys)?;
        // A step that moved nothing would make the comparison vacuous.
        ensure!(
            check_same_params(name, on_cpu.as_ref(), before.as_ref(), true).is_err(),
            "{name}: the training step left every parameter unchanged"
        );
        check_same_params(
            &format!("{name} after one step"),
            on_gpu.as_ref(),
            on_cpu.as_ref(),
            false,
        )?;
    }
    Ok(())
}

fn checkpoints(gpu: &Device) -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (name, spec, _, _) in cases()? {
        let path = dir.path().join(format!("{name}.safetensors"));
        let on_gpu = build(&spec, 6, gpu)?;
        checkpoint::save(on_gpu.as_ref(), &path)?;
        let on_cpu = checkpoint::load(&path, &Device::Cpu)?;
        ensure!(
            on_device(&Device::Cpu, on_cpu.as_ref()),
            "{name}: not loaded on the CPU"
        );
        check_same_params(
            &format!("{name} saved on the GPU"),
            on_cpu.as_ref(),
            on_gpu.as_ref(),
            true,
        )?;
        let back = checkpoint::load(&path, gpu)?;
        ensure!(
            on_device(gpu, back.as_ref()),
            "{name}: not loaded on the GPU"
        );
        check_same_params(
            &format!("{name} loaded on the GPU"),
            back.as_ref(),
            on_gpu.as_ref(),
            true,
        )?;
    }
    Ok(())
}

/// One test per comparison, each skipped (passing) with a printed reason when no GPU opens.
macro_rules! gpu_tests {
    ($($test:ident => $body:ident),* $(,)?) => {$(
        #[test]
        fn $test() -> Result<()> {
            match gpu(stringify!($test)) {
                Some(device) => $body(&device),
                None => Ok(()),
            }
        }
    )*};
}

gpu_tests! {
    gpu_initial_weights_and_dropout_masks_equal_the_cpu_bit_for_bit => initial_weights_and_dropout_masks,
    gpu_logits_equal_the_cpu => logits,
    gpu_input_gradients_equal_the_cpu => input_gradients,
    gpu_training_step_equals_the_cpu => training_step,
    gpu_checkpoints_load_on_the_cpu_and_back => checkpoints,
}

/// The comparisons run CPU against CPU on every build (they must pass), and the tolerance
/// check must catch a difference just above it.
#[test]
fn comparisons_run_cpu_against_cpu_and_catch_differences() -> Result<()> {
    let cpu = Device::Cpu;
    initial_weights_and_dropout_masks(&cpu)?;
    logits(&cpu)?;
    input_gradients(&cpu)?;
    training_step(&cpu)?;
    checkpoints(&cpu)?;
    let a = Tensor::new(&[1f32, -2.0, 0.5], &cpu)?;
    check_close("same", &a, &a)?;
    let off = Tensor::new(&[1f32, -2.0 * (1.0 + 2.0 * TOLERANCE), 0.5], &cpu)?;
    ensure!(
        check_close("off", &off, &a).is_err(),
        "a difference of 2x the tolerance passed"
    );
    Ok(())
}

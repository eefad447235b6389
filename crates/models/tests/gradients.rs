//! Autograd gradients of the models' building blocks against central finite differences (f64).

use candle_core::{DType, Device, Result, Tensor, Var};
use gauntlet_models::layers::{linear, maxout};
use gauntlet_models::{build, per_example_cross_entropy, Arch, Classifier, Mode, ModelSpec};

mod common;

use common::fd_error;

fn random(shape: (usize, usize), seed: u64) -> Result<Var> {
    // A deterministic, tie-free fill: distinct values spread over [-1, 1].
    let n = shape.0 * shape.1;
    let values: Vec<f64> = (0..n)
        .map(|i| {
            (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0 + i as f64 * 1e-4
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu)?)
}

#[test]
fn maxout_layer_gradient_matches_finite_differences() -> Result<()> {
    let x = random((3, 5), 1)?;
    let w = random((4 * 3, 5), 2)?;
    let b = random((1, 12), 3)?;
    let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu)?;
    let f = || {
        let h = maxout(
            &linear(x.as_tensor(), w.as_tensor(), &b.as_tensor().squeeze(0)?)?,
            3,
        )?;
        per_example_cross_entropy(&h, &labels)?.sum_all()
    };
    let err = fd_error(&[&x, &w, &b], f)?;
    assert!(err < 1e-6, "max relative error {err}");
    Ok(())
}

#[test]
fn model_input_gradient_matches_finite_differences() -> Result<()> {
    // A small Maxout MLP in f32: the input gradient agrees with f64 differences of its loss.
    let spec = ModelSpec::new(Arch::maxout_mlp(vec![7, 5], 3), [1, 2, 3], 4);
    let model = build(&spec, 5, &Device::Cpu)?;
    let xs = Tensor::from_vec(
        (0..12)
            .map(|i| (i as f32 * 0.37).sin().abs())
            .collect::<Vec<_>>(),
        (2, 1, 2, 3),
        &Device::Cpu,
    )?;
    let labels = Tensor::new(&[1u32, 2], &Device::Cpu)?;
    let ig = model.loss_and_input_grad(&xs, &labels, Mode::Eval)?;
    let grad = ig.grad.flatten_all()?.to_vec1::<f32>()?;
    let loss_at = |x: &Tensor| -> Result<f64> {
        per_example_cross_entropy(&model.forward(x, Mode::Eval)?, &labels)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let base = xs.flatten_all()?.to_vec1::<f32>()?;
    let h = 1e-2f32;
    for i in 0..base.len() {
        let mut up = base.clone();
        up[i] += h;
        let mut down = base.clone();
        down[i] -= h;
        let up = loss_at(&Tensor::from_vec(up, xs.shape(), &Device::Cpu)?)?;
        let down = loss_at(&Tensor::from_vec(down, xs.shape(), &Device::Cpu)?)?;
        let numeric = (up - down) / (2.0 * h as f64);
        assert!(
            (numeric - grad[i] as f64).abs() < 1e-3 * numeric.abs().max(1e-2),
            "entry {i}: {numeric} vs {}",
            grad[i]
        );
    }
    Ok(())
}

#[test]
fn same_seed_same_weights_different_seed_different_weights() -> Result<()> {
    let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![10], 2));
    let a = build(&spec, 1, &Device::Cpu)?.params().tensors();
    let b = build(&spec, 1, &Device::Cpu)?.params().tensors();
    let c = build(&spec, 2, &Device::Cpu)?.params().tensors();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(flat(&a[0].1), flat(&b[0].1));
    assert_ne!(flat(&a[0].1), flat(&c[0].1));
    Ok(())
}

#[test]
fn maxout_hand_written_input_gradient_equals_autograd() -> Result<()> {
    use gauntlet_models::autograd_input_grad;
    let arch = Arch::MaxoutMlp(gauntlet_models::MaxoutMlpSpec {
        units: vec![9, 7],
        pieces: 3,
        init_range: 0.5,
        ..Default::default()
    });
    let model = build(&ModelSpec::new(arch, [1, 4, 4], 5), 8, &Device::Cpu)?;
    // Include an all-zero image: its pre-activations tie at the bias (zero), the case where a
    // hand-written max backward most easily disagrees with Candle's.
    let mut values: Vec<f32> = (0..48).map(|i| ((i * 37 % 17) as f32) / 17.0).collect();
    values.extend([0f32; 16]);
    let xs = Tensor::from_vec(values, (4, 1, 4, 4), &Device::Cpu)?;
    let labels = Tensor::new(&[0u32, 4, 2, 1], &Device::Cpu)?;
    let compare = |model: &dyn Classifier, labels: &Tensor| -> Result<()> {
        let fast = model.loss_and_input_grad(&xs, labels, Mode::Eval)?;
        let slow = autograd_input_grad(model, &xs, labels, Mode::Eval)?;
        for (name, a, b) in [
            ("grad", &fast.grad, &slow.grad),
            ("loss", &fast.loss, &slow.loss),
            ("logits", &fast.logits, &slow.logits),
        ] {
            assert_eq!(a.dims(), b.dims(), "{name}");
            // Per example, relative to that example's largest entry: confident models have
            // gradients around 1e-8 and smaller, where an absolute tolerance checks nothing.
            let rows = |t: &Tensor| t.reshape((t.dim(0)?, ()))?.to_vec2::<f32>();
            for (ra, rb) in rows(a)?.iter().zip(rows(b)?) {
                let scale = rb
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()))
                    .max(f32::MIN_POSITIVE);
                for (x, y) in ra.iter().zip(&rb) {
                    assert!(
                        (x - y).abs() <= 1e-4 * scale,
                        "{name}: {x} vs {y} (row scale {scale})"
                    );
                }
            }
        }
        Ok(())
    };
    compare(model.as_ref(), &labels)?;
    // A very confident model: scaling the logits makes p_y round to 1 in f32, where computing
    // p_y − 1 directly loses the true class's gradient entirely.
    let out = model
        .params()
        .vars()
        .find(|(n, _)| n == "out.weight")
        .unwrap()
        .1
        .clone();
    out.set(&(out.as_tensor() * 100.0)?)?;
    let confident = model.forward(&xs, Mode::Eval)?;
    let preds = confident.argmax(1)?;
    // The zero image (row 3) has zero logits whatever the scale; the others must saturate.
    let p_max = candle_nn::ops::softmax(&confident, 1)?
        .max(1)?
        .narrow(0, 0, 3)?
        .min(0)?
        .to_scalar::<f32>()?;
    assert!(p_max == 1.0, "the check needs p rounding to 1, got {p_max}");
    compare(model.as_ref(), &preds)
}

//! Convolutional models and preprocessing: pooling gradients and sizes, model input gradients,
//! ZCA, checkpoints with buffers, specs in TOML.

use candle_core::{DType, Device, Result, Tensor, Var};
use gauntlet_models::conv::{max_pool, pooled_len};
use gauntlet_models::preprocess::{fit_zca, gcn};
use gauntlet_models::{
    build, build_fitted, checkpoint, per_example_cross_entropy, Arch, Classifier, CnnSpec,
    ConvMaxoutFc, ConvMaxoutLayer, ConvMaxoutSpec, Mode, ModelSpec, Preprocess,
};

mod common;

use common::uniform;

fn images(shape: (usize, usize, usize, usize), seed: u64) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let values: Vec<f32> = uniform(n, seed).into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A small conv maxout with overlapping and truncated pooling windows and an fc layer; large
/// initial weights so that the logits depend clearly on the input.
fn tiny_conv_maxout() -> ConvMaxoutSpec {
    ConvMaxoutSpec {
        layers: vec![
            // 7 → conv 7 → pool 3/2 → 3
            ConvMaxoutLayer {
                channels: 2,
                pieces: 2,
                kernel: 3,
                pad: 1,
                pool: 3,
                pool_stride: 2,
                max_kernel_norm: Some(0.9),
            },
            // 3 → conv 4 → pool 2/1 → 3
            ConvMaxoutLayer {
                channels: 3,
                pieces: 2,
                kernel: 2,
                pad: 1,
                pool: 2,
                pool_stride: 1,
                max_kernel_norm: None,
            },
        ],
        fc: Some(ConvMaxoutFc {
            units: 4,
            pieces: 2,
            max_norm: Some(1.9),
        }),
        init_range: 0.5,
        ..ConvMaxoutSpec::default()
    }
}

#[test]
fn overlapping_pool_gradient_matches_finite_differences() -> Result<()> {
    // Distinct values at least 1e-3 apart: no ties, and a 1e-6 step never changes an argmax.
    let (b, c, h, w) = (2, 2, 7, 6);
    let n = b * c * h * w;
    let values: Vec<f64> = (0..n).map(|i| ((i * 53) % n) as f64 * 1e-3 - 0.1).collect();
    let x = Var::from_tensor(&Tensor::from_vec(values, (b, c, h, w), &Device::Cpu)?)?;
    for (pool, stride) in [(4, 2), (3, 2), (3, 1), (2, 2)] {
        let (oh, ow) = (pooled_len(h, pool, stride), pooled_len(w, pool, stride));
        // A weighted sum, so that each output's gradient differs.
        let weights = Tensor::from_vec(uniform(b * c * oh * ow, 5), (b, c, oh, ow), &Device::Cpu)?;
        let f = || {
            max_pool(x.as_tensor(), pool, stride)?
                .mul(&weights)?
                .sum_all()
        };
        let analytic = f()?
            .backward()?
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = x.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let step = 1e-6;
        for (i, a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, (b, c, h, w), &Device::Cpu)?;
                max_pool(&t, pool, stride)?
                    .mul(&weights)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let numeric = (at(step)? - at(-step)?) / (2.0 * step);
            assert!(
                (a - numeric).abs() < 1e-8,
                "pool {pool}/{stride} entry {i}: autograd {a}, numeric {numeric}"
            );
        }
    }
    Ok(())
}

#[test]
fn max_pool_supports_double_backprop() -> Result<()> {
    // R(θ) = ‖∂L/∂x‖² with L = Σ c ⊙ pool(θ ⊙ x)²: its gradient in θ goes through the pool's
    // backward. Candle keeps the backward graph only with this variable set, read once per
    // thread, hence the fresh thread (other tests are unaffected: it only skips detaching).
    std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1");
    std::thread::spawn(|| -> Result<()> {
        let (h, w, pool, stride) = (6, 5, 3, 2);
        let n = h * w;
        let x = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 7) % n) as f64 * 0.05 + 0.1)
                .collect::<Vec<_>>(),
            (1, 1, h, w),
            &Device::Cpu,
        )?;
        let (oh, ow) = (pooled_len(h, pool, stride), pooled_len(w, pool, stride));
        let c = Tensor::from_vec(uniform(oh * ow, 3), (1, 1, oh, ow), &Device::Cpu)?;
        let theta = Var::from_tensor(&Tensor::from_vec(
            uniform(n, 4).iter().map(|v| v + 0.5).collect::<Vec<_>>(),
            (1, 1, h, w),
            &Device::Cpu,
        )?)?;
        let penalty = |theta: &Tensor| -> Result<Tensor> {
            let xv = Var::from_tensor(&x)?;
            let loss = max_pool(&theta.mul(xv.as_tensor())?, pool, stride)?
                .sqr()?
                .mul(&c)?
                .sum_all()?;
            loss.backward()?
                .get(xv.as_tensor())
                .unwrap()
                .sqr()?
                .sum_all()
        };
        let analytic = penalty(theta.as_tensor())?
            .backward()?
            .get(theta.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = theta.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let step = 1e-6;
        for (i, a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                penalty(&Tensor::from_vec(v, (1, 1, h, w), &Device::Cpu)?)?.to_scalar::<f64>()
            };
            let numeric = (at(step)? - at(-step)?) / (2.0 * step);
            assert!(
                (a - numeric).abs() < 1e-6 * numeric.abs().max(1.0),
                "entry {i}: autograd {a}, numeric {numeric}"
            );
        }
        assert!(analytic.iter().any(|a| a.abs() > 1e-3), "{analytic:?}");
        Ok(())
    })
    .join()
    .unwrap()
}

#[test]
fn pooled_sizes_of_the_mnist_and_cifar_recipes() -> Result<()> {
    let mnist = ConvMaxoutSpec::default();
    assert_eq!(
        mnist.layer_shapes([1, 28, 28])?,
        vec![[48, 10, 10], [48, 4, 4], [24, 3, 3]]
    );
    let cifar = ConvMaxoutSpec::cifar10();
    assert_eq!(
        cifar.layer_shapes([3, 32, 32])?,
        vec![[96, 16, 16], [192, 7, 7], [192, 5, 5]]
    );
    assert_eq!(
        CnnSpec::default().layer_shapes([1, 28, 28])?,
        vec![[32, 12, 12], [64, 4, 4]]
    );

    // The built MNIST model: softmax on 24·3·3 = 216 inputs, logits for one image.
    let spec = ModelSpec::mnist(Arch::ConvMaxout(mnist));
    let model = build(&spec, 1, &Device::Cpu)?;
    let shapes: Vec<(String, Vec<usize>)> = model
        .params()
        .tensors()
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    assert!(
        shapes.contains(&("h0.weight".into(), vec![96, 1, 8, 8])),
        "{shapes:?}"
    );
    assert!(
        shapes.contains(&("out.weight".into(), vec![10, 216])),
        "{shapes:?}"
    );
    assert_eq!(
        model
            .forward(&images((1, 1, 28, 28), 2)?, Mode::Eval)?
            .dims(),
        &[1, 10]
    );

    // Sizes that do not fit name the layer.
    let mut bad = ConvMaxoutSpec::default();
    bad.layers[2].kernel = 11;
    let err = bad.validate([1, 28, 28]).err().unwrap().to_string();
    assert!(err.contains("layer 2") && err.contains("kernel"), "{err}");
    bad.layers[2].kernel = 5;
    bad.layers[1].pieces = 0;
    let err = bad.validate([1, 28, 28]).err().unwrap().to_string();
    assert!(err.contains("layer 1") && err.contains("pieces"), "{err}");
    Ok(())
}

/// Checks `model`'s autograd input gradient against f64 differences of its f32 loss.
///
/// The models are piecewise smooth (max, ReLU). Where the one-sided differences disagree a
/// kink lies within `step`, and autograd must match the side without it; most entries must be
/// kink-free.
fn check_input_gradient(
    model: &dyn Classifier,
    xs: &Tensor,
    labels: &Tensor,
    step: f32,
) -> Result<()> {
    let ig = model.loss_and_input_grad(xs, labels, Mode::Eval)?;
    let grad = ig.grad.flatten_all()?.to_vec1::<f32>()?;
    let base = xs.flatten_all()?.to_vec1::<f32>()?;
    let loss_at = |i: usize, delta: f32| -> Result<f64> {
        let mut x = base.clone();
        x[i] += delta;
        let x = Tensor::from_vec(x, xs.shape(), &Device::Cpu)?;
        let loss = per_example_cross_entropy(&model.forward(&x, Mode::Eval)?, labels)?;
        loss.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()
    };
    let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
    assert!(scale > 1e-4, "gradient too small to test: {scale}");
    let close = |numeric: f64, g: f64| (numeric - g).abs() < 1e-2 * numeric.abs() + 3e-3 * scale;
    let h = step as f64;
    let mut kinks = 0;
    for (i, &g) in grad.iter().enumerate() {
        let (up, mid, down) = (loss_at(i, step)?, loss_at(i, 0.0)?, loss_at(i, -step)?);
        let (forward, backward, central) =
            ((up - mid) / h, (mid - down) / h, (up - down) / (2.0 * h));
        let g = g as f64;
        if close(forward, backward) {
            assert!(
                close(central, g),
                "entry {i}: numeric {central}, autograd {g}"
            );
        } else {
            kinks += 1;
            assert!(
                close(forward, g) || close(backward, g),
                "entry {i}: one-sided {forward} and {backward}, autograd {g}"
            );
        }
    }
    assert!(
        kinks * 2 <= grad.len(),
        "{kinks} of {} entries near kinks",
        grad.len()
    );
    Ok(())
}

#[test]
fn conv_maxout_input_gradient_matches_finite_differences() -> Result<()> {
    let spec = ModelSpec::new(Arch::ConvMaxout(tiny_conv_maxout()), [1, 7, 7], 3);
    let model = build(&spec, 3, &Device::Cpu)?;
    let labels = Tensor::new(&[0u32, 2], &Device::Cpu)?;
    check_input_gradient(model.as_ref(), &images((2, 1, 7, 7), 4)?, &labels, 1e-3)?;

    // Through GCN + ZCA as well (scale 1 keeps the logits moderate).
    let spec = spec.with_preprocess(Preprocess::GcnZca {
        scale: 1.0,
        filter_bias: 0.1,
    });
    let model = build_fitted(&spec, 3, &Device::Cpu, &images((30, 1, 7, 7), 6)?)?;
    check_input_gradient(model.as_ref(), &images((2, 1, 7, 7), 7)?, &labels, 1e-3)
}

#[test]
fn cnn_input_gradient_matches_finite_differences() -> Result<()> {
    let arch = CnnSpec {
        layers: vec![gauntlet_models::CnnLayer {
            channels: 3,
            kernel: 3,
            pad: 1,
            pool: 3,
            pool_stride: 2,
        }],
        hidden: vec![5],
        ..CnnSpec::default()
    };
    let model = build(
        &ModelSpec::new(Arch::Cnn(arch), [2, 5, 5], 3),
        8,
        &Device::Cpu,
    )?;
    let labels = Tensor::new(&[1u32, 2], &Device::Cpu)?;
    check_input_gradient(model.as_ref(), &images((2, 2, 5, 5), 9)?, &labels, 1e-2)
}

#[test]
fn dropout_follows_the_seed_and_constraints_clip_each_output_channel() -> Result<()> {
    let spec = ModelSpec::new(Arch::ConvMaxout(tiny_conv_maxout()), [1, 7, 7], 3);
    let model = build(&spec, 3, &Device::Cpu)?;
    let xs = images((2, 1, 7, 7), 4)?;
    let logits =
        |mode| -> Result<Vec<f32>> { model.forward(&xs, mode)?.flatten_all()?.to_vec1::<f32>() };
    assert_eq!(
        logits(Mode::Train { seed: 1 })?,
        logits(Mode::Train { seed: 1 })?
    );
    assert_ne!(
        logits(Mode::Train { seed: 1 })?,
        logits(Mode::Train { seed: 2 })?
    );
    assert_ne!(logits(Mode::Train { seed: 1 })?, logits(Mode::Eval)?);

    // All-ones weights: every row norm is √fan_in, above each constraint.
    for (_, var) in model.params().vars() {
        var.set(&var.ones_like()?)?;
    }
    model.apply_constraints()?;
    let norms = |name: &str| -> Result<Vec<f32>> {
        let (_, t) = model
            .params()
            .tensors()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap();
        t.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?.to_vec1::<f32>()
    };
    let all_near = |v: Vec<f32>, c: f32| v.iter().all(|n| (n - c).abs() < 1e-5);
    assert!(all_near(norms("h0.weight")?, 0.9));
    // h1 is unconstrained: its rows keep norm √(2·2·2).
    assert!(all_near(norms("h1.weight")?, 8f32.sqrt()));
    assert!(all_near(norms("h2.weight")?, 1.9));
    assert!(all_near(norms("out.weight")?, 1.9365));
    // Biases are never clipped.
    let (_, bias) = model
        .params()
        .tensors()
        .into_iter()
        .find(|(n, _)| n == "h0.bias")
        .unwrap();
    assert!(all_near(bias.to_vec1::<f32>()?, 1.0));
    Ok(())
}

#[test]
fn conv_maxout_with_gcn_zca_round_trips_bit_exactly() -> Result<()> {
    let spec = ModelSpec::new(Arch::ConvMaxout(tiny_conv_maxout()), [3, 7, 7], 4)
        .with_preprocess(Preprocess::cifar10());
    // A GcnZca spec cannot be built without training images.
    let err = build(&spec, 1, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("build_fitted"), "{err}");

    let model = build_fitted(&spec, 1, &Device::Cpu, &images((40, 3, 7, 7), 1)?)?;
    // Same seed, same weights as without preprocessing.
    let plain = build(
        &ModelSpec {
            preprocess: Preprocess::None,
            ..spec.clone()
        },
        1,
        &Device::Cpu,
    )?;
    assert_eq!(
        model
            .params()
            .vars()
            .next()
            .unwrap()
            .1
            .flatten_all()?
            .to_vec1::<f32>()?,
        plain
            .params()
            .vars()
            .next()
            .unwrap()
            .1
            .flatten_all()?
            .to_vec1::<f32>()?
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.safetensors");
    checkpoint::save(model.as_ref(), &path)?;
    let loaded = checkpoint::load(&path, &Device::Cpu)?;
    assert_eq!(loaded.spec(), &spec);
    let (a, b) = (model.params().tensors(), loaded.params().tensors());
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"preprocess.mean") && names.contains(&"preprocess.zca"),
        "{names:?}"
    );
    assert_eq!(a.len(), b.len());
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    };
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(bits(ta)?, bits(tb)?, "{na} differs");
    }
    let xs = images((2, 3, 7, 7), 2)?;
    assert_eq!(
        bits(&model.forward(&xs, Mode::Eval)?)?,
        bits(&loaded.forward(&xs, Mode::Eval)?)?
    );
    Ok(())
}

#[test]
fn zca_whitening_gives_identity_covariance() -> Result<()> {
    // 2000 rows of 6 correlated features: z · A with a fixed mixing matrix A, plus an offset.
    let (n, d) = (2000, 6);
    let z = uniform(n * d, 11);
    let a = uniform(d * d, 12);
    let rows: Vec<f32> = (0..n)
        .flat_map(|r| {
            let (z, a) = (&z, &a);
            (0..d)
                .map(move |j| (0..d).map(|k| z[r * d + k] * a[k * d + j]).sum::<f64>() as f32 + 3.0)
        })
        .collect();
    let xs = Tensor::from_vec(rows, (n, d), &Device::Cpu)?;
    let zca = fit_zca(&xs, 0.0)?;
    let w = xs
        .broadcast_sub(&zca.mean)?
        .matmul(&zca.p)?
        .to_dtype(DType::F64)?;
    let cov = (w.t()?.matmul(&w)? / n as f64)?.to_vec2::<f64>()?;
    for (i, row) in cov.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let expected = if i == j { 1.0 } else { 0.0 };
            assert!((v - expected).abs() < 1e-3, "cov[{i}][{j}] = {v}");
        }
    }
    // ZCA is the symmetric whitening: P = Pᵀ.
    let p = zca.p.to_vec2::<f32>()?;
    assert!((0..d).all(|i| (0..d).all(|j| (p[i][j] - p[j][i]).abs() < 1e-5 * p[i][i].abs())));

    // GCN'd rows sum to zero, so without filter bias their covariance is singular.
    let err = fit_zca(&gcn(&xs.to_dtype(DType::F64)?, 55.0)?, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("singular"), "{err}");
    let spec = ModelSpec::new(Arch::maxout_mlp(vec![3], 2), [1, 2, 3], 2).with_preprocess(
        Preprocess::GcnZca {
            scale: 55.0,
            filter_bias: 0.0,
        },
    );
    let err = build_fitted(&spec, 1, &Device::Cpu, &images((50, 1, 2, 3), 3)?)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("singular"), "{err}");
    Ok(())
}

#[test]
fn toml_conv_specs_parse_with_defaults_and_reject_typos() {
    #[derive(serde::Deserialize)]
    struct Wrap {
        arch: Arch,
    }
    let w: Wrap = toml::from_str("arch = { kind = \"conv-maxout\" }").unwrap();
    assert_eq!(w.arch, Arch::ConvMaxout(ConvMaxoutSpec::default()));
    let w: Wrap = toml::from_str("arch = { kind = \"cnn\" }").unwrap();
    assert_eq!(w.arch, Arch::Cnn(CnnSpec::default()));
    let w: Wrap = toml::from_str(
        "arch = { kind = \"conv-maxout\", fc = { units = 500, pieces = 5, max-norm = 1.9 } }",
    )
    .unwrap();
    let Arch::ConvMaxout(s) = w.arch else {
        panic!("kind")
    };
    assert_eq!(s.fc, ConvMaxoutSpec::cifar10().fc);

    for typo in [
        "arch = { kind = \"conv-maxout\", layerz = [] }",
        "arch = { kind = \"conv-maxout\", layers = [\
         { channels = 4, pieces = 2, kernel = 3, pool = 2, pool-stride = 2, padd = 1 }] }",
    ] {
        let err = toml::from_str::<Wrap>(typo)
            .err()
            .expect("typo rejected")
            .to_string();
        assert!(err.contains("layerz") || err.contains("padd"), "{err}");
    }

    // A whole model spec; `preprocess` may be omitted (older specs) or given.
    let spec: ModelSpec = toml::from_str(
        "input = [3, 32, 32]\nn-classes = 10\narch = { kind = \"conv-maxout\" }\n\
         preprocess = { kind = \"gcn-zca\" }",
    )
    .unwrap();
    assert_eq!(spec.preprocess, Preprocess::cifar10());
    let old: ModelSpec =
        serde_json::from_str(r#"{"arch":{"kind":"cnn"},"input":[1,28,28],"n-classes":10}"#)
            .unwrap();
    assert_eq!(old.preprocess, Preprocess::None);
}

#[test]
fn a_tied_two_by_two_window_gives_its_gradient_to_the_first_maximum_in_row_major_order(
) -> Result<()> {
    // Windows (row-major): [3, 3 / 3, 0] → first; [1, 2 / 2, 2] → second; [5, 4 / 5, 5] → first.
    let plane = [
        [3f64, 3.0, 1.0, 2.0, 5.0, 4.0],
        [3.0, 0.0, 2.0, 2.0, 5.0, 5.0],
    ];
    let flat: Vec<f64> = plane.iter().flatten().copied().collect();
    let x = Var::from_tensor(&Tensor::from_vec(flat, (1, 1, 2, 6), &Device::Cpu)?)?;
    let y = max_pool(x.as_tensor(), 2, 2)?;
    assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, vec![3.0, 2.0, 5.0]);
    let g = y.sum_all()?.backward()?;
    let dx = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut want = vec![0.0; 12];
    for i in [0, 3, 4] {
        want[i] = 1.0;
    }
    assert_eq!(dx, want);
    Ok(())
}

//! The custom layer kernels (gauntlet_models::kernels) against central finite differences, and
//! every architecture's input gradient with weight gradients skipped against the full
//! autograd pass.

use candle_core::{DType, Device, Result, Tensor, Var};
use gauntlet_models::kernels::{conv2d, linear, max_pieces, Gradients};
use gauntlet_models::{
    autograd_input_grad, build, per_example_cross_entropy, Activation, Arch, CnnLayer, CnnSpec,
    ConvMaxoutLayer, ConvMaxoutSpec, MlpSpec, Mode, ModelSpec,
};

/// Deterministic values in [−1, 1), distinct enough that a 1e-6 step flips no maximum.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn var(shape: &[usize], seed: u64) -> Result<Var> {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(values(n, seed), shape, &Device::Cpu)?)
}

/// Worst relative error between the gradients of `f` at `vars` and central differences.
fn fd_error(vars: &[&Var], f: impl Fn() -> Result<Tensor>) -> Result<f64> {
    let grads = f()?.backward()?;
    let h = 1e-6;
    let mut worst = 0f64;
    for var in vars {
        let analytic = grads
            .get(var.as_tensor())
            .expect("every operand gets a gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for (i, a) in analytic.iter().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                f()?.to_scalar::<f64>()
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
            worst = worst.max((a - numeric).abs() / numeric.abs().max(a.abs()).max(1e-3));
        }
    }
    Ok(worst)
}

#[test]
fn conv_linear_and_maxout_kernels_match_finite_differences() -> Result<()> {
    // Input-only conv (pad 2 > kernel reach on one side) → maxout over 2 channel pieces →
    // linear with every gradient.
    let x = var(&[2, 2, 5, 6], 1)?;
    let (w, b) = (var(&[4, 2, 3, 3], 2)?, var(&[4], 3)?);
    let w2 = var(&[3, 2 * 7 * 8], 4)?;
    let b2 = var(&[3], 5)?;
    let probe = Tensor::from_vec(values(6, 6), (2, 3), &Device::Cpu)?;
    let f = || {
        let z = conv2d(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            2,
            Gradients::InputOnly,
        )?;
        let h = max_pieces(&z, 2, 7 * 8, &[2, 2, 7, 8])?;
        linear(
            &h.flatten_from(1)?,
            w2.as_tensor(),
            b2.as_tensor(),
            Gradients::All,
        )?
        .tanh()?
        .mul(&probe)?
        .sum_all()
    };
    let err = fd_error(&[&x, &w2, &b2], f)?;
    assert!(err < 1e-6, "max relative error {err}");
    Ok(())
}

fn f32_var(shape: &[usize], seed: u64) -> Result<Var> {
    Var::from_tensor(&var(shape, seed)?.as_tensor().to_dtype(DType::F32)?)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.into_iter().map(f32::to_bits).collect())
}

/// Training runs the custom fully connected and maxout kernels: at the paper models' sizes
/// they must give Candle's values and gradients bit for bit, so that training results do not
/// depend on them.
#[test]
fn linear_and_maxout_kernels_are_bitwise_candle_at_the_paper_sizes() -> Result<()> {
    for (batch, fan_in, fan_out, pieces) in [
        (100, 784, 1200, 5),
        (100, 240, 1200, 5),
        (100, 800, 800, 1),
        (128, 240, 10, 1),
    ] {
        let (x, w, b) = (
            f32_var(&[batch, fan_in], 1)?,
            f32_var(&[fan_out, fan_in], 2)?,
            f32_var(&[fan_out], 3)?,
        );
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let units = fan_out / pieces;
        let fast = max_pieces(
            &linear(xt, wt, bt, Gradients::All)?,
            pieces,
            1,
            &[batch, units],
        )?;
        let slow = xt
            .matmul(&wt.t()?)?
            .broadcast_add(bt)?
            .reshape((batch, units, pieces))?
            .max(2)?;
        let case = format!("{batch}×{fan_in}→{fan_out}");
        assert_eq!(bits(&fast)?, bits(&slow)?, "{case}: forward");
        let probe = f32_var(&[batch, units], 4)?;
        let gf = (fast * probe.as_tensor())?.sum_all()?.backward()?;
        let gs = (slow * probe.as_tensor())?.sum_all()?.backward()?;
        for (name, v) in [("input", &x), ("weight", &w), ("bias", &b)] {
            let (f, s) = (gf.get(v.as_tensor()), gs.get(v.as_tensor()));
            assert_eq!(bits(f.unwrap())?, bits(s.unwrap())?, "{case}: {name}");
        }
    }
    Ok(())
}

/// Small instances of the four architectures on 1×8×8 inputs.
fn models() -> Vec<ModelSpec> {
    let conv_maxout = ConvMaxoutSpec {
        layers: vec![ConvMaxoutLayer {
            channels: 3,
            pieces: 2,
            kernel: 3,
            pad: 1,
            pool: 3,
            pool_stride: 2,
            max_kernel_norm: None,
        }],
        init_range: 0.5,
        ..ConvMaxoutSpec::default()
    };
    let cnn = CnnSpec {
        layers: vec![CnnLayer {
            channels: 4,
            kernel: 3,
            pad: 0,
            pool: 2,
            pool_stride: 2,
        }],
        hidden: vec![6],
        ..CnnSpec::default()
    };
    let mlp = MlpSpec {
        hidden: vec![9, 7],
        activation: Activation::Relu,
        ..MlpSpec::default()
    };
    [
        Arch::maxout_mlp(vec![6, 5], 3),
        Arch::Mlp(mlp),
        Arch::ConvMaxout(conv_maxout),
        Arch::Cnn(cnn),
    ]
    .into_iter()
    .map(|arch| ModelSpec::new(arch, [1, 8, 8], 4))
    .collect()
}

#[test]
fn input_only_pass_gives_the_full_pass_input_gradient_for_every_architecture() -> Result<()> {
    let xs = Tensor::from_vec(
        values(3 * 64, 7)
            .into_iter()
            .map(|v| (v as f32 + 1.0) / 2.0)
            .collect::<Vec<_>>(),
        (3, 1, 8, 8),
        &Device::Cpu,
    )?;
    let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu)?;
    for spec in models() {
        let model = build(&spec, 3, &Device::Cpu)?;
        let fast = autograd_input_grad(model.as_ref(), &xs, &labels, Mode::Eval)?;
        // The same loss through `forward`, with every weight gradient computed.
        let leaf = Var::from_tensor(&xs)?;
        let logits = model.forward(leaf.as_tensor(), Mode::Eval)?;
        let grads = per_example_cross_entropy(&logits, &labels)?
            .sum_all()?
            .backward()?;
        let full = grads.get(leaf.as_tensor()).expect("input gradient");
        let diff = (&fast.grad - full)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let scale = full.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(
            scale > 0.0,
            "{}: zero gradient checks nothing",
            spec.arch.kind()
        );
        assert!(
            diff <= 1e-6 * scale,
            "{}: input-only gradient differs by {diff} (scale {scale})",
            spec.arch.kind()
        );
        // Weights of the full pass did get gradients: the skip is the input-only pass's alone.
        let (_, first) = model.params().vars().next().expect("a parameter");
        assert!(grads.get(first.as_tensor()).is_some());
        assert_eq!(fast.grad.dtype(), DType::F32);
    }
    Ok(())
}

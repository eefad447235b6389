//! The custom layer kernels (gauntlet_models::kernels) against central finite differences, and
//! every architecture's input gradient with weight gradients skipped against the full
//! autograd pass.

use candle_core::{CpuStorage, DType, Device, Result, Tensor, Var};
use gauntlet_models::kernels::{
    conv2d, linear, linear_transposed, max_pieces, relu, sgd_momentum, sigmoid, transpose_into,
    transposed, Gradients,
};
use gauntlet_models::{
    autograd_input_grad, build, per_example_cross_entropy, Activation, Arch, CnnLayer, CnnSpec,
    ConvMaxoutLayer, ConvMaxoutSpec, MlpSpec, Mode, ModelSpec,
};

mod common;

use common::{fd_error, signed as values, var};

/// [`conv2d`] of three variables for an input-gradient pass.
fn input_only_conv(x: &Var, w: &Var, b: &Var, pad: usize) -> Result<Tensor> {
    conv2d(
        x.as_tensor(),
        w.as_tensor(),
        b.as_tensor(),
        pad,
        1,
        Gradients::InputOnly,
    )
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
        let z = input_only_conv(&x, &w, &b, 2)?;
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

/// Asserts that two f32 outputs and their gradients for `vars`, under one probe drawn from
/// `probe_seed`, are the same bits.
fn assert_same_bits(
    case: &str,
    vars: &[(&str, &Var)],
    a: Tensor,
    b: Tensor,
    probe_seed: u64,
) -> Result<()> {
    assert_eq!(bits(&a)?, bits(&b)?, "{case}: forward");
    let probe = f32_var(a.dims(), probe_seed)?;
    let ga = (a * probe.as_tensor())?.sum_all()?.backward()?;
    let gb = (b * probe.as_tensor())?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (x, y) = (ga.get(v.as_tensor()), gb.get(v.as_tensor()));
        assert_eq!(bits(x.unwrap())?, bits(y.unwrap())?, "{case}: {name}");
    }
    Ok(())
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
        assert_same_bits(
            &format!("{batch}×{fan_in}→{fan_out}"),
            &[("input", &x), ("weight", &w), ("bias", &b)],
            fast,
            slow,
            4,
        )?;
    }
    Ok(())
}

#[test]
fn transposed_is_candles_transpose_and_rewrites_in_place() -> Result<()> {
    // Shapes around the 64-wide tiles: single rows and columns, partial tiles both ways.
    for (rows, cols) in [
        (1, 1),
        (1, 70),
        (70, 1),
        (3, 130),
        (64, 64),
        (9, 17),
        (16, 70),
        (65, 129),
        (1200, 784),
    ] {
        for dtype in [DType::F32, DType::F64] {
            let w = var(&[rows, cols], 7)?.as_tensor().to_dtype(dtype)?;
            let t = transposed(&w)?;
            let expected = w.t()?.contiguous()?;
            assert_eq!(t.dims(), [cols, rows]);
            let diff = t.sub(&expected)?.abs()?.max_all()?.to_dtype(DType::F64)?;
            assert_eq!(diff.to_scalar::<f64>()?, 0.0, "{rows}×{cols} {dtype:?}");
            let w2 = var(&[rows, cols], 8)?.as_tensor().to_dtype(dtype)?;
            transpose_into(&t, &w2)?;
            let diff = t.sub(&w2.t()?)?.abs()?.max_all()?.to_dtype(DType::F64)?;
            assert_eq!(
                diff.to_scalar::<f64>()?,
                0.0,
                "rewritten {rows}×{cols} {dtype:?}"
            );
        }
    }
    let w = var(&[3, 5], 1)?;
    let wrong = Tensor::zeros((3, 5), DType::F64, &Device::Cpu)?;
    let err = transpose_into(&wrong, w.as_tensor())
        .unwrap_err()
        .to_string();
    assert!(err.contains("5×3"), "{err}");
    Ok(())
}

/// Eval loops hand the fully connected kernel a transposed copy of each weight: values and
/// every gradient must be the bits of the product that reads the weight itself, at the paper
/// sizes, at a two-thread shard's batch (50) and at widths that are not whole SIMD vectors.
#[test]
fn linear_through_the_transposed_weight_is_the_same_bits() -> Result<()> {
    for (batch, fan_in, fan_out) in [
        (100, 784, 1200),
        (50, 784, 1200),
        (100, 240, 1200),
        (50, 240, 10),
        (7, 30, 250),
    ] {
        let (x, w, b) = (
            f32_var(&[batch, fan_in], 11)?,
            f32_var(&[fan_out, fan_in], 12)?,
            f32_var(&[fan_out], 13)?,
        );
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let t = transposed(wt)?;
        let direct = linear(xt, wt, bt, Gradients::All)?;
        let via = linear_transposed(xt, wt, Some(&t), bt, Gradients::All)?;
        assert_same_bits(
            &format!("{batch}×{fan_in}→{fan_out}"),
            &[("input", &x), ("weight", &w), ("bias", &b)],
            direct,
            via,
            14,
        )?;
    }
    let (x, w, b) = (
        f32_var(&[4, 6], 1)?,
        f32_var(&[3, 6], 2)?,
        f32_var(&[3], 3)?,
    );
    let not_transposed = w.as_tensor().copy()?;
    let err = linear_transposed(
        x.as_tensor(),
        w.as_tensor(),
        Some(&not_transposed),
        b.as_tensor(),
        Gradients::All,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not fit"), "{err}");
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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// Forward values of `fast` against Candle's ops (`slow`), and the gradients of `vars`
/// (those `fast` computes) under a random linear functional of the output.
fn compare(
    vars: &[(&str, &Var)],
    fast: impl Fn() -> Result<Tensor>,
    slow: impl Fn() -> Result<Tensor>,
) -> Result<()> {
    let (yf, ys) = (fast()?, slow()?);
    assert!(max_abs_diff(&yf, &ys)? < 1e-12, "forward");
    let probe = Tensor::from_vec(values(ys.elem_count(), 99), ys.shape(), &Device::Cpu)?;
    let gf = (yf * &probe)?.sum_all()?.backward()?;
    let gs = (ys * &probe)?.sum_all()?.backward()?;
    for (name, v) in vars {
        let (a, e) = (
            gf.get(v.as_tensor()).unwrap(),
            gs.get(v.as_tensor()).unwrap(),
        );
        let err = max_abs_diff(a, e)?;
        assert!(err < 1e-12, "{name} gradient off by {err}");
    }
    Ok(())
}

#[test]
fn linear_matches_candle_forward_and_backward() -> Result<()> {
    let (x, w, b) = (var(&[5, 7], 1)?, var(&[3, 7], 2)?, var(&[3], 3)?);
    let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
    compare(
        &[("input", &x), ("weight", &w), ("bias", &b)],
        || linear(xt, wt, bt, Gradients::All),
        || xt.matmul(&wt.t()?)?.broadcast_add(bt),
    )
}

#[test]
fn conv2d_matches_candle_forward_and_gradients() -> Result<()> {
    // Padding larger and smaller than the kernel reach, non-square images, several
    // channels, strides of 1 to 3: every branch of the segment geometry. (Candle's own
    // backward gets the input's shape wrong when the stride does not divide
    // `size + 2·pad − kernel`; those cases are checked against finite differences below.)
    for (shape, k, pad, stride) in [
        ([2, 3, 7, 6], 3, 1, 1),
        ([3, 2, 5, 9], 4, 3, 1),
        ([1, 1, 6, 6], 6, 0, 1),
        ([2, 4, 4, 5], 2, 0, 1),
        ([2, 3, 7, 7], 3, 1, 2),
        ([2, 1, 27, 27], 5, 2, 2),
        ([3, 2, 8, 11], 4, 3, 3),
        ([1, 2, 6, 8], 2, 0, 2),
        // Batches of more images than compute threads, the last thread's share short.
        ([9, 2, 8, 8], 3, 1, 1),
        ([7, 1, 27, 27], 5, 2, 2),
    ] {
        let x = var(&shape, 4)?;
        let w = var(&[5, shape[1], k, k], 5)?;
        let b = var(&[5], 6)?;
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let candle = || {
            xt.conv2d(wt, pad, stride, 1, 1)?
                .broadcast_add(&bt.reshape((1, (), 1, 1))?)
        };
        compare(
            &[("input", &x)],
            || conv2d(xt, wt, bt, pad, stride, Gradients::InputOnly),
            candle,
        )?;
        compare(
            &[("input", &x), ("weight", &w), ("bias", &b)],
            || conv2d(xt, wt, bt, pad, stride, Gradients::All),
            candle,
        )?;
    }
    Ok(())
}

#[test]
fn strided_conv2d_matches_the_subsampled_stride_1_convolution() -> Result<()> {
    // Strides that leave a remainder (28 + 4 − 5 = 27 is odd: MNIST's stride-2 5×5 layers;
    // 9 + 2 − 3 = 8 is not a multiple of 3), where Candle's strided backward can fail. A stride-s
    // convolution is the stride-1 one read every s-th row and column, and Candle's stride-1
    // backward through that selection is the reference.
    for (shape, k, pad, stride) in [([2, 1, 28, 28], 5, 2, 2), ([1, 2, 9, 10], 3, 1, 3)] {
        let x = var(&shape, 21)?;
        let (w, b) = (var(&[3, shape[1], k, k], 22)?, var(&[3], 23)?);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let every = |n: usize| -> Result<Tensor> {
            let ids: Vec<u32> = (0..n as u32).step_by(stride).collect();
            let len = ids.len();
            Tensor::from_vec(ids, len, &Device::Cpu)
        };
        let subsampled = || {
            let full = xt.conv2d(wt, pad, 1, 1, 1)?;
            let (h, w) = (full.dim(2)?, full.dim(3)?);
            full.index_select(&every(h)?, 2)?
                .index_select(&every(w)?, 3)?
                .broadcast_add(&bt.reshape((1, (), 1, 1))?)
        };
        compare(
            &[("input", &x)],
            || conv2d(xt, wt, bt, pad, stride, Gradients::InputOnly),
            subsampled,
        )?;
        compare(
            &[("input", &x), ("weight", &w), ("bias", &b)],
            || conv2d(xt, wt, bt, pad, stride, Gradients::All),
            subsampled,
        )?;
    }
    Ok(())
}

#[test]
fn input_only_skips_weight_gradients_and_data_gets_none() -> Result<()> {
    let x = var(&[2, 3, 6, 6], 7)?;
    let (w, b) = (var(&[4, 3, 3, 3], 8)?, var(&[4], 9)?);
    let y = input_only_conv(&x, &w, &b, 1)?;
    let g = y.sum_all()?.backward()?;
    assert!(g.get(x.as_tensor()).is_some());
    assert!(g.get(w.as_tensor()).is_none() && g.get(b.as_tensor()).is_none());
    let (x2, w2, b2) = (var(&[2, 6], 10)?, var(&[3, 6], 11)?, var(&[3], 12)?);
    let y = linear(
        x2.as_tensor(),
        w2.as_tensor(),
        b2.as_tensor(),
        Gradients::InputOnly,
    )?;
    let g = y.sum_all()?.backward()?;
    assert!(g.get(x2.as_tensor()).is_some());
    assert!(g.get(w2.as_tensor()).is_none() && g.get(b2.as_tensor()).is_none());
    // Data that is not on the graph gets no gradient; the weights still do.
    let data = Tensor::from_vec(values(12, 10), (2, 6), &Device::Cpu)?;
    let y = linear(&data, w2.as_tensor(), b2.as_tensor(), Gradients::All)?;
    let g = y.sum_all()?.backward()?;
    assert!(g.get(&data).is_none() && g.get(w2.as_tensor()).is_some());
    Ok(())
}

#[test]
fn max_pieces_matches_candle_max_with_ties() -> Result<()> {
    // Ties (repeated values) must give every tied piece the full gradient, as before.
    let mut v = values(2 * 3 * 4 * 5, 15);
    v[7] = v[7 + 5];
    v[0] = v[5];
    let zs = Var::from_tensor(&Tensor::from_vec(v, (2, 3 * 4, 5), &Device::Cpu)?)?;
    let fast = max_pieces(zs.as_tensor(), 4, 5, &[2, 3, 5])?;
    let slow = zs
        .as_tensor()
        .reshape((6, 4, 5))?
        .max(1)?
        .reshape((2, 3, 5))?;
    assert!(max_abs_diff(&fast, &slow)? == 0.0);
    let probe = Tensor::from_vec(values(30, 16), (2, 3, 5), &Device::Cpu)?;
    let gf = (fast * &probe)?.sum_all()?.backward()?;
    let gs = (slow * &probe)?.sum_all()?.backward()?;
    let d = max_abs_diff(
        gf.get(zs.as_tensor()).unwrap(),
        gs.get(zs.as_tensor()).unwrap(),
    )?;
    assert!(d == 0.0, "gradient off by {d}");
    let err = max_pieces(zs.as_tensor(), 7, 5, &[1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("groups of 7"), "{err}");
    Ok(())
}

/// `f` on a pool of `threads` compute threads.
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

#[test]
fn input_gradient_is_bitwise_the_same_on_any_number_of_threads() -> Result<()> {
    let (x, w, b) = (
        f32_var(&[20, 3, 9, 9], 17)?,
        f32_var(&[6, 3, 4, 4], 18)?,
        f32_var(&[6], 19)?,
    );
    let run = |threads: usize| -> Result<Vec<f32>> {
        on_threads(threads, || {
            let y = input_only_conv(&x, &w, &b, 1)?;
            let g = y.sqr()?.sum_all()?.backward()?;
            g.get(x.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1::<f32>()
        })
    };
    assert_eq!(run(1)?, run(3)?);
    Ok(())
}

/// The weight gradient sums the batch in one run of images per thread: the same thread count
/// gives the same bits, and other thread counts agree to rounding.
#[test]
fn conv_weight_gradient_is_bitwise_repeatable_per_thread_count() -> Result<()> {
    let (x, w, b) = (
        f32_var(&[21, 3, 9, 9], 27)?,
        f32_var(&[6, 3, 4, 4], 28)?,
        f32_var(&[6], 29)?,
    );
    let run = |threads: usize| -> Result<Vec<f32>> {
        on_threads(threads, || {
            let y = conv2d(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                1,
                1,
                Gradients::All,
            )?;
            let g = y.sqr()?.sum_all()?.backward()?;
            let dw = g.get(w.as_tensor()).unwrap().flatten_all()?;
            let db = g.get(b.as_tensor()).unwrap();
            Tensor::cat(&[&dw, db], 0)?.to_vec1::<f32>()
        })
    };
    for threads in [1, 2, 3] {
        assert_eq!(run(threads)?, run(threads)?, "{threads} threads");
    }
    let (one, three) = (run(1)?, run(3)?);
    for (a, c) in one.iter().zip(&three) {
        assert!((a - c).abs() <= 1e-5 * a.abs().max(1.0), "{a} against {c}");
    }
    Ok(())
}

/// Every image's convolution output and input gradient are the bits it gets alone, so an
/// attack's result does not depend on the batch it ran in. The shapes are where that can
/// break: 7×7 outputs over a patch of 576 > 512, where gemm cuts the inner dimension at a
/// point that depends on the product's other sizes, so a product over several images at once
/// would sum in another order.
#[test]
fn conv_output_and_input_gradient_do_not_depend_on_the_batch() -> Result<()> {
    let (x, w, b) = (
        f32_var(&[9, 64, 7, 7], 31)?,
        f32_var(&[5, 64, 3, 3], 32)?,
        f32_var(&[5], 33)?,
    );
    let probe = f32_var(&[9, 5, 7, 7], 34)?;
    let pass = |x: &Tensor, probe: &Tensor| -> Result<(Vec<u32>, Vec<u32>)> {
        let x = Var::from_tensor(x)?;
        let y = conv2d(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            1,
            1,
            Gradients::InputOnly,
        )?;
        let g = (&y * probe)?.sum_all()?.backward()?;
        let dx = g.get(x.as_tensor()).expect("input gradient");
        Ok((bits(&y)?, bits(dx)?))
    };
    for threads in [1, 2] {
        on_threads(threads, || -> Result<()> {
            let (y, dx) = pass(x.as_tensor(), probe.as_tensor())?;
            let (y_len, dx_len) = (y.len() / 9, dx.len() / 9);
            for i in 0..9 {
                let (y_i, dx_i) = pass(
                    &x.as_tensor().narrow(0, i, 1)?,
                    &probe.as_tensor().narrow(0, i, 1)?,
                )?;
                assert_eq!(
                    y_i,
                    y[i * y_len..][..y_len],
                    "output of image {i}, {threads} threads"
                );
                assert_eq!(
                    dx_i,
                    dx[i * dx_len..][..dx_len],
                    "input gradient of image {i}"
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn f32_conv_agrees_with_f64() -> Result<()> {
    let x = var(&[2, 2, 8, 8], 12)?;
    let (w, b) = (var(&[3, 2, 5, 5], 13)?, var(&[3], 14)?);
    let f64_out = input_only_conv(&x, &w, &b, 2)?;
    let f32 = |v: &Var| v.as_tensor().to_dtype(DType::F32);
    let f32_out = conv2d(&f32(&x)?, &f32(&w)?, &f32(&b)?, 2, 1, Gradients::InputOnly)?;
    assert!(max_abs_diff(&f32_out.to_dtype(DType::F64)?, &f64_out)? < 1e-5);
    Ok(())
}

/// The Cnn and ReLU MLPs train through the custom ReLU: values and gradients bit for bit
/// Candle's, signed zeros included.
#[test]
fn relu_kernel_is_bitwise_candle() -> Result<()> {
    let mut v: Vec<f32> = values(4000, 21).into_iter().map(|v| v as f32).collect();
    v[..4].copy_from_slice(&[0.0, -0.0, 1e-40, -1e-40]);
    let x = Var::from_tensor(&Tensor::from_vec(v, (40, 100), &Device::Cpu)?)?;
    let mut p: Vec<f32> = values(4000, 22).into_iter().map(|v| v as f32).collect();
    p[4..8].copy_from_slice(&[0.0, -0.0, -1.0, 2.0]);
    let probe = Tensor::from_vec(p, (40, 100), &Device::Cpu)?;
    let (fast, slow) = (relu(x.as_tensor())?, x.as_tensor().relu()?);
    assert_eq!(bits(&fast)?, bits(&slow)?, "forward");
    let gf = (fast * &probe)?.sum_all()?.backward()?;
    let gs = (slow * &probe)?.sum_all()?.backward()?;
    let (gf, gs) = (
        gf.get(x.as_tensor()).unwrap(),
        gs.get(x.as_tensor()).unwrap(),
    );
    assert_eq!(bits(gf)?, bits(gs)?, "gradient");
    Ok(())
}

/// The sigmoid MLP trains and is attacked through the custom sigmoid: values and gradients bit
/// for bit Candle's, split over any number of threads, saturated inputs included.
#[test]
fn sigmoid_kernel_is_bitwise_candle_on_any_number_of_threads() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let mut v: Vec<f64> = values(30_000, 23).into_iter().map(|v| 8.0 * v).collect();
        v[..8].copy_from_slice(&[0.0, -0.0, 1e-40, -1e-40, 90.0, -90.0, 800.0, -800.0]);
        let x = Var::from_tensor(&Tensor::from_vec(v, (30, 1000), &Device::Cpu)?.to_dtype(dtype)?)?;
        let probe =
            Tensor::from_vec(values(30_000, 24), (30, 1000), &Device::Cpu)?.to_dtype(dtype)?;
        let run = |threads: usize, custom: bool| -> Result<(Vec<f64>, Vec<f64>)> {
            on_threads(threads, || {
                let s = if custom {
                    sigmoid(x.as_tensor())?
                } else {
                    candle_nn::ops::sigmoid(x.as_tensor())?
                };
                let g = (&s * &probe)?.sum_all()?.backward()?;
                let g = g.get(x.as_tensor()).expect("an input gradient");
                let f64s = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
                Ok((f64s(&s)?, f64s(g)?))
            })
        };
        let candle = run(1, false)?;
        for threads in [1, 3] {
            let (s, g) = run(threads, true)?;
            let same = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
            };
            assert!(
                same(&s, &candle.0),
                "{dtype:?} forward on {threads} threads"
            );
            assert!(
                same(&g, &candle.1),
                "{dtype:?} gradient on {threads} threads"
            );
        }
        assert_eq!(candle.0[6], 1.0);
        assert_eq!(candle.0[7], 0.0);
    }
    Ok(())
}

#[test]
fn in_place_sgd_momentum_rounds_as_the_tensor_ops() -> Result<()> {
    // A paper-sized weight, values across magnitudes, negative zeros in the velocity; the
    // gradient whole or as two or three shard parts.
    let n = 1200 * 240;
    let f32s = |seed| {
        values(n, seed)
            .into_iter()
            .map(|x| x as f32)
            .collect::<Vec<_>>()
    };
    let w = Tensor::from_vec(f32s(1), (1200, 240), &Device::Cpu)?;
    let mut v_vals = f32s(2);
    v_vals[..50].iter_mut().for_each(|x| *x = -0.0);
    let v = Tensor::from_vec(v_vals, (1200, 240), &Device::Cpu)?;
    let parts = (3..6)
        .map(|seed| Tensor::from_vec(f32s(seed), (1200, 240), &Device::Cpu)? * 1e-3)
        .collect::<Result<Vec<_>>>()?;
    let (momentum, lr) = (0.63, 0.0497);
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits())
            .collect())
    };
    for k in 1..=3 {
        let grads: Vec<&Tensor> = parts[..k].iter().collect();
        // The shard sum as the tensor ops make it, from the first part on.
        let mut g = parts[0].clone();
        for part in &parts[1..k] {
            g = (&g + part)?;
        }
        let v_ref = ((&v * momentum)? - (&g * lr)?)?;
        let w_ref = (&w + &v_ref)?;
        // With a max-norm (the median row norm, so about half the rows clip), the updated
        // weight's rows as the tensor ops of `layers::apply_max_norm` clip them.
        let norms = w_ref.sqr()?.sum_keepdim(1)?.sqrt()?;
        let mut sorted = f32s_of(&norms)?;
        sorted.sort_by(f32::total_cmp);
        let max_norm = sorted[sorted.len() / 2] as f64;
        let scale = (norms.clamp(0.0, max_norm)? / norms.maximum(1e-7)?)?;
        let w_clipped = w_ref.broadcast_mul(&scale)?;
        let clipped = bits(&w_clipped)?
            .chunks(240)
            .zip(bits(&w_ref)?.chunks(240))
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            (400..=800).contains(&clipped),
            "{clipped} of 1200 rows clipped"
        );
        for (clip, w_expected) in [(None, &w_ref), (Some(max_norm), &w_clipped)] {
            let w_in = w.copy()?;
            let mut v_in = CpuStorage::F32(v.flatten_all()?.to_vec1::<f32>()?);
            assert!(sgd_momentum(&w_in, &mut v_in, &grads, momentum, lr, clip)?);
            let CpuStorage::F32(v_out) = &v_in else {
                panic!("the velocity changed type")
            };
            let v_bits: Vec<u32> = v_out.iter().map(|x| x.to_bits()).collect();
            assert_eq!(v_bits, bits(&v_ref)?, "velocity, {k} parts, clip {clip:?}");
            assert_eq!(
                bits(&w_in)?,
                bits(w_expected)?,
                "weight, {k} parts, clip {clip:?}"
            );
            // The parts are read, not changed.
            assert_eq!(
                bits(&parts[0])?,
                bits(&(Tensor::from_vec(f32s(3), (1200, 240), &Device::Cpu)? * 1e-3)?)?
            );
            // Not served (a part of another shape, no parts, a velocity of another length):
            // nothing touched, the caller falls back.
            let short = parts[k - 1].narrow(0, 0, 600)?;
            let mut mismatched = grads.clone();
            mismatched[k - 1] = &short;
            let mut short_v = CpuStorage::F32(vec![0.0; 10]);
            assert!(!sgd_momentum(
                &w_in,
                &mut v_in,
                &mismatched,
                momentum,
                lr,
                clip
            )?);
            assert!(!sgd_momentum(&w_in, &mut v_in, &[], momentum, lr, clip)?);
            assert!(!sgd_momentum(
                &w_in,
                &mut short_v,
                &grads,
                momentum,
                lr,
                clip
            )?);
            assert_eq!(bits(&w_in)?, bits(w_expected)?);
            let CpuStorage::F32(v_after) = &v_in else {
                panic!("the velocity changed type")
            };
            assert_eq!(
                v_after.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                v_bits
            );
        }
    }
    Ok(())
}

/// The values of a tensor, for comparisons in which −0 and +0 are equal (Candle's store
/// adds every gradient to a zero tensor, which turns −0 into +0).
fn f32s_of(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

#[test]
fn backward_hands_over_the_gradients_candle_would_store() -> Result<()> {
    use gauntlet_models::kernels::backward;
    // A convolution, a linear layer whose weight is used twice, one reached through a tensor
    // op (not a variable: Candle must carry its gradient on) and a penalty on a weight that
    // Candle's own ops differentiate: every path of the hand-over.
    let x = f32_var(&[3, 2, 6, 6], 11)?.as_tensor().detach();
    let (cw, cb) = (f32_var(&[4, 2, 3, 3], 12)?, f32_var(&[4], 13)?);
    let (w1, b1) = (f32_var(&[20, 4 * 6 * 6], 14)?, f32_var(&[20], 15)?);
    let (w2, b2) = (f32_var(&[20, 20], 16)?, f32_var(&[20], 17)?);
    let (w3, b3) = (f32_var(&[5, 20], 18)?, f32_var(&[5], 19)?);
    let probe = Tensor::from_vec(
        values(15, 20).into_iter().map(|v| v as f32).collect(),
        (3, 5),
        &Device::Cpu,
    )?;
    let loss = || -> Result<Tensor> {
        let all = Gradients::All;
        let z = conv2d(&x, cw.as_tensor(), cb.as_tensor(), 1, 1, all)?;
        let h = relu(&linear(
            &z.flatten_from(1)?,
            w1.as_tensor(),
            b1.as_tensor(),
            all,
        )?)?;
        let h = relu(&linear(&h, w2.as_tensor(), b2.as_tensor(), all)?)?;
        let h = relu(&linear(&h, w2.as_tensor(), b2.as_tensor(), all)?)?;
        let y = linear(&h, &(w3.as_tensor() * 1.0)?, b3.as_tensor(), all)?;
        (y * &probe)?.sum_all()? + (w1.as_tensor().sqr()?.sum_all()? * 0.01)?
    };
    let (candle, ours) = (loss()?.backward()?, backward(&loss()?)?);
    for (name, v) in [
        ("conv weight", &cw),
        ("conv bias", &cb),
        ("w1", &w1),
        ("b1", &b1),
        ("w2", &w2),
        ("b2", &b2),
        ("w3", &w3),
        ("b3", &b3),
    ] {
        let (c, o) = (candle.get(v.as_tensor()), ours.get(v.as_tensor()));
        let (Some(c), Some(o)) = (c, o) else {
            panic!(
                "{name}: a gradient is missing (Candle {}, ours {})",
                c.is_some(),
                o.is_some()
            )
        };
        let (c, o) = (f32s_of(c)?, f32s_of(o)?);
        if name == "w2" || name == "b2" || name == "w1" {
            // Two parts summed: ours in the order the backward pass made them.
            let worst = c
                .iter()
                .zip(&o)
                .map(|(a, b)| (a - b).abs() / a.abs().max(1e-3))
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name}: relative difference {worst}");
        } else {
            assert_eq!(c, o, "{name}");
        }
    }
    Ok(())
}

#[test]
fn in_place_gradient_mix_matches_the_tensor_ops() -> Result<()> {
    use gauntlet_models::kernels::mix_assign;
    // Long enough to be split over threads, and short.
    for n in [300_000, 1000] {
        let t = |seed| -> Result<Tensor> {
            let v: Vec<f32> = values(n, seed).into_iter().map(|x| x as f32).collect();
            Tensor::from_vec(v, n, &Device::Cpu)
        };
        let (a, b) = (t(1)?, t(2)?);
        let alpha = 0.3;
        let mixed = a.copy()?;
        assert!(mix_assign(&mixed, &b, alpha)?);
        let expected = ((&a * alpha)? + (&b * (1.0 - alpha))?)?;
        assert_eq!(f32s_of(&mixed)?, f32s_of(&expected)?, "mix of {n}");
        // Not served (another shape): nothing touched.
        assert!(!mix_assign(&mixed, &b.narrow(0, 0, n / 2)?, alpha)?);
        assert_eq!(f32s_of(&mixed)?, f32s_of(&expected)?);
    }
    Ok(())
}

#[test]
fn max_norm_kernel_is_bitwise_the_tensor_ops_and_leaves_short_rows_alone() -> Result<()> {
    use gauntlet_models::kernels::max_norm_rows;
    let max_norm = 1.9365;
    // The Maxout MLP's first weight (split over threads), a conv kernel, a short matrix; rows
    // scaled from 1e-9 (below the 1e-7 floor) to far above the bound, and one zero row.
    for shape in [vec![1200, 784], vec![8, 3, 5, 5], vec![6, 7]] {
        let rows = shape[0];
        let n: usize = shape.iter().product();
        let row_len = n / rows;
        let mut v: Vec<f32> = values(n, 7).into_iter().map(|x| x as f32).collect();
        for (r, row) in v.chunks_mut(row_len).enumerate() {
            let scale = [1e-9, 0.0, 0.01, 0.1, 1.0, 10.0][r % 6];
            row.iter_mut().for_each(|x| *x *= scale as f32);
        }
        let w = Tensor::from_vec(v.clone(), shape.as_slice(), &Device::Cpu)?;
        let flat = w.reshape((rows, ()))?;
        let norms = flat.sqr()?.sum_keepdim(1)?.sqrt()?;
        let scale = (norms.clamp(0.0, max_norm)? / norms.maximum(1e-7)?)?;
        let expected = f32s_of(&flat.broadcast_mul(&scale)?)?;
        let got = w.copy()?;
        assert!(max_norm_rows(&got, max_norm)?);
        let got = f32s_of(&got)?;
        let row_norms = f32s_of(&norms)?;
        for (r, &nrm) in row_norms.iter().enumerate() {
            let span = r * row_len..(r + 1) * row_len;
            let (g, e, before) = (&got[span.clone()], &expected[span.clone()], &v[span]);
            let nrm = nrm as f64;
            if nrm <= max_norm && nrm >= 1e-7 {
                assert_eq!(g, before, "{shape:?} row {r} (norm {nrm}) must not change");
            }
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(g), bits(e), "{shape:?} row {r} (norm {nrm})");
            let after: f64 = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                after <= max_norm * (1.0 + 1e-6),
                "{shape:?} row {r}: norm {after}"
            );
        }
    }
    Ok(())
}

/// The fused convolution block against the layers it replaces, one by one: the same output,
/// input gradient and weight and bias gradients, bit for bit. Zero biases over zero image
/// regions make convolution outputs of exactly 0 (where ReLU still passes the gradient) and
/// maxout pieces that tie (where every tied piece gets it); overlapping and padded pooling
/// windows share arg-maxes.
#[test]
fn conv_block_is_bitwise_its_layers_one_by_one() -> Result<()> {
    use gauntlet_models::conv::{max_pool2d, PoolGeometry};
    use gauntlet_models::kernels::{conv_block, BlockActivation};
    let pool = |k: usize, s: usize, p: usize, ceil_mode: bool| PoolGeometry {
        kernel: (k, k),
        stride: (s, s),
        padding: (p, p),
        ceil_mode,
    };
    let cases = [
        // (input, out channels, kernel, pad, stride, activation, pool)
        (
            [5, 3, 12, 12],
            4,
            5,
            2,
            1,
            BlockActivation::Relu,
            Some(pool(2, 2, 0, true)),
        ),
        (
            [3, 2, 11, 9],
            6,
            3,
            1,
            1,
            BlockActivation::Relu,
            Some(pool(3, 2, 0, true)),
        ),
        ([4, 3, 10, 10], 5, 3, 1, 1, BlockActivation::Relu, None),
        (
            [3, 2, 9, 9],
            6,
            3,
            1,
            2,
            BlockActivation::Relu,
            Some(pool(3, 2, 1, false)),
        ),
        (
            [5, 1, 14, 14],
            8,
            5,
            2,
            1,
            BlockActivation::Maxout(2),
            Some(pool(4, 2, 0, true)),
        ),
        (
            [3, 3, 8, 8],
            12,
            3,
            0,
            1,
            BlockActivation::Maxout(4),
            Some(pool(2, 2, 0, true)),
        ),
        ([2, 2, 7, 7], 9, 3, 1, 1, BlockActivation::Maxout(3), None),
        // Small ragged planes and channels in eights: the forward runs pixel by pixel.
        (
            [3, 6, 10, 10],
            16,
            8,
            3,
            1,
            BlockActivation::Maxout(2),
            Some(pool(4, 2, 0, true)),
        ),
        ([4, 2, 5, 5], 8, 3, 1, 1, BlockActivation::Relu, None),
        ([2, 3, 9, 9], 8, 5, 2, 2, BlockActivation::Maxout(4), None),
    ];
    for (i, (shape, c_out, k, pad, stride, act, geometry)) in cases.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        // The top rows of every image are zero: with zero biases, outputs of exactly 0.
        let rows = Tensor::arange(0u32, shape[2] as u32, &Device::Cpu)?
            .ge(shape[2] as u32 / 2)?
            .to_dtype(DType::F32)?
            .reshape((1, 1, shape[2], 1))?;
        let x = Var::from_tensor(&f32_var(&shape, seed)?.as_tensor().broadcast_mul(&rows)?)?;
        let w = f32_var(&[c_out, shape[1], k, k], seed + 1)?;
        let b = Var::from_tensor(&Tensor::zeros(c_out, DType::F32, &Device::Cpu)?)?;
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let chain = |grads: Gradients| -> Result<Tensor> {
            let y = conv2d(xt, wt, bt, pad, stride, grads)?;
            let a = match act {
                BlockActivation::Relu => relu(&y)?,
                BlockActivation::Maxout(p) => {
                    let (n, c, h, wd) = y.dims4()?;
                    max_pieces(&y, p, h * wd, &[n, c / p, h, wd])?
                }
            };
            match &geometry {
                Some(g) => max_pool2d(&a, g),
                None => Ok(a),
            }
        };
        let block = |grads: Gradients| -> Result<Tensor> {
            conv_block(xt, wt, bt, pad, stride, act, geometry.as_ref(), grads)?
                .ok_or_else(|| candle_core::Error::Msg("the block did not run".into()))
        };
        for threads in [1, 3] {
            on_threads(threads, || -> Result<()> {
                let case = format!("case {i}, {threads} threads");
                let (want, got) = (chain(Gradients::All)?, block(Gradients::All)?);
                assert_eq!(want.dims(), got.dims(), "{case}");
                assert_eq!(bits(&want)?, bits(&got)?, "{case}: output");
                // Evaluation logits of data: the same bits without routes, and no backward.
                let eval = conv_block(
                    &xt.detach(),
                    wt,
                    bt,
                    pad,
                    stride,
                    act,
                    geometry.as_ref(),
                    Gradients::None,
                )?
                .ok_or_else(|| candle_core::Error::Msg("the block did not run".into()))?;
                assert_eq!(bits(&want)?, bits(&eval)?, "{case}: eval output");
                // A loss with a distinct weight per output value.
                let r = Tensor::from_vec(
                    values(want.elem_count(), seed + 2),
                    want.shape(),
                    &Device::Cpu,
                )?
                .to_dtype(DType::F32)?;
                let (gw, gg) = (
                    (want * &r)?.sum_all()?.backward()?,
                    (got * &r)?.sum_all()?.backward()?,
                );
                for (name, t) in [("input", xt), ("weight", wt), ("bias", bt)] {
                    let (a, c) = (gw.get(t).unwrap(), gg.get(t).unwrap());
                    assert_eq!(bits(a)?, bits(c)?, "{case}: {name} gradient");
                }
                let err = (eval * &r)?.sum_all()?.backward().unwrap_err();
                assert!(
                    err.to_string().contains("evaluation logits"),
                    "{case}: {err}"
                );
                // The input gradient alone, as an attack asks for it.
                let gg = (block(Gradients::InputOnly)? * &r)?.sum_all()?.backward()?;
                assert!(
                    gg.get(wt).is_none(),
                    "{case}: weight gradient not asked for"
                );
                assert_eq!(
                    bits(gw.get(xt).unwrap())?,
                    bits(gg.get(xt).unwrap())?,
                    "{case}"
                );
                Ok(())
            })?;
        }
        // Some maxout pieces must have tied, or the case tests less than it says.
        if let BlockActivation::Maxout(p) = act {
            let y = conv2d(xt, wt, bt, pad, stride, Gradients::All)?;
            let (n, c, h, wd) = y.dims4()?;
            let z = y.reshape((n, c / p, p, h * wd))?;
            let max = z.max_keepdim(2)?;
            let ties = z.broadcast_eq(&max)?.to_dtype(DType::F32)?.sum(2)?;
            assert!(
                ties.max_all()?.to_scalar::<f32>()? > 1.0,
                "case {i}: no ties"
            );
        }
    }
    Ok(())
}

#[test]
fn conv_block_declines_what_it_does_not_serve() -> Result<()> {
    use gauntlet_models::kernels::{conv_block, BlockActivation};
    let (x, w, b) = (
        f32_var(&[1, 1, 6, 6], 1)?,
        f32_var(&[18, 1, 3, 3], 2)?,
        f32_var(&[18], 3)?,
    );
    let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
    let nine = BlockActivation::Maxout(9);
    assert!(conv_block(xt, wt, bt, 1, 1, nine, None, Gradients::All)?.is_none());
    let seven = BlockActivation::Maxout(7);
    let err = conv_block(xt, wt, bt, 1, 1, seven, None, Gradients::All).unwrap_err();
    assert!(err.to_string().contains("18 channels"), "{err}");
    Ok(())
}

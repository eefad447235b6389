//! Every layer of the graph format in one network, built from TOML: shapes, input gradients
//! against finite differences, and the layers' values against direct computations.

use candle_core::{DType, Device, Result, Tensor};
use gauntlet_models::{build, per_example_cross_entropy, Classifier, Mode, ModelSpec};

mod common;

const SPEC: &str = r#"
input = [2, 9, 9]
n-classes = 4

[arch]
kind = "graph"
layers = [
  { op = "normalize", mean = [0.5, 0.4], std = [0.2, 0.3] },
  { op = "conv2d", name = "c1", out-channels = 8, kernel = 3, padding = 1 },
  { op = "batch-norm", name = "bn1" },
  { op = "relu", name = "r1" },
  { op = "conv2d", name = "c2", out-channels = 8, kernel = [3, 1], padding = [1, 0], groups = 2 },
  { op = "add", name = "sum", inputs = ["r1", "c2"] },
  { op = "gelu" },
  { op = "avg-pool", kernel = 2, stride = 1, padding = 1 },
  { op = "conv2d", name = "c3", out-channels = 12, kernel = 2, stride = 2, dilation = 2, bias = false },
  { op = "leaky-relu", slope = 0.1 },
  { op = "maxout", pieces = 2 },
  { op = "max-pool", kernel = 3, stride = 2, padding = 1, ceil-mode = true },
  { op = "sigmoid" },
  { op = "global-avg-pool" },
  { op = "flatten" },
  { op = "dropout", include = 0.8, scale = 1.25 },
  { op = "linear", name = "fc", out-features = 6 },
  { op = "tanh" },
  { op = "maxout", pieces = 1 },
  { op = "linear", name = "out", out-features = 4, init = { uniform = 0.5 } },
]
"#;

fn model() -> Result<Box<dyn Classifier>> {
    let spec: ModelSpec =
        toml::from_str(SPEC).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    build(&spec, 7, &Device::Cpu)
}

#[test]
fn every_layer_has_exact_input_gradients() -> Result<()> {
    let model = model()?;
    let n = 3 * 2 * 9 * 9;
    let xs = Tensor::from_vec(
        common::uniform(n, 5)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (3, 2, 9, 9),
        &Device::Cpu,
    )?;
    let labels = Tensor::new(&[0u32, 3, 1], &Device::Cpu)?;
    assert_eq!(model.forward(&xs, Mode::Eval)?.dims(), &[3, 4]);
    let g = model.loss_and_input_grad(&xs, &labels, Mode::Eval)?.grad;
    let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    assert!(norm > 0.0);
    let dir = (&g / norm)?;
    let loss = |x: &Tensor| -> Result<f64> {
        per_example_cross_entropy(&model.forward(x, Mode::Eval)?, &labels)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()
    };
    let h = 1e-2;
    let numeric = (loss(&(&xs + (&dir * h)?)?)? - loss(&(&xs - (&dir * h)?)?)?) / (2.0 * h);
    let rel = (numeric - norm).abs() / norm;
    assert!(
        rel < 2e-2,
        "directional derivative {numeric} against ‖g‖ {norm} ({rel:.2e})"
    );
    // Dropout acts in training only, and with a seed.
    let a = model
        .forward(&xs, Mode::Train { seed: 1 })?
        .to_vec2::<f32>()?;
    let b = model
        .forward(&xs, Mode::Train { seed: 1 })?
        .to_vec2::<f32>()?;
    let c = model
        .forward(&xs, Mode::Train { seed: 2 })?
        .to_vec2::<f32>()?;
    assert_eq!(a, b);
    assert_ne!(a, c);
    Ok(())
}

#[test]
fn padded_ceil_mode_max_pool_and_counted_padding_avg_pool_match_direct_loops() -> Result<()> {
    // One 2-layer graph per pool: its output is the pooled map, read through a flatten.
    let (h, w) = (5usize, 6usize);
    let values: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 29) as f32) - 14.0).collect();
    let xs = Tensor::from_vec(values.clone(), (1, 1, h, w), &Device::Cpu)?;
    for (op, k, s, p, ceil) in [
        ("max-pool", 3, 2, 1, true),
        ("max-pool", 2, 2, 0, false),
        ("avg-pool", 3, 2, 1, false),
    ] {
        // PyTorch's output size: floor or ceil of (n + 2p − k)/s + 1, a last window that
        // starts in the right padding dropped.
        let out = |n: usize| {
            let span = n + 2 * p - k;
            let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
            if ceil && (o - 1) * s >= n + p {
                o -= 1;
            }
            o
        };
        let (oh, ow) = (out(h), out(w));
        let text = format!(
            "input = [1, {h}, {w}]\nn-classes = {}\n[arch]\nkind = \"graph\"\nlayers = [{{ op = \"{op}\", kernel = {k}, stride = {s}, padding = {p}, ceil-mode = {ceil} }}, {{ op = \"flatten\" }}]",
            oh * ow
        );
        let spec: ModelSpec = toml::from_str(&text).unwrap();
        let got = build(&spec, 1, &Device::Cpu)?
            .forward(&xs, Mode::Eval)?
            .to_vec2::<f32>()?;
        for i in 0..oh {
            for j in 0..ow {
                let (mut best, mut sum) = (f32::NEG_INFINITY, 0f32);
                for y in (i * s) as isize - p as isize..(i * s + k) as isize - p as isize {
                    for x in (j * s) as isize - p as isize..(j * s + k) as isize - p as isize {
                        let inside = y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w;
                        let v = if inside {
                            values[y as usize * w + x as usize]
                        } else {
                            0.0
                        };
                        if inside {
                            best = best.max(v);
                        }
                        sum += v;
                    }
                }
                let expected = if op == "max-pool" {
                    best
                } else {
                    sum / (k * k) as f32
                };
                let g = got[0][i * ow + j];
                assert!(
                    (g - expected).abs() < 1e-5,
                    "{op} k{k} s{s} p{p} at {i},{j}: {g} vs {expected}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn layer_errors_name_the_layer() {
    let bad = SPEC.replace("out-features = 6", "out-features = 6, bias = 3");
    let err = toml::from_str::<ModelSpec>(&bad).err().unwrap().to_string();
    assert!(
        err.contains("`fc`") && err.contains("expected a boolean"),
        "{err}"
    );
    let bad = SPEC.replace("inputs = [\"r1\", \"c2\"]", "inputs = [\"r1\", \"c9\"]");
    let spec: ModelSpec = toml::from_str(&bad).unwrap();
    let err = spec.validate().err().unwrap().to_string();
    assert!(
        err.contains("layer 5 (`sum`, add)") && err.contains("`c9`"),
        "{err}"
    );
    let bad = SPEC.replace(
        "{ op = \"flatten\" },\n  { op = \"dropout\"",
        "{ op = \"dropout\"",
    );
    let spec: ModelSpec = toml::from_str(&bad).unwrap();
    let err = spec.validate().err().unwrap().to_string();
    assert!(
        err.contains("layer 15 (`fc`, linear)") && err.contains("add a flatten"),
        "{err}"
    );
}

/// A frozen graph's passes read the transposed weights it prepared ([`Classifier::freeze`]):
/// the same bits as an unfrozen pass, the preparation kept through nested guards, and taken
/// anew from the current weights by the next guard once the last one drops.
#[test]
fn frozen_passes_read_the_weights_prepared_at_the_freeze() -> Result<()> {
    use gauntlet_models::Arch;
    let spec = ModelSpec::new(Arch::maxout_mlp(vec![40, 30], 3), [1, 8, 8], 10);
    let model = build(&spec, 5, &Device::Cpu)?;
    let xs = Tensor::rand(0f32, 1f32, (70, 1, 8, 8), &Device::Cpu)?;
    let labels = Tensor::from_vec(
        (0..70u32).map(|i| i % 10).collect::<Vec<_>>(),
        70,
        &Device::Cpu,
    )?;
    let bits = |t: &Tensor| -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    };
    let logits = || model.forward(&xs, Mode::Eval);
    let unfrozen = bits(&logits()?)?;
    let grad = bits(&model.loss_and_input_grad(&xs, &labels, Mode::Eval)?.grad)?;
    let (name, weight) = model
        .params()
        .vars()
        .find(|(name, v)| name.ends_with("weight") && v.as_tensor().rank() == 2)
        .map(|(n, v)| (n.to_string(), v.clone()))
        .expect("a linear layer's weight");
    let old = weight.as_tensor().copy()?;
    {
        let outer = model.freeze()?;
        assert_eq!(bits(&logits()?)?, unfrozen, "frozen forward");
        let g = model.loss_and_input_grad(&xs, &labels, Mode::Eval)?.grad;
        assert_eq!(bits(&g)?, grad, "frozen input gradient");
        drop(model.freeze()?);
        // Changing the weights under a guard breaks its contract; here it shows that the
        // passes still read what the outer guard prepared.
        weight.set(&old.affine(2.0, 0.0)?)?;
        assert_eq!(
            bits(&logits()?)?,
            unfrozen,
            "{name} changed under the outer guard"
        );
        drop(outer);
    }
    let changed = bits(&logits()?)?;
    assert_ne!(
        changed, unfrozen,
        "the new {name} reaches the unfrozen forward"
    );
    let _again = model.freeze()?;
    assert_eq!(
        bits(&logits()?)?,
        changed,
        "the next guard prepares the new {name}"
    );
    Ok(())
}

//! Models built and exported by PyTorch (scripts/make_fixtures.py), loaded from their
//! safetensors `state_dict` (with the spec beside it) and from their ONNX export: logits and
//! input gradients against PyTorch's own (computed in float64), gradients against finite
//! differences, and the load errors a user meets.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use gauntlet_models::{checkpoint, onnx, Classifier, Mode};
use prost::Message;

const FIXTURES: [&str; 3] = ["smallcnn", "preact", "mlp"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

struct Expected {
    inputs: Tensor,
    labels: Tensor,
    logits: Vec<Vec<f64>>,
    grad: Vec<Vec<f64>>,
}

fn expected(name: &str) -> Result<Expected> {
    let t = candle_core::safetensors::load(
        fixture(&format!("{name}.expected.safetensors")),
        &Device::Cpu,
    )?;
    let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
        t.flatten_from(1)?.to_dtype(DType::F64)?.to_vec2()
    };
    Ok(Expected {
        inputs: t["inputs"].clone(),
        labels: t["labels"].to_dtype(DType::U32)?,
        logits: rows(&t["logits"])?,
        grad: rows(&t["grad"])?,
    })
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    t.flatten_from(1)?.to_dtype(DType::F64)?.to_vec2()
}

/// Worst over rows of ‖a − b‖∞ / ‖b‖∞: relative to each example's largest entry.
fn worst_relative(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
            x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0.0, f64::max)
}

fn formats(name: &str) -> Result<Vec<(&'static str, Box<dyn Classifier>)>> {
    Ok(vec![
        (
            "safetensors",
            checkpoint::load(&fixture(&format!("{name}.safetensors")), &Device::Cpu)?,
        ),
        (
            "onnx",
            checkpoint::load(&fixture(&format!("{name}.onnx")), &Device::Cpu)?,
        ),
    ])
}

#[test]
fn logits_and_input_gradients_match_pytorch_in_both_formats() -> Result<()> {
    for name in FIXTURES {
        let e = expected(name)?;
        for (format, model) in formats(name)? {
            let logits = rows(&model.forward(&e.inputs, Mode::Eval)?)?;
            let err = worst_relative(&logits, &e.logits);
            // Measured: logits within 4e-7 and gradients within 1.5e-6 for every fixture (f32
            // against PyTorch's f64).
            assert!(
                err < 1e-4,
                "{name} ({format}): logits differ by {err:.2e} (relative)"
            );
            let g = model.loss_and_input_grad(&e.inputs, &e.labels, Mode::Eval)?;
            let gerr = worst_relative(&rows(&g.grad)?, &e.grad);
            assert!(
                gerr < 1e-3,
                "{name} ({format}): input gradients differ by {gerr:.2e} (relative)"
            );
            eprintln!("{name} ({format}): logits {err:.1e}, gradients {gerr:.1e} (worst relative)");
        }
    }
    Ok(())
}

#[test]
fn both_formats_give_the_same_predictions_and_the_spec_round_trips() -> Result<()> {
    for name in FIXTURES {
        let e = expected(name)?;
        let models = formats(name)?;
        let a = rows(&models[0].1.forward(&e.inputs, Mode::Eval)?)?;
        let b = rows(&models[1].1.forward(&e.inputs, Mode::Eval)?)?;
        // The ONNX export folds some batch norms into convolutions: equal up to rounding.
        assert!(
            worst_relative(&b, &a) < 1e-5,
            "{name}: safetensors and onnx logits differ"
        );
        // An imported model saves as a gauntlet checkpoint and loads back unchanged.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        checkpoint::save(models[1].1.as_ref(), &path)?;
        let back = checkpoint::load(&path, &Device::Cpu)?;
        assert_eq!(back.spec(), models[1].1.spec());
        let c = rows(&back.forward(&e.inputs, Mode::Eval)?)?;
        assert_eq!(
            c, b,
            "{name}: the re-saved onnx model computes other logits"
        );
    }
    Ok(())
}

/// The summed loss along the normalised gradient, by central differences, against the
/// gradient's norm (the derivative along that direction).
#[test]
fn input_gradients_agree_with_finite_differences() -> Result<()> {
    for name in FIXTURES {
        let e = expected(name)?;
        for (format, model) in formats(name)? {
            let g = model
                .loss_and_input_grad(&e.inputs, &e.labels, Mode::Eval)?
                .grad;
            let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
            let dir = (&g / norm)?;
            let loss = |x: &Tensor| -> Result<f64> {
                let ce = gauntlet_models::per_example_cross_entropy(
                    &model.forward(x, Mode::Eval)?,
                    &e.labels,
                )?;
                ce.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()
            };
            let h = 1e-3;
            let up = loss(&(&e.inputs + (&dir * h)?)?)?;
            let down = loss(&(&e.inputs - (&dir * h)?)?)?;
            let numeric = (up - down) / (2.0 * h);
            let rel = (numeric - norm).abs() / norm;
            assert!(rel < 2e-2, "{name} ({format}): directional derivative {numeric} against ‖g‖ {norm} ({rel:.2e})");
        }
    }
    Ok(())
}

fn load_err(path: &Path) -> String {
    match checkpoint::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The mlp's spec with `from` replaced by `to`, beside a copy of its weights.
fn edited_spec(dir: &Path, from: &str, to: &str) -> PathBuf {
    let toml = std::fs::read_to_string(fixture("mlp.toml")).unwrap();
    assert!(toml.contains(from), "{from}");
    let path = dir.join("m.safetensors");
    std::fs::copy(fixture("mlp.safetensors"), &path).unwrap();
    std::fs::write(dir.join("m.toml"), toml.replace(from, to)).unwrap();
    path
}

#[test]
fn wrong_names_and_shapes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_spec(dir.path(), "name = \"fc2\"", "name = \"hidden\"");
    let err = load_err(&path);
    assert!(
        err.contains("m.safetensors") && err.contains("`hidden.weight` is missing"),
        "{err}"
    );
    let path = edited_spec(dir.path(), "out-features = 32", "out-features = 31");
    let err = load_err(&path);
    assert!(
        err.contains("`fc2.weight` has shape [32, 48], expected [31, 48]"),
        "{err}"
    );
    let path = edited_spec(
        dir.path(),
        "  { op = \"linear\", name = \"fc3\", out-features = 10 },\n",
        "",
    );
    let err = load_err(&path);
    assert!(
        err.contains("m.toml") && err.contains("[10]") && err.contains("[32]"),
        "{err}"
    );
    let path = edited_spec(dir.path(), "op = \"tanh\"", "op = \"tanhh\"");
    let err = load_err(&path);
    assert!(err.contains("m.toml") && err.contains("tanhh"), "{err}");
    let path = edited_spec(dir.path(), "op = \"tanh\"", "op = \"tanh\", slope = 2");
    let err = load_err(&path);
    assert!(err.contains("slope"), "{err}");
}

#[test]
fn non_finite_weights_are_refused_at_load_naming_tensor_and_index() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_spec(dir.path(), "fc1", "fc1");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let mut w = t["fc2.weight"].flatten_all()?.to_vec1::<f32>()?;
    w[77] = f32::NAN;
    t.insert(
        "fc2.weight".into(),
        Tensor::from_vec(w, (32, 48), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&t, &path)?;
    let err = load_err(&path);
    assert!(
        err.contains("`fc2.weight`") && err.contains("NaN") && err.contains("index 77"),
        "{err}"
    );
    Ok(())
}

fn mlp_onnx() -> onnx::proto::ModelProto {
    let bytes = std::fs::read(fixture("mlp.onnx")).unwrap();
    onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap()
}

fn onnx_err(dir: &Path, model: &onnx::proto::ModelProto) -> String {
    let path = dir.join("bad.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    load_err(&path)
}

#[test]
fn onnx_errors_name_the_file_the_node_and_the_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = mlp_onnx();
    m.graph.as_mut().unwrap().node[2].op_type = "Softplus".into();
    let err = onnx_err(dir.path(), &m);
    assert!(
        err.contains("bad.onnx")
            && err.contains("`/Relu`")
            && err.contains("Softplus")
            && err.contains("opset 17"),
        "{err}"
    );

    // The PreAct-ResNet cut before its pooling: feature maps, not logits.
    let bytes = std::fs::read(fixture("preact.onnx")).unwrap();
    let mut m = onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let n = g.node.len();
    g.node.truncate(n - 3);
    g.node[n - 4].output[0] = "logits".into();
    let err = onnx_err(dir.path(), &m);
    assert!(
        err.contains("bad.onnx") && err.contains("[32, 8, 8]") && err.contains("n_classes"),
        "{err}"
    );

    let mut m = mlp_onnx();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .retain(|t| t.name != "fc2.weight");
    let err = onnx_err(dir.path(), &m);
    assert!(
        err.contains("`/fc2/Gemm`") && err.contains("fc2.weight"),
        "{err}"
    );

    let err = load_err(&fixture("mlp.toml").with_extension("onnx.missing"));
    assert!(err.contains("mlp.onnx.missing"), "{err}");
    std::fs::write(
        dir.path().join("garbage.onnx"),
        b"\xff\xff\xff not protobuf",
    )
    .unwrap();
    let err = load_err(&dir.path().join("garbage.onnx"));
    assert!(
        err.contains("garbage.onnx") && err.contains("not an ONNX model"),
        "{err}"
    );
}

#[test]
fn a_trailing_softmax_is_dropped() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut m = mlp_onnx();
    let g = m.graph.as_mut().unwrap();
    let last = g.node.last_mut().unwrap();
    last.output[0] = "raw".into();
    g.node.push(onnx::proto::NodeProto {
        input: vec!["raw".into()],
        output: vec!["logits".into()],
        name: "/Softmax".into(),
        op_type: "Softmax".into(),
        ..Default::default()
    });
    let path = dir.path().join("softmax.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let e = expected("mlp")?;
    let model = checkpoint::load(&path, &Device::Cpu)?;
    let logits = rows(&model.forward(&e.inputs, Mode::Eval)?)?;
    assert!(worst_relative(&logits, &e.logits) < 1e-4);
    Ok(())
}

/// `torch.save`'s own format, read by Candle's pickle reader with the spec beside it.
#[test]
fn a_torch_save_state_dict_loads_and_a_broken_one_is_named() -> Result<()> {
    let e = expected("mlp")?;
    let model = checkpoint::load(&fixture("mlp.pt"), &Device::Cpu)?;
    let logits = rows(&model.forward(&e.inputs, Mode::Eval)?)?;
    assert!(worst_relative(&logits, &e.logits) < 1e-4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("mlp.toml"), dir.path().join("m.toml")).unwrap();
    std::fs::write(dir.path().join("m.pt"), b"PK\x03\x04 not a zip").unwrap();
    let err = load_err(&dir.path().join("m.pt"));
    assert!(err.contains("m.pt") && err.contains("state_dict"), "{err}");
    Ok(())
}

/// The torch.export-based exporter (PyTorch's default since 2.9) writes other ops for the
/// same networks (`ReduceMean` for adaptive pooling, opset 20): the same logits and gradients.
#[test]
fn dynamo_exports_match_pytorch_too() -> Result<()> {
    for name in ["preact", "mlp"] {
        let e = expected(name)?;
        let model = checkpoint::load(&fixture(&format!("{name}-dynamo.onnx")), &Device::Cpu)?;
        let err = worst_relative(&rows(&model.forward(&e.inputs, Mode::Eval)?)?, &e.logits);
        assert!(err < 1e-4, "{name} (dynamo): logits differ by {err:.2e}");
        let g = model.loss_and_input_grad(&e.inputs, &e.labels, Mode::Eval)?;
        let gerr = worst_relative(&rows(&g.grad)?, &e.grad);
        assert!(
            gerr < 1e-3,
            "{name} (dynamo): gradients differ by {gerr:.2e}"
        );
        eprintln!("{name} (dynamo): logits {err:.1e}, gradients {gerr:.1e}");
    }
    Ok(())
}

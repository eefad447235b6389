//! The `gauntlet._native` extension module: models, attacks, transfer and suites on NumPy
//! arrays. The pure-Python layer (`python/gauntlet/__init__.py`) coerces array dtypes and
//! wraps attack results; everything else is here.
//!
//! Arrays cross the boundary once each way: a C-contiguous `float32` input is read in place
//! into one tensor, and each output is one tensor moved into one NumPy array. Long calls run on
//! a worker thread with the GIL released; the calling thread watches for signals and, on
//! Ctrl-C, stops the worker at its next forward pass and raises `KeyboardInterrupt`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use gauntlet_attacks::{
    check_budgets, evaluate_attack_keeping, evaluate_min_norm, transfer_matrix, AttackConfig,
    AttackOptions,
};
use gauntlet_data::{DataConfig, DatasetName};
use gauntlet_models::{Classifier, Frozen, InputGrad, Mode, ModelSpec, Params};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

// As in the CLI: Candle allocates a fresh buffer for every op, and mimalloc is faster at it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _native,
    GauntletError,
    PyException,
    "An error from gauntlet; the message names the file, field or tensor."
);

fn gauntlet_error(e: impl std::fmt::Display) -> PyErr {
    GauntletError::new_err(e.to_string())
}

fn value_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// A model that fails its next pass once `stop` is set: how a Ctrl-C reaches an attack that
/// runs on another thread.
struct Interruptible<'a> {
    inner: &'a dyn Classifier,
    stop: &'a AtomicBool,
}

impl Interruptible<'_> {
    fn check(&self) -> candle_core::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            candle_core::bail!("interrupted")
        }
        Ok(())
    }
}

impl Classifier for Interruptible<'_> {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    fn forward(&self, xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        self.check()?;
        self.inner.forward(xs, mode)
    }

    fn forward_input_grad(&self, xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        self.check()?;
        self.inner.forward_input_grad(xs, mode)
    }

    fn params(&self) -> &Params {
        self.inner.params()
    }

    fn max_norm(&self, name: &str) -> Option<f64> {
        self.inner.max_norm(name)
    }

    fn freeze(&self) -> candle_core::Result<Frozen<'_>> {
        self.inner.freeze()
    }

    fn n_classes(&self) -> usize {
        self.inner.n_classes()
    }

    fn loss_and_input_grad(
        &self,
        xs: &Tensor,
        labels: &Tensor,
        mode: Mode,
    ) -> candle_core::Result<InputGrad> {
        self.check()?;
        self.inner.loss_and_input_grad(xs, labels, mode)
    }
}

/// Runs `work` on a worker thread with the GIL released, raising `KeyboardInterrupt` (and
/// stopping the worker) when a signal handler raises.
fn interruptible<T: Send>(
    py: Python<'_>,
    work: impl FnOnce(&AtomicBool) -> candle_core::Result<T> + Send,
) -> PyResult<T> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        // Waited on with the GIL released, from this thread only.
        let rx = std::sync::Mutex::new(rx);
        let stop = &stop;
        let worker = scope.spawn(move || {
            // Subnormal floats as the CLI treats them (the pool's workers already do).
            gauntlet_models::threads::flush_denormals();
            // The receiver is gone only if the caller already returned with an error.
            let _ = tx.send(work(stop));
        });
        loop {
            let received = py.allow_threads(|| {
                rx.lock()
                    .expect("only this thread locks it")
                    .recv_timeout(Duration::from_millis(50))
            });
            match received {
                Ok(result) => {
                    let _ = worker.join();
                    return result.map_err(gauntlet_error);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(signal) = py.check_signals() {
                        stop.store(true, Ordering::Relaxed);
                        // The worker stops at its next model pass.
                        let _ = py.allow_threads(|| worker.join());
                        return Err(signal);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(gauntlet_error("the worker thread panicked"));
                }
            }
        }
    })
}

/// `x` as a `[N, C, H, W]` tensor after checking it against the model's input.
fn images(x: &PyReadonlyArray4<'_, f32>, spec: &ModelSpec) -> PyResult<Tensor> {
    let shape = x.shape().to_vec();
    if shape[1..] != spec.input[..] {
        return Err(value_error(format!(
            "x: expected images of shape [N, {}, {}, {}] (the model's input), got {shape:?}",
            spec.input[0], spec.input[1], spec.input[2]
        )));
    }
    if shape[0] == 0 {
        return Err(value_error("x: no images (N = 0)".into()));
    }
    let copied;
    let values: &[f32] = match x.as_slice() {
        Ok(values) => values,
        Err(_) => {
            copied = x.as_array().iter().copied().collect::<Vec<f32>>();
            &copied
        }
    };
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(value_error(format!(
            "x: pixel values must lie in [0, 1], found {v} at flat index {i}"
        )));
    }
    Tensor::from_slice(values, shape, &Device::Cpu).map_err(gauntlet_error)
}

/// `y` as a `[N]` u32 tensor after checking its length and classes.
fn labels(y: &PyReadonlyArray1<'_, i64>, n: usize, n_classes: usize) -> PyResult<Tensor> {
    let y = y.as_array();
    if y.len() != n {
        return Err(value_error(format!(
            "y: expected one label per image ({n}), got {}",
            y.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for (i, &label) in y.iter().enumerate() {
        if label < 0 || label as u64 >= n_classes as u64 {
            return Err(value_error(format!(
                "y: labels must be classes 0..{n_classes}, found {label} at index {i}"
            )));
        }
        out.push(label as u32);
    }
    Tensor::from_vec(out, n, &Device::Cpu).map_err(gauntlet_error)
}

fn check_batch_size(batch_size: usize) -> PyResult<()> {
    if batch_size == 0 {
        return Err(value_error("batch_size: must be at least 1".into()));
    }
    Ok(())
}

/// A float32 NumPy array of any shape.
type Floats<'py> = Bound<'py, PyArrayDyn<f32>>;

/// A tensor as a NumPy array of the same shape.
fn array_f32<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = t.dims().to_vec();
    let values = t
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(gauntlet_error)?;
    let array = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(gauntlet_error)?;
    Ok(array.into_pyarray(py))
}

fn vec_array<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
) -> Bound<'py, numpy::PyArray1<T>> {
    values.into_pyarray(py)
}

/// A loaded model: a gauntlet checkpoint, PyTorch weights with a spec, or an ONNX file.
#[pyclass(frozen, module = "gauntlet")]
struct Model {
    inner: Arc<dyn Classifier>,
    path: PathBuf,
}

#[pymethods]
impl Model {
    /// The file the model was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Number of classes (logits per image).
    #[getter]
    fn n_classes(&self) -> usize {
        self.inner.n_classes()
    }

    /// `(C, H, W)` of the images the model takes.
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let s = &self.inner.spec().input;
        (s[0], s[1], s[2])
    }

    fn __repr__(&self) -> String {
        let (c, h, w) = self.input_shape();
        format!(
            "gauntlet.Model('{}', input [{c}, {h}, {w}], {} classes)",
            self.path.display(),
            self.n_classes()
        )
    }

    /// Logits `[N, n_classes]` of images `x` (`float32 [N, C, H, W]` in `[0, 1]`).
    #[pyo3(signature = (x, batch_size = 500))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        check_batch_size(batch_size)?;
        let xs = images(&x, self.inner.spec())?;
        let model = self.inner.as_ref();
        let logits = interruptible(py, |stop| {
            let model = Interruptible { inner: model, stop };
            let n = xs.dim(0)?;
            let mut parts = Vec::new();
            for start in (0..n).step_by(batch_size) {
                let len = batch_size.min(n - start);
                parts.push(model.forward(&xs.narrow(0, start, len)?, Mode::Eval)?);
            }
            Tensor::cat(&parts, 0)
        })?;
        array_f32(py, &logits)
    }

    /// Predicted classes `[N]` (int64) of images `x`.
    #[pyo3(signature = (x, batch_size = 500))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, numpy::PyArray1<i64>>> {
        check_batch_size(batch_size)?;
        let xs = images(&x, self.inner.spec())?;
        let model = self.inner.as_ref();
        let preds = interruptible(py, |stop| {
            let model = Interruptible { inner: model, stop };
            gauntlet_attacks::predict(&model, &xs, batch_size)
        })?;
        Ok(vec_array(py, preds.into_iter().map(i64::from).collect()))
    }

    /// Per-example cross-entropy `[N]` against labels `y` and its gradient with respect to
    /// `x` (`[N, C, H, W]`), in eval mode: the gradient every attack here follows.
    #[pyo3(signature = (x, y, batch_size = 500))]
    fn input_grad<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
        y: PyReadonlyArray1<'py, i64>,
        batch_size: usize,
    ) -> PyResult<(Floats<'py>, Floats<'py>)> {
        check_batch_size(batch_size)?;
        let xs = images(&x, self.inner.spec())?;
        let ys = labels(
            &y,
            xs.dim(0).map_err(gauntlet_error)?,
            self.inner.n_classes(),
        )?;
        let model = self.inner.as_ref();
        let (loss, grad) = interruptible(py, |stop| {
            let model = Interruptible { inner: model, stop };
            let n = xs.dim(0)?;
            let (mut losses, mut grads) = (Vec::new(), Vec::new());
            for start in (0..n).step_by(batch_size) {
                let len = batch_size.min(n - start);
                let g = model.loss_and_input_grad(
                    &xs.narrow(0, start, len)?,
                    &ys.narrow(0, start, len)?,
                    Mode::Eval,
                )?;
                losses.push(g.loss);
                grads.push(g.grad);
            }
            Ok((Tensor::cat(&losses, 0)?, Tensor::cat(&grads, 0)?))
        })?;
        Ok((array_f32(py, &loss)?, array_f32(py, &grad)?))
    }
}

/// Loads a model file: a gauntlet checkpoint (`.safetensors` with its spec inside), PyTorch
/// weights (`.safetensors` or `.pt` with a `.toml` spec beside), or an ONNX file (`.onnx`).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<Model> {
    let model = gauntlet_models::checkpoint::load(&path, &Device::Cpu).map_err(gauntlet_error)?;
    Ok(Model {
        inner: Arc::from(model),
        path,
    })
}

/// The test split of a data set as `(x float32 [N, C, H, W], y int64 [N])`.
#[pyfunction]
#[pyo3(signature = (name = "mnist", limit = None, data_dir = None))]
fn load_test_set<'py>(
    py: Python<'py>,
    name: &str,
    limit: Option<usize>,
    data_dir: Option<PathBuf>,
) -> PyResult<(Floats<'py>, Bound<'py, numpy::PyArray1<i64>>)> {
    let dataset: DatasetName = name
        .parse()
        .map_err(|e: String| value_error(format!("name: {e}")))?;
    let mut config = DataConfig::new(dataset);
    config.dir = data_dir;
    config.test_limit = limit;
    let test = gauntlet_data::load_test(&config)
        .map_err(gauntlet_error)?
        .test;
    let y = test
        .labels
        .to_dtype(DType::I64)
        .and_then(|t| t.to_vec1::<i64>())
        .map_err(gauntlet_error)?;
    Ok((array_f32(py, &test.images)?, vec_array(py, y)))
}

/// The attack options as the suite's `[[attack]]` keys: `kind` and `norm`, then the keyword
/// arguments with `_` read as `-` (`step_size` is `step-size`).
fn attack_options(
    attack: &str,
    norm: &Bound<'_, PyAny>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<AttackOptions> {
    let mut table = serde_json::Map::new();
    table.insert("kind".into(), Value::String(attack.into()));
    let norm: Value =
        pythonize::depythonize(norm).map_err(|e| value_error(format!("norm: {e}")))?;
    table.insert("norm".into(), norm);
    if let Some(options) = options {
        for (key, value) in options.iter() {
            let key: String = key.extract()?;
            let value: Value =
                pythonize::depythonize(&value).map_err(|e| value_error(format!("{key}: {e}")))?;
            table.insert(key.replace('_', "-"), value);
        }
    }
    serde_json::from_value(Value::Object(table))
        .map_err(|e| value_error(format!("attack options: {e}")))
}

fn attack_config(
    model: &dyn Classifier,
    attack: &str,
    norm: &Bound<'_, PyAny>,
    seed: u64,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<AttackConfig> {
    let options = attack_options(attack, norm, options)?;
    let spec = model.spec();
    options
        .resolve(seed, spec.n_classes, &spec.input)
        .map_err(|e| value_error(e.to_string()))
}

fn check_eps(eps: &[f64]) -> PyResult<()> {
    if eps.is_empty() {
        return Err(value_error("eps: give at least one budget".into()));
    }
    check_budgets("eps", eps).map_err(|(i, message)| match i {
        Some(i) => value_error(format!("eps[{i}]: {message}")),
        None => value_error(format!("eps: {message}")),
    })
}

/// Runs an attack at every ε on `(x, y)`; returns a dict the Python layer wraps in
/// `AttackResult`: `records` (one robustness record per ε), `examples` (per-example columns,
/// ε-major), `adversarials` (`[E, N, C, H, W]` or `None`) and `config` (the resolved attack).
#[pyfunction]
#[pyo3(signature = (model, x, y, attack, norm, eps, batch_size, seed, keep_adversarials, options = None))]
#[allow(clippy::too_many_arguments)]
fn attack<'py>(
    py: Python<'py>,
    model: &Model,
    x: PyReadonlyArray4<'py, f32>,
    y: PyReadonlyArray1<'py, i64>,
    attack: &str,
    norm: &Bound<'py, PyAny>,
    eps: Vec<f64>,
    batch_size: usize,
    seed: u64,
    keep_adversarials: bool,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    check_batch_size(batch_size)?;
    let classifier = model.inner.as_ref();
    let config = attack_config(classifier, attack, norm, seed, options)?;
    let built = config.build();
    // A minimum-norm attack gives every ε from one search: its budgets are optional.
    if !(eps.is_empty() && built.min_norm().is_some()) {
        check_eps(&eps)?;
    }
    let xs = images(&x, classifier.spec())?;
    let n = xs.dim(0).map_err(gauntlet_error)?;
    let ys = labels(&y, n, classifier.n_classes())?;
    let (records, outcomes, kept, search) = interruptible(py, |stop| {
        let model = Interruptible {
            inner: classifier,
            stop,
        };
        match built.min_norm() {
            Some(search) => {
                let run = evaluate_min_norm(
                    &model,
                    search,
                    &xs,
                    &ys,
                    &eps,
                    batch_size,
                    keep_adversarials,
                )?;
                let found = (run.curve.record, run.examples, run.minimal);
                Ok((run.records, run.outcomes, run.adversarials, Some(found)))
            }
            None => evaluate_attack_keeping(
                &model,
                built.as_ref(),
                &xs,
                &ys,
                &eps,
                batch_size,
                keep_adversarials,
            )
            .map(|(r, o, k)| (r, o, k, None)),
        }
    })?;
    let out = PyDict::new(py);
    match search {
        Some((curve, distances, minimal)) => {
            out.set_item("curve", pythonize::pythonize(py, &curve)?)?;
            let columns = PyDict::new(py);
            macro_rules! column {
                ($name:literal, $f:expr) => {
                    columns.set_item($name, vec_array(py, distances.iter().map($f).collect()))?;
                };
            }
            column!("index", |e| e.index as i64);
            column!("label", |e| i64::from(e.label));
            column!("clean_pred", |e| i64::from(e.clean_pred));
            column!("adv_pred", |e| i64::from(e.adv_pred));
            // NaN where none was found: a float column NumPy users can mask.
            column!("distance", |e| e.distance.unwrap_or(f64::NAN));
            column!("linf", |e| e.linf);
            column!("l2", |e| e.l2);
            column!("l1", |e| e.l1);
            out.set_item("distances", columns)?;
            out.set_item("minimal", array_f32(py, &minimal)?)?;
        }
        None => {
            out.set_item("curve", py.None())?;
            out.set_item("distances", py.None())?;
            out.set_item("minimal", py.None())?;
        }
    }
    let records: Vec<_> = records.into_iter().map(|t| t.record).collect();
    out.set_item("records", pythonize::pythonize(py, &records)?)?;
    out.set_item("config", pythonize::pythonize(py, &config)?)?;
    out.set_item("name", built.name())?;
    let examples = PyDict::new(py);
    macro_rules! column {
        ($name:literal, $f:expr) => {
            examples.set_item($name, vec_array(py, outcomes.iter().map($f).collect()))?;
        };
    }
    column!("eps", |o| o.eps);
    column!("index", |o| o.index as i64);
    column!("label", |o| i64::from(o.label));
    column!("clean_pred", |o| i64::from(o.clean_pred));
    column!("adv_pred", |o| i64::from(o.adv_pred));
    column!("robust", |o| o.robust);
    column!("perturbation", |o| o.perturbation);
    column!("linf", |o| o.linf);
    column!("l2", |o| o.l2);
    column!("l1", |o| o.l1);
    out.set_item("examples", examples)?;
    if keep_adversarials && !kept.is_empty() {
        let stacked = Tensor::stack(&kept, 0).map_err(gauntlet_error)?;
        out.set_item("adversarials", array_f32(py, &stacked)?)?;
    } else {
        out.set_item("adversarials", py.None())?;
    }
    Ok(out)
}

/// Crafts adversarial examples against every source model at one ε and scores them on every
/// target; returns the transfer records (one dict per source and target).
#[pyfunction]
#[pyo3(signature = (sources, targets, x, y, attack, norm, eps, batch_size, seed, options = None))]
#[allow(clippy::too_many_arguments)]
fn transfer<'py>(
    py: Python<'py>,
    sources: Vec<(String, PyRef<'py, Model>)>,
    targets: Vec<(String, PyRef<'py, Model>)>,
    x: PyReadonlyArray4<'py, f32>,
    y: PyReadonlyArray1<'py, i64>,
    attack: &str,
    norm: &Bound<'py, PyAny>,
    eps: f64,
    batch_size: usize,
    seed: u64,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    check_batch_size(batch_size)?;
    check_eps(&[eps])?;
    let first = match sources.first() {
        Some((_, m)) => m.inner.clone(),
        None => return Err(value_error("models: give at least one model".into())),
    };
    let config = attack_config(first.as_ref(), attack, norm, seed, options)?;
    let xs = images(&x, first.spec())?;
    let ys = labels(&y, xs.dim(0).map_err(gauntlet_error)?, first.n_classes())?;
    for (name, m) in sources.iter().chain(&targets) {
        if m.inner.spec().input != first.spec().input || m.n_classes() != first.n_classes() {
            return Err(value_error(format!(
                "models: `{name}` takes {:?} and gives {} classes, the first model {:?} and {}",
                m.inner.spec().input,
                m.n_classes(),
                first.spec().input,
                first.n_classes()
            )));
        }
    }
    let built = config.build();
    let source_models: Vec<(String, Arc<dyn Classifier>)> = sources
        .iter()
        .map(|(n, m)| (n.clone(), m.inner.clone()))
        .collect();
    let target_models: Vec<(String, Arc<dyn Classifier>)> = targets
        .iter()
        .map(|(n, m)| (n.clone(), m.inner.clone()))
        .collect();
    let records = interruptible(py, |stop| {
        let (s, t) = (
            interruptible_all(&source_models, stop),
            interruptible_all(&target_models, stop),
        );
        let s: Vec<(&str, &dyn Classifier)> =
            s.iter().map(|(n, m)| (*n, m as &dyn Classifier)).collect();
        let t: Vec<(&str, &dyn Classifier)> =
            t.iter().map(|(n, m)| (*n, m as &dyn Classifier)).collect();
        transfer_matrix(&s, &t, built.as_ref(), &xs, &ys, eps, batch_size)
    })?;
    Ok(pythonize::pythonize(py, &records)?)
}

fn interruptible_all<'a>(
    models: &'a [(String, Arc<dyn Classifier>)],
    stop: &'a AtomicBool,
) -> Vec<(&'a str, Interruptible<'a>)> {
    models
        .iter()
        .map(|(name, m)| {
            (
                name.as_str(),
                Interruptible {
                    inner: m.as_ref(),
                    stop,
                },
            )
        })
        .collect()
}

/// Runs a suite file (cached and resumable, as `gauntlet run`) and, when `report` is given,
/// draws its report there; returns the results folder.
#[pyfunction]
#[pyo3(signature = (path, results = PathBuf::from("results"), data_dir = None, report = None))]
fn run_suite(
    py: Python<'_>,
    path: PathBuf,
    results: PathBuf,
    data_dir: Option<PathBuf>,
    report: Option<PathBuf>,
) -> PyResult<String> {
    let options = gauntlet_suite::RunOptions {
        results_root: results,
        data_dir,
        ..Default::default()
    };
    let summary = py
        .allow_threads(|| gauntlet_suite::run_suite(&path, &options))
        .map_err(gauntlet_error)?;
    if let Some(report_dir) = report {
        py.allow_threads(|| gauntlet_report::write_report(&summary.results_dir, &report_dir))
            .map_err(gauntlet_error)?;
    }
    Ok(summary.results_dir.display().to_string())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The compute pool as the CLI starts it: `RAYON_NUM_THREADS` threads (default one per
    // core), flush-to-zero on each. Fails only if another extension already started rayon's
    // global pool; that pool then serves, without flush-to-zero on its workers.
    let _ = gauntlet_models::threads::init(None);
    m.add("GauntletError", m.py().get_type::<GauntletError>())?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(load_test_set, m)?)?;
    m.add_function(wrap_pyfunction!(attack, m)?)?;
    m.add_function(wrap_pyfunction!(transfer, m)?)?;
    m.add_function(wrap_pyfunction!(run_suite, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

//! From the wire types to a checked [`Suite`]: every cross-field invariant (ε non-negative,
//! names unique and known, options that fit the attack kind, the data folder present) is
//! checked here once, so the planner and runner never re-validate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gauntlet_attacks::{AttackConfig, Norm};
use gauntlet_data::{default_data_dir, DataConfig, DataFile, DatasetName};
use gauntlet_models::ModelSpec;
use gauntlet_train::{Regularizer, TrainConfig};
use serde::Serialize;

use crate::spec::{self, AttackSpec, SuiteSpec};
use crate::{Error, Result};

/// A checked suite, ready to plan.
#[derive(Clone, Debug, Serialize)]
pub struct Suite {
    pub name: String,
    pub seed: u64,
    /// With `dir` set to the folder that exists.
    pub data: DataConfig,
    /// The files the data set is read from, each with its size and SHA-256 as stored: part of
    /// every job's cache key, so results computed on other files are not reused. Empty when
    /// the files are missing (the run then fails loading them).
    pub data_files: Vec<DataFile>,
    pub models: Vec<ModelDef>,
    pub attacks: Vec<AttackDef>,
    pub transfer: Option<TransferDef>,
    pub noise: Option<NoiseDef>,
    pub eval: EvalOptions,
    /// `[eval] predictions`: a predict job per model and `predictions.csv`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub predictions: bool,
    /// `None` when `[visuals]` sets `enabled = false`.
    pub visuals: Option<VisualsDef>,
    /// `[report]`, checked against the models, attacks, transfer and noise above.
    pub report: crate::references::ReportSpec,
    /// The file it was read from.
    pub path: PathBuf,
}

/// A model to train.
#[derive(Clone, Debug, Serialize)]
pub struct ModelDef {
    pub name: String,
    /// Seed of the initial weights (through [`crate::INIT_STREAM`]), shuffling and dropout.
    pub seed: u64,
    pub spec: ModelSpec,
    /// With `seed` set to the model's seed.
    pub train: TrainConfig,
    /// The `[[model]]` entry whose `seeds` made this model one of its replicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The file this model is read from instead of trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<crate::spec::ExternalModel>,
    /// The model (index into [`Suite::models`]) whose kept weights this one continues on the
    /// training and validation splits together (`continue`); its `train` has no early
    /// stopping or validation check, and the optimizer's rate, momentum and the stopping
    /// objective come from that model's log when the job runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continues: Option<usize>,
}

/// An attack swept over its ε list.
#[derive(Clone, Debug, Serialize)]
pub struct AttackDef {
    pub name: String,
    pub method: AttackConfig,
    pub eps: Vec<f64>,
    /// How each budget was written where it was a fraction (`8/255`), else `None`; absent
    /// from the resolved suite when none was.
    #[serde(skip_serializing_if = "no_fractions")]
    pub eps_written: Vec<Option<String>>,
    /// The models it attacks, by name; every model when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

fn no_fractions(written: &[Option<String>]) -> bool {
    written.iter().all(Option::is_none)
}

impl AttackDef {
    /// The fraction budget `eps` was written as, if any.
    pub fn written(&self, eps: f64) -> Option<String> {
        let i = self.eps.iter().position(|&e| e == eps)?;
        self.eps_written.get(i).cloned().flatten()
    }

    /// Whether the suite runs it on model `name`.
    pub fn attacks_model(&self, name: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == name))
    }
}

/// `[transfer]`, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct TransferDef {
    /// Index into [`Suite::attacks`].
    pub attack: usize,
    pub eps: Vec<f64>,
    pub sources: Vec<SourceDef>,
    /// Indices into [`Suite::models`].
    pub targets: Vec<usize>,
}

/// A transfer source: one model, or an ensemble averaging several (named `a+b`).
#[derive(Clone, Debug, Serialize)]
pub struct SourceDef {
    pub name: String,
    /// Indices into [`Suite::models`].
    pub members: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NoiseDef {
    pub sigmas: Vec<f64>,
    pub clip: bool,
    pub seed: u64,
}

/// `[visuals]`, resolved: r* maps of the first correctly classified test image of each class
/// and a logit sweep, per model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisualsDef {
    /// Indices into [`Suite::models`].
    pub models: Vec<usize>,
    /// One r* map per budget, norms distinct.
    pub budgets: Vec<Budget>,
    pub sweep: SweepDef,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Budget {
    pub norm: Norm,
    pub eps: f64,
}

/// The logit sweep: `points` values of ε evenly spaced in `[-eps_max, eps_max]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepDef {
    pub norm: Norm,
    pub eps_max: f64,
    pub points: usize,
    /// Index among the evaluated test images; `None`: the first image of the r* maps.
    pub image: Option<usize>,
}

impl SweepDef {
    /// The ε values, from `-eps_max` to `eps_max`; the middle one is exactly 0 when `points`
    /// is odd.
    pub fn eps(&self) -> Vec<f64> {
        let last = (self.points - 1) as f64;
        (0..self.points)
            .map(|i| self.eps_max * (2.0 * i as f64 / last - 1.0))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalOptions {
    pub test_limit: Option<usize>,
    pub batch_size: usize,
}

impl Suite {
    /// Reads, parses and checks a suite file. `data_dir`, when given, replaces `data.dir`.
    ///
    /// A relative `data.dir` is relative to the suite file's folder; without one the data
    /// set's default folder is used ([`gauntlet_data::default_data_dir`]).
    ///
    /// # Errors
    /// [`Error::Toml`] (file:line:column) for syntax and schema errors, [`Error::Invalid`]
    /// (file and field) for impossible values.
    pub fn load(path: &Path, data_dir: Option<&Path>) -> Result<Suite> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Suite::from_text(path, &text, data_dir)
    }

    /// [`Suite::load`] on text already read; `path` locates messages and relative folders.
    pub fn from_text(path: &Path, text: &str, data_dir: Option<&Path>) -> Result<Suite> {
        let spec = spec::parse(path, text)?;
        let models = spec::merge_models(path, text, &spec.models)?;
        resolve(path, spec, models, data_dir)
    }

    /// The work of its models and attacks that is large enough to deserve a line before the
    /// run starts (a mistyped `epochs` or `steps` would otherwise run for days unannounced):
    /// one line per model with more than 1000 epochs and per attack with more than 10,000
    /// model evaluations per example and ε.
    pub fn large_work(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for m in &self.models {
            if m.train.epochs > 1000 {
                lines.push(format!(
                    "model `{}`: {} epochs of batch size {}",
                    m.name, m.train.epochs, m.train.batch_size
                ));
            }
        }
        let examples = self
            .eval
            .test_limit
            .map_or("every test example".to_string(), |n| {
                format!("{n} examples")
            });
        for a in &self.attacks {
            let per_example = a.method.evaluations_per_example();
            let attacked = self
                .models
                .iter()
                .filter(|m| a.attacks_model(&m.name))
                .count();
            if per_example > 10_000 {
                lines.push(format!(
                    "attack `{}`: about {per_example} model evaluations per example and eps, on {examples} at {} eps values, for each of {} models",
                    a.name,
                    a.eps.len(),
                    attacked
                ));
            }
        }
        lines
    }

    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// Whether some model trains with form A (double backpropagation), which needs
    /// `CANDLE_GRAD_DO_NOT_DETACH` before the first backward pass.
    pub fn needs_double_backprop(&self) -> bool {
        self.models
            .iter()
            .any(|m| matches!(m.train.regularizer, Regularizer::GradientPenalty { .. }))
    }

    /// The data configuration without its folder, for cache keys (with [`Suite::data_files`]),
    /// so moving the data does not invalidate results but changing it does.
    pub fn data_identity(&self) -> DataConfig {
        DataConfig {
            dir: None,
            ..self.data.clone()
        }
    }
}

/// `[channels, height, width]` and classes of a data set's images.
pub fn data_shape(dataset: DatasetName) -> ([usize; 3], usize) {
    match dataset {
        DatasetName::Mnist | DatasetName::FashionMnist => ([1, 28, 28], 10),
        DatasetName::Cifar10 => ([3, 32, 32], 10),
    }
}

fn check_name(path: &Path, field: &str, name: &str) -> Result<()> {
    gauntlet_train::check_file_name(name).map_err(|message| Error::invalid(path, field, message))
}

/// Every (model, attack) pair must get its own `per-example/<model>-<attack>.csv`: model `a`
/// with attack `x-y` and model `a-x` with attack `y` would both write `a-x-y.csv`.
fn check_output_names(path: &Path, models: &[ModelDef], attacks: &[AttackDef]) -> Result<()> {
    let mut seen: std::collections::HashMap<String, (&str, &str)> = Default::default();
    for m in models {
        for a in attacks {
            let file = format!("{}-{}", m.name, a.name);
            if let Some((m0, a0)) = seen.insert(file.clone(), (&m.name, &a.name)) {
                return Err(Error::invalid(
                    path,
                    format!("attack `{}`", a.name),
                    format!(
                        "model `{}` with attack `{}` and model `{m0}` with attack `{a0}` would both write per-example/{file}.csv; rename a model or an attack",
                        m.name, a.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_budgets(path: &Path, field: &str, what: &str, values: &[f64]) -> Result<()> {
    gauntlet_attacks::check_budgets(what, values).map_err(|(i, message)| match i {
        Some(i) => Error::invalid(path, format!("{field}[{i}]"), message),
        None => Error::invalid(path, field, message),
    })
}

fn resolve(
    path: &Path,
    spec: SuiteSpec,
    merged: Vec<spec::MergedModel>,
    data_dir: Option<&Path>,
) -> Result<Suite> {
    check_name(path, "name", &spec.name)?;
    if merged.is_empty() {
        return Err(Error::invalid(
            path,
            "model",
            "expected at least one [[model]], got none",
        ));
    }

    let mut data = spec.data.clone();
    let dir = match (data_dir, &data.dir) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if dir.is_relative() => path.parent().unwrap_or(Path::new(".")).join(dir),
        (None, Some(dir)) => dir.clone(),
        (None, None) => default_data_dir(data.dataset),
    };
    if !dir.is_dir() {
        return Err(Error::invalid(
            path,
            "data.dir",
            format!(
                "data directory {} does not exist (set data.dir, pass a data directory, or set GAUNTLET_DATA_DIR)",
                dir.display()
            ),
        ));
    }
    data.dir = Some(dir);
    let (input, n_classes) = data_shape(data.dataset);

    let mut models = Vec::with_capacity(merged.len());
    for m in merged {
        let field = format!("model `{}`", m.name);
        check_name(path, &format!("{field}.name"), &m.name)?;
        if m.name.contains('+') {
            return Err(Error::invalid(
                path,
                format!("{field}.name"),
                "`+` is reserved for ensembles",
            ));
        }
        let seed = m.seed.unwrap_or(spec.seed);
        if let Some(ext) = &m.external {
            if ext.spec.input != input || ext.spec.n_classes != n_classes {
                return Err(Error::invalid(
                    path,
                    format!("{field}.path"),
                    format!(
                        "{} takes {:?} images and gives {} logits; {} has {input:?} images in {n_classes} classes",
                        ext.path.display(),
                        ext.spec.input,
                        ext.spec.n_classes,
                        data.dataset
                    ),
                ));
            }
        }
        let model_spec = ModelSpec::new(m.arch, input, n_classes).with_preprocess(m.preprocess);
        model_spec
            .validate()
            .map_err(|e| Error::invalid(path, format!("{field}.arch"), e.to_string()))?;
        let mut train = m.train;
        train.seed = seed;
        if m.continues.is_some() {
            // No validation split to watch: the second stage stops on the training objective.
            train.early_stopping = None;
            train.adversarial_validation = None;
            train.stop_at_train_loss = None;
        }
        train
            .validate()
            .map_err(|e| Error::invalid(path, format!("{field}.train"), e.to_string()))?;
        models.push((
            ModelDef {
                name: m.name,
                seed,
                spec: model_spec,
                train,
                group: m.group,
                external: m.external,
                continues: None,
            },
            m.continues,
        ));
    }
    let names: Vec<String> = models.iter().map(|(m, _)| m.name.clone()).collect();
    let models: Vec<ModelDef> = models
        .into_iter()
        .map(|(mut m, from)| {
            if let Some(from) = from {
                // merge_models checked the entry; a replicate's source is named after its seed.
                let source = names.iter().position(|n| *n == from).ok_or_else(|| {
                    Error::invalid(
                        path,
                        format!("model `{}`.continue", m.name),
                        format!(
                            "no model `{from}` to continue (its entry has no replicate of seed {})",
                            m.seed
                        ),
                    )
                })?;
                m.continues = Some(source);
            }
            Ok(m)
        })
        .collect::<Result<_>>()?;

    let model_of = |field: &str, name: &str| {
        models.iter().position(|m| m.name == name).ok_or_else(|| {
            Error::invalid(
                path,
                field,
                format!(
                    "unknown model `{name}` (known: {})",
                    models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };

    let mut attacks = Vec::with_capacity(spec.attacks.len());
    let mut names = BTreeSet::new();
    for a in &spec.attacks {
        let field = format!("attack `{}`", a.name);
        check_name(path, &format!("{field}.name"), &a.name)?;
        if !names.insert(a.name.clone()) {
            return Err(Error::invalid(path, field, "duplicate attack name"));
        }
        let eps: Vec<f64> = a.eps.iter().map(|b| b.value).collect();
        let searched = a.options.kind.is_min_norm() && a.options.targeted.is_none();
        if !(searched && eps.is_empty()) {
            check_budgets(path, &format!("{field}.eps"), "eps", &eps)?;
        }
        if let Some(listed) = &a.models {
            if listed.is_empty() {
                return Err(Error::invalid(
                    path,
                    format!("{field}.models"),
                    "lists no model; leave the key out to attack every model",
                ));
            }
        }
        // A replicated entry's name stands for all its replicates.
        let listed = a.models.as_ref().map(|listed| {
            listed
                .iter()
                .flat_map(|name| {
                    let group: Vec<String> = models
                        .iter()
                        .filter(|m| m.group.as_deref() == Some(name.as_str()))
                        .map(|m| m.name.clone())
                        .collect();
                    if group.is_empty() {
                        vec![name.clone()]
                    } else {
                        group
                    }
                })
                .collect::<Vec<_>>()
        });
        for name in listed.iter().flatten() {
            model_of(&format!("{field}.models"), name)?;
        }
        attacks.push(AttackDef {
            name: a.name.clone(),
            method: attack_method(path, &field, a, spec.seed, input, n_classes)?,
            eps,
            eps_written: a.eps.iter().map(|b| b.written.clone()).collect(),
            models: listed,
        });
    }

    check_output_names(path, &models, &attacks)?;

    let transfer = match &spec.transfer {
        None => None,
        Some(t) => {
            let attack = attacks
                .iter()
                .position(|a| a.name == t.attack)
                .ok_or_else(|| {
                    Error::invalid(
                        path,
                        "transfer.attack",
                        format!(
                            "unknown attack `{}` (known: {})",
                            t.attack,
                            attacks
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            check_budgets(path, "transfer.eps", "eps", &t.eps)?;
            let all: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
            let mut sources = Vec::new();
            for (i, source) in t.sources.as_ref().unwrap_or(&all).iter().enumerate() {
                let field = format!("transfer.sources[{i}]");
                let members = source
                    .split('+')
                    .map(|name| model_of(&field, name.trim()))
                    .collect::<Result<Vec<_>>>()?;
                let name = members
                    .iter()
                    .map(|&m| models[m].name.as_str())
                    .collect::<Vec<_>>()
                    .join("+");
                if sources.iter().any(|s: &SourceDef| s.name == name) {
                    return Err(Error::invalid(
                        path,
                        field,
                        format!("source `{name}` is listed twice"),
                    ));
                }
                sources.push(SourceDef { name, members });
            }
            let mut targets = Vec::new();
            for (i, target) in t.targets.as_ref().unwrap_or(&all).iter().enumerate() {
                let m = model_of(&format!("transfer.targets[{i}]"), target)?;
                if !targets.contains(&m) {
                    targets.push(m);
                }
            }
            Some(TransferDef {
                attack,
                eps: t.eps.clone(),
                sources,
                targets,
            })
        }
    };

    let noise = match &spec.noise {
        None => None,
        Some(n) => {
            check_budgets(path, "noise.sigmas", "sigma", &n.sigmas)?;
            Some(NoiseDef {
                sigmas: n.sigmas.clone(),
                clip: n.clip,
                seed: n.seed.unwrap_or(spec.seed),
            })
        }
    };
    if spec.eval.batch_size == 0 {
        return Err(Error::invalid(
            path,
            "eval.batch-size",
            "must be at least 1, got 0",
        ));
    }
    for (field, limit) in [
        ("data.train-limit", spec.data.train_limit),
        ("data.test-limit", spec.data.test_limit),
    ] {
        if limit == Some(0) {
            return Err(Error::invalid(path, field, "must be at least 1, got 0"));
        }
    }
    if spec.eval.test_limit == Some(0) {
        return Err(Error::invalid(
            path,
            "eval.test-limit",
            "must be at least 1, got 0",
        ));
    }

    let visuals = resolve_visuals(
        path,
        spec.visuals.as_ref(),
        &models,
        input.iter().product(),
        &model_of,
    )?;

    // Hashed as stored (0.06 s for MNIST's 11 MB by sha256sum): cheap enough for every plan.
    let data_files = gauntlet_data::identify(&data).map_or_else(|_| vec![], |id| id.files);
    let suite = Suite {
        name: spec.name,
        seed: spec.seed,
        data,
        data_files,
        models,
        attacks,
        transfer,
        noise,
        eval: EvalOptions {
            test_limit: spec.eval.test_limit,
            batch_size: spec.eval.batch_size,
        },
        predictions: spec.eval.predictions,
        visuals,
        report: spec.report,
        path: path.to_path_buf(),
    };
    crate::references::check(path, &suite.report, &suite)?;
    Ok(suite)
}

/// `[visuals]` with its defaults; `input_dim` sets the default budgets.
fn resolve_visuals(
    path: &Path,
    spec: Option<&spec::VisualsSpec>,
    models: &[ModelDef],
    input_dim: usize,
    model_of: &dyn Fn(&str, &str) -> Result<usize>,
) -> Result<Option<VisualsDef>> {
    let default = spec::VisualsSpec::default();
    let spec = spec.unwrap_or(&default);
    if spec.enabled == Some(false) {
        return Ok(None);
    }
    let chosen = match &spec.models {
        Some(names) => {
            let mut chosen = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let m = model_of(&format!("visuals.models[{i}]"), name)?;
                if !chosen.contains(&m) {
                    chosen.push(m);
                }
            }
            if chosen.is_empty() {
                return Err(Error::invalid(
                    path,
                    "visuals.models",
                    "expected at least one model, got none (set `enabled = false` for no visuals)",
                ));
            }
            chosen
        }
        // The baseline and what regularizing it changed.
        None => (0..models.len())
            .filter(|&i| i == 0 || !matches!(models[i].train.regularizer, Regularizer::None))
            .collect(),
    };
    let budgets = match &spec.budgets {
        Some(budgets) => budgets.clone(),
        None => [Norm::Linf, Norm::L2, Norm::L1]
            .map(|norm| spec::BudgetSpec { norm, eps: None })
            .to_vec(),
    };
    if budgets.is_empty() {
        return Err(Error::invalid(
            path,
            "visuals.budgets",
            "expected at least one { norm, eps }, got none",
        ));
    }
    let mut resolved: Vec<Budget> = Vec::with_capacity(budgets.len());
    for (i, b) in budgets.iter().enumerate() {
        let field = format!("visuals.budgets[{i}]");
        if resolved.iter().any(|r| r.norm == b.norm) {
            return Err(Error::invalid(
                path,
                format!("{field}.norm"),
                format!(
                    "norm {} is listed twice (one r* map per norm)",
                    b.norm.name()
                ),
            ));
        }
        let eps = b
            .eps
            .unwrap_or_else(|| 0.25 * (input_dim as f64).powf(1.0 / b.norm.p()));
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                path,
                format!("{field}.eps"),
                format!("eps must be finite and > 0, got {eps}"),
            ));
        }
        resolved.push(Budget { norm: b.norm, eps });
    }
    let sweep = SweepDef {
        norm: spec.sweep_norm.unwrap_or(Norm::Linf),
        eps_max: spec.sweep_eps.unwrap_or(10.0),
        points: spec.sweep_points.unwrap_or(201),
        image: spec.sweep_image,
    };
    if !(sweep.eps_max.is_finite() && sweep.eps_max > 0.0) {
        return Err(Error::invalid(
            path,
            "visuals.sweep-eps",
            format!("must be finite and > 0, got {}", sweep.eps_max),
        ));
    }
    if sweep.points < 2 {
        return Err(Error::invalid(
            path,
            "visuals.sweep-points",
            format!(
                "must be at least 2 (both ends of the sweep), got {}",
                sweep.points
            ),
        ));
    }
    Ok(Some(VisualsDef {
        models: chosen,
        budgets: resolved,
        sweep,
    }))
}

/// The attack of an `[[attack]]` entry: [`gauntlet_attacks::AttackOptions::resolve`], its
/// errors pointed at the entry's key.
fn attack_method(
    path: &Path,
    field: &str,
    a: &AttackSpec,
    suite_seed: u64,
    input: [usize; 3],
    n_classes: usize,
) -> Result<AttackConfig> {
    a.options
        .resolve(suite_seed, n_classes, &input)
        .map_err(|e| Error::invalid(path, format!("{field}.{}", e.key), e.message))
}

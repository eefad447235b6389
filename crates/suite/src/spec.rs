//! The suite file as written: wire types (`*Spec`, `deny_unknown_fields`, kebab-case keys) and
//! the one place TOML is read. Model entries may inherit from each other with `like`; that
//! merge happens on TOML values, before typed deserialisation, so an entry can override a
//! single field of an inherited table (`train = { epochs = 3 }`). Cross-field checks live in
//! [`crate::resolve`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gauntlet_attacks::{AttackOptions, Budget, Norm};
use gauntlet_data::DataConfig;
use gauntlet_models::{Arch, ModelSpec, Preprocess};
use gauntlet_train::{Regularizer, TrainConfig};
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use toml::{Spanned, Value};

use crate::{Error, Result};

/// A whole suite file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SuiteSpec {
    /// Names the results folder, `results/<name>/`.
    pub name: String,
    /// Every random choice derives from it unless an entry sets its own.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntrySpec>,
    #[serde(rename = "attack", default)]
    pub attacks: Vec<AttackSpec>,
    #[serde(default)]
    pub transfer: Option<TransferSpec>,
    #[serde(default)]
    pub noise: Option<NoiseSpec>,
    #[serde(default)]
    pub eval: EvalSpec,
    /// Absent: the defaults of [`VisualsSpec`].
    #[serde(default)]
    pub visuals: Option<VisualsSpec>,
    /// Published numbers and protocol notes for the report.
    #[serde(default)]
    pub report: crate::references::ReportSpec,
}

fn default_seed() -> u64 {
    1
}

/// One `[[model]]` entry before inheritance: the tables stay TOML values (with their place in
/// the file) until [`merge_models`] has applied `like`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelEntrySpec {
    pub name: Spanned<String>,
    /// Another model whose fields this one inherits and overrides.
    #[serde(default)]
    pub like: Option<Spanned<String>>,
    /// Seed of this model's initial weights, shuffling and dropout; the suite's by default.
    #[serde(default)]
    pub seed: Option<u64>,
    /// One model per seed, named `NAME-sSEED`, instead of one with `seed`: replicates whose
    /// spread the report gives (mean and standard deviation over seeds). Inherited by `like`
    /// unless the entry sets `seed` or `seeds` itself.
    #[serde(default)]
    pub seeds: Option<Spanned<Vec<u64>>>,
    /// [`gauntlet_models::Arch`].
    #[serde(default)]
    pub arch: Option<Spanned<Value>>,
    /// [`gauntlet_models::Preprocess`], none by default.
    #[serde(default)]
    pub preprocess: Option<Spanned<Value>>,
    /// [`gauntlet_train::TrainConfig`].
    #[serde(default)]
    pub train: Option<Spanned<Value>>,
    /// Shorthand for `train.regularizer` ([`gauntlet_train::Regularizer`]).
    #[serde(default)]
    pub regularizer: Option<Spanned<Value>>,
    /// A model file to attack instead of a recipe to train: a gauntlet checkpoint, a PyTorch
    /// safetensors `state_dict` with its spec beside it, or an ONNX file; relative to the
    /// suite file.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// pylearn2's second Maxout stage: continue the named model's kept weights on the training
    /// and validation splits together, at the learning rate and momentum of its best epoch,
    /// until the training objective falls to its value at that epoch. Inherits the named
    /// model's recipe (and its `seeds`: replicate `NAME-sK` continues `FROM-sK`); `train` may
    /// override fields such as the `epochs` cap.
    #[serde(default, rename = "continue")]
    pub continues: Option<Spanned<String>>,
}

impl ModelEntrySpec {
    /// The entry whose fields this one inherits: its `like`, or the model it continues.
    fn parent(&self) -> Option<&Spanned<String>> {
        self.like.as_ref().or(self.continues.as_ref())
    }
}

/// One `[[attack]]` entry: its name, its budgets and the attack itself
/// ([`gauntlet_attacks::AttackOptions`], whose keys follow `name` and `eps` in the table;
/// docs/suites.md lists which apply to which `kind`).
#[derive(Clone, Debug)]
pub struct AttackSpec {
    pub name: String,
    pub eps: Vec<Budget>,
    /// The models it attacks, by name; every model when absent.
    pub models: Option<Vec<String>>,
    pub options: AttackOptions,
}

impl<'de> Deserialize<'de> for AttackSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Entry {
            name: String,
            /// Numbers or fractions written as strings (`"8/255"`).
            #[serde(default)]
            eps: Option<Vec<Budget>>,
            #[serde(default)]
            models: Option<Vec<String>>,
            #[serde(flatten)]
            options: toml::Table,
        }
        let entry = Entry::deserialize(d)?;
        let options = attack_options(&entry.options)
            .map_err(|e| de::Error::custom(format!("attack `{}`{e}", entry.name)))?;
        // A minimum-norm attack gives every ε from one search: its `eps` is optional.
        let eps = match entry.eps {
            Some(eps) => eps,
            None if options.kind.is_min_norm() => Vec::new(),
            None => return Err(de::Error::missing_field("eps")),
        };
        Ok(AttackSpec {
            eps,
            name: entry.name,
            models: entry.models,
            options,
        })
    }
}

/// The keys of an `[[attack]]` table after `name` and `eps`. On an error, the key at fault:
/// the unknown one, or the first whose value does not fit on its own.
fn attack_options(table: &toml::Table) -> std::result::Result<AttackOptions, String> {
    let parse = |t: &toml::Table| AttackOptions::deserialize(Value::Table(t.clone()));
    let whole = match parse(table) {
        Ok(options) => return Ok(options),
        Err(e) => e.message().to_string(),
    };
    for (key, value) in table {
        let mut alone = toml::Table::new();
        alone.insert("kind".into(), "pgd".into());
        alone.insert("norm".into(), "inf".into());
        alone.insert(key.clone(), value.clone());
        if let Err(e) = parse(&alone) {
            return Err(format!(".{key}: {}", e.message()));
        }
    }
    Err(format!(": {whole}"))
}

/// `[transfer]`: examples crafted against each source, scored on every target.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TransferSpec {
    /// Name of an `[[attack]]` entry; its own `eps` list is not used here.
    pub attack: String,
    /// One budget or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub eps: Vec<f64>,
    /// Model names; `"a+b"` is the ensemble averaging the logits of `a` and `b`. All models
    /// by default.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// Model names; all models by default.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

/// `[noise]`: accuracy under additive Gaussian noise.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NoiseSpec {
    pub sigmas: Vec<f64>,
    /// Clip the noisy images to `[0, 1]` (true).
    #[serde(default = "default_true")]
    pub clip: bool,
    /// The suite's seed by default.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// `[eval]`: which test images attacks, noise and transfer use, and how many at a time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EvalSpec {
    /// The first `test-limit` images of the test split (after `data.test-limit`); all by default.
    #[serde(default)]
    pub test_limit: Option<usize>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Write `predictions.csv`: every model's class for every test example, for paired
    /// comparisons (McNemar's test in the report).
    #[serde(default)]
    pub predictions: bool,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            test_limit: None,
            batch_size: default_eval_batch(),
            predictions: false,
        }
    }
}

fn default_eval_batch() -> usize {
    250
}

/// `[visuals]`: the r* maps and the logit sweep the report draws (`perturbations.json`,
/// `logit_sweep.json`); every key has a default, and a suite without the section gets them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VisualsSpec {
    /// False: no visuals job (true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Model names; the first model and every regularized one by default.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `{ norm, eps }` per r* map; p = inf, 2, 1 by default, each with `eps` defaulting to
    /// 0.25·d^(1/p) for d input values (the L∞ ball of radius 0.25's corner: 0.25, 7, 196 on
    /// MNIST).
    #[serde(default)]
    pub budgets: Option<Vec<BudgetSpec>>,
    /// The logit sweep's direction (`"inf"`: FGSM's `sign(∇ₓL)`).
    #[serde(default)]
    pub sweep_norm: Option<Norm>,
    /// The sweep runs over ε in `[-sweep-eps, sweep-eps]` (10).
    #[serde(default)]
    pub sweep_eps: Option<f64>,
    /// Evenly spaced ε values, both ends included (201).
    #[serde(default)]
    pub sweep_points: Option<usize>,
    /// Index of the swept image among the evaluated test images; by default the first image
    /// shown in the r* maps.
    #[serde(default)]
    pub sweep_image: Option<usize>,
}

/// One r* map's norm and budget.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BudgetSpec {
    pub norm: Norm,
    #[serde(default)]
    pub eps: Option<f64>,
}

fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<f64>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<f64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number, a fraction like \"8/255\", or a list of them")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v])
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v as f64])
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Vec<f64>, E> {
            Ok(vec![v as f64])
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Vec<f64>, E> {
            gauntlet_attacks::parse_budget(v)
                .map(|b| vec![b])
                .map_err(E::custom)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<f64>, A::Error> {
            let mut res = Vec::new();
            while let Some(v) = seq.next_element::<Budget>()? {
                res.push(v.value);
            }
            Ok(res)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// Parses a suite file's text; `path` is only used in messages.
///
/// # Errors
/// [`Error::Toml`] with the line and column of the offending key or value.
pub fn parse(path: &Path, text: &str) -> Result<SuiteSpec> {
    toml::from_str(text).map_err(|e| toml_error(path, text, 0, &e))
}

/// A model entry after `like` inheritance, typed.
#[derive(Clone, Debug)]
pub struct MergedModel {
    pub name: String,
    pub seed: Option<u64>,
    /// The entry's name when `seeds` made this model one of its replicates.
    pub group: Option<String>,
    /// The model this one continues (`continue`), by name.
    pub continues: Option<String>,
    /// For a model read from a file, the file's own.
    pub arch: Arch,
    pub preprocess: Preprocess,
    pub train: TrainConfig,
    pub external: Option<ExternalModel>,
}

/// A model a suite reads from a file instead of training.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExternalModel {
    /// As resolved against the suite file's folder.
    pub path: PathBuf,
    /// Of the file's bytes (hex): part of the cache key and of results.json.
    pub sha256: String,
    /// Its description, read from the file (or the spec beside it).
    pub spec: ModelSpec,
}

/// Reads the model file of entry `name`'s `path = "…"`.
fn external(suite: &Path, text: &str, name: &str, file: &Spanned<String>) -> Result<ExternalModel> {
    let at = |msg: String| {
        located(
            suite,
            text,
            file.span(),
            format!("model `{name}`: path: {msg}"),
        )
    };
    let given = Path::new(file.get_ref());
    let path = if given.is_relative() {
        suite.parent().unwrap_or(Path::new(".")).join(given)
    } else {
        given.to_path_buf()
    };
    let bytes = std::fs::read(&path).map_err(|e| at(format!("{}: {e}", path.display())))?;
    let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
    let spec = gauntlet_models::checkpoint::read_model_spec(&path, &bytes)
        .map_err(|e| at(e.to_string()))?;
    Ok(ExternalModel { path, sha256, spec })
}

/// Applies `like` to every model entry, in file order.
///
/// An entry starts from a copy of the model it is `like` (itself resolved first) and
/// overrides it key by key: tables merge recursively, anything else (numbers, strings, lists)
/// replaces. A table whose `kind` differs from the inherited one replaces it whole, since
/// its other keys belong to another variant. `name` and `like` are never inherited.
///
/// # Errors
/// An unknown model in `like`, a `like` cycle, duplicate names, a missing `arch`, and values
/// that do not deserialize (located at the entry's own value where possible).
pub fn merge_models(
    path: &Path,
    text: &str,
    entries: &[ModelEntrySpec],
) -> Result<Vec<MergedModel>> {
    let mut index = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let name = entry.name.get_ref();
        if let (Some(_), Some(seeds)) = (entry.seed, &entry.seeds) {
            return Err(located(
                path,
                text,
                seeds.span(),
                format!("model `{name}`: give `seed` or `seeds`, not both"),
            ));
        }
        if index.insert(name.clone(), i).is_some() {
            return Err(located(
                path,
                text,
                entry.name.span(),
                format!("duplicate model name `{name}`"),
            ));
        }
        if let Some(from) = &entry.continues {
            let own = [
                ("like", entry.like.as_ref().map(|v| v.span())),
                ("seed", entry.seed.map(|_| from.span())),
                ("seeds", entry.seeds.as_ref().map(|v| v.span())),
                ("arch", entry.arch.as_ref().map(|v| v.span())),
                ("preprocess", entry.preprocess.as_ref().map(|v| v.span())),
                ("regularizer", entry.regularizer.as_ref().map(|v| v.span())),
                ("path", entry.path.as_ref().map(|v| v.span())),
            ];
            if let Some((key, span)) = own.into_iter().find_map(|(k, s)| s.map(|s| (k, s))) {
                return Err(located(
                    path,
                    text,
                    span,
                    format!(
                        "model `{name}`: a model that continues another takes its `{key}` from it; only `train` may be set"
                    ),
                ));
            }
        }
    }
    for entry in entries {
        let Some(from) = &entry.continues else {
            continue;
        };
        let fail = |msg: String| {
            Err(located(
                path,
                text,
                from.span(),
                format!("model `{}`: continue: {msg}", entry.name.get_ref()),
            ))
        };
        match index.get(from.get_ref()).map(|&i| &entries[i]) {
            None => {
                return fail(format!(
                    "unknown model `{}` (known: {})",
                    from.get_ref(),
                    index.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
            Some(source) if source.path.is_some() => {
                return fail(format!(
                    "`{}` is read from a file, so it has no training run to continue",
                    from.get_ref()
                ))
            }
            Some(source) if source.continues.is_some() => {
                return fail(format!(
                    "`{}` itself continues a model; continue the first stage's model instead",
                    from.get_ref()
                ))
            }
            Some(_) => {}
        }
    }
    // The raw (untyped) fields of every entry after inheritance, filled in dependency order.
    let mut merged: Vec<Option<RawModel>> = vec![None; entries.len()];
    for start in 0..entries.len() {
        let mut chain = vec![start];
        // Walk up the `like` chain to the first resolved (or root) entry.
        loop {
            let current = *chain.last().expect("chain starts non-empty");
            if merged[current].is_some() {
                chain.pop();
                break;
            }
            let Some(like) = entries[current].parent() else {
                break;
            };
            let Some(&parent) = index.get(like.get_ref()) else {
                return Err(located(
                    path,
                    text,
                    like.span(),
                    format!(
                        "model `{}`: `like` names an unknown model `{}` (known: {})",
                        entries[current].name.get_ref(),
                        like.get_ref(),
                        index.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            if let Some(pos) = chain.iter().position(|&c| c == parent) {
                let names: Vec<&str> = chain[pos..]
                    .iter()
                    .chain(std::iter::once(&parent))
                    .map(|&c| entries[c].name.get_ref().as_str())
                    .collect();
                return Err(located(
                    path,
                    text,
                    like.span(),
                    format!("`like` cycle: {}", names.join(" -> ")),
                ));
            }
            chain.push(parent);
        }
        // Resolve from the root down.
        for &i in chain.iter().rev() {
            let own = RawModel::own(&entries[i]);
            let raw = match entries[i].parent() {
                Some(like) => {
                    let parent = merged[index[like.get_ref()]]
                        .as_ref()
                        .expect("parents resolve first");
                    parent.overridden_by(&own)
                }
                None => own,
            };
            merged[i] = Some(raw);
        }
    }
    let mut models = Vec::new();
    for (entry, raw) in entries.iter().zip(merged) {
        let raw = raw.expect("every entry resolved");
        let seeds = raw.seeds.clone();
        let mut model = typed(path, text, entry, raw)?;
        model.continues = entry.continues.as_ref().map(|c| c.get_ref().clone());
        match seeds {
            None => models.push(model),
            Some(seeds) => models.extend(replicates(path, text, entry, model, &seeds, &index)?),
        }
    }
    Ok(models)
}

/// One model per seed of entry `entry`'s (own or inherited) `seeds`.
fn replicates(
    path: &Path,
    text: &str,
    entry: &ModelEntrySpec,
    model: MergedModel,
    seeds: &[u64],
    names: &BTreeMap<String, usize>,
) -> Result<Vec<MergedModel>> {
    let name = entry.name.get_ref();
    // Located at the entry's own `seeds`, or at its name when they are inherited.
    let span = entry
        .seeds
        .as_ref()
        .map_or_else(|| entry.name.span(), |s| s.span());
    let fail = |msg: String| {
        Err(located(
            path,
            text,
            span.clone(),
            format!("model `{name}`: seeds: {msg}"),
        ))
    };
    if model.external.is_some() {
        return fail("a model read from `path` is not trained, so it has no seeds".into());
    }
    if seeds.is_empty() {
        return fail("lists no seed; give at least one, or use `seed`".into());
    }
    let mut out = Vec::with_capacity(seeds.len());
    for (i, &seed) in seeds.iter().enumerate() {
        if seeds[..i].contains(&seed) {
            return fail(format!("seed {seed} is listed twice"));
        }
        let replica = format!("{name}-s{seed}");
        if names.contains_key(&replica) {
            return fail(format!(
                "its replicate `{replica}` has the name of another model"
            ));
        }
        out.push(MergedModel {
            name: replica,
            seed: Some(seed),
            group: Some(name.clone()),
            // The source's replicate of the same seed.
            continues: model.continues.as_ref().map(|c| format!("{c}-s{seed}")),
            ..model.clone()
        });
    }
    Ok(out)
}

/// The inheritable fields of a model entry as TOML values.
#[derive(Clone, Debug, Default)]
struct RawModel {
    seed: Option<u64>,
    seeds: Option<Vec<u64>>,
    arch: Option<Value>,
    preprocess: Option<Value>,
    train: Option<Value>,
}

impl RawModel {
    fn own(entry: &ModelEntrySpec) -> Self {
        let mut train = entry.train.as_ref().map(|t| t.get_ref().clone());
        if let Some(reg) = &entry.regularizer {
            let mut table = toml::Table::new();
            table.insert("regularizer".into(), reg.get_ref().clone());
            let over = Value::Table(table);
            train = Some(match train {
                Some(t) => merge(&t, &over),
                None => over,
            });
        }
        Self {
            seed: entry.seed,
            seeds: entry.seeds.as_ref().map(|s| s.get_ref().clone()),
            arch: entry.arch.as_ref().map(|a| a.get_ref().clone()),
            preprocess: entry.preprocess.as_ref().map(|p| p.get_ref().clone()),
            train,
        }
    }

    fn overridden_by(&self, own: &RawModel) -> RawModel {
        let pick = |base: &Option<Value>, over: &Option<Value>| match (base, over) {
            (Some(b), Some(o)) => Some(merge(b, o)),
            (b, None) => b.clone(),
            (None, o) => o.clone(),
        };
        // An entry's own `seed` or `seeds` replaces both of its parent's.
        let (seed, seeds) = if own.seed.is_some() || own.seeds.is_some() {
            (own.seed, own.seeds.clone())
        } else {
            (self.seed, self.seeds.clone())
        };
        RawModel {
            seed,
            seeds,
            arch: pick(&self.arch, &own.arch),
            preprocess: pick(&self.preprocess, &own.preprocess),
            train: pick(&self.train, &own.train),
        }
    }
}

/// `over` applied on top of `base` (see [`merge_models`]).
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            if let (Some(bk), Some(ok)) = (b.get("kind"), o.get("kind")) {
                if bk != ok {
                    return over.clone();
                }
            }
            let mut res = b.clone();
            for (key, value) in o {
                let merged = match b.get(key) {
                    Some(bv) => merge(bv, value),
                    None => value.clone(),
                };
                res.insert(key.clone(), merged);
            }
            Value::Table(res)
        }
        _ => over.clone(),
    }
}

fn typed(path: &Path, text: &str, entry: &ModelEntrySpec, raw: RawModel) -> Result<MergedModel> {
    let name = entry.name.get_ref().clone();
    if let Some(file) = &entry.path {
        let recipe = [
            &entry.arch,
            &entry.preprocess,
            &entry.train,
            &entry.regularizer,
        ];
        if entry.like.is_some() || recipe.iter().any(|v| v.is_some()) {
            return Err(located(
                path,
                text,
                file.span(),
                format!("model `{name}`: a model read from `path` takes no `like`, `arch`, `preprocess`, `train` or `regularizer`"),
            ));
        }
        let ext = external(path, text, &name, file)?;
        return Ok(MergedModel {
            name,
            seed: raw.seed,
            group: None,
            continues: None,
            arch: ext.spec.arch.clone(),
            preprocess: ext.spec.preprocess,
            train: TrainConfig::default(),
            external: Some(ext),
        });
    }
    let Some(arch) = raw.arch else {
        return Err(located(
            path,
            text,
            entry.name.span(),
            format!("model `{name}`: missing `arch` (give one, or `like` a model that has one)"),
        ));
    };
    let arch: Arch = field(path, text, &name, "arch", arch, &[entry.arch.as_ref()])?;
    let preprocess = match raw.preprocess {
        Some(p) => field(
            path,
            text,
            &name,
            "preprocess",
            p,
            &[entry.preprocess.as_ref()],
        )?,
        None => Preprocess::None,
    };
    let train = match raw.train {
        Some(t) => {
            let own = [entry.train.as_ref(), entry.regularizer.as_ref()];
            // A bad model-level `regularizer` is located against its own type.
            if let Some(reg) = &entry.regularizer {
                if let Err(e) = Regularizer::deserialize(reg.get_ref().clone()) {
                    return Err(own_error::<Regularizer>(
                        path,
                        text,
                        &name,
                        "regularizer",
                        reg,
                        &e,
                    ));
                }
            }
            field(path, text, &name, "train", t, &own)?
        }
        None => TrainConfig::default(),
    };
    Ok(MergedModel {
        name,
        seed: raw.seed,
        group: None,
        continues: None,
        arch,
        preprocess,
        train,
        external: None,
    })
}

/// Deserializes a merged value; on failure, locates the error in the entry's own text.
fn field<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    model: &str,
    key: &str,
    value: Value,
    own: &[Option<&Spanned<Value>>],
) -> Result<T> {
    match T::deserialize(value) {
        Ok(v) => Ok(v),
        Err(e) => match own.iter().flatten().next() {
            Some(spanned) => Err(own_error::<T>(path, text, model, key, spanned, &e)),
            None => Err(Error::Toml {
                path: path.to_path_buf(),
                line_col: None,
                message: format!("model `{model}`: {key}: {}", e.message()),
            }),
        },
    }
}

/// The error for a model's own value `spanned` of type `T`: re-parsing its text gives the
/// exact place when the value is wrong on its own; otherwise (it is only wrong once merged
/// with what it inherits) the value's start and the merged error `merged`.
fn own_error<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    model: &str,
    key: &str,
    spanned: &Spanned<Value>,
    merged: &toml::de::Error,
) -> Error {
    let span = spanned.span();
    if let Some(slice) = text.get(span.clone()) {
        let syntactic = Value::deserialize(toml::de::ValueDeserializer::new(slice)).is_ok();
        if syntactic {
            if let Err(e) = T::deserialize(toml::de::ValueDeserializer::new(slice)) {
                if let Some(inner) = e.span() {
                    return Error::Toml {
                        path: path.to_path_buf(),
                        line_col: Some(line_col(text, span.start + inner.start)),
                        message: format!("model `{model}`: {key}: {}", e.message().trim()),
                    };
                }
            }
        }
    }
    located(
        path,
        text,
        span,
        format!("model `{model}`: {key}: {}", merged.message().trim()),
    )
}

fn located(path: &Path, text: &str, span: Range<usize>, message: String) -> Error {
    Error::Toml {
        path: path.to_path_buf(),
        line_col: Some(line_col(text, span.start)),
        message,
    }
}

fn toml_error(path: &Path, text: &str, offset: usize, e: &toml::de::Error) -> Error {
    Error::Toml {
        path: path.to_path_buf(),
        line_col: e.span().map(|s| line_col(text, offset + s.start)),
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut index: usize) -> usize {
        while !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
data = { dataset = "mnist" }

[[model]]
name = "a"
arch = { kind = "maxout-mlp", units = [16], pieces = 2 }
train = { epochs = 2, optimizer = { kind = "sgd", lr = 0.1, momentum = 0.5 } }
"#;

    fn models(extra: &str) -> Result<Vec<MergedModel>> {
        let text = format!("{BASE}{extra}");
        let spec = parse(Path::new("s.toml"), &text)?;
        merge_models(Path::new("s.toml"), &text, &spec.models)
    }

    #[test]
    fn like_inherits_and_overrides_single_fields() {
        let ms = models(
            "[[model]]\nname = \"b\"\nlike = \"a\"\ntrain = { epochs = 3 }\nregularizer = { kind = \"lp\", p = \"inf\", eps = 0.25 }\n\
             [[model]]\nname = \"c\"\nlike = \"b\"\narch = { units = [8] }\n",
        )
        .unwrap();
        let b = &ms[1];
        assert_eq!(b.train.epochs, 3);
        assert!(
            matches!(b.train.optimizer, gauntlet_train::OptimizerConfig::Sgd { lr, .. } if lr == 0.1)
        );
        assert!(matches!(b.train.regularizer, Regularizer::Lp { eps, .. } if eps == 0.25));
        let c = &ms[2];
        match &c.arch {
            Arch::MaxoutMlp(s) => assert_eq!((s.units.as_slice(), s.pieces), (&[8][..], 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.train.epochs, 3);
    }

    #[test]
    fn a_new_kind_replaces_the_inherited_table() {
        let ms = models(
            "[[model]]\nname = \"b\"\nlike = \"a\"\narch = { kind = \"mlp\", hidden = [4] }\n",
        )
        .unwrap();
        assert!(matches!(&ms[1].arch, Arch::Mlp(s) if s.hidden == [4]));
    }

    #[test]
    fn errors_in_own_values_are_located() {
        let err = models("[[model]]\nname = \"b\"\nlike = \"a\"\ntrain = { epochz = 3 }\n")
            .unwrap_err()
            .to_string();
        // BASE has 8 lines after its leading newline; the entry's train is on line 12.
        assert!(
            err.starts_with("s.toml:12:9:") && err.contains("epochz"),
            "{err}"
        );
    }

    #[test]
    fn seeds_make_one_replicate_per_seed_and_are_inherited() {
        let ms = models(
            "[[model]]\nname = \"b\"\nlike = \"a\"\nseeds = [3, 1]\n\
             [[model]]\nname = \"c\"\nlike = \"b\"\ntrain = { epochs = 5 }\n\
             [[model]]\nname = \"d\"\nlike = \"b\"\nseed = 7\n",
        )
        .unwrap();
        let got: Vec<(&str, Option<u64>, Option<&str>, usize)> = ms
            .iter()
            .map(|m| (m.name.as_str(), m.seed, m.group.as_deref(), m.train.epochs))
            .collect();
        assert_eq!(
            got,
            [
                ("a", None, None, 2),
                ("b-s3", Some(3), Some("b"), 2),
                ("b-s1", Some(1), Some("b"), 2),
                ("c-s3", Some(3), Some("c"), 5),
                ("c-s1", Some(1), Some("c"), 5),
                ("d", Some(7), None, 2),
            ]
        );
    }

    #[test]
    fn continue_inherits_the_first_stage_and_its_seeds() {
        let ms = models(
            "[[model]]\nname = \"b\"\nlike = \"a\"\nseeds = [3, 1]\n\
             [[model]]\nname = \"a2\"\ncontinue = \"a\"\ntrain = { epochs = 9 }\n\
             [[model]]\nname = \"b2\"\ncontinue = \"b\"\n",
        )
        .unwrap();
        let got: Vec<(&str, Option<u64>, Option<&str>, usize)> = ms
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.seed,
                    m.continues.as_deref(),
                    m.train.epochs,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", None, None, 2),
                ("b-s3", Some(3), None, 2),
                ("b-s1", Some(1), None, 2),
                ("a2", None, Some("a"), 9),
                ("b2-s3", Some(3), Some("b-s3"), 2),
                ("b2-s1", Some(1), Some("b-s1"), 2),
            ]
        );
    }

    #[test]
    fn bad_continues_are_located_errors() {
        for (extra, expected) in [
            (
                "continue = \"zz\"\n",
                "continue: unknown model `zz` (known: a, b)",
            ),
            (
                "continue = \"a\"\nlike = \"a\"\n",
                "takes its `like` from it",
            ),
            ("continue = \"a\"\nseed = 2\n", "takes its `seed` from it"),
            (
                "continue = \"a\"\nregularizer = { kind = \"lp\", p = \"inf\", eps = 0.1 }\n",
                "takes its `regularizer` from it",
            ),
            (
                "continue = \"a\"\narch = { kind = \"mlp\" }\n",
                "takes its `arch` from it",
            ),
        ] {
            let err = models(&format!("[[model]]\nname = \"b\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("s.toml:1") && err.contains(expected),
                "{extra}: {err}"
            );
        }
        let err = models(
            "[[model]]\nname = \"b\"\ncontinue = \"a\"\n[[model]]\nname = \"c\"\ncontinue = \"b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.toml:14:") && err.contains("`b` itself continues a model"),
            "{err}"
        );
    }

    #[test]
    fn bad_seeds_are_located_errors() {
        for (extra, expected) in [
            (
                "seed = 1\nseeds = [2]\n",
                "give `seed` or `seeds`, not both",
            ),
            ("seeds = []\n", "lists no seed"),
            ("seeds = [4, 4]\n", "seed 4 is listed twice"),
        ] {
            let err = models(&format!("[[model]]\nname = \"b\"\nlike = \"a\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("s.toml:1") && err.contains(expected),
                "{extra}: {err}"
            );
        }
        let err = models("[[model]]\nname = \"b-s1\"\nlike = \"a\"\n[[model]]\nname = \"b\"\nlike = \"a\"\nseeds = [1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`b-s1` has the name of another model"),
            "{err}"
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}

//! Attacks as data, and the one factory. [`AttackOptions`] is what a user writes (a suite's
//! `[[attack]]` table, the CLI's flags): a method, a norm and the settings they chose.
//! [`AttackOptions::resolve`] fills in each attack's defaults and checks every precondition,
//! giving an [`AttackConfig`]: the attack as recorded beside its results, which
//! [`AttackConfig::build`] turns into an [`Attack`]. Errors name the setting by its key
//! (`steps`, `p-init`), so each front end can point at its own field or flag.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::{
    Apgd, Attack, AttackLoss, AutoAttack, AutoVersion, CarliniWagner, Ddn, DeepFool, Fab,
    FastGradient, Fmn, Limited, Norm, Pgd, Square, StepSize, TargetSelection, Targeted,
};

/// A setting that breaks a precondition: its key, as a suite writes it, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }

    /// `key` must be at least 1.
    pub(crate) fn at_least_one(key: &'static str, value: usize) -> Result<(), Self> {
        if value == 0 {
            return Err(Self::new(key, "must be at least 1, got 0"));
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for candle_core::Error {
    fn from(e: ConfigError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// The attack methods, by the names suites and the CLI use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// One step of length ε: FGSM for L∞, the fast gradient method for other norms.
    #[serde(alias = "fgsm", alias = "fgm")]
    #[cfg_attr(feature = "clap", value(alias = "fgsm", alias = "fgm"))]
    FastGradient,
    /// Projected gradient descent ([`Pgd`]).
    Pgd,
    /// Auto-PGD ([`Apgd`]).
    Apgd,
    /// The score-based Square attack ([`Square`]), L∞ and L2.
    Square,
    /// The AutoAttack-style ensemble ([`AutoAttack`]).
    Auto,
    /// Fast Minimum-Norm ([`Fmn`]): each example's smallest perturbation, L1, L2, L∞.
    Fmn,
    /// Decoupled Direction and Norm ([`Ddn`]), L2.
    Ddn,
    /// DeepFool ([`DeepFool`]), L2 and L∞.
    #[serde(alias = "deep-fool")]
    #[cfg_attr(feature = "clap", value(alias = "deep-fool"))]
    Deepfool,
    /// Fast Adaptive Boundary ([`Fab`]), L1, L2, L∞; FAB-T with `target-classes`.
    Fab,
    /// Carlini & Wagner's L2 attack ([`CarliniWagner`]).
    #[serde(alias = "carlini-wagner")]
    #[cfg_attr(feature = "clap", value(alias = "carlini-wagner"))]
    Cw,
}

impl Method {
    /// The name suites and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            Method::FastGradient => "fast-gradient",
            Method::Pgd => "pgd",
            Method::Apgd => "apgd",
            Method::Square => "square",
            Method::Auto => "auto",
            Method::Fmn => "fmn",
            Method::Ddn => "ddn",
            Method::Deepfool => "deepfool",
            Method::Cw => "cw",
            Method::Fab => "fab",
        }
    }

    /// A minimum-norm attack: one search gives every ε.
    pub fn is_min_norm(self) -> bool {
        matches!(
            self,
            Method::Fmn | Method::Ddn | Method::Deepfool | Method::Cw | Method::Fab
        )
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which targets a targeted attack aims at, as written: `"random"`, `"least-likely"` or
/// `{ class = N }` in a suite, `random`, `least-likely` or `class=N` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Random,
    LeastLikely,
    Class(u32),
}

const TARGET_FORMS: &str = "random, least-likely or class=N";

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Target::Random),
            "least-likely" => Ok(Target::LeastLikely),
            other => match other.strip_prefix("class=").map(str::parse::<u32>) {
                Some(Ok(class)) => Ok(Target::Class(class)),
                _ => Err(format!(
                    "unknown target selection `{other}`, expected {TARGET_FORMS}"
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"random\", \"least-likely\" or a table { class = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Target, A::Error> {
                let mut class = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "class" => class = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in `targeted`, expected `class`"
                            )))
                        }
                    }
                }
                class
                    .map(Target::Class)
                    .ok_or_else(|| de::Error::custom("`targeted` table needs `class = N`"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An attack as a user writes it: the method, the norm, and the settings given (`None`: the
/// attack's default). Suites deserialize it from an `[[attack]]` table (with `name` and `eps`
/// beside it); the CLI fills it from flags. docs/suites.md lists which keys apply to which
/// method.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AttackOptions {
    pub kind: Method,
    pub norm: Norm,
    /// PGD: gradient steps per restart (40); APGD and auto: iterations per run (100); FMN and
    /// DDN: iterations (100); DeepFool: at most this many linearisations (50).
    #[serde(default)]
    pub steps: Option<usize>,
    /// PGD, APGD, Square: independent runs, the per-example worst case kept (1).
    #[serde(default)]
    pub restarts: Option<usize>,
    /// PGD only: `{ eps-over-steps = 2.5 }` (the default), `{ relative-to-eps = 0.25 }` or
    /// `{ absolute = 0.01 }`.
    #[serde(default)]
    pub step_size: Option<StepSize>,
    /// PGD, APGD: start from a uniform point of the ball (true).
    #[serde(default)]
    pub random_start: Option<bool>,
    /// PGD, APGD: `ce` (cross-entropy, the default), `cw` (Carlini & Wagner's margin) or
    /// `dlr` (Croce & Hein's difference of logits ratio).
    #[serde(default)]
    pub loss: Option<AttackLoss>,
    /// PGD only: freeze an example once broken (true).
    #[serde(default)]
    pub early_stop: Option<bool>,
    /// Fast gradient, PGD, APGD: clip to `[0, 1]` (true); Square and auto always clip.
    #[serde(default)]
    pub clip: Option<bool>,
    /// PGD, APGD, Square, auto, and `targeted = "random"`: the seed; the caller's default
    /// otherwise.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Aim every example at a target; untargeted when absent; not for auto or APGD-T.
    #[serde(default)]
    pub targeted: Option<Target>,
    /// APGD: run APGD-T, one run per each of this many most likely wrong classes (AutoAttack:
    /// 9); auto: the same for its APGD-T member (9).
    #[serde(default)]
    pub target_classes: Option<usize>,
    /// APGD, auto (`version = "rand"`): gradient evaluations averaged per step (1; rand: 20).
    #[serde(default)]
    pub eot_draws: Option<usize>,
    /// Square, auto: model evaluations per example and restart (5000).
    #[serde(default)]
    pub n_queries: Option<usize>,
    /// Square: the first window's fraction of the image (0.8).
    #[serde(default)]
    pub p_init: Option<f64>,
    /// Auto: `"standard"` (APGD-CE, APGD-T, Square) or `"rand"` (APGD-CE and APGD-DLR with
    /// Expectation over Transformation, for randomized models).
    #[serde(default)]
    pub version: Option<AutoVersion>,
    /// FMN: the first step size (1.0), annealed to a hundredth of it.
    #[serde(default)]
    pub alpha_init: Option<f64>,
    /// FMN: the first radius factor (0.05), annealed to 0.001.
    #[serde(default)]
    pub gamma_init: Option<f64>,
    /// DDN: the radius factor (0.05).
    #[serde(default)]
    pub gamma: Option<f64>,
    /// DDN: the first radius (1.0).
    #[serde(default)]
    pub init_norm: Option<f64>,
    /// DeepFool: how far past the boundary, as `1 + overshoot` (0.02).
    #[serde(default)]
    pub overshoot: Option<f64>,
    /// DeepFool: the classes of largest clean logit considered (10).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// C&W: rounds of the binary search over the constant c (9).
    #[serde(default)]
    pub binary_search_steps: Option<usize>,
    /// C&W: the first constant c (1e-3).
    #[serde(default)]
    pub initial_const: Option<f64>,
    /// C&W: Adam's step size (0.01).
    #[serde(default)]
    pub lr: Option<f64>,
    /// C&W: κ, the margin past the boundary (0).
    #[serde(default)]
    pub confidence: Option<f64>,
    /// Auto (standard): run FAB-T after APGD-T, as AutoAttack does (true); false gives the
    /// three-member ensemble of earlier gauntlet versions.
    #[serde(default)]
    pub fab_t: Option<bool>,
    /// PGD and the minimum-norm attacks: stop at this many forward plus backward passes per
    /// example ([`Limited`]); unlimited when absent.
    #[serde(default)]
    pub max_queries: Option<usize>,
}

/// The keys beyond `kind` and `norm`, each with the methods it applies to.
pub const OPTION_KEYS: &[(&str, &[Method])] = {
    use Method::{
        Apgd as A, Auto as U, Cw as C, Ddn as D, Deepfool as DF, Fab as B, FastGradient as F,
        Fmn as M, Pgd as P, Square as S,
    };
    &[
        ("steps", &[P, A, U, M, D, DF, C, B]),
        ("restarts", &[P, A, S]),
        ("step-size", &[P]),
        ("random-start", &[P, A]),
        ("loss", &[P, A]),
        ("early-stop", &[P]),
        ("clip", &[F, P, A]),
        ("seed", &[P, A, S, U]),
        ("targeted", &[F, P, A, S, M, D, DF, C, B]),
        ("target-classes", &[A, U, M, B]),
        ("eot-draws", &[A, U]),
        ("n-queries", &[S, U]),
        ("p-init", &[S]),
        ("version", &[U]),
        ("alpha-init", &[M]),
        ("gamma-init", &[M]),
        ("gamma", &[D]),
        ("init-norm", &[D]),
        ("overshoot", &[DF]),
        ("candidates", &[DF]),
        ("binary-search-steps", &[C]),
        ("initial-const", &[C]),
        ("lr", &[C]),
        ("confidence", &[C]),
        ("fab-t", &[U]),
        ("max-queries", &[P, M, D, DF, C, B]),
    ]
};

impl AttackOptions {
    /// `kind` in `norm` with every setting at its default.
    pub fn new(kind: Method, norm: Norm) -> Self {
        Self {
            kind,
            norm,
            steps: None,
            restarts: None,
            step_size: None,
            random_start: None,
            loss: None,
            early_stop: None,
            clip: None,
            seed: None,
            targeted: None,
            target_classes: None,
            eot_draws: None,
            n_queries: None,
            p_init: None,
            version: None,
            alpha_init: None,
            gamma_init: None,
            gamma: None,
            init_norm: None,
            overshoot: None,
            candidates: None,
            binary_search_steps: None,
            initial_const: None,
            lr: None,
            confidence: None,
            fab_t: None,
            max_queries: None,
        }
    }

    /// The keys given, in [`OPTION_KEYS`] order.
    fn given(&self) -> [(&'static str, bool); 26] {
        [
            ("steps", self.steps.is_some()),
            ("restarts", self.restarts.is_some()),
            ("step-size", self.step_size.is_some()),
            ("random-start", self.random_start.is_some()),
            ("loss", self.loss.is_some()),
            ("early-stop", self.early_stop.is_some()),
            ("clip", self.clip.is_some()),
            ("seed", self.seed.is_some()),
            ("targeted", self.targeted.is_some()),
            ("target-classes", self.target_classes.is_some()),
            ("eot-draws", self.eot_draws.is_some()),
            ("n-queries", self.n_queries.is_some()),
            ("p-init", self.p_init.is_some()),
            ("version", self.version.is_some()),
            ("alpha-init", self.alpha_init.is_some()),
            ("gamma-init", self.gamma_init.is_some()),
            ("gamma", self.gamma.is_some()),
            ("init-norm", self.init_norm.is_some()),
            ("overshoot", self.overshoot.is_some()),
            ("candidates", self.candidates.is_some()),
            ("binary-search-steps", self.binary_search_steps.is_some()),
            ("initial-const", self.initial_const.is_some()),
            ("lr", self.lr.is_some()),
            ("confidence", self.confidence.is_some()),
            ("fab-t", self.fab_t.is_some()),
            ("max-queries", self.max_queries.is_some()),
        ]
    }

    /// The attack with the defaults filled in (`default_seed` where no seed is given), checked
    /// against a classifier of `n_classes` classes on inputs of `input_shape` (`[C, H, W]`).
    ///
    /// # Errors
    /// A key given to a method it does not apply to, and every precondition of
    /// [`AttackConfig::validate`].
    pub fn resolve(
        &self,
        default_seed: u64,
        n_classes: usize,
        input_shape: &[usize],
    ) -> Result<AttackConfig, ConfigError> {
        for ((key, given), (_, methods)) in self.given().into_iter().zip(OPTION_KEYS) {
            // A seed also picks random targets, whatever the method.
            let seeds_targets = key == "seed" && self.targeted == Some(Target::Random);
            if given && !methods.contains(&self.kind) && !seeds_targets {
                let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
                return Err(ConfigError::new(
                    key,
                    format!("applies to {} only, not {}", names.join(", "), self.kind),
                ));
            }
        }
        let seed = self.seed.unwrap_or(default_seed);
        let norm = self.norm;
        let config = match self.kind {
            Method::FastGradient => AttackConfig::FastGradient {
                norm,
                clip: self.clip.unwrap_or(true),
            },
            Method::Pgd => {
                let d = Pgd::new(norm);
                AttackConfig::Pgd(Pgd {
                    norm,
                    steps: self.steps.unwrap_or(d.steps),
                    step_size: self.step_size.unwrap_or(d.step_size),
                    random_start: self.random_start.unwrap_or(d.random_start),
                    restarts: self.restarts.unwrap_or(d.restarts),
                    loss: self.loss.unwrap_or(d.loss),
                    early_stop: self.early_stop.unwrap_or(d.early_stop),
                    clip: self.clip.unwrap_or(d.clip),
                    seed,
                })
            }
            Method::Apgd => {
                if self.target_classes.is_some() && self.targeted.is_some() {
                    return Err(ConfigError::new(
                        "targeted",
                        "cannot be combined with target-classes: APGD-T picks its own targets",
                    ));
                }
                let d = Apgd::new(norm);
                AttackConfig::Apgd(Apgd {
                    steps: self.steps.unwrap_or(d.steps),
                    restarts: self.restarts.unwrap_or(d.restarts),
                    loss: self.loss.unwrap_or(d.loss),
                    target_classes: self.target_classes,
                    eot_draws: self.eot_draws.unwrap_or(d.eot_draws),
                    random_start: self.random_start.unwrap_or(d.random_start),
                    clip: self.clip.unwrap_or(d.clip),
                    seed,
                    ..d
                })
            }
            Method::Square => {
                let d = Square::new(norm);
                AttackConfig::Square(Square {
                    n_queries: self.n_queries.unwrap_or(d.n_queries),
                    p_init: self.p_init.unwrap_or(d.p_init),
                    restarts: self.restarts.unwrap_or(d.restarts),
                    seed,
                    ..d
                })
            }
            Method::Auto => {
                let d = AutoAttack::new(norm);
                let version = self.version.unwrap_or(d.version);
                let only_for = match version {
                    AutoVersion::Standard => [("eot-draws", self.eot_draws.is_some())].to_vec(),
                    AutoVersion::Rand => [
                        ("target-classes", self.target_classes.is_some()),
                        ("n-queries", self.n_queries.is_some()),
                        ("fab-t", self.fab_t.is_some()),
                    ]
                    .to_vec(),
                };
                if let Some((key, _)) = only_for.into_iter().find(|(_, given)| *given) {
                    let other = match version {
                        AutoVersion::Standard => "the rand version",
                        AutoVersion::Rand => {
                            "the standard version (the rand version runs APGD-CE and APGD-DLR)"
                        }
                    };
                    return Err(ConfigError::new(key, format!("only applies to {other}")));
                }
                AttackConfig::Auto(AutoAttack {
                    version,
                    steps: self.steps.unwrap_or(d.steps),
                    target_classes: self.target_classes.unwrap_or(d.target_classes),
                    n_queries: self.n_queries.unwrap_or(d.n_queries),
                    eot_draws: self.eot_draws.unwrap_or(d.eot_draws),
                    fab_t: self.fab_t.unwrap_or(d.fab_t),
                    seed,
                    ..d
                })
            }
            Method::Fab => {
                let d = Fab::new(norm);
                if self.target_classes.is_some() && self.targeted.is_some() {
                    return Err(ConfigError::new(
                        "targeted",
                        "cannot be combined with target-classes: FAB-T picks its own targets",
                    ));
                }
                AttackConfig::Fab(Fab {
                    steps: self.steps.unwrap_or(d.steps),
                    target_classes: self.target_classes,
                    ..d
                })
            }
            Method::Fmn => {
                let d = Fmn::new(norm);
                if self.target_classes.is_some() && self.targeted.is_some() {
                    return Err(ConfigError::new(
                        "targeted",
                        "cannot be combined with target-classes: FMN-T picks its own targets",
                    ));
                }
                let alpha_init = self.alpha_init.unwrap_or(d.alpha_init);
                AttackConfig::Fmn(Fmn {
                    steps: self.steps.unwrap_or(d.steps),
                    alpha_init,
                    alpha_final: alpha_init / 100.0,
                    gamma_init: self.gamma_init.unwrap_or(d.gamma_init),
                    target_classes: self.target_classes,
                    ..d
                })
            }
            Method::Ddn => {
                if norm != Norm::L2 {
                    return Err(ConfigError::new(
                        "norm",
                        format!("ddn minimises the L2 norm only, got {norm}"),
                    ));
                }
                let d = Ddn::default();
                AttackConfig::Ddn(Ddn {
                    steps: self.steps.unwrap_or(d.steps),
                    gamma: self.gamma.unwrap_or(d.gamma),
                    init_norm: self.init_norm.unwrap_or(d.init_norm),
                })
            }
            Method::Cw => {
                if norm != Norm::L2 {
                    return Err(ConfigError::new(
                        "norm",
                        format!("cw minimises the L2 norm only, got {norm}"),
                    ));
                }
                let d = CarliniWagner::default();
                AttackConfig::Cw(CarliniWagner {
                    steps: self.steps.unwrap_or(d.steps),
                    binary_search_steps: self.binary_search_steps.unwrap_or(d.binary_search_steps),
                    initial_const: self.initial_const.unwrap_or(d.initial_const),
                    lr: self.lr.unwrap_or(d.lr),
                    confidence: self.confidence.unwrap_or(d.confidence),
                })
            }
            Method::Deepfool => {
                let d = DeepFool::new(norm);
                AttackConfig::DeepFool(DeepFool {
                    steps: self.steps.unwrap_or(d.steps),
                    overshoot: self.overshoot.unwrap_or(d.overshoot),
                    candidates: self.candidates.unwrap_or(d.candidates),
                    ..d
                })
            }
        };
        let config = match self.max_queries {
            None => config,
            Some(max_queries) => AttackConfig::Limited {
                max_queries,
                attack: Box::new(config),
            },
        };
        let config = match self.targeted {
            None => config,
            Some(target) => AttackConfig::Targeted {
                selection: match target {
                    Target::Random => TargetSelection::Random { seed },
                    Target::LeastLikely => TargetSelection::LeastLikely,
                    Target::Class(class) => TargetSelection::Class(class),
                },
                attack: Box::new(config),
            },
        };
        config.validate(n_classes, input_shape)?;
        Ok(config)
    }
}

/// An attack with every setting resolved, as recorded with its results (a suite's
/// `suite.resolved.json`, a results.json's `spec`); [`AttackConfig::build`] makes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AttackConfig {
    /// One step of length ε from the clean input ([`FastGradient`], PGD with one step).
    FastGradient {
        norm: Norm,
        clip: bool,
    },
    Pgd(Pgd),
    Apgd(Apgd),
    Square(Square),
    Auto(AutoAttack),
    Fmn(Fmn),
    Ddn(Ddn),
    #[serde(rename = "deepfool")]
    DeepFool(DeepFool),
    Cw(CarliniWagner),
    Fab(Fab),
    /// `attack` stopped at `max_queries` forward plus backward passes per example
    /// ([`Limited`]).
    Limited {
        max_queries: usize,
        attack: Box<AttackConfig>,
    },
    /// `attack` aimed at targets chosen by `selection` ([`Targeted`]).
    Targeted {
        selection: TargetSelection,
        attack: Box<AttackConfig>,
    },
}

impl AttackConfig {
    /// The attack itself.
    pub fn build(&self) -> Box<dyn Attack> {
        match self {
            AttackConfig::FastGradient { norm, clip } => Box::new(FastGradient {
                norm: *norm,
                clip: *clip,
            }),
            AttackConfig::Pgd(pgd) => Box::new(*pgd),
            AttackConfig::Apgd(apgd) => Box::new(*apgd),
            AttackConfig::Square(square) => Box::new(*square),
            AttackConfig::Auto(auto) => Box::new(auto.ensemble()),
            AttackConfig::Fmn(fmn) => Box::new(*fmn),
            AttackConfig::Ddn(ddn) => Box::new(*ddn),
            AttackConfig::DeepFool(deepfool) => Box::new(*deepfool),
            AttackConfig::Cw(cw) => Box::new(*cw),
            AttackConfig::Fab(fab) => Box::new(*fab),
            AttackConfig::Limited {
                max_queries,
                attack,
            } => Box::new(Limited::new(attack.build(), *max_queries)),
            AttackConfig::Targeted { selection, attack } => {
                Box::new(Targeted::new(attack.build(), *selection))
            }
        }
    }

    pub fn norm(&self) -> Norm {
        match self {
            AttackConfig::FastGradient { norm, .. } => *norm,
            AttackConfig::Pgd(pgd) => pgd.norm,
            AttackConfig::Apgd(apgd) => apgd.norm,
            AttackConfig::Square(square) => square.norm,
            AttackConfig::Auto(auto) => auto.norm,
            AttackConfig::Fmn(fmn) => fmn.norm,
            AttackConfig::Ddn(_) => Norm::L2,
            AttackConfig::DeepFool(deepfool) => deepfool.norm,
            AttackConfig::Cw(_) => Norm::L2,
            AttackConfig::Fab(fab) => fab.norm,
            AttackConfig::Limited { attack, .. } => attack.norm(),
            AttackConfig::Targeted { attack, .. } => attack.norm(),
        }
    }

    /// Forward and backward passes per example and ε, roughly (saturating).
    pub fn evaluations_per_example(&self) -> u128 {
        let times = |a: usize, b: usize| a as u128 * b.max(1) as u128;
        match self {
            AttackConfig::FastGradient { .. } => 1,
            AttackConfig::Pgd(pgd) => times(pgd.steps, pgd.restarts),
            AttackConfig::Apgd(apgd) => times(apgd.steps, apgd.restarts),
            AttackConfig::Square(square) => times(square.n_queries, square.restarts),
            AttackConfig::Auto(auto) => {
                let fab = if auto.fab_t { auto.target_classes } else { 0 };
                times(auto.steps, auto.target_classes + 1 + fab) + auto.n_queries as u128
            }
            AttackConfig::Fmn(fmn) => times(fmn.steps, fmn.target_classes.unwrap_or(1)),
            AttackConfig::Ddn(ddn) => ddn.steps as u128,
            // One forward and a backward pass per candidate class at each linearisation.
            AttackConfig::DeepFool(d) => times(d.steps, d.candidates),
            AttackConfig::Cw(cw) => times(cw.steps, cw.binary_search_steps),
            AttackConfig::Fab(fab) => times(fab.steps, fab.target_classes.unwrap_or(1)),
            AttackConfig::Limited {
                max_queries,
                attack,
            } => attack.evaluations_per_example().min(*max_queries as u128),
            AttackConfig::Targeted { attack, .. } => attack.evaluations_per_example(),
        }
    }

    /// Every precondition of the attack, for a classifier of `n_classes` classes on inputs of
    /// `input_shape` (`[C, H, W]`): the attacks' own checks (which they repeat when run), the
    /// classes its loss needs, and a target class inside the data set.
    pub fn validate(&self, n_classes: usize, input_shape: &[usize]) -> Result<(), ConfigError> {
        self.validate_aimed(n_classes, input_shape, false)
    }

    fn validate_aimed(
        &self,
        n_classes: usize,
        input_shape: &[usize],
        targeted: bool,
    ) -> Result<(), ConfigError> {
        let classes = |loss: AttackLoss, targeted: bool| {
            loss.check_classes(n_classes, targeted)
                .map_err(|e| ConfigError::new("loss", e.to_string()))
        };
        match self {
            AttackConfig::FastGradient { .. } => Ok(()),
            AttackConfig::Pgd(pgd) => {
                pgd.validate()?;
                classes(pgd.loss, targeted)
            }
            AttackConfig::Apgd(apgd) => {
                apgd.validate()?;
                classes(apgd.loss, targeted || apgd.target_classes.is_some())
            }
            AttackConfig::Square(square) => {
                square.validate()?;
                if input_shape.len() != 3 {
                    return Err(ConfigError::new(
                        "kind",
                        format!("square needs image inputs [channels, height, width], got {input_shape:?}"),
                    ));
                }
                Ok(())
            }
            AttackConfig::Auto(auto) => {
                auto.validate()?;
                classes(AttackLoss::Dlr, auto.version == AutoVersion::Standard)
            }
            AttackConfig::Fmn(fmn) => {
                fmn.validate()?;
                classes(AttackLoss::Margin, targeted)
            }
            AttackConfig::Ddn(ddn) => ddn.validate(),
            AttackConfig::DeepFool(deepfool) => deepfool.validate(),
            AttackConfig::Cw(cw) => {
                cw.validate()?;
                classes(AttackLoss::Margin, targeted)
            }
            AttackConfig::Fab(fab) => fab.validate(),
            AttackConfig::Limited {
                max_queries,
                attack,
            } => {
                ConfigError::at_least_one("max-queries", *max_queries)?;
                attack.validate_aimed(n_classes, input_shape, targeted)
            }
            AttackConfig::Targeted { selection, attack } => {
                if matches!(
                    **attack,
                    AttackConfig::Auto(_) | AttackConfig::Targeted { .. }
                ) {
                    return Err(ConfigError::new(
                        "targeted",
                        "does not apply to auto (its APGD-T picks its own targets) or to a targeted attack",
                    ));
                }
                if let TargetSelection::Class(class) = selection {
                    if *class as usize >= n_classes {
                        return Err(ConfigError::new(
                            "targeted",
                            format!(
                                "class {class} is not one of the data set's {n_classes} classes (0 to {})",
                                n_classes.saturating_sub(1)
                            ),
                        ));
                    }
                }
                attack.validate_aimed(n_classes, input_shape, true)
            }
        }
    }
}

/// The one check of a list of budgets (ε or σ): at least one, each finite and `>= 0`. Errors
/// give the index of the first bad value.
pub fn check_budgets(what: &str, values: &[f64]) -> Result<(), (Option<usize>, String)> {
    if values.is_empty() {
        return Err((None, format!("expected at least one {what}, got none")));
    }
    match values
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
    {
        Some((i, bad)) => Err((
            Some(i),
            format!("{what} must be finite and >= 0, got {bad}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: [usize; 3] = [1, 28, 28];

    fn options(kind: Method, norm: Norm) -> AttackOptions {
        AttackOptions::new(kind, norm)
    }

    #[test]
    fn the_given_keys_follow_the_table() {
        let given: Vec<&str> = options(Method::Pgd, Norm::L2)
            .given()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        let table: Vec<&str> = OPTION_KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(given, table);
    }

    #[test]
    fn defaults_are_the_attacks_own() {
        let resolve = |kind| options(kind, Norm::Linf).resolve(7, 10, &IMAGE).unwrap();
        assert_eq!(
            resolve(Method::Pgd),
            AttackConfig::Pgd(Pgd {
                seed: 7,
                ..Pgd::new(Norm::Linf)
            })
        );
        assert_eq!(
            resolve(Method::Square),
            AttackConfig::Square(Square {
                seed: 7,
                ..Square::new(Norm::Linf)
            })
        );
        assert_eq!(
            resolve(Method::FastGradient),
            AttackConfig::FastGradient {
                norm: Norm::Linf,
                clip: true
            }
        );
    }

    #[test]
    fn every_precondition_is_refused_by_key() {
        let refused =
            |o: AttackOptions, n_classes: usize| o.resolve(0, n_classes, &IMAGE).unwrap_err();
        let mut o = options(Method::Square, Norm::L1);
        assert_eq!(refused(o.clone(), 10).key, "norm");
        o.norm = Norm::L2;
        o.p_init = Some(1.5);
        assert_eq!(refused(o, 10).key, "p-init");

        let mut o = options(Method::FastGradient, Norm::Linf);
        o.steps = Some(10);
        let e = refused(o, 10);
        assert_eq!(e.key, "steps");
        assert!(e.message.contains("pgd, apgd, auto"), "{e}");

        for key in ["steps", "restarts"] {
            let mut o = options(Method::Pgd, Norm::L2);
            if key == "steps" {
                o.steps = Some(0);
            } else {
                o.restarts = Some(0);
            }
            assert_eq!(refused(o, 10).key, key);
        }
        let mut o = options(Method::Pgd, Norm::L2);
        o.step_size = Some(StepSize::Absolute(f64::NAN));
        assert_eq!(refused(o, 10).key, "step-size");

        let mut o = options(Method::Apgd, Norm::Linf);
        o.loss = Some(AttackLoss::Dlr);
        assert_eq!(refused(o.clone(), 2).key, "loss");
        o.target_classes = Some(3);
        o.targeted = Some(Target::Random);
        assert_eq!(refused(o, 10).key, "targeted");

        let mut o = options(Method::Pgd, Norm::Linf);
        o.targeted = Some(Target::Class(10));
        assert_eq!(refused(o, 10).key, "targeted");

        let mut o = options(Method::Auto, Norm::Linf);
        o.eot_draws = Some(5);
        assert_eq!(refused(o.clone(), 10).key, "eot-draws");
        o.version = Some(AutoVersion::Rand);
        o.resolve(0, 10, &IMAGE).unwrap();
        o.n_queries = Some(10);
        assert_eq!(refused(o, 10).key, "n-queries");
    }

    #[test]
    fn a_seed_for_random_targets_applies_to_every_method() {
        let mut o = options(Method::FastGradient, Norm::Linf);
        o.targeted = Some(Target::Random);
        o.seed = Some(5);
        let config = o.resolve(0, 10, &IMAGE).unwrap();
        assert_eq!(
            config,
            AttackConfig::Targeted {
                selection: TargetSelection::Random { seed: 5 },
                attack: Box::new(AttackConfig::FastGradient {
                    norm: Norm::Linf,
                    clip: true
                })
            }
        );
    }

    #[test]
    fn targets_and_methods_parse_as_written() {
        assert_eq!("class=3".parse::<Target>(), Ok(Target::Class(3)));
        assert_eq!("least-likely".parse::<Target>(), Ok(Target::LeastLikely));
        assert!("class=x".parse::<Target>().is_err());
        let o: AttackOptions = toml::from_str(
            "kind = \"fgsm\"\nnorm = \"inf\"\ntargeted = { class = 2 }\nloss = \"cw\"",
        )
        .unwrap();
        assert_eq!(o.loss, Some(AttackLoss::Margin));
        assert_eq!(o.kind, Method::FastGradient);
        assert_eq!(o.targeted, Some(Target::Class(2)));
        let e = toml::from_str::<AttackOptions>("kind = \"pgd\"\nnorm = 2\nstpes = 3").unwrap_err();
        assert!(e.to_string().contains("unknown field `stpes`"), "{e}");
    }

    #[test]
    fn budgets_are_checked_once_with_their_index() {
        assert!(check_budgets("eps", &[0.0, 0.3]).is_ok());
        assert_eq!(
            check_budgets("eps", &[0.1, f64::NAN]).unwrap_err().0,
            Some(1)
        );
        assert_eq!(check_budgets("sigma", &[]).unwrap_err().0, None);
    }
}

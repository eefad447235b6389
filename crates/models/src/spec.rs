//! [`ModelSpec`]: the serializable description a model is built from (and stored beside its
//! weights in a checkpoint).

use candle_core::{bail, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::graph::{Graph, GraphSpec};
use crate::layers::Dropout;
use crate::preprocess::{self, Preprocess, Zca};
use crate::{Classifier, CnnSpec, ConvMaxoutSpec, ParamBuilder};

/// The architecture, its hyper-parameters, and the data shape it expects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelSpec {
    pub arch: Arch,
    /// `[channels, height, width]` of one input image.
    pub input: [usize; 3],
    pub n_classes: usize,
    /// Fixed first layer applied to the `[0, 1]` input; none when absent.
    #[serde(default)]
    pub preprocess: Preprocess,
}

impl ModelSpec {
    /// A spec without preprocessing.
    pub fn new(arch: Arch, input: [usize; 3], n_classes: usize) -> Self {
        Self {
            arch,
            input,
            n_classes,
            preprocess: Preprocess::None,
        }
    }

    /// The same spec with `preprocess` as its first layer.
    pub fn with_preprocess(self, preprocess: Preprocess) -> Self {
        Self { preprocess, ..self }
    }

    /// For 28×28 grey images in 10 classes (MNIST, Fashion-MNIST).
    pub fn mnist(arch: Arch) -> Self {
        Self::new(arch, [1, 28, 28], 10)
    }

    pub fn input_dim(&self) -> usize {
        self.input.iter().product()
    }

    /// Checks the hyper-parameters; [`build`] calls it.
    pub fn validate(&self) -> Result<()> {
        if self.input.contains(&0) || self.n_classes < 2 {
            bail!(
                "input {:?} and n-classes {} must be positive (at least 2 classes)",
                self.input,
                self.n_classes
            )
        }
        self.preprocess.validate()?;
        match &self.arch {
            Arch::MaxoutMlp(s) => {
                if s.units.is_empty() || s.units.contains(&0) || s.pieces == 0 {
                    bail!(
                        "maxout-mlp: units {:?} and pieces {} must be non-empty and positive",
                        s.units,
                        s.pieces
                    )
                }
                check_dropout("maxout-mlp input-dropout", &s.input_dropout)?;
                check_dropout("maxout-mlp hidden-dropout", &s.hidden_dropout)?;
                check_max_norm(s.max_norm)?;
            }
            Arch::Mlp(s) => {
                if s.hidden.contains(&0) {
                    bail!("mlp: hidden sizes {:?} must be positive", s.hidden)
                }
                check_dropout("mlp input-dropout", &s.input_dropout)?;
                check_dropout("mlp hidden-dropout", &s.hidden_dropout)?;
                check_max_norm(s.max_norm)?;
            }
            Arch::ConvMaxout(s) => s.validate(self.input)?,
            Arch::Cnn(s) => s.validate(self.input)?,
            Arch::Graph(_) => {}
        }
        // Every architecture runs as a graph: its shapes are checked layer by layer.
        self.arch
            .to_graph(self.n_classes)
            .validate(self.input, self.n_classes)
    }
}

pub(crate) fn check_dropout(what: &str, d: &Dropout) -> Result<()> {
    if !(d.include > 0.0 && d.include <= 1.0 && d.scale > 0.0) {
        bail!(
            "{what}: include must be in (0, 1] and scale > 0, got include {} scale {}",
            d.include,
            d.scale
        )
    }
    Ok(())
}

pub(crate) fn check_max_norm(max_norm: Option<f64>) -> Result<()> {
    match max_norm {
        Some(c) if !(c > 0.0) => bail!("max-norm must be positive, got {c}"),
        _ => Ok(()),
    }
}

/// The architectures gauntlet can build. In TOML: `arch = { kind = "maxout-mlp", units = [240, 240] }`,
/// or any layer graph: `arch = { kind = "graph", layers = [...] }` ([`GraphSpec`]). The four
/// named ones are shorthands for graphs ([`Arch::to_graph`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Arch {
    MaxoutMlp(MaxoutMlpSpec),
    Mlp(MlpSpec),
    ConvMaxout(ConvMaxoutSpec),
    Cnn(CnnSpec),
    Graph(GraphSpec),
}

impl Arch {
    /// A Maxout MLP with pylearn2's other settings (init, max-norm, dropout).
    pub fn maxout_mlp(units: Vec<usize>, pieces: usize) -> Self {
        Arch::MaxoutMlp(MaxoutMlpSpec {
            units,
            pieces,
            ..MaxoutMlpSpec::default()
        })
    }

    /// Short stable name for result files.
    pub fn kind(&self) -> &'static str {
        match self {
            Arch::MaxoutMlp(_) => "maxout-mlp",
            Arch::Mlp(_) => "mlp",
            Arch::ConvMaxout(_) => "conv-maxout",
            Arch::Cnn(_) => "cnn",
            Arch::Graph(_) => "graph",
        }
    }
}

/// pylearn2's permutation-invariant MNIST Maxout network (`mnist_pi.yaml`); the defaults are
/// that recipe: 240×5 twice, U(−0.005, 0.005), max column norm 1.9365, input dropout 0.8
/// without rescaling, hidden dropout 0.5 with scale 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MaxoutMlpSpec {
    pub units: Vec<usize>,
    pub pieces: usize,
    pub init_range: f64,
    pub max_norm: Option<f64>,
    pub input_dropout: Dropout,
    pub hidden_dropout: Dropout,
}

impl Default for MaxoutMlpSpec {
    fn default() -> Self {
        Self {
            units: vec![240, 240],
            pieces: 5,
            init_range: 0.005,
            max_norm: Some(1.9365),
            input_dropout: Dropout {
                include: 0.8,
                scale: 1.0,
            },
            hidden_dropout: Dropout::inverted(0.5),
        }
    }
}

/// Hidden-unit non-linearity of an [`Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    Sigmoid,
}

/// A fully connected network; the default is the 784-800-800-10 logistic MLP used as the
/// "standard sigmoid MLP" baseline (research/paper.md §2.6, a documented guess).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MlpSpec {
    pub hidden: Vec<usize>,
    pub activation: Activation,
    pub input_dropout: Dropout,
    pub hidden_dropout: Dropout,
    pub max_norm: Option<f64>,
}

impl Default for MlpSpec {
    fn default() -> Self {
        Self {
            hidden: vec![800, 800],
            activation: Activation::Sigmoid,
            input_dropout: Dropout::NONE,
            hidden_dropout: Dropout::NONE,
            max_norm: None,
        }
    }
}

/// Builds a model with fresh parameters drawn from `seed`. A spec whose preprocessing is
/// fitted to data ([`Preprocess::GcnZca`]) needs [`build_fitted`] instead.
pub fn build(spec: &ModelSpec, seed: u64, device: &Device) -> Result<Box<dyn Classifier>> {
    build_with(spec, ParamBuilder::init(seed, device))
}

/// Builds a model with fresh parameters drawn from `seed`, fitting its preprocessing (ZCA) on
/// `train_images`, `[n, C, H, W]` in `[0, 1]`. The same seed gives the same weights as
/// [`build`].
pub fn build_fitted(
    spec: &ModelSpec,
    seed: u64,
    device: &Device,
    train_images: &Tensor,
) -> Result<Box<dyn Classifier>> {
    spec.validate()?;
    let dims = train_images.dims();
    if dims.len() != 4 || dims[1..] != spec.input {
        bail!(
            "training images: expected (n, {:?}), got {dims:?}",
            spec.input
        )
    }
    let zca = preprocess::fit(&spec.preprocess, train_images)?;
    build_inner(spec, ParamBuilder::init(seed, device), zca.as_ref())
}

/// Builds a model taking its parameters from `params` (fresh or loaded).
pub fn build_with(spec: &ModelSpec, params: ParamBuilder<'_>) -> Result<Box<dyn Classifier>> {
    build_inner(spec, params, None)
}

fn build_inner(
    spec: &ModelSpec,
    mut params: ParamBuilder<'_>,
    zca: Option<&Zca>,
) -> Result<Box<dyn Classifier>> {
    spec.validate()?;
    // Buffers draw nothing from the generator: the weights do not depend on preprocessing.
    preprocess::add_buffers(spec, &mut params, zca)?;
    let graph = spec.arch.to_graph(spec.n_classes);
    Ok(Box::new(Graph::new(spec.clone(), &graph, params)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_give_the_pylearn2_recipe_and_typos_are_rejected() {
        #[derive(Deserialize)]
        struct Wrap {
            arch: Arch,
        }
        let w: Wrap = toml::from_str("arch = { kind = \"maxout-mlp\" }").unwrap();
        assert_eq!(w.arch, Arch::MaxoutMlp(MaxoutMlpSpec::default()));
        let err = toml::from_str::<Wrap>("arch = { kind = \"maxout-mlp\", unitz = [3] }")
            .err()
            .expect("unknown field must be rejected")
            .to_string();
        assert!(err.contains("unitz"), "{err}");
        let err = toml::from_str::<Wrap>("arch = { kind = \"resnet\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("resnet"), "{err}");
    }
}

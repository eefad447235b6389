//! Classifiers for robustness evaluation.
//!
//! Every model implements [`Classifier`]: logits for a batch of `[0, 1]` images in a given
//! [`Mode`], its parameters, its constraints (max-norm), its [`ModelSpec`], and the gradient of the
//! per-example loss with respect to the *input*, which attacks and regularizers need. The
//! default input gradient goes through Candle's autograd ([`autograd_input_grad`]); a model may
//! override it with a faster hand-written backward.
//!
//! Every model is a layer graph ([`graph`]): the built-in architectures are shorthands for
//! graphs, and PyTorch `state_dict`s ([`checkpoint`]) and ONNX files ([`onnx`]) load as graphs.
//! Models are built from a serializable [`ModelSpec`] by [`build`], with parameters drawn from
//! a seeded generator (Candle's CPU random numbers cannot be seeded), and saved or loaded as
//! safetensors checkpoints ([`checkpoint`]). Input preprocessing (GCN, ZCA) is a fixed first
//! layer of every model ([`preprocess`]); [`build_fitted`] fits it on the training images.
//!
//! ```
//! # fn main() -> candle_core::Result<()> {
//! use candle_core::{Device, Tensor};
//! use gauntlet_models::{build, Arch, Classifier, ModelSpec, Mode};
//! let spec = ModelSpec::mnist(Arch::maxout_mlp(vec![16, 16], 3));
//! let model = build(&spec, 7, &Device::Cpu)?;
//! let xs = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
//! assert_eq!(model.forward(&xs, Mode::Eval)?.dims2()?, (2, 10));
//! # Ok(()) }
//! ```

// `!(x > 0.0)` is deliberate throughout: unlike `x <= 0.0`, it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod builtin;
pub mod checkpoint;
mod classifier;
pub mod conv;
pub mod graph;
pub mod io;
pub mod kernels;
pub mod layers;
mod loss;
pub mod onnx;
mod params;
pub mod preprocess;
pub mod shard;
mod spec;
pub mod threads;

pub use classifier::{autograd_input_grad, Classifier, Frozen, InputGrad, Mode, Thaw};
pub use conv::{CnnLayer, CnnSpec, ConvMaxoutFc, ConvMaxoutLayer, ConvMaxoutSpec};
pub use graph::{Graph, GraphSpec, Layer, Node};
pub use layers::Dropout;
pub use loss::{accuracy_counts, per_example_cross_entropy};
pub use params::{ParamBuilder, Params};
pub use preprocess::Preprocess;
pub use spec::{
    build, build_fitted, build_with, Activation, Arch, MaxoutMlpSpec, MlpSpec, ModelSpec,
};

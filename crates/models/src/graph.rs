//! The layer graph: the one model description. Every architecture, built-in or imported
//! (PyTorch weights, ONNX), is a [`GraphSpec`]: a list of layers, each reading the previous
//! layer's output or, for branches, named earlier outputs. Layers are plain data (serde);
//! [`Graph`] builds their parameters from one [`ParamBuilder`] tree, so a layer's name is its
//! checkpoint scope (`features.0` holds `features.0.weight`), and runs them with the fast CPU
//! kernels wherever a layer has one.
//!
//! In TOML, a plain sequence:
//!
//! ```toml
//! [arch]
//! kind = "graph"
//! layers = [
//!   { op = "conv2d", name = "conv1", out-channels = 32, kernel = 3, padding = 1 },
//!   { op = "relu" },
//!   { op = "max-pool", kernel = 2 },
//!   { op = "flatten" },
//!   { op = "linear", name = "fc", out-features = 10 },
//! ]
//! ```
//!
//! A residual block names its branch points: `{ op = "add", inputs = ["block.in", "block.conv2"] }`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{bail, DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::conv::{max_pool2d, pool_out_len, PoolGeometry};
use crate::kernels::{self, BlockActivation, Gradients};
use crate::layers::{derive_seed, Dropout};
use crate::shard;
use crate::spec::{check_dropout, check_max_norm};
use crate::{
    autograd_input_grad, preprocess, Classifier, Frozen, InputGrad, Mode, ModelSpec, Thaw,
};
use crate::{ParamBuilder, Params};

/// The name a layer's `inputs` use for the model's (preprocessed) input.
pub const INPUT: &str = "input";

/// A size given once for both spatial dimensions or as `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pair {
    One(usize),
    Two([usize; 2]),
}

impl Pair {
    pub fn get(self) -> (usize, usize) {
        match self {
            Pair::One(v) => (v, v),
            Pair::Two([a, b]) => (a, b),
        }
    }
}

impl From<usize> for Pair {
    fn from(v: usize) -> Self {
        Pair::One(v)
    }
}

fn zero() -> Pair {
    Pair::One(0)
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// How fresh weights are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// PyTorch's default for `Conv2d` and `Linear`: weight and bias from U(±1/√fan_in).
    #[default]
    Torch,
    /// Weights from U(−r, r), biases 0 (pylearn2's `irange`). `init = { uniform = 0.005 }`.
    Uniform(f64),
}

/// `nn.Conv2d`: weight `[out, in / groups, kh, kw]`, bias `[out]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Conv2d {
    pub out_channels: usize,
    pub kernel: Pair,
    #[serde(default = "one")]
    pub stride: usize,
    /// Zero padding: one value for every side, or `[top/bottom, left/right]`.
    #[serde(default = "zero")]
    pub padding: Pair,
    #[serde(default = "one")]
    pub dilation: usize,
    #[serde(default = "one")]
    pub groups: usize,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub init: Init,
    /// Clip of each output channel's kernel L2 norm after every update (pylearn2's
    /// `max_kernel_norm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f64>,
}

/// `nn.Linear` over a flat input: weight `[out, in]`, bias `[out]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Linear {
    pub out_features: usize,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub init: Init,
    /// Clip of each output unit's weight-row L2 norm after every update (`max_col_norm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f64>,
}

/// `nn.MaxPool2d` / `nn.AvgPool2d`: `stride` defaults to the kernel, as in PyTorch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pool {
    pub kernel: Pair,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<Pair>,
    #[serde(default = "zero")]
    pub padding: Pair,
    /// PyTorch's `ceil_mode`: the last window may run past the edge (it covers what is
    /// there). The built-in Maxout networks pool this way (cuda-convnet's output size).
    #[serde(default)]
    pub ceil_mode: bool,
}

impl Pool {
    fn geometry(&self) -> PoolGeometry {
        PoolGeometry {
            kernel: self.kernel.get(),
            stride: self.stride.unwrap_or(self.kernel).get(),
            padding: self.padding.get(),
            ceil_mode: self.ceil_mode,
        }
    }
}

/// `nn.BatchNorm2d` / `nn.BatchNorm1d` with its running statistics (eval mode, also while
/// training: a graph trained by gauntlet fine-tunes the affine parameters only). Tensors
/// `weight`, `bias`, `running_mean`, `running_var`; PyTorch's `num_batches_tracked` is read
/// and ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BatchNorm {
    #[serde(default = "default_eps")]
    pub eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

/// Per-channel `(x − mean) / std`, the input normalisation RobustBench models carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Normalize {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LeakyRelu {
    #[serde(default = "default_slope")]
    pub slope: f64,
}

fn default_slope() -> f64 {
    0.01
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Maxout {
    /// Contiguous groups of `pieces` features (or channels) give one unit each.
    pub pieces: usize,
}

/// A layer without settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plain {}

/// One layer of a [`GraphSpec`]. In TOML its `op` names it: `{ op = "relu" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Layer {
    Conv2d(Conv2d),
    Linear(Linear),
    Relu(Plain),
    LeakyRelu(LeakyRelu),
    Sigmoid(Plain),
    Tanh(Plain),
    /// The exact (erf) GELU, PyTorch's default.
    Gelu(Plain),
    Maxout(Maxout),
    MaxPool(Pool),
    AvgPool(Pool),
    /// Mean over the spatial dimensions: `[C, H, W]` → `[C, 1, 1]` (`AdaptiveAvgPool2d(1)`).
    GlobalAvgPool(Plain),
    BatchNorm(BatchNorm),
    /// Keeps each value with probability `include`, times `scale`, in training only.
    Dropout(Dropout),
    /// `[C, H, W]` → `[C·H·W]`, in `(c, h, w)` order as PyTorch flattens.
    Flatten(Plain),
    Normalize(Normalize),
    /// The sum of its `inputs` (two or more, of one shape): residual connections.
    Add(Plain),
}

impl Layer {
    pub fn op(&self) -> &'static str {
        match self {
            Layer::Conv2d(_) => "conv2d",
            Layer::Linear(_) => "linear",
            Layer::Relu(_) => "relu",
            Layer::LeakyRelu(_) => "leaky-relu",
            Layer::Sigmoid(_) => "sigmoid",
            Layer::Tanh(_) => "tanh",
            Layer::Gelu(_) => "gelu",
            Layer::Maxout(_) => "maxout",
            Layer::MaxPool(_) => "max-pool",
            Layer::AvgPool(_) => "avg-pool",
            Layer::GlobalAvgPool(_) => "global-avg-pool",
            Layer::BatchNorm(_) => "batch-norm",
            Layer::Dropout(_) => "dropout",
            Layer::Flatten(_) => "flatten",
            Layer::Normalize(_) => "normalize",
            Layer::Add(_) => "add",
        }
    }

    pub fn relu() -> Self {
        Layer::Relu(Plain {})
    }

    pub fn flatten() -> Self {
        Layer::Flatten(Plain {})
    }
}

/// A layer with its name and inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Its parameters' checkpoint scope and the name later `inputs` use; by default its
    /// position in the list (`"3"`, as in an `nn.Sequential`).
    pub name: Option<String>,
    /// Names of the outputs it reads ([`INPUT`] for the model input); by default the
    /// previous layer's (the input for the first).
    pub inputs: Vec<String>,
    pub layer: Layer,
}

impl Node {
    pub fn new(layer: Layer) -> Self {
        Node {
            name: None,
            inputs: Vec::new(),
            layer,
        }
    }

    pub fn named(name: impl Into<String>, layer: Layer) -> Self {
        Node {
            name: Some(name.into()),
            ..Node::new(layer)
        }
    }
}

// A node is its layer's table plus `name` and `inputs`: serde's `flatten` cannot be combined
// with `deny_unknown_fields`, so the two keys are taken off before the layer is read.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(d)?;
        let Some(map) = value.as_object_mut() else {
            return Err(De::Error::custom("a layer must be a table with an `op`"));
        };
        let name = match map.remove("name") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => {
                return Err(De::Error::custom(format!(
                    "name: expected a string, got {other}"
                )))
            }
        };
        let inputs = match map.remove("inputs") {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v).map_err(|e| {
                De::Error::custom(format!("inputs: expected a list of layer names ({e})"))
            })?,
        };
        let what = name
            .as_deref()
            .map(|n| format!(" `{n}`"))
            .unwrap_or_default();
        let layer = serde_json::from_value(value)
            .map_err(|e| De::Error::custom(format!("layer{what}: {e}")))?;
        Ok(Node {
            name,
            inputs,
            layer,
        })
    }
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut value = serde_json::to_value(&self.layer).map_err(S::Error::custom)?;
        let map = value.as_object_mut().expect("a layer serializes to a map");
        if let Some(n) = &self.name {
            map.insert("name".into(), n.clone().into());
        }
        if !self.inputs.is_empty() {
            map.insert("inputs".into(), self.inputs.clone().into());
        }
        value.serialize(s)
    }
}

/// A model as layers over the `[0, 1]` input (after the spec's preprocessing); the last
/// layer's output, `[n_classes]` per example, is the logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GraphSpec {
    pub layers: Vec<Node>,
}

/// A checked graph: each layer's display name, scope, input indices (0 the model input,
/// `i + 1` layer `i`) and output shape per example.
struct Plan {
    scopes: Vec<String>,
    inputs: Vec<Vec<usize>>,
    shapes: Vec<Vec<usize>>,
    in_shapes: Vec<Vec<usize>>,
}

impl GraphSpec {
    /// Checks names, inputs and shapes for an `input` of `[C, H, W]` and a last layer of
    /// `[n_classes]`; errors name the layer and what was expected.
    pub fn validate(&self, input: [usize; 3], n_classes: usize) -> Result<()> {
        self.plan(input, n_classes).map(|_| ())
    }

    /// Each layer's input and output shape per example (its first input's, for `add`).
    pub fn shapes(
        &self,
        input: [usize; 3],
        n_classes: usize,
    ) -> Result<Vec<(Vec<usize>, Vec<usize>)>> {
        let plan = self.plan(input, n_classes)?;
        Ok(plan.in_shapes.into_iter().zip(plan.shapes).collect())
    }

    fn plan(&self, input: [usize; 3], n_classes: usize) -> Result<Plan> {
        if self.layers.is_empty() {
            bail!("graph: expected at least one layer, got none")
        }
        let mut index: HashMap<String, usize> = HashMap::from([(INPUT.to_string(), 0)]);
        let mut plan = Plan {
            scopes: Vec::new(),
            inputs: Vec::new(),
            shapes: Vec::new(),
            in_shapes: Vec::new(),
        };
        for (i, node) in self.layers.iter().enumerate() {
            let scope = node.name.clone().unwrap_or_else(|| i.to_string());
            let what = format!("layer {i} (`{scope}`, {})", node.layer.op());
            if scope.is_empty() || scope == INPUT || index.contains_key(&scope) {
                bail!("{what}: the name must be non-empty, not `{INPUT}`, and unique")
            }
            let inputs: Vec<usize> = if node.inputs.is_empty() {
                vec![i]
            } else {
                node.inputs
                    .iter()
                    .map(|n| {
                        index.get(n).copied().ok_or_else(|| {
                            candle_core::Error::Msg(format!(
                                "{what}: input `{n}` is not an earlier layer's name (or `{INPUT}`)"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let shape_of = |j: usize| -> Vec<usize> {
                if j == 0 {
                    input.to_vec()
                } else {
                    plan.shapes[j - 1].clone()
                }
            };
            let in_shapes: Vec<Vec<usize>> = inputs.iter().map(|&j| shape_of(j)).collect();
            let is_add = matches!(node.layer, Layer::Add(_));
            if is_add && inputs.len() < 2 {
                bail!("{what}: expected at least two inputs, got {}", inputs.len())
            }
            if !is_add && inputs.len() != 1 {
                bail!("{what}: expected one input, got {}", inputs.len())
            }
            let shape = layer_out_shape(&node.layer, &in_shapes)
                .map_err(|e| candle_core::Error::Msg(format!("{what}: {e}")))?;
            if shape.contains(&0) {
                bail!("{what}: the output shape {shape:?} is empty")
            }
            index.insert(scope.clone(), i + 1);
            plan.scopes.push(scope);
            plan.inputs.push(inputs);
            plan.in_shapes.push(in_shapes[0].clone());
            plan.shapes.push(shape);
        }
        let last = plan.shapes.last().expect("non-empty");
        if last != &[n_classes] {
            bail!(
                "graph: the last layer must give the logits, shape [{n_classes}] per example, \
                 got {last:?}{}",
                if last.len() > 1 {
                    " (add a flatten and a linear layer)"
                } else {
                    ""
                }
            )
        }
        Ok(plan)
    }
}

fn chw(shape: &[usize]) -> Result<(usize, usize, usize)> {
    match *shape {
        [c, h, w] => Ok((c, h, w)),
        _ => bail!("expected a [channels, height, width] input, got {shape:?}"),
    }
}

/// Sizes past this are a broken file, not a model: refused before any arithmetic can overflow.
const MAX_SIZE: usize = 1 << 24;

fn check_sizes(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v > MAX_SIZE) {
        Some((what, v)) => bail!("{what} {v} is implausibly large (at most {MAX_SIZE})"),
        None => Ok(()),
    }
}

/// The output shape per example of `layer` on inputs of `in_shapes`.
pub(crate) fn layer_out_shape(layer: &Layer, in_shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
    let x = &in_shapes[0];
    Ok(match layer {
        Layer::Conv2d(c) => {
            let (ci, h, w) = chw(x)?;
            let (kh, kw) = c.kernel.get();
            let (ph, pw) = c.padding.get();
            check_sizes(&[
                ("out-channels", c.out_channels),
                ("kernel", kh.max(kw)),
                ("padding", ph.max(pw)),
                ("stride", c.stride),
                ("dilation", c.dilation),
                ("groups", c.groups),
            ])?;
            if c.out_channels == 0 || kh == 0 || kw == 0 || c.stride == 0 || c.dilation == 0 {
                bail!("out-channels, kernel, stride and dilation must be positive")
            }
            if c.groups == 0
                || !ci.is_multiple_of(c.groups)
                || !c.out_channels.is_multiple_of(c.groups)
            {
                bail!(
                    "groups {} must divide the input channels ({ci}) and out-channels ({})",
                    c.groups,
                    c.out_channels
                )
            }
            check_max_norm(c.max_norm)?;
            check_init(c.init)?;
            let span = |k: usize| c.dilation * (k - 1) + 1;
            if h + 2 * ph < span(kh) || w + 2 * pw < span(kw) {
                bail!(
                    "the padded input {}×{} is smaller than the kernel's span {}×{}",
                    h + 2 * ph,
                    w + 2 * pw,
                    span(kh),
                    span(kw)
                )
            }
            vec![
                c.out_channels,
                (h + 2 * ph - span(kh)) / c.stride + 1,
                (w + 2 * pw - span(kw)) / c.stride + 1,
            ]
        }
        Layer::Linear(l) => {
            if x.len() != 1 {
                bail!("expected a flat input, got {x:?} (add a flatten layer before it)")
            }
            if l.out_features == 0 {
                bail!("out-features must be positive")
            }
            check_sizes(&[("out-features", l.out_features)])?;
            check_max_norm(l.max_norm)?;
            check_init(l.init)?;
            vec![l.out_features]
        }
        Layer::Relu(_) | Layer::Sigmoid(_) | Layer::Tanh(_) | Layer::Gelu(_) => x.clone(),
        Layer::LeakyRelu(l) => {
            if !l.slope.is_finite() {
                bail!("slope must be finite, got {}", l.slope)
            }
            x.clone()
        }
        Layer::Dropout(d) => {
            check_dropout("dropout", d)?;
            x.clone()
        }
        Layer::Maxout(m) => {
            check_sizes(&[("pieces", m.pieces)])?;
            if m.pieces == 0 || !x[0].is_multiple_of(m.pieces) {
                bail!(
                    "pieces ({}) must be positive and divide the {} features or channels",
                    m.pieces,
                    x[0]
                )
            }
            let mut s = x.clone();
            s[0] /= m.pieces;
            s
        }
        Layer::MaxPool(p) | Layer::AvgPool(p) => {
            let (c, h, w) = chw(x)?;
            let g = p.geometry();
            let ((kh, kw), (ph, pw)) = (g.kernel, g.padding);
            check_sizes(&[
                ("kernel", kh.max(kw)),
                ("stride", g.stride.0.max(g.stride.1)),
                ("padding", ph.max(pw)),
            ])?;
            if kh == 0 || kw == 0 || g.stride.0 == 0 || g.stride.1 == 0 {
                bail!("kernel and stride must be positive")
            }
            if 2 * ph > kh || 2 * pw > kw {
                bail!(
                    "padding must be at most half the kernel, got {:?} for {:?}",
                    g.padding,
                    g.kernel
                )
            }
            if let Layer::AvgPool(_) = layer {
                if g.ceil_mode {
                    bail!("ceil-mode is not supported for avg-pool")
                }
                if g.stride.0 != g.stride.1 && (g.kernel != g.stride || g.padding != (0, 0)) {
                    bail!(
                        "overlapping or padded windows need equal strides, got {:?}",
                        g.stride
                    )
                }
            }
            vec![
                c,
                pool_out_len(h, kh, g.stride.0, ph, g.ceil_mode)?,
                pool_out_len(w, kw, g.stride.1, pw, g.ceil_mode)?,
            ]
        }
        Layer::GlobalAvgPool(_) => {
            let (c, _, _) = chw(x)?;
            vec![c, 1, 1]
        }
        Layer::BatchNorm(b) => {
            if !(b.eps > 0.0 && b.eps.is_finite()) {
                bail!("eps must be finite and positive, got {}", b.eps)
            }
            if x.len() != 1 && x.len() != 3 {
                bail!("expected [features] or [channels, height, width], got {x:?}")
            }
            x.clone()
        }
        Layer::Flatten(_) => vec![x.iter().product()],
        Layer::Normalize(n) => {
            let c = x[0];
            if n.mean.len() != c || n.std.len() != c {
                bail!(
                    "expected {c} means and stds (one per channel), got {} and {}",
                    n.mean.len(),
                    n.std.len()
                )
            }
            if n.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
                || n.mean.iter().any(|m| !m.is_finite())
            {
                bail!(
                    "means must be finite and stds finite and positive, got {:?} and {:?}",
                    n.mean,
                    n.std
                )
            }
            x.clone()
        }
        Layer::Add(_) => {
            if let Some(other) = in_shapes.iter().find(|s| *s != x) {
                bail!("expected inputs of one shape, got {x:?} and {other:?}")
            }
            x.clone()
        }
    })
}

fn check_init(init: Init) -> Result<()> {
    match init {
        Init::Uniform(r) if !(r > 0.0 && r.is_finite()) => {
            bail!("init uniform range must be finite and positive, got {r}")
        }
        _ => Ok(()),
    }
}

/// A layer ready to run.
enum Op {
    Conv {
        w: Tensor,
        b: Tensor,
        stride: usize,
        padding: (usize, usize),
        dilation: usize,
        groups: usize,
    },
    Linear {
        w: Tensor,
        b: Tensor,
    },
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    Gelu,
    Maxout(usize),
    MaxPool(PoolGeometry),
    AvgPool(PoolGeometry),
    GlobalAvgPool,
    BatchNorm {
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
    },
    Dropout {
        dropout: Dropout,
        stream: u64,
    },
    Flatten,
    Normalize {
        mean: Tensor,
        std: Tensor,
    },
    Add,
}

impl Op {
    /// `(weight, bias, pad, stride)` of a square, undilated, ungrouped convolution padded
    /// alike on every side: the one [`kernels::conv2d`] and [`kernels::conv_block`] take.
    fn square_conv(&self) -> Option<(&Tensor, &Tensor, usize, usize)> {
        match self {
            Op::Conv {
                w,
                b,
                stride,
                padding: (ph, pw),
                dilation: 1,
                groups: 1,
            } if ph == pw && w.dim(2).ok() == w.dim(3).ok() => Some((w, b, *ph, *stride)),
            _ => None,
        }
    }
}

/// A [`GraphSpec`] with its parameters: the model every [`crate::build`] returns.
pub struct Graph {
    spec: ModelSpec,
    ops: Vec<Op>,
    inputs: Vec<Vec<usize>>,
    /// How many layers read each output (index as in `inputs`): freed after the last.
    readers: Vec<usize>,
    max_norms: Vec<(String, f64)>,
    /// Whether the eval-mode input gradient may take the hand-written backward.
    dense_only: bool,
    /// Per layer: the convolution block that starts there, if any.
    blocks: Vec<Option<Block>>,
    params: Params,
    /// What the guards of [`Classifier::freeze`] hold.
    prepared: Mutex<Prepared>,
}

/// The weights prepared while a [`Frozen`] guard holds the graph.
#[derive(Default)]
struct Prepared {
    /// Guards alive.
    holds: usize,
    /// Per op: a linear layer's weight transposed ([`kernels::transposed`]), valid while a
    /// guard is alive and kept after, to be written over by the next guard's.
    transposed: Arc<[Option<Tensor>]>,
}

/// A convolution, then its ReLU or maxout, then a max pool if one follows, each reading only
/// the one before and read by nothing else: one [`kernels::conv_block`] on the CPU.
#[derive(Clone, Copy, Debug)]
struct Block {
    act: BlockActivation,
    pool: Option<PoolGeometry>,
    /// Layers it spans: 2 or 3.
    len: usize,
}

impl Block {
    /// The block that starts at layer `i`, if one does.
    fn at(ops: &[Op], plan: &Plan, readers: &[usize], i: usize) -> Option<Block> {
        ops[i].square_conv()?;
        // Layer `j` reads only layer `j − 1`'s output (value `j`), and nothing else reads it.
        let chained = |j: usize| j < ops.len() && plan.inputs[j] == [j] && readers[j] == 1;
        if !chained(i + 1) {
            return None;
        }
        let act = match ops[i + 1] {
            Op::Relu => BlockActivation::Relu,
            Op::Maxout(p) if plan.in_shapes[i + 1].len() == 3 => BlockActivation::Maxout(p),
            _ => return None,
        };
        let pool = match ops.get(i + 2) {
            Some(Op::MaxPool(g)) if chained(i + 2) => Some(*g),
            _ => None,
        };
        Some(Block {
            act,
            pool,
            len: 2 + usize::from(pool.is_some()),
        })
    }
}

impl Graph {
    /// Builds `graph` (the spec's architecture as layers) with parameters from `pb`; the
    /// preprocessing buffers, if any, are already in `pb`.
    pub fn new(spec: ModelSpec, graph: &GraphSpec, mut pb: ParamBuilder<'_>) -> Result<Self> {
        let plan = graph.plan(spec.input, spec.n_classes)?;
        let device = pb.device().clone();
        let mut ops = Vec::with_capacity(graph.layers.len());
        let mut max_norms = Vec::new();
        let mut streams = 0u64;
        for (i, node) in graph.layers.iter().enumerate() {
            let scope = &plan.scopes[i];
            let x = &plan.in_shapes[i];
            let op = pb.scope(scope, |pb| -> Result<Op> {
                Ok(match &node.layer {
                    Layer::Conv2d(c) => {
                        let (kh, kw) = c.kernel.get();
                        let fan_in = x[0] / c.groups * kh * kw;
                        let shape = (c.out_channels, x[0] / c.groups, kh, kw);
                        let (w, b) =
                            weight_and_bias(pb, shape, c.out_channels, fan_in, c.init, c.bias)?;
                        if let Some(m) = c.max_norm {
                            max_norms.push((format!("{scope}.weight"), m));
                        }
                        Op::Conv {
                            w,
                            b,
                            stride: c.stride,
                            padding: c.padding.get(),
                            dilation: c.dilation,
                            groups: c.groups,
                        }
                    }
                    Layer::Linear(l) => {
                        let shape = (l.out_features, x[0]);
                        let (w, b) =
                            weight_and_bias(pb, shape, l.out_features, x[0], l.init, l.bias)?;
                        if let Some(m) = l.max_norm {
                            max_norms.push((format!("{scope}.weight"), m));
                        }
                        Op::Linear { w, b }
                    }
                    Layer::Relu(_) => Op::Relu,
                    Layer::LeakyRelu(l) => Op::LeakyRelu(l.slope),
                    Layer::Sigmoid(_) => Op::Sigmoid,
                    Layer::Tanh(_) => Op::Tanh,
                    Layer::Gelu(_) => Op::Gelu,
                    Layer::Maxout(m) => Op::Maxout(m.pieces),
                    Layer::MaxPool(p) => Op::MaxPool(p.geometry()),
                    Layer::AvgPool(p) => Op::AvgPool(p.geometry()),
                    Layer::GlobalAvgPool(_) => Op::GlobalAvgPool,
                    Layer::BatchNorm(b) => {
                        let c = x[0];
                        let weight = pb.constant("weight", c, 1.0)?;
                        let bias = pb.constant("bias", c, 0.0)?;
                        let mean = pb.buffer("running_mean", c, || {
                            Tensor::zeros(c, DType::F32, &Device::Cpu)
                        })?;
                        let var = pb.buffer("running_var", c, || {
                            Tensor::ones(c, DType::F32, &Device::Cpu)
                        })?;
                        pb.ignore("num_batches_tracked");
                        Op::BatchNorm {
                            weight,
                            bias,
                            mean,
                            var,
                            eps: b.eps,
                        }
                    }
                    Layer::Dropout(d) => {
                        streams += 1;
                        Op::Dropout {
                            dropout: *d,
                            stream: streams - 1,
                        }
                    }
                    Layer::Flatten(_) => Op::Flatten,
                    Layer::Normalize(n) => {
                        let per_channel = |v: &[f64]| {
                            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                            Tensor::from_vec(v, channel_shape(x), &device)
                        };
                        Op::Normalize {
                            mean: per_channel(&n.mean)?,
                            std: per_channel(&n.std)?,
                        }
                    }
                    Layer::Add(_) => Op::Add,
                })
            })?;
            ops.push(op);
        }
        let mut readers = vec![0; ops.len() + 1];
        for j in plan.inputs.iter().flatten() {
            readers[*j] += 1;
        }
        let sequential = plan.inputs.iter().enumerate().all(|(i, js)| js == &[i]);
        let dense_only = sequential
            && ops.iter().enumerate().all(|(i, op)| match op {
                Op::Linear { .. } | Op::Dropout { .. } => true,
                Op::Flatten => i == 0,
                Op::Maxout(_) => plan.in_shapes[i].len() == 1,
                _ => false,
            })
            && matches!(ops.first(), Some(Op::Flatten));
        let blocks = (0..ops.len())
            .map(|i| Block::at(&ops, &plan, &readers, i))
            .collect();
        Ok(Self {
            spec,
            ops,
            inputs: plan.inputs,
            readers,
            max_norms,
            dense_only,
            blocks,
            params: pb.finish()?,
            prepared: Mutex::default(),
        })
    }

    /// The transposed weights of the guards that hold the graph; none when none does.
    fn transposed(&self) -> Arc<[Option<Tensor>]> {
        let prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        match prepared.holds {
            0 => Arc::new([]),
            _ => prepared.transposed.clone(),
        }
    }

    /// Logits of a pass whose backward computes `grads`.
    fn logits(&self, xs: &Tensor, mode: Mode, grads: Gradients) -> Result<Tensor> {
        self.check_input(xs)?;
        let transposed = self.transposed();
        let first = preprocess::apply(&self.spec, &self.params, xs)?;
        let mut values: Vec<Option<Tensor>> = Vec::with_capacity(self.ops.len() + 1);
        values.push(Some(first));
        let mut left = self.readers.clone();
        let mut i = 0;
        while i < self.ops.len() {
            let args: Vec<Tensor> = self.inputs[i]
                .iter()
                .map(|&j| {
                    left[j] -= 1;
                    let v = if left[j] == 0 {
                        values[j].take()
                    } else {
                        values[j].clone()
                    };
                    v.expect("inputs precede their readers")
                })
                .collect();
            if let (Some(block), Some((w, b, pad, stride))) =
                (&self.blocks[i], self.ops[i].square_conv())
            {
                let pool = block.pool.as_ref();
                if let Some(y) =
                    kernels::conv_block(&args[0], w, b, pad, stride, block.act, pool, grads)?
                {
                    // The block's inner outputs are read by nothing else.
                    values.extend(std::iter::repeat_n(None, block.len - 1));
                    values.push(Some(y));
                    i += block.len;
                    continue;
                }
            }
            let weight_t = transposed.get(i).and_then(Option::as_ref);
            values.push(Some(run(&self.ops[i], args, weight_t, mode, grads)?));
            i += 1;
        }
        Ok(values.pop().flatten().expect("the last layer's output"))
    }

    fn check_input(&self, xs: &Tensor) -> Result<()> {
        let dims = xs.dims();
        let flat_ok = dims.len() == 2 && dims[1] == self.spec.input_dim() && self.dense_only;
        if !(flat_ok || (dims.len() == 4 && dims[1..] == self.spec.input)) {
            bail!(
                "{}: expected input (batch, {:?}), got {dims:?}",
                self.spec.arch.kind(),
                self.spec.input
            )
        }
        Ok(())
    }

    /// [`Classifier::loss_and_input_grad`] of one shard.
    fn shard_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        if mode == Mode::Eval
            && self.dense_only
            && self.spec.preprocess == preprocess::Preprocess::None
        {
            self.check_input(xs)?;
            return self.dense_input_grad(xs, labels);
        }
        autograd_input_grad(self, xs, labels, mode)
    }

    /// The eval-mode input gradient of a graph of fully connected and maxout layers by a
    /// hand-written backward: Candle's autograd would also compute every weight gradient
    /// (its matmul backward always does both operands), which made FGSM and PGD steps on the
    /// Maxout MLP ~1.5× slower.
    fn dense_input_grad(&self, xs: &Tensor, labels: &Tensor) -> Result<InputGrad> {
        let xs = xs.detach();
        let mut h = xs.flatten_from(1)?;
        // The weight of each linear layer and the arg-max mask of each maxout, in order.
        enum Step<'a> {
            Linear(&'a Tensor),
            Maxout(Tensor),
        }
        let mut steps = Vec::with_capacity(self.ops.len());
        let transposed = self.transposed();
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                Op::Linear { w, b } => {
                    let weight_t = transposed.get(i).and_then(Option::as_ref);
                    h = kernels::linear_transposed(&h, w, weight_t, b, Gradients::All)?;
                    steps.push(Step::Linear(w));
                }
                Op::Maxout(pieces) => {
                    let (batch, features) = h.dims2()?;
                    let z = h.reshape((batch, features / pieces, *pieces))?;
                    let max = z.max_keepdim(D::Minus1)?;
                    // Every tied piece gets the full gradient, as Candle's max backward does.
                    steps.push(Step::Maxout(z.broadcast_eq(&max)?.to_dtype(z.dtype())?));
                    h = max.squeeze(D::Minus1)?;
                }
                _ => {}
            }
        }
        let logits = h;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let labels = labels.to_dtype(DType::U32)?;
        let loss = log_probs
            .gather(&labels.unsqueeze(1)?, 1)?
            .squeeze(1)?
            .neg()?;
        let classes = Tensor::arange(0u32, self.spec.n_classes as u32, xs.device())?;
        let onehot = labels
            .unsqueeze(1)?
            .broadcast_eq(&classes.unsqueeze(0)?)?
            .to_dtype(logits.dtype())?;
        // d(sum of per-example CE)/d logits = softmax − one-hot, row by row. The true class's
        // entry, p_y − 1, is taken as −Σ_{j≠y} p_j: a confident model has p_y within f32
        // rounding of 1, and p_y − 1 would lose all of the (tiny) gradient.
        let others = log_probs.exp()?.mul(&(1.0 - &onehot)?)?;
        let mut grad = (&others - onehot.broadcast_mul(&others.sum_keepdim(1)?)?)?;
        for step in steps.iter().rev() {
            grad = match step {
                Step::Linear(w) => grad.matmul(w)?,
                Step::Maxout(mask) => {
                    let (batch, units, pieces) = mask.dims3()?;
                    mask.broadcast_mul(&grad.unsqueeze(2)?)?
                        .reshape((batch, units * pieces))?
                }
            };
        }
        Ok(InputGrad {
            loss,
            logits,
            grad: grad.reshape(xs.shape())?,
        })
    }
}

/// `[C, 1, 1]` for a feature map, `[C]` for flat features: what broadcasts per channel.
fn channel_shape(x: &[usize]) -> Vec<usize> {
    let mut s = vec![1; x.len() + 1];
    s[1] = x[0];
    s
}

fn weight_and_bias(
    pb: &mut ParamBuilder<'_>,
    shape: impl Into<candle_core::Shape>,
    out: usize,
    fan_in: usize,
    init: Init,
    bias: bool,
) -> Result<(Tensor, Tensor)> {
    let (w, b) = match init {
        Init::Torch => {
            let range = 1.0 / (fan_in as f64).sqrt();
            let w = pb.uniform("weight", shape, range)?;
            (w, bias.then(|| pb.uniform("bias", out, range)).transpose()?)
        }
        Init::Uniform(range) => {
            let w = pb.uniform("weight", shape, range)?;
            (w, bias.then(|| pb.constant("bias", out, 0.0)).transpose()?)
        }
    };
    // A layer without bias adds zeros: the kernels take a bias operand.
    let b = match b {
        Some(b) => b,
        None => Tensor::zeros(out, w.dtype(), w.device())?,
    };
    Ok((w, b))
}

/// `t` in `like`'s dtype (f64 gradient checks meet f32 constants).
fn cast(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    if t.dtype() == like.dtype() {
        Ok(t.clone())
    } else {
        t.to_dtype(like.dtype())
    }
}

/// One op on its inputs; `weight_t` a linear layer's transposed weight where one is held.
fn run(
    op: &Op,
    mut args: Vec<Tensor>,
    weight_t: Option<&Tensor>,
    mode: Mode,
    grads: Gradients,
) -> Result<Tensor> {
    let x = args.swap_remove(0);
    match op {
        Op::Conv {
            w,
            b,
            stride,
            padding,
            dilation,
            groups,
        } => {
            if let Some((w, b, pad, stride)) = op.square_conv() {
                return kernels::conv2d(&x, w, b, pad, stride, grads);
            }
            let (ph, pw) = *padding;
            // Candle pads every side alike: uneven padding is added first.
            let (x, pad) = if ph == pw {
                (x, ph)
            } else {
                (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0)
            };
            x.conv2d(w, pad, *stride, *dilation, *groups)?
                .broadcast_add(&b.reshape((1, (), 1, 1))?)
        }
        Op::Linear { w, b } => kernels::linear_transposed(&x, w, weight_t, b, grads),
        Op::Relu => kernels::relu(&x),
        Op::LeakyRelu(slope) => candle_nn::ops::leaky_relu(&x, *slope),
        Op::Sigmoid => kernels::sigmoid(&x),
        Op::Tanh => x.tanh(),
        Op::Gelu => x.gelu_erf(),
        Op::Maxout(pieces) => {
            let mut dims = x.dims().to_vec();
            let inner: usize = dims[2..].iter().product();
            dims[1] /= pieces;
            kernels::max_pieces(&x, *pieces, inner, &dims)
        }
        Op::MaxPool(g) => max_pool2d(&x, g),
        Op::AvgPool(g) => {
            let (ph, pw) = g.padding;
            if g.kernel == g.stride && ph + pw == 0 {
                return x.avg_pool2d_with_stride(g.kernel, g.stride);
            }
            // Candle's avg-pool backward needs kernel = stride: overlapping windows are a
            // depthwise convolution with a constant kernel instead (padding zeros counted, as
            // PyTorch's default `count_include_pad`).
            let ((kh, kw), (sh, sw)) = (g.kernel, g.stride);
            let c = x.dim(1)?;
            let x = if ph + pw > 0 {
                x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?
            } else {
                x
            };
            if sh != sw {
                bail!(
                    "avg-pool: overlapping windows need equal strides, got {:?}",
                    g.stride
                )
            }
            let kernel = (Tensor::ones((c, 1, kh, kw), x.dtype(), x.device())? / (kh * kw) as f64)?;
            x.conv2d(&kernel, 0, sh, 1, c)
        }
        Op::GlobalAvgPool => x.mean_keepdim(3)?.mean_keepdim(2),
        Op::BatchNorm {
            weight,
            bias,
            mean,
            var,
            eps,
        } => {
            let shape = channel_shape(&x.dims()[1..]);
            let scale = (cast(weight, &x)? / (cast(var, &x)? + *eps)?.sqrt()?)?;
            let shift = (cast(bias, &x)? - (cast(mean, &x)? * &scale)?)?;
            x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
                .broadcast_add(&shift.reshape(shape.as_slice())?)
        }
        Op::Dropout { dropout, stream } => match mode {
            Mode::Train { seed } => dropout.apply(&x, derive_seed(seed, *stream)),
            Mode::Eval => Ok(x),
        },
        Op::Flatten => x.flatten_from(1),
        Op::Normalize { mean, std } => x
            .broadcast_sub(&cast(mean, &x)?)?
            .broadcast_div(&cast(std, &x)?),
        Op::Add => args.iter().try_fold(x, |acc, a| acc + a),
    }
}

impl Thaw for Graph {
    fn thaw(&self) {
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        prepared.holds -= 1;
    }
}

impl Classifier for Graph {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Eval logits of data (an input off the graph) come shard by shard ([`shard`]), from
    /// blocks that keep nothing for a backward ([`Gradients::None`]); a training pass is one,
    /// so that its dropout masks stay those of the whole batch.
    fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let (shards, grads) = match mode {
            Mode::Eval if !xs.track_op() => {
                (shard::count(xs.dim(0)?, xs.device()), Gradients::None)
            }
            _ => (1, Gradients::All),
        };
        let parts = shard::map(xs.dim(0)?, shards, |_, start, len| {
            self.logits(&xs.narrow(0, start, len)?, mode, grads)
        })?;
        Tensor::cat(&parts, 0)
    }

    fn forward_input_grad(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        self.logits(xs, mode, Gradients::InputOnly)
    }

    fn params(&self) -> &Params {
        &self.params
    }

    /// Shard by shard in eval mode: each example's loss and gradient are its own.
    fn loss_and_input_grad(&self, xs: &Tensor, labels: &Tensor, mode: Mode) -> Result<InputGrad> {
        let shards = match mode {
            Mode::Eval => shard::count(xs.dim(0)?, xs.device()),
            Mode::Train { .. } => 1,
        };
        let parts = shard::map(xs.dim(0)?, shards, |_, start, len| {
            self.shard_input_grad(
                &xs.narrow(0, start, len)?,
                &labels.narrow(0, start, len)?,
                mode,
            )
        })?;
        let cat = |f: fn(&InputGrad) -> &Tensor| -> Result<Tensor> {
            Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)
        };
        Ok(InputGrad {
            loss: cat(|g| &g.loss)?,
            logits: cat(|g| &g.logits)?,
            grad: cat(|g| &g.grad)?,
        })
    }

    /// Transposes each linear layer's weight on the CPU, once for all the guards alive.
    fn freeze(&self) -> Result<Frozen<'_>> {
        let mut prepared = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if prepared.holds == 0 {
            // The last guard's buffers are written over unless a pass still holds them.
            let reuse = Arc::get_mut(&mut prepared.transposed).is_some();
            let kept = prepared.transposed.clone();
            prepared.transposed = self
                .ops
                .iter()
                .enumerate()
                .map(|(i, op)| match op {
                    Op::Linear { w, .. } if w.device().is_cpu() => {
                        match kept.get(i).and_then(Option::as_ref) {
                            Some(t)
                                if reuse
                                    && t.dtype() == w.dtype()
                                    && t.dims() == [w.dim(1)?, w.dim(0)?] =>
                            {
                                kernels::transpose_into(t, w)?;
                                Ok(Some(t.clone()))
                            }
                            _ => kernels::transposed(w).map(Some),
                        }
                    }
                    _ => Ok(None),
                })
                .collect::<Result<_>>()?;
        }
        prepared.holds += 1;
        Ok(Frozen::holding(self))
    }

    fn max_norm(&self, name: &str) -> Option<f64> {
        self.max_norms
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }
}

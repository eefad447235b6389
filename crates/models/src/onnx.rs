//! ONNX files as layer graphs: the graph of a `torch.onnx.export` is translated once, at load,
//! into a [`GraphSpec`] whose weights are the file's initializers, so an imported model runs
//! on the same kernels, devices and exact input gradients as a native one. An op outside the
//! supported set fails at load, naming the node, the op and the opset (docs/models.md lists
//! them). A trailing `Softmax` or `LogSoftmax` is dropped: attacks run on the logits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{bail, Device, Result, Tensor};
use prost::Message;

use crate::graph::{BatchNorm, Conv2d, GraphSpec, Init, Layer, LeakyRelu, Linear, Node, Normalize};
use crate::graph::{Plain, Pool, INPUT};
use crate::{Arch, Classifier, ModelSpec, ParamBuilder};

/// The subset of onnx.proto3 that a model file needs; prost skips every other field.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
        #[prost(message, repeated, tag = "5")]
        pub attribute: Vec<AttributeProto>,
        #[prost(string, tag = "7")]
        pub domain: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(float, tag = "2")]
        pub f: f32,
        #[prost(int64, tag = "3")]
        pub i: i64,
        #[prost(bytes = "vec", tag = "4")]
        pub s: Vec<u8>,
        #[prost(message, optional, tag = "5")]
        pub t: Option<TensorProto>,
        #[prost(float, repeated, tag = "7")]
        pub floats: Vec<f32>,
        #[prost(int64, repeated, tag = "8")]
        pub ints: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(float, repeated, tag = "4")]
        pub float_data: Vec<f32>,
        #[prost(int32, repeated, tag = "5")]
        pub int32_data: Vec<i32>,
        #[prost(int64, repeated, tag = "7")]
        pub int64_data: Vec<i64>,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
        #[prost(double, repeated, tag = "10")]
        pub double_data: Vec<f64>,
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }

    // `value` is a oneof in onnx.proto3; on the wire its tensor case is an ordinary field.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TypeTensor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeTensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(int64, optional, tag = "1")]
        pub dim_value: Option<i64>,
        #[prost(string, optional, tag = "2")]
        pub dim_param: Option<String>,
    }
}

use proto::{AttributeProto, NodeProto, TensorProto};

/// The ops [`load`] translates (default domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "BatchNormalization",
    "Flatten",
    "Reshape",
    "Dropout",
    "Identity",
    "Constant",
    "Softmax",
    "LogSoftmax",
];

/// A constant value: an initializer or a `Constant` node's output.
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    values: Vec<f64>,
}

impl Const {
    fn tensor(&self) -> Result<Tensor> {
        let v: Vec<f32> = self.values.iter().map(|&x| x as f32).collect();
        Tensor::from_vec(v, self.dims.as_slice(), &Device::Cpu)
    }

    /// One value per channel of `channels`, from a scalar or a `[1, C, 1, 1]`-like shape.
    fn per_channel(&self, channels: usize) -> Option<Vec<f64>> {
        let non_unit: Vec<usize> = self.dims.iter().copied().filter(|&d| d != 1).collect();
        match (self.values.len(), non_unit.as_slice()) {
            (1, _) => Some(vec![self.values[0]; channels]),
            (n, [c]) if n == channels && *c == channels => {
                // The channel axis must be the second of four (or the first of three).
                let pos = self.dims.iter().position(|&d| d == channels)?;
                let rank = self.dims.len();
                (rank >= 3 && pos == rank - 3).then(|| self.values.clone())
            }
            _ => None,
        }
    }
}

fn decode_tensor(t: &TensorProto) -> std::result::Result<Const, String> {
    if t.data_location == 1 {
        return Err("its data is stored outside the file (export with the weights inside)".into());
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let n: usize = dims.iter().product();
    let raw = &t.raw_data;
    let values: Vec<f64> = match t.data_type {
        1 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        1 => t.float_data.iter().map(|&v| v as f64).collect(),
        11 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        11 => t.double_data.clone(),
        7 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        7 => t.int64_data.iter().map(|&v| v as f64).collect(),
        6 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        6 => t.int32_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(format!(
                "data type {other} is not supported (float, double, int32 or int64)"
            ))
        }
    };
    if values.len() != n {
        return Err(format!(
            "expected {n} values for dims {dims:?}, found {}",
            values.len()
        ));
    }
    Ok(Const { dims, values })
}

/// The attributes of one node, by name.
struct Attrs<'a>(&'a [AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Option<&[i64]> {
        self.get(name).map(|a| a.ints.as_slice())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

/// What an ONNX value is during translation.
#[derive(Clone, Debug)]
enum Value {
    /// The output of the graph node at this index (or the model input).
    Node(String),
    Const(Const),
}

struct Translator<'a> {
    file: &'a Path,
    opset: i64,
    values: HashMap<String, Value>,
    nodes: Vec<Node>,
    /// Shape per example of every graph node's output, by name, kept up to date.
    shapes: HashMap<String, Vec<usize>>,
    tensors: HashMap<String, Tensor>,
    input: [usize; 3],
}

impl<'a> Translator<'a> {
    fn fail(&self, node: &NodeProto, msg: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "{}: node `{}` ({}, opset {}): {msg}",
            self.file.display(),
            node.name,
            node.op_type,
            self.opset
        ))
    }

    fn value(&self, node: &NodeProto, i: usize) -> Result<Value> {
        let Some(name) = node.input.get(i).filter(|n| !n.is_empty()) else {
            return Err(self.fail(node, format!("expected input {i}")));
        };
        self.values.get(name).cloned().ok_or_else(|| {
            self.fail(
                node,
                format!("input `{name}` is not produced by an earlier node"),
            )
        })
    }

    fn activation(&self, node: &NodeProto, i: usize) -> Result<String> {
        match self.value(node, i)? {
            Value::Node(n) => Ok(n),
            Value::Const(_) => Err(self.fail(
                node,
                format!("expected input {i} to depend on the model input, found a constant"),
            )),
        }
    }

    fn constant(&self, node: &NodeProto, i: usize) -> Result<Const> {
        match self.value(node, i)? {
            Value::Const(c) => Ok(c),
            Value::Node(_) => Err(self.fail(
                node,
                format!("expected input {i} to be a constant (an initializer)"),
            )),
        }
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.shapes
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.input.to_vec())
    }

    /// `name`, or a numbered one if a layer already has it.
    fn unique(&self, name: String) -> String {
        if name.is_empty() || name == INPUT || self.shapes.contains_key(&name) {
            format!("node{}", self.nodes.len())
        } else {
            name
        }
    }

    /// A scope for a layer's weights: the initializer's own name without `.weight` (PyTorch's
    /// module path), else the node's name, else its output's.
    fn scope(&self, node: &NodeProto, weight_input: usize) -> String {
        let from_weight = node
            .input
            .get(weight_input)
            .and_then(|w| w.strip_suffix(".weight"))
            .map(str::to_string);
        let candidates = [
            from_weight,
            Some(node.name.clone()),
            Some(node.output[0].clone()),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty() && n != INPUT && !self.shapes.contains_key(n))
            .unwrap_or_else(|| format!("node{}", self.nodes.len()))
    }

    /// Appends `layer` reading `from`, named `name` (or a numbered name if that is taken),
    /// maps the node's output to it, and returns the name it got.
    fn push(
        &mut self,
        node: &NodeProto,
        name: String,
        from: Vec<String>,
        layer: Layer,
    ) -> Result<String> {
        let in_shapes: Vec<Vec<usize>> = from.iter().map(|f| self.shape(f)).collect();
        let name = self.unique(name);
        let shape =
            crate::graph::layer_out_shape(&layer, &in_shapes).map_err(|e| self.fail(node, e))?;
        self.shapes.insert(name.clone(), shape);
        self.values
            .insert(node.output[0].clone(), Value::Node(name.clone()));
        self.nodes.push(Node {
            name: Some(name.clone()),
            inputs: from,
            layer,
        });
        Ok(name)
    }

    fn alias(&mut self, node: &NodeProto, value: Value) {
        self.values.insert(node.output[0].clone(), value);
    }

    fn add_tensor(&mut self, node: &NodeProto, name: String, c: &Const) -> Result<()> {
        let t = c.tensor().map_err(|e| self.fail(node, e))?;
        self.tensors.insert(name, t);
        Ok(())
    }

    /// `(a, b)` of a symmetric 4-entry ONNX `pads` (`[top, left, bottom, right]`).
    fn pads(&self, node: &NodeProto, a: &Attrs) -> Result<(usize, usize)> {
        if let Some(auto) = a.string("auto_pad") {
            if auto != "NOTSET" && !auto.is_empty() {
                return Err(self.fail(
                    node,
                    format!("auto_pad {auto} is not supported (export with explicit pads)"),
                ));
            }
        }
        match a.ints("pads") {
            None => Ok((0, 0)),
            Some(&[t, l, b, r]) if t == b && l == r && t >= 0 && l >= 0 => {
                Ok((t as usize, l as usize))
            }
            Some(p) => Err(self.fail(
                node,
                format!("pads {p:?}: only equal padding on opposite sides is supported"),
            )),
        }
    }

    fn pair(
        &self,
        node: &NodeProto,
        a: &Attrs,
        name: &str,
        default: usize,
    ) -> Result<(usize, usize)> {
        match a.ints(name) {
            None => Ok((default, default)),
            Some(&[x, y]) if x > 0 && y > 0 => Ok((x as usize, y as usize)),
            Some(v) => Err(self.fail(
                node,
                format!("{name} {v:?}: expected two positive values (2-D)"),
            )),
        }
    }

    fn translate(&mut self, node: &NodeProto) -> Result<()> {
        let a = Attrs(&node.attribute);
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(self.fail(node, format!("domain `{}` is not supported", node.domain)));
        }
        if node.output.is_empty() {
            return Err(self.fail(node, "expected an output"));
        }
        let op = node.op_type.as_str();
        match op {
            "Constant" => {
                let Some(t) = a.get("value").and_then(|v| v.t.as_ref()) else {
                    return Err(self.fail(node, "only tensor `value` constants are supported"));
                };
                let c = decode_tensor(t).map_err(|e| self.fail(node, e))?;
                self.alias(node, Value::Const(c));
            }
            "Identity" | "Dropout" => {
                let v = self.value(node, 0)?;
                self.alias(node, v);
            }
            "Conv" => {
                let x = self.activation(node, 0)?;
                let w = self.constant(node, 1)?;
                let [out, _, kh, kw] = w.dims[..] else {
                    return Err(self.fail(node, format!("expected a 4-D weight, got {:?}", w.dims)));
                };
                let (sh, sw) = self.pair(node, &a, "strides", 1)?;
                let (dh, dw) = self.pair(node, &a, "dilations", 1)?;
                if sh != sw || dh != dw {
                    return Err(self.fail(
                        node,
                        "strides and dilations must be equal in both dimensions",
                    ));
                }
                let padding = self.pads(node, &a)?;
                let bias = node.input.get(2).is_some_and(|b| !b.is_empty());
                let name = self.scope(node, 1);
                self.add_tensor(node, format!("{name}.weight"), &w)?;
                if bias {
                    let b = self.constant(node, 2)?;
                    self.add_tensor(node, format!("{name}.bias"), &b)?;
                }
                let layer = Layer::Conv2d(Conv2d {
                    out_channels: out,
                    kernel: crate::graph::Pair::Two([kh, kw]),
                    stride: sh,
                    padding: crate::graph::Pair::Two([padding.0, padding.1]),
                    dilation: dh,
                    groups: a.int("group", 1).max(1) as usize,
                    bias,
                    init: Init::Torch,
                    max_norm: None,
                });
                self.push(node, name, vec![x], layer)?;
            }
            "Gemm" | "MatMul" => {
                let x = self.activation(node, 0)?;
                let w = self.constant(node, 1)?;
                let [d0, d1] = w.dims[..] else {
                    return Err(self.fail(node, format!("expected a 2-D weight, got {:?}", w.dims)));
                };
                let trans_b = op == "Gemm" && a.int("transB", 0) == 1;
                if op == "Gemm"
                    && (a.int("transA", 0) != 0
                        || a.float("alpha", 1.0) != 1.0
                        || a.float("beta", 1.0) != 1.0)
                {
                    return Err(self.fail(
                        node,
                        "only transA = 0, alpha = 1 and beta = 1 are supported",
                    ));
                }
                // PyTorch's layout, [out, in].
                let weight = if trans_b {
                    w.clone()
                } else {
                    let mut v = vec![0.0; w.values.len()];
                    for i in 0..d0 {
                        for j in 0..d1 {
                            v[j * d0 + i] = w.values[i * d1 + j];
                        }
                    }
                    Const {
                        dims: vec![d1, d0],
                        values: v,
                    }
                };
                let out = weight.dims[0];
                let name = self.scope(node, 1);
                self.add_tensor(node, format!("{name}.weight"), &weight)?;
                let bias = node.input.get(2).is_some_and(|b| !b.is_empty());
                if bias {
                    let b = self.constant(node, 2)?;
                    if b.values.len() != out {
                        return Err(self.fail(
                            node,
                            format!("expected a bias of {out} values, got dims {:?}", b.dims),
                        ));
                    }
                    let b = Const {
                        dims: vec![out],
                        values: b.values,
                    };
                    self.add_tensor(node, format!("{name}.bias"), &b)?;
                }
                let layer = Layer::Linear(Linear {
                    out_features: out,
                    bias,
                    init: Init::Torch,
                    max_norm: None,
                });
                self.push(node, name, vec![x], layer)?;
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node)?,
            "Relu" | "Sigmoid" | "Tanh" => {
                let x = self.activation(node, 0)?;
                let layer = match op {
                    "Relu" => Layer::relu(),
                    "Sigmoid" => Layer::Sigmoid(Plain {}),
                    _ => Layer::Tanh(Plain {}),
                };
                self.push(node, node.output[0].clone(), vec![x], layer)?;
            }
            "LeakyRelu" => {
                let x = self.activation(node, 0)?;
                let layer = Layer::LeakyRelu(LeakyRelu {
                    slope: a.float("alpha", 0.01) as f64,
                });
                self.push(node, node.output[0].clone(), vec![x], layer)?;
            }
            "Gelu" => {
                if a.string("approximate").is_some_and(|s| s != "none") {
                    return Err(self.fail(node, "only the exact (erf) GELU is supported"));
                }
                let x = self.activation(node, 0)?;
                self.push(node, node.output[0].clone(), vec![x], Layer::Gelu(Plain {}))?;
            }
            "MaxPool" | "AveragePool" => {
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err(self.fail(node, "the Indices output is not supported"));
                }
                let x = self.activation(node, 0)?;
                let (kh, kw) = self.pair(node, &a, "kernel_shape", 0)?;
                let (sh, sw) = self.pair(node, &a, "strides", 1)?;
                if self.pair(node, &a, "dilations", 1)? != (1, 1) {
                    return Err(self.fail(node, "dilated pooling is not supported"));
                }
                let (ph, pw) = self.pads(node, &a)?;
                let pool = Pool {
                    kernel: crate::graph::Pair::Two([kh, kw]),
                    stride: Some(crate::graph::Pair::Two([sh, sw])),
                    padding: crate::graph::Pair::Two([ph, pw]),
                    ceil_mode: a.int("ceil_mode", 0) == 1,
                };
                let layer = if op == "MaxPool" {
                    Layer::MaxPool(pool)
                } else {
                    if ph + pw > 0 && a.int("count_include_pad", 0) == 0 {
                        return Err(self.fail(
                            node,
                            "padding that is not counted (count_include_pad = 0) is not supported",
                        ));
                    }
                    Layer::AvgPool(pool)
                };
                self.push(node, node.output[0].clone(), vec![x], layer)?;
            }
            "ReduceMean" => {
                // The dynamo exporter's adaptive average pooling to 1×1: a mean over H and W.
                let x = self.activation(node, 0)?;
                let axes: Vec<i64> = match node.input.get(1).filter(|n| !n.is_empty()) {
                    Some(_) => self
                        .constant(node, 1)?
                        .values
                        .iter()
                        .map(|&v| v as i64)
                        .collect(),
                    None => a.ints("axes").map(<[i64]>::to_vec).unwrap_or_default(),
                };
                let mut axes: Vec<i64> = axes
                    .iter()
                    .map(|&v| if v < 0 { v + 4 } else { v })
                    .collect();
                axes.sort_unstable();
                if axes != [2, 3] || self.shape(&x).len() != 3 {
                    return Err(self.fail(node, format!("only a mean over the spatial axes [2, 3] of a feature map is supported, got axes {axes:?}")));
                }
                let pooled = format!("{}.pooled", node.output[0]);
                let pooled = self.push(node, pooled, vec![x], Layer::GlobalAvgPool(Plain {}))?;
                if a.int("keepdims", 1) == 0 {
                    self.push(node, node.output[0].clone(), vec![pooled], Layer::flatten())?;
                }
            }
            "GlobalAveragePool" => {
                let x = self.activation(node, 0)?;
                self.push(
                    node,
                    node.output[0].clone(),
                    vec![x],
                    Layer::GlobalAvgPool(Plain {}),
                )?;
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0) != 0 {
                    return Err(self.fail(
                        node,
                        "training_mode = 1 is not supported (export in eval mode)",
                    ));
                }
                let x = self.activation(node, 0)?;
                let name = self.scope(node, 1);
                for (i, t) in ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .enumerate()
                {
                    let c = self.constant(node, i + 1)?;
                    self.add_tensor(node, format!("{name}.{t}"), &c)?;
                }
                let layer = Layer::BatchNorm(BatchNorm {
                    eps: a.float("epsilon", 1e-5) as f64,
                });
                self.push(node, name, vec![x], layer)?;
            }
            "Flatten" => {
                if a.int("axis", 1) != 1 {
                    return Err(self.fail(node, "only axis = 1 is supported"));
                }
                let x = self.activation(node, 0)?;
                self.push(node, node.output[0].clone(), vec![x], Layer::flatten())?;
            }
            "Reshape" => {
                let x = self.activation(node, 0)?;
                let shape = self.constant(node, 1)?;
                let features: usize = self.shape(&x).iter().product();
                let target: Vec<i64> = shape.values.iter().map(|&v| v as i64).collect();
                // `x.view(-1, features)`, `x.view(x.size(0), -1)` as constants, `reshape(0, -1)`.
                let flat = match target[..] {
                    [_, f] if f == features as i64 => true,
                    [0, -1] | [-1, -1] => false,
                    [b, -1] => b == 0 || b == -1,
                    _ => false,
                };
                if !flat {
                    return Err(self.fail(node, format!("only a flatten to [batch, {features}] is supported, got shape {target:?}")));
                }
                self.push(node, node.output[0].clone(), vec![x], Layer::flatten())?;
            }
            other => {
                return Err(self.fail(
                    node,
                    format!(
                        "the op `{other}` is not supported; supported ops: {}",
                        SUPPORTED_OPS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `Add` of two activations is a residual connection; `Add` of a constant after a linear
    /// layer without bias (a `MatMul`) is its bias; `Add`, `Sub`, `Mul` and `Div` by a scalar
    /// or per-channel constant are an input normalisation.
    fn arithmetic(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type.as_str();
        let (x, y) = (self.value(node, 0)?, self.value(node, 1)?);
        let commutes = op == "Add" || op == "Mul";
        match (x, y) {
            (Value::Node(a), Value::Node(b)) if op == "Add" => {
                self.push(
                    node,
                    node.output[0].clone(),
                    vec![a, b],
                    Layer::Add(Plain {}),
                )?;
                Ok(())
            }
            (Value::Node(a), Value::Const(c)) => self.by_constant(node, a, c),
            (Value::Const(c), Value::Node(a)) if commutes => self.by_constant(node, a, c),
            _ => Err(self.fail(
                node,
                "only an activation with a constant, or two activations for Add, are supported",
            )),
        }
    }

    /// The activation `a` combined with the constant `c` by the node's op.
    fn by_constant(&mut self, node: &NodeProto, a: String, c: Const) -> Result<()> {
        let op = node.op_type.as_str();
        // A bias for the preceding MatMul.
        if op == "Add" {
            if let Some(last) = self
                .nodes
                .last_mut()
                .filter(|n| n.name.as_deref() == Some(a.as_str()))
            {
                if let Layer::Linear(l) = &mut last.layer {
                    if !l.bias && c.values.len() == l.out_features {
                        l.bias = true;
                        let bias = Const {
                            dims: vec![c.values.len()],
                            values: c.values,
                        };
                        self.add_tensor(node, format!("{a}.bias"), &bias)?;
                        self.alias(node, Value::Node(a));
                        return Ok(());
                    }
                }
            }
        }
        let channels = self.shape(&a)[0];
        let Some(v) = c.per_channel(channels) else {
            return Err(self.fail(
                node,
                format!(
                    "expected a scalar or per-channel constant, got dims {:?}",
                    c.dims
                ),
            ));
        };
        let ones = vec![1.0; channels];
        let zeros = vec![0.0; channels];
        // (x − mean) / std for each op.
        let (mean, std) = match op {
            "Add" => (v.iter().map(|m| -m).collect(), ones),
            "Sub" => (v, ones),
            "Mul" => (zeros, v.iter().map(|s| 1.0 / s).collect()),
            _ => (zeros, v),
        };
        self.push(
            node,
            node.output[0].clone(),
            vec![a],
            Layer::Normalize(Normalize { mean, std }),
        )?;
        Ok(())
    }
}

/// The `[C, H, W]` of the file's one data input.
fn input_shape(
    file: &Path,
    graph: &proto::GraphProto,
    initializers: &HashMap<String, Const>,
) -> Result<(String, [usize; 3])> {
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains_key(&i.name))
        .collect();
    let [input] = inputs[..] else {
        bail!(
            "{}: expected one graph input (the images), found {}",
            file.display(),
            inputs.len()
        )
    };
    let dims: Vec<Option<i64>> = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    match dims[..] {
        [_, Some(c), Some(h), Some(w)] if [c, h, w].iter().all(|&d| d > 0 && d <= 1 << 16) => Ok((input.name.clone(), [c as usize, h as usize, w as usize])),
        _ => bail!(
            "{}: input `{}` has shape {dims:?}; expected [batch, channels, height, width] with known channels, height and width",
            file.display(),
            input.name
        ),
    }
}

/// Translates the ONNX model in `bytes` (read from `file`) into a spec and its tensors.
pub fn translate(file: &Path, bytes: &[u8]) -> Result<(ModelSpec, HashMap<String, Tensor>)> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| {
        candle_core::Error::Msg(format!("{}: not an ONNX model ({e})", file.display()))
    })?;
    let Some(graph) = &model.graph else {
        bail!("{}: the ONNX model has no graph", file.display())
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let mut initializers = HashMap::new();
    for t in &graph.initializer {
        let c = decode_tensor(t).map_err(|e| {
            candle_core::Error::Msg(format!("{}: initializer `{}`: {e}", file.display(), t.name))
        })?;
        initializers.insert(t.name.clone(), c);
    }
    let (input_name, input) = input_shape(file, graph, &initializers)?;
    let mut tr = Translator {
        file,
        opset,
        values: initializers
            .into_iter()
            .map(|(k, v)| (k, Value::Const(v)))
            .collect(),
        nodes: Vec::new(),
        shapes: HashMap::new(),
        tensors: HashMap::new(),
        input,
    };
    tr.values.insert(input_name, Value::Node(INPUT.to_string()));
    let [output] = &graph.output[..] else {
        bail!(
            "{}: expected one graph output (the logits), found {}",
            file.display(),
            graph.output.len()
        )
    };
    for node in &graph.node {
        // A softmax on the logits: attacks need the logits themselves.
        if matches!(node.op_type.as_str(), "Softmax" | "LogSoftmax") {
            if node.output.first() != Some(&output.name) {
                return Err(tr.fail(
                    node,
                    "a softmax is supported only as the last node (on the logits)",
                ));
            }
            let v = tr.value(node, 0)?;
            tr.alias(node, v);
            continue;
        }
        tr.translate(node)?;
    }
    let last = match tr.values.get(&output.name) {
        Some(Value::Node(n)) if n != INPUT => n.clone(),
        _ => bail!(
            "{}: output `{}` is not computed from the input",
            file.display(),
            output.name
        ),
    };
    if tr.nodes.last().and_then(|n| n.name.as_deref()) != Some(last.as_str()) {
        bail!(
            "{}: output `{}` must be the last node's",
            file.display(),
            output.name
        )
    }
    let shape = tr.shape(&last);
    let n_classes = match shape[..] {
        [n] if n >= 2 => n,
        _ => bail!(
            "{}: the output `{}` is {shape:?} per example; expected [n_classes] logits",
            file.display(),
            output.name
        ),
    };
    let spec = ModelSpec::new(
        Arch::Graph(GraphSpec { layers: tr.nodes }),
        input,
        n_classes,
    );
    spec.validate()
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", file.display())))?;
    Ok((spec, tr.tensors))
}

/// Loads an ONNX file as a model on `device`.
pub fn load(path: &Path, device: &Device) -> Result<Box<dyn Classifier>> {
    let bytes = std::fs::read(path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let (spec, tensors) = translate(path, &bytes)?;
    crate::build_with(&spec, ParamBuilder::load(&tensors, device))
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

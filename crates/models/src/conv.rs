//! Convolutional models: pylearn2's convolutional Maxout networks (research/paper.md §2.3 and
//! §2.4) and a small ReLU CNN, with overlapping max pooling built from differentiable pieces.
//!
//! Candle's `max_pool2d` is not used: its backward is wrong by 1/k² and it requires
//! kernel == stride (research/candle.md Q5). [`max_pool`] uses cuda-convnet's output size and
//! truncated edge windows, as pylearn2's `max_pool_c01b` does, and picks each window's maximum
//! by index so that its gradient is exact.

use candle_core::{bail, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::{self, conv2d, linear, max_pieces, Gradients};
use crate::layers::{apply_max_norm, derive_seed, linear_stack, maxout, Dropout};
use crate::spec::{check_dropout, check_max_norm};
use crate::{preprocess, Arch, Classifier, Mode, ModelSpec, ParamBuilder, Params};

/// Pooled length of `n` positions with windows of `pool` every `stride`, as cuda-convnet
/// computes it: `ceil((n − pool) / stride) + 1`, the last window truncated at the edge
/// (1 when `n ≤ pool`).
pub fn pooled_len(n: usize, pool: usize, stride: usize) -> usize {
    if n <= pool {
        1
    } else {
        (n - pool).div_ceil(stride) + 1
    }
}

/// Spatial max pooling with `pool × pool` windows every `stride` (overlapping when
/// `stride < pool`), output size [`pooled_len`] per side; windows that run past the bottom or
/// right edge take the max of the positions they cover.
///
/// The arg-max of every window is found on the host and the maxima are picked with
/// `index_select`, so the gradient goes exactly to each window's arg-max (the first one on
/// ties) through `index_select`'s backward (`index_add`), which is itself differentiable for
/// double backprop. (`gather` is not used: candle 0.11.1's `scatter_add` backward fails on it.)
/// On the CPU without double backprop, [`kernels::MaxPool`] does the same in one custom op.
///
/// # Shapes
/// - `xs`: `(batch, channels, height, width)`, f32 or f64; returns
///   `(batch, channels, pooled_len(height), pooled_len(width))`
pub fn max_pool(xs: &Tensor, pool: usize, stride: usize) -> Result<Tensor> {
    if pool == 0 || stride == 0 || stride > pool {
        bail!("max pool: expected 0 < stride <= pool, got pool {pool} stride {stride}")
    }
    let (_, _, h, w) = xs.dims4()?;
    if xs.elem_count() > u32::MAX as usize {
        bail!(
            "max pool: expected at most u32::MAX values, got {}",
            xs.elem_count()
        )
    }
    if pool == 1 {
        return Ok(xs.clone());
    }
    let (oh, ow) = (pooled_len(h, pool, stride), pooled_len(w, pool, stride));
    let geometry = Windows {
        h,
        w,
        pool,
        stride,
        oh,
        ow,
    };
    if kernels::fast_path(&[xs]) {
        // The same arg-max in one custom op, without the index tensor and the gather.
        return xs.contiguous()?.apply_op1(kernels::MaxPool::new(geometry));
    }
    max_pool_by_index(xs, geometry)
}

/// [`max_pool`] by `index_select`, differentiable twice.
fn max_pool_by_index(xs: &Tensor, geometry: Windows) -> Result<Tensor> {
    let (batch, channels, oh, ow) = (xs.dim(0)?, xs.dim(1)?, geometry.oh, geometry.ow);
    let index = match xs.dtype() {
        DType::F32 => geometry.argmax(&xs.flatten_all()?.to_vec1::<f32>()?),
        DType::F64 => geometry.argmax(&xs.flatten_all()?.to_vec1::<f64>()?),
        other => bail!("max pool: expected f32 or f64, got {other:?}"),
    };
    let index = Tensor::from_vec(index, batch * channels * oh * ow, xs.device())?;
    xs.flatten_all()?
        .index_select(&index, 0)?
        .reshape((batch, channels, oh, ow))
}

/// Pooling windows over one `h × w` plane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows {
    h: usize,
    w: usize,
    pool: usize,
    stride: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Windows {
    /// For every plane of `values` and every window, the flat index of its maximum.
    pub(crate) fn argmax<T: PartialOrd + Copy>(&self, values: &[T]) -> Vec<u32> {
        let Windows {
            h,
            w,
            pool,
            stride,
            oh,
            ow,
        } = *self;
        let mut index = Vec::with_capacity(values.len() / (h * w) * oh * ow);
        for (p, plane) in values.chunks_exact(h * w).enumerate() {
            for i in 0..oh {
                let (y0, y1) = (i * stride, (i * stride + pool).min(h));
                for j in 0..ow {
                    let (x0, x1) = (j * stride, (j * stride + pool).min(w));
                    // The first maximum in row-major order: later ties do not replace it.
                    let mut best = y0 * w + x0;
                    let mut top = plane[best];
                    for y in y0..y1 {
                        for (x, &v) in (x0..x1).zip(&plane[y * w + x0..y * w + x1]) {
                            if v > top {
                                top = v;
                                best = y * w + x;
                            }
                        }
                    }
                    index.push((p * h * w + best) as u32);
                }
            }
        }
        index
    }
}

/// `[channels, height, width]` after a `kernel × kernel` convolution with zero padding `pad`
/// and stride 1, then pooling; `what` names the layer in errors.
fn conv_pool_shape(
    what: &str,
    input: [usize; 3],
    channels: usize,
    kernel: usize,
    pad: usize,
    pool: usize,
    pool_stride: usize,
) -> Result<[usize; 3]> {
    if channels == 0 || kernel == 0 || pool == 0 || pool_stride == 0 {
        bail!(
            "{what}: channels, kernel, pool and pool-stride must be positive, \
             got {channels}, {kernel}, {pool}, {pool_stride}"
        )
    }
    if pool_stride > pool {
        bail!("{what}: pool-stride must not exceed pool, got {pool_stride} > {pool}")
    }
    let [_, h, w] = input;
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    if ph < kernel || pw < kernel {
        bail!(
            "{what}: expected the padded input ({ph}×{pw}) to be at least the kernel \
             ({kernel}×{kernel})"
        )
    }
    let (ch, cw) = (ph - kernel + 1, pw - kernel + 1);
    Ok([
        channels,
        pooled_len(ch, pool, pool_stride),
        pooled_len(cw, pool, pool_stride),
    ])
}

/// Fails unless `xs` is `(batch, spec.input)`.
fn check_input(spec: &ModelSpec, xs: &Tensor) -> Result<()> {
    let dims = xs.dims();
    if dims.len() != 4 || dims[1..] != spec.input {
        bail!(
            "{}: expected input (batch, {:?}), got {:?}",
            spec.arch.kind(),
            spec.input,
            dims
        )
    }
    Ok(())
}

/// Dropout `d` in training mode, with the mask of stream `stream`; the identity in eval mode.
fn dropout(xs: Tensor, d: Dropout, mode: Mode, stream: usize) -> Result<Tensor> {
    match mode {
        Mode::Train { seed } => d.apply(&xs, derive_seed(seed, stream as u64)),
        Mode::Eval => Ok(xs),
    }
}

/// One convolutional maxout layer (pylearn2 `MaxoutConvC01B`): a convolution with
/// `channels · pieces` output channels, the max over each contiguous group of `pieces`
/// channels, then max pooling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConvMaxoutLayer {
    pub channels: usize,
    pub pieces: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Zero padding on every side.
    #[serde(default)]
    pub pad: usize,
    /// Square pooling window side.
    pub pool: usize,
    pub pool_stride: usize,
    /// Clip of each output channel's kernel L2 norm (`max_kernel_norm`).
    #[serde(default)]
    pub max_kernel_norm: Option<f64>,
}

/// A fully connected maxout layer between the convolutions and the softmax.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConvMaxoutFc {
    pub units: usize,
    pub pieces: usize,
    /// Clip of each piece's weight-row L2 norm (`max_col_norm`).
    #[serde(default)]
    pub max_norm: Option<f64>,
}

/// pylearn2's convolutional Maxout network. The default is the MNIST recipe (`mnist.yaml`,
/// research/paper.md §2.3): 48×2 k8 pad 0 pool 4/2 norm 0.9; 48×2 k8 pad 3 pool 4/2 norm
/// 1.9365; 24×4 k5 pad 3 pool 2/2 norm 1.9365; softmax on 216 inputs with norm 1.9365;
/// U(−0.005, 0.005); input dropout 0.8 without rescaling, 0.5 inverted elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ConvMaxoutSpec {
    pub layers: Vec<ConvMaxoutLayer>,
    /// Optional fully connected maxout layer after the convolutions (CIFAR-10: 500×5).
    pub fc: Option<ConvMaxoutFc>,
    /// Every weight starts in U(−init-range, init-range); biases start at 0.
    pub init_range: f64,
    /// Clip of each class's softmax weight-row norm.
    pub out_max_norm: Option<f64>,
    /// Dropout on the (preprocessed) input.
    pub input_dropout: Dropout,
    /// Dropout on the input of every later layer.
    pub hidden_dropout: Dropout,
}

impl Default for ConvMaxoutSpec {
    fn default() -> Self {
        let layer = |channels, pieces, kernel, pad, pool, max_kernel_norm| ConvMaxoutLayer {
            channels,
            pieces,
            kernel,
            pad,
            pool,
            pool_stride: 2,
            max_kernel_norm: Some(max_kernel_norm),
        };
        Self {
            layers: vec![
                layer(48, 2, 8, 0, 4, 0.9),
                layer(48, 2, 8, 3, 4, 1.9365),
                layer(24, 4, 5, 3, 2, 1.9365),
            ],
            fc: None,
            init_range: 0.005,
            out_max_norm: Some(1.9365),
            input_dropout: Dropout {
                include: 0.8,
                scale: 1.0,
            },
            hidden_dropout: Dropout::inverted(0.5),
        }
    }
}

impl ConvMaxoutSpec {
    /// The CIFAR-10 recipe without augmentation (`cifar10_no_aug.yaml`, research/paper.md
    /// §2.4): 96×2 k8 pad 4 pool 4/2 norm 0.9; 192×2 k8 pad 3 pool 4/2 norm 1.9365; 192×2 k5
    /// pad 3 pool 2/2 norm 1.9365; maxout 500×5 norm 1.9; softmax norm 1.9365. Pair it with
    /// [`crate::Preprocess::cifar10`] on `[3, 32, 32]` inputs.
    pub fn cifar10() -> Self {
        let mut s = Self::default();
        let sizes = [
            (96, 8, 4, 4, 0.9),
            (192, 8, 3, 4, 1.9365),
            (192, 5, 3, 2, 1.9365),
        ];
        s.layers = sizes
            .iter()
            .map(|&(channels, kernel, pad, pool, norm)| ConvMaxoutLayer {
                channels,
                pieces: 2,
                kernel,
                pad,
                pool,
                pool_stride: 2,
                max_kernel_norm: Some(norm),
            })
            .collect();
        s.fc = Some(ConvMaxoutFc {
            units: 500,
            pieces: 5,
            max_norm: Some(1.9),
        });
        s
    }

    /// `[channels, height, width]` after each conv layer (pooled), for an `input` of
    /// `[channels, height, width]`; fails naming the first layer whose sizes do not fit.
    pub fn layer_shapes(&self, input: [usize; 3]) -> Result<Vec<[usize; 3]>> {
        let mut shape = input;
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let what = format!("conv-maxout layer {i}");
            if l.pieces == 0 {
                bail!("{what}: pieces must be positive, got 0")
            }
            shape = conv_pool_shape(
                &what,
                shape,
                l.channels,
                l.kernel,
                l.pad,
                l.pool,
                l.pool_stride,
            )?;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Checks every size is positive and the spatial sizes stay at least 1 through the stack.
    pub fn validate(&self, input: [usize; 3]) -> Result<()> {
        if self.layers.is_empty() {
            bail!("conv-maxout: expected at least one conv layer, got none")
        }
        self.layer_shapes(input)?;
        for (i, l) in self.layers.iter().enumerate() {
            check_max_norm(l.max_kernel_norm)
                .map_err(|e| candle_core::Error::Msg(format!("conv-maxout layer {i}: {e}")))?;
        }
        if let Some(fc) = &self.fc {
            if fc.units == 0 || fc.pieces == 0 {
                bail!(
                    "conv-maxout fc: units and pieces must be positive, got {} and {}",
                    fc.units,
                    fc.pieces
                )
            }
            check_max_norm(fc.max_norm)?;
        }
        if !(self.init_range > 0.0 && self.init_range.is_finite()) {
            bail!(
                "conv-maxout init-range must be finite and positive, got {}",
                self.init_range
            )
        }
        check_max_norm(self.out_max_norm)?;
        check_dropout("conv-maxout input-dropout", &self.input_dropout)?;
        check_dropout("conv-maxout hidden-dropout", &self.hidden_dropout)
    }
}

/// `input → conv maxout layers → [fc maxout] → softmax(n_classes)`, dropout on the input of
/// every layer in training.
///
/// Checkpoint names: `h{i}.weight` `[channels·pieces, in, k, k]` and `h{i}.bias`
/// `[channels·pieces]` for conv layer `i` (pieces of channel `j` are output channels
/// `j·pieces .. (j+1)·pieces`); the fc layer continues the numbering with `[units·pieces, in]`;
/// `out.weight` `[n_classes, in]`, `out.bias`. Feature maps are flattened in `(c, h, w)`
/// order (pylearn2 flattens `(h, w, c)`, which matters only for importing its weights).
pub struct ConvMaxout {
    spec: ModelSpec,
    convs: Vec<(Tensor, Tensor)>,
    fc: Option<(Tensor, Tensor)>,
    out: (Tensor, Tensor),
    /// Max norm of each constrained weight, by checkpoint name.
    max_norms: Vec<(String, f64)>,
    params: Params,
}

impl ConvMaxout {
    pub fn new(spec: ModelSpec, mut pb: ParamBuilder<'_>) -> Result<Self> {
        let s = Self::arch(&spec).clone();
        let shapes = s.layer_shapes(spec.input)?;
        let (range, mut max_norms) = (s.init_range, Vec::new());
        let mut in_channels = spec.input[0];
        let mut convs = Vec::new();
        for (i, l) in s.layers.iter().enumerate() {
            let (name, out) = (format!("h{i}"), l.channels * l.pieces);
            convs.push(pb.scope(&name, |pb| {
                Ok((
                    pb.uniform("weight", (out, in_channels, l.kernel, l.kernel), range)?,
                    pb.constant("bias", out, 0.0)?,
                ))
            })?);
            if let Some(c) = l.max_kernel_norm {
                max_norms.push((format!("{name}.weight"), c));
            }
            in_channels = l.channels;
        }
        let mut fan_in: usize = shapes.last().expect("validated non-empty").iter().product();
        let fc = match &s.fc {
            Some(f) => {
                let name = format!("h{}", s.layers.len());
                let layer = pb.scope(&name, |pb| {
                    Ok((
                        pb.uniform("weight", (f.units * f.pieces, fan_in), range)?,
                        pb.constant("bias", f.units * f.pieces, 0.0)?,
                    ))
                })?;
                if let Some(c) = f.max_norm {
                    max_norms.push((format!("{name}.weight"), c));
                }
                fan_in = f.units;
                Some(layer)
            }
            None => None,
        };
        let out = pb.scope("out", |pb| {
            Ok((
                pb.uniform("weight", (spec.n_classes, fan_in), range)?,
                pb.constant("bias", spec.n_classes, 0.0)?,
            ))
        })?;
        if let Some(c) = s.out_max_norm {
            max_norms.push(("out.weight".to_string(), c));
        }
        Ok(Self {
            spec,
            convs,
            fc,
            out,
            max_norms,
            params: pb.finish()?,
        })
    }

    /// Logits of a pass whose backward computes `grads`.
    fn logits(&self, xs: &Tensor, mode: Mode, grads: Gradients) -> Result<Tensor> {
        let s = Self::arch(&self.spec);
        check_input(&self.spec, xs)?;
        let mut h = preprocess::apply(&self.spec, &self.params, xs)?;
        let mut stream = 0;
        for ((w, b), l) in self.convs.iter().zip(&s.layers) {
            let d = if stream == 0 {
                s.input_dropout
            } else {
                s.hidden_dropout
            };
            h = dropout(h, d, mode, stream)?;
            stream += 1;
            let z = conv2d(&h, w, b, l.pad, grads)?;
            let (batch, _, height, width) = z.dims4()?;
            // Contiguous pieces per channel, as pylearn2's `z[i::num_pieces]` slices.
            let z = max_pieces(
                &z,
                l.pieces,
                height * width,
                &[batch, l.channels, height, width],
            )?;
            h = max_pool(&z, l.pool, l.pool_stride)?;
        }
        let mut h = h.flatten_from(1)?;
        if let (Some((w, b)), Some(f)) = (&self.fc, &s.fc) {
            h = dropout(h, s.hidden_dropout, mode, stream)?;
            stream += 1;
            h = maxout(&linear(&h, w, b, grads)?, f.pieces)?;
        }
        h = dropout(h, s.hidden_dropout, mode, stream)?;
        linear(&h, &self.out.0, &self.out.1, grads)
    }

    fn arch(spec: &ModelSpec) -> &ConvMaxoutSpec {
        match &spec.arch {
            Arch::ConvMaxout(s) => s,
            _ => unreachable!("built only from a conv-maxout spec"),
        }
    }
}

impl Classifier for ConvMaxout {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    crate::classifier::forward_by_logits!();

    fn params(&self) -> &Params {
        &self.params
    }

    fn apply_constraints(&self) -> Result<()> {
        for (name, var) in self.params.vars() {
            if let Some((_, c)) = self.max_norms.iter().find(|(n, _)| n == name) {
                apply_max_norm(var, *c)?;
            }
        }
        Ok(())
    }
}

/// One convolution of a [`Cnn`]: `kernel × kernel` with zero padding `pad`, ReLU, then max
/// pooling (`pool` 1 for none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CnnLayer {
    pub channels: usize,
    pub kernel: usize,
    #[serde(default)]
    pub pad: usize,
    pub pool: usize,
    pub pool_stride: usize,
}

/// A small ReLU CNN. The default is the usual MNIST baseline: conv 5×5 32 → ReLU → pool 2 →
/// conv 5×5 64 → ReLU → pool 2 → linear to the classes, PyTorch's default initialisation
/// U(±1/√fan_in), no dropout, no max-norm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CnnSpec {
    pub layers: Vec<CnnLayer>,
    /// Fully connected ReLU layers between the convolutions and the output.
    pub hidden: Vec<usize>,
    pub input_dropout: Dropout,
    pub hidden_dropout: Dropout,
    /// Clip of every weight's per-output-unit L2 norm.
    pub max_norm: Option<f64>,
}

impl Default for CnnSpec {
    fn default() -> Self {
        let layer = |channels| CnnLayer {
            channels,
            kernel: 5,
            pad: 0,
            pool: 2,
            pool_stride: 2,
        };
        Self {
            layers: vec![layer(32), layer(64)],
            hidden: Vec::new(),
            input_dropout: Dropout::NONE,
            hidden_dropout: Dropout::NONE,
            max_norm: None,
        }
    }
}

impl CnnSpec {
    /// `[channels, height, width]` after each conv layer (pooled); fails naming the first
    /// layer whose sizes do not fit.
    pub fn layer_shapes(&self, input: [usize; 3]) -> Result<Vec<[usize; 3]>> {
        let mut shape = input;
        let mut shapes = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let what = format!("cnn layer {i}");
            shape = conv_pool_shape(
                &what,
                shape,
                l.channels,
                l.kernel,
                l.pad,
                l.pool,
                l.pool_stride,
            )?;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Checks every size is positive and the spatial sizes stay at least 1 through the stack.
    pub fn validate(&self, input: [usize; 3]) -> Result<()> {
        self.layer_shapes(input)?;
        if self.hidden.contains(&0) {
            bail!("cnn: hidden sizes must be positive, got {:?}", self.hidden)
        }
        check_max_norm(self.max_norm)?;
        check_dropout("cnn input-dropout", &self.input_dropout)?;
        check_dropout("cnn hidden-dropout", &self.hidden_dropout)
    }
}

/// `input → [conv → ReLU → pool]* → [linear → ReLU]* → linear(n_classes)`, dropout on the
/// input of every layer in training.
///
/// Checkpoint names: `h{i}.weight` `[channels, in, k, k]` and `h{i}.bias` for the
/// convolutions, the hidden linear layers continue the numbering (`[out, in]`), then
/// `out.weight`, `out.bias`. Initialisation is PyTorch's default for `Conv2d` and `Linear`,
/// U(±1/√fan_in) for weights and biases.
pub struct Cnn {
    spec: ModelSpec,
    convs: Vec<(Tensor, Tensor)>,
    linears: Vec<(Tensor, Tensor)>,
    params: Params,
}

impl Cnn {
    pub fn new(spec: ModelSpec, mut pb: ParamBuilder<'_>) -> Result<Self> {
        let s = Self::arch(&spec).clone();
        let shapes = s.layer_shapes(spec.input)?;
        let mut in_channels = spec.input[0];
        let mut convs = Vec::new();
        for (i, l) in s.layers.iter().enumerate() {
            let range = 1.0 / ((in_channels * l.kernel * l.kernel) as f64).sqrt();
            convs.push(pb.scope(&format!("h{i}"), |pb| {
                Ok((
                    pb.uniform(
                        "weight",
                        (l.channels, in_channels, l.kernel, l.kernel),
                        range,
                    )?,
                    pb.uniform("bias", l.channels, range)?,
                ))
            })?);
            in_channels = l.channels;
        }
        let fan_in: usize = shapes.last().unwrap_or(&spec.input).iter().product();
        let linears = linear_stack(&mut pb, s.layers.len(), fan_in, &s.hidden, spec.n_classes)?;
        Ok(Self {
            spec,
            convs,
            linears,
            params: pb.finish()?,
        })
    }

    /// Logits of a pass whose backward computes `grads`.
    fn logits(&self, xs: &Tensor, mode: Mode, grads: Gradients) -> Result<Tensor> {
        let s = Self::arch(&self.spec);
        check_input(&self.spec, xs)?;
        let mut h = preprocess::apply(&self.spec, &self.params, xs)?;
        let mut stream = 0;
        let mut next_dropout = |h: Tensor| -> Result<Tensor> {
            let d = if stream == 0 {
                s.input_dropout
            } else {
                s.hidden_dropout
            };
            stream += 1;
            dropout(h, d, mode, stream - 1)
        };
        for ((w, b), l) in self.convs.iter().zip(&s.layers) {
            h = next_dropout(h)?;
            h = max_pool(
                &kernels::relu(&conv2d(&h, w, b, l.pad, grads)?)?,
                l.pool,
                l.pool_stride,
            )?;
        }
        let mut h = h.flatten_from(1)?;
        let last = self.linears.len() - 1;
        for (i, (w, b)) in self.linears.iter().enumerate() {
            h = linear(&next_dropout(h)?, w, b, grads)?;
            if i < last {
                h = kernels::relu(&h)?;
            }
        }
        Ok(h)
    }

    fn arch(spec: &ModelSpec) -> &CnnSpec {
        match &spec.arch {
            Arch::Cnn(s) => s,
            _ => unreachable!("built only from a cnn spec"),
        }
    }
}

impl Classifier for Cnn {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    crate::classifier::forward_by_logits!();

    fn params(&self) -> &Params {
        &self.params
    }

    fn apply_constraints(&self) -> Result<()> {
        if let Some(c) = Self::arch(&self.spec).max_norm {
            for (name, var) in self.params.vars() {
                if name.ends_with("weight") {
                    apply_max_norm(var, c)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pooled_len_follows_cuda_convnet() {
        // research/paper.md §2.3-2.4: 21→10, 9→4, 6→3, 33→16, 15→7, 9→5.
        let cases = [
            (21, 4, 2, 10),
            (9, 4, 2, 4),
            (6, 2, 2, 3),
            (33, 4, 2, 16),
            (15, 4, 2, 7),
            (9, 2, 2, 5),
        ];
        for (n, pool, stride, expected) in cases {
            assert_eq!(
                pooled_len(n, pool, stride),
                expected,
                "n {n} pool {pool} stride {stride}"
            );
        }
        assert_eq!(pooled_len(3, 4, 2), 1);
    }

    #[test]
    fn max_pool_matches_a_direct_loop_with_truncated_windows() -> Result<()> {
        let (h, w) = (7, 6);
        let values: Vec<f32> = (0..2 * h * w)
            .map(|i| ((i * 37 % 29) as f32) - 14.0)
            .collect();
        let xs = Tensor::from_vec(values.clone(), (1, 2, h, w), &Device::Cpu)?;
        for (pool, stride) in [(4, 2), (3, 2), (2, 2), (3, 1), (5, 3)] {
            let got = max_pool(&xs, pool, stride)?;
            let (oh, ow) = (pooled_len(h, pool, stride), pooled_len(w, pool, stride));
            assert_eq!(got.dims(), &[1, 2, oh, ow]);
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            let mut k = 0;
            for c in 0..2 {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for y in i * stride..(i * stride + pool).min(h) {
                            for x in j * stride..(j * stride + pool).min(w) {
                                m = m.max(values[c * h * w + y * w + x]);
                            }
                        }
                        assert_eq!(got[k], m, "pool {pool} stride {stride} at {c},{i},{j}");
                        k += 1;
                    }
                }
            }
        }
        let err = max_pool(&xs, 2, 3).err().unwrap().to_string();
        assert!(err.contains("stride"), "{err}");
        Ok(())
    }

    /// Training goes through the custom op on the CPU: it must give the `index_select` path's
    /// values and gradients bit for bit, overlapping windows included.
    #[test]
    fn max_pool_custom_op_is_bitwise_the_index_select_path() -> Result<()> {
        use candle_core::Var;
        let n = 8 * 3 * 21 * 21;
        // Few distinct values: ties in most windows.
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 61) as f32) / 7.0 - 4.0)
            .collect();
        let xs = Var::from_tensor(&Tensor::from_vec(values, (8, 3, 21, 21), &Device::Cpu)?)?;
        for (pool, stride) in [(4, 2), (3, 2), (2, 2), (5, 3)] {
            let geometry = Windows {
                h: 21,
                w: 21,
                pool,
                stride,
                oh: pooled_len(21, pool, stride),
                ow: pooled_len(21, pool, stride),
            };
            let fast = max_pool(xs.as_tensor(), pool, stride)?;
            let slow = max_pool_by_index(xs.as_tensor(), geometry)?;
            let probe: Vec<f32> = (0..fast.elem_count())
                .map(|i| ((i * 104729 % 1009) as f32) / 1009.0 - 0.5)
                .collect();
            let probe = Tensor::from_vec(probe, fast.shape(), &Device::Cpu)?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                let v = t.flatten_all()?.to_vec1::<f32>()?;
                Ok(v.into_iter().map(f32::to_bits).collect())
            };
            assert_eq!(bits(&fast)?, bits(&slow)?, "pool {pool} stride {stride}");
            let gf = (fast * &probe)?.sum_all()?.backward()?;
            let gs = (slow * &probe)?.sum_all()?.backward()?;
            assert_eq!(
                bits(gf.get(xs.as_tensor()).unwrap())?,
                bits(gs.get(xs.as_tensor()).unwrap())?,
                "gradient, pool {pool} stride {stride}"
            );
        }
        Ok(())
    }
}

//! Convolutional architectures: pylearn2's convolutional Maxout networks (research/paper.md
//! §2.3 and §2.4) and a small ReLU CNN (their specs; [`crate::builtin`] makes them layer
//! graphs), and max pooling with exact gradients.
//!
//! Candle's `max_pool2d` is not used: its backward is wrong by 1/k² and it requires
//! kernel == stride (research/candle.md Q5). [`max_pool`] uses cuda-convnet's output size and
//! truncated edge windows, as pylearn2's `max_pool_c01b` does, [`max_pool2d`] PyTorch's, and
//! both pick each window's maximum by index so that its gradient is exact.

use candle_core::{bail, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels;
use crate::layers::Dropout;
use crate::spec::{check_dropout, check_max_norm};

/// Pooled length of `n` positions with windows of `pool` every `stride`, as cuda-convnet
/// computes it: `ceil((n − pool) / stride) + 1`, the last window truncated at the edge
/// (1 when `n ≤ pool`). PyTorch's `ceil_mode` without padding gives the same.
pub fn pooled_len(n: usize, pool: usize, stride: usize) -> usize {
    if n <= pool {
        1
    } else {
        (n - pool).div_ceil(stride) + 1
    }
}

/// Pooled length as PyTorch's `MaxPool2d` computes it for `n` positions, kernel `k`, stride
/// `s` and padding `p`: `floor` or `ceil((n + 2p − k) / s) + 1`, where in ceil mode a last
/// window starting in the right padding is dropped. In ceil mode an input no larger than the
/// kernel gives one (truncated) window, as cuda-convnet's [`pooled_len`].
pub fn pool_out_len(n: usize, k: usize, s: usize, p: usize, ceil_mode: bool) -> Result<usize> {
    let padded = n + 2 * p;
    if ceil_mode && padded <= k {
        return Ok(1);
    }
    if padded < k {
        bail!("the padded input ({padded}) is smaller than the pooling window ({k})")
    }
    let span = padded - k;
    let mut out = if ceil_mode {
        span.div_ceil(s)
    } else {
        span / s
    } + 1;
    if ceil_mode && (out - 1) * s >= n + p {
        out -= 1;
    }
    Ok(out)
}

/// A pooling window: `kernel` and `stride` as `(height, width)`, zero or −∞ `padding` on
/// every side, and PyTorch's `ceil_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub ceil_mode: bool,
}

/// Spatial max pooling with `pool × pool` windows every `stride` (overlapping when
/// `stride < pool`), output size [`pooled_len`] per side; windows that run past the bottom or
/// right edge take the max of the positions they cover.
///
/// # Shapes
/// - `xs`: `(batch, channels, height, width)`, f32 or f64; returns
///   `(batch, channels, pooled_len(height), pooled_len(width))`
pub fn max_pool(xs: &Tensor, pool: usize, stride: usize) -> Result<Tensor> {
    if pool == 0 || stride == 0 || stride > pool {
        bail!("max pool: expected 0 < stride <= pool, got pool {pool} stride {stride}")
    }
    if pool == 1 {
        return Ok(xs.clone());
    }
    let geometry = PoolGeometry {
        kernel: (pool, pool),
        stride: (stride, stride),
        padding: (0, 0),
        ceil_mode: true,
    };
    max_pool2d(xs, &geometry)
}

/// Max pooling as PyTorch's `MaxPool2d` (padding counts as −∞).
///
/// The arg-max of every window is found on the host and the maxima are picked with
/// `index_select`, so the gradient goes exactly to each window's arg-max (the first one on
/// ties) through `index_select`'s backward (`index_add`), which is itself differentiable for
/// double backprop. (`gather` is not used: candle 0.11.1's `scatter_add` backward fails on it.)
/// On the CPU without double backprop, [`kernels::MaxPool`] does the same in one custom op.
/// Candle's `max_pool2d` is not used: its backward is wrong by 1/k² and it requires
/// kernel == stride (research/candle.md Q5).
pub fn max_pool2d(xs: &Tensor, g: &PoolGeometry) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if xs.elem_count() > u32::MAX as usize {
        bail!(
            "max pool: expected at most u32::MAX values, got {}",
            xs.elem_count()
        )
    }
    let geometry = Windows::new(g, h, w)?;
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
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Windows {
    /// The windows of `g` over an `h × w` plane.
    pub(crate) fn new(g: &PoolGeometry, h: usize, w: usize) -> Result<Self> {
        let ((kh, kw), (sh, sw), (ph, pw)) = (g.kernel, g.stride, g.padding);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || 2 * ph > kh || 2 * pw > kw {
            bail!("max pool: expected positive kernel and stride and padding at most half the kernel, got {g:?}")
        }
        Ok(Windows {
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh: pool_out_len(h, kh, sh, ph, g.ceil_mode)?,
            ow: pool_out_len(w, kw, sw, pw, g.ceil_mode)?,
        })
    }

    /// For every plane of `values` and every window, the flat index of its maximum. Planes
    /// are taken side by side on the compute threads.
    pub(crate) fn argmax<T: PartialOrd + Copy + Send + Sync>(&self, values: &[T]) -> Vec<u32> {
        use rayon::prelude::*;
        let (plane_len, out_len) = (self.h * self.w, self.oh * self.ow);
        let mut index = vec![0u32; values.len() / plane_len.max(1) * out_len];
        if out_len == 0 {
            return index;
        }
        index
            .par_chunks_mut(out_len)
            .zip(values.par_chunks_exact(plane_len))
            .enumerate()
            .for_each(|(p, (out, plane))| self.plane_argmax(plane, (p * plane_len) as u32, out));
        index
    }

    /// [`Windows::argmax`] of one plane, whose first value has flat index `offset`.
    pub(crate) fn plane_argmax<T: PartialOrd + Copy>(
        &self,
        plane: &[T],
        offset: u32,
        out: &mut [u32],
    ) {
        let Windows {
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh,
            ow,
        } = *self;
        // 2×2 windows inside the plane (the usual pooling): four fixed offsets, no bounds.
        if (kh, kw, ph, pw) == (2, 2, 0, 0) && (oh - 1) * sh + 2 <= h && (ow - 1) * sw + 2 <= w {
            for i in 0..oh {
                let row = i * sh * w;
                for (j, slot) in out[i * ow..(i + 1) * ow].iter_mut().enumerate() {
                    let at = row + j * sw;
                    // The first maximum in row-major order: later ties do not replace it.
                    // Selects, not branches: which of four values wins is unpredictable.
                    let (mut best, mut top) = (at, plane[at]);
                    for k in [at + 1, at + w, at + w + 1] {
                        let (v, wins) = (plane[k], plane[k] > top);
                        best = if wins { k } else { best };
                        top = if wins { v } else { top };
                    }
                    *slot = offset + best as u32;
                }
            }
            return;
        }
        for i in 0..oh {
            let (y0, y1) = self.window_rows(i);
            for j in 0..ow {
                let (x0, x1) = self.window_cols(j);
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
                out[i * ow + j] = offset + best as u32;
            }
        }
    }

    /// The maximum of every window of one plane: the value at [`Windows::plane_argmax`]'s
    /// index, bit for bit (the same scan, first maximum in row-major order), for passes that
    /// keep no indices.
    pub(crate) fn plane_max<T: PartialOrd + Copy>(&self, plane: &[T], out: &mut [T]) {
        let (w, ow) = (self.w, self.ow);
        for i in 0..self.oh {
            let (y0, y1) = self.window_rows(i);
            for (j, slot) in out[i * ow..(i + 1) * ow].iter_mut().enumerate() {
                let (x0, x1) = self.window_cols(j);
                let mut top = plane[y0 * w + x0];
                for y in y0..y1 {
                    for &v in &plane[y * w + x0..y * w + x1] {
                        top = kernels::keep_max(top, v);
                    }
                }
                *slot = top;
            }
        }
    }

    /// The rows of window row `i` inside the plane, `y0..y1`: padding never wins a maximum.
    fn window_rows(&self, i: usize) -> (usize, usize) {
        span(i, self.sh, self.ph, self.kh, self.h)
    }

    /// The columns of window column `j` inside the plane, `x0..x1`.
    fn window_cols(&self, j: usize) -> (usize, usize) {
        span(j, self.sw, self.pw, self.kw, self.w)
    }
}

/// The part of window `i` (stride `s`, padding `p`, size `k`) inside `0..n`.
fn span(i: usize, s: usize, p: usize, k: usize, n: usize) -> (usize, usize) {
    let start = (i * s).saturating_sub(p);
    (start, (i * s + k).saturating_sub(p).min(n))
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

/// One convolution of a [`CnnSpec`]: `kernel × kernel` with zero padding `pad`, ReLU, then max
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
                kh: pool,
                kw: pool,
                sh: stride,
                sw: stride,
                ph: 0,
                pw: 0,
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

//! CPU kernels for the two layers that carry nearly all the FLOPs, fully connected and
//! convolution, as Candle custom ops with their own backward.
//!
//! Why (profiles in BENCHMARKS.md): Candle's backward computes the gradient of every operand
//! of a tracked op, so an attack, which needs the input gradient only, paid for every weight
//! gradient too; and its CPU `conv_transpose2d` (the convolution's input gradient) is a direct
//! loop several times slower than a matrix product. Here the fully connected layer computes
//! only the gradients asked for ([`Gradients`]), with the same `gemm` calls as Candle's matmul
//! (bit for bit the same values), and never the input gradient of a tensor that is not on the
//! graph (the data). The convolution is a matrix product by im2col, its input gradient one by
//! col2im and its weight gradient one against the same im2col matrix: Candle's CPU
//! convolution backward made conv training 5–8× slower than PyTorch's. [`conv_block`] runs a
//! convolution with the ReLU or maxout and the max pool after it as one op, so that a conv
//! layer's intermediate tensors and their gradients never reach Candle's store.
//!
//! Beside them, the passes a training step makes over parameter-sized buffers: the hand-over
//! of the layers' parameter gradients past Candle's store ([`backward`]), the shard sum, the
//! α-mix, momentum SGD and max-norm, in place and over the compute threads, rounding as the
//! tensor ops they replace.
//!
//! The kernels run for f32 and f64 on the CPU. Elsewhere (CUDA, Metal), and when
//! `CANDLE_GRAD_DO_NOT_DETACH` asks for second derivatives (a custom backward is not itself
//! differentiable), [`linear`], [`conv2d`], [`max_pieces`], [`relu`] and [`sigmoid`] fall back to
//! Candle's ops.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::cpu::kernels::VecOps;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use gemm::Parallelism;

use crate::conv::Windows;
use rayon::prelude::*;

/// Which gradients the backward of a pass will be asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gradients {
    /// Parameters and input: training.
    All,
    /// The input's only: an attack, whose weights stay fixed.
    InputOnly,
    /// None: evaluation logits. A [`conv_block`] then keeps no routes for a backward, and
    /// refuses one; the other kernels compute what a backward asks for.
    None,
}

/// `xs @ weightᵀ + bias`, with `weight` stored `[out, in]`.
///
/// # Shapes
/// - `xs`: `(batch, in)`, `weight`: `(out, in)`, `bias`: `(out,)`; returns `(batch, out)`
pub fn linear(xs: &Tensor, weight: &Tensor, bias: &Tensor, grads: Gradients) -> Result<Tensor> {
    linear_transposed(xs, weight, None, bias, grads)
}

/// [`linear`], given also `weight` transposed (`(in, out)`, as [`transposed`] makes it) where
/// the caller keeps one: the product then reads it instead of gathering `weight`'s columns.
/// gemm packs a `[out, in]` weight for `xs @ weightᵀ` one value at a time, strided, every
/// call; that took a quarter of a Maxout MLP's forward. The values are the same bits.
pub fn linear_transposed(
    xs: &Tensor,
    weight: &Tensor,
    weight_t: Option<&Tensor>,
    bias: &Tensor,
    grads: Gradients,
) -> Result<Tensor> {
    if !fast_path(&[xs, weight, bias]) {
        return xs.matmul(&weight.t()?)?.broadcast_add(bias);
    }
    let weight_t = match weight_t {
        Some(t) if t.dims() == [weight.dim(1)?, weight.dim(0)?] => {
            if !fast_path(&[weight, t]) || !t.is_contiguous() {
                bail!("linear: the transposed weight {:?} is not a contiguous CPU tensor of the weight's type", t.shape())
            }
            Some(t.clone())
        }
        Some(t) => bail!(
            "linear: the transposed weight {:?} does not fit the weight {:?}",
            t.shape(),
            weight.shape()
        ),
        None => None,
    };
    let op = Linear {
        input_grad: xs.track_op(),
        weight_grads: grads != Gradients::InputOnly,
        weight_t,
    };
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// `xs` convolved with `weight` `[out, in, k, k]` (zero padding `pad` on every side, stride
/// `stride`), plus one bias per output channel. The backward computes the weight and bias
/// gradients unless [`Gradients::InputOnly`] is asked for.
///
/// # Shapes
/// - `xs`: `(batch, in, h, w)`; returns `(batch, out, (h + 2·pad − k) / stride + 1, …)`
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    pad: usize,
    stride: usize,
    grads: Gradients,
) -> Result<Tensor> {
    if !fast_path(&[xs, weight, bias]) {
        return xs
            .conv2d(weight, pad, stride, 1, 1)?
            .broadcast_add(&bias.reshape((1, (), 1, 1))?);
    }
    let op = Conv2d {
        pad,
        stride,
        input_grad: xs.track_op(),
        weight_grads: grads != Gradients::InputOnly,
    };
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// The maximum over `pieces` consecutive slices of `inner` values: `zs` read as
/// `[outer, pieces, inner]` gives `[outer, inner]`, reshaped to `out_shape`. A maxout unit
/// (`inner = 1` for fully connected layers, the feature-map size for convolutions). Every
/// tied piece gets the full gradient, as Candle's `max` backward gives it.
pub fn max_pieces(zs: &Tensor, pieces: usize, inner: usize, out_shape: &[usize]) -> Result<Tensor> {
    let outer = zs.elem_count() / (pieces * inner).max(1);
    if pieces == 0 || inner == 0 || outer * pieces * inner != zs.elem_count() {
        bail!(
            "maxout: {} values do not split into groups of {pieces} pieces of {inner}",
            zs.elem_count()
        )
    }
    if !fast_path(&[zs]) {
        return zs
            .reshape((outer, pieces, inner))?
            .max(1)?
            .reshape(out_shape);
    }
    zs.contiguous()?
        .apply_op1(MaxPieces { pieces, inner })?
        .reshape(out_shape)
}

/// `max(x, 0)`, as Candle's `relu`, with a backward that masks the gradient in one pass
/// (Candle's builds a zero tensor, compares and converts it, then multiplies), computing the
/// same products.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    if !fast_path(&[xs]) {
        return xs.relu();
    }
    xs.contiguous()?.apply_op1(Relu)
}

/// The logistic function `1 / (e^−x + 1)`, as Candle's `sigmoid` rounds it, over the compute
/// threads (Candle's runs on one), with a backward `g·((1 − s)·s)` in one pass where Candle's
/// makes three.
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    if !fast_path(&[xs]) {
        return candle_nn::ops::sigmoid(xs);
    }
    xs.contiguous()?.apply_op1(Sigmoid)
}

thread_local! {
    // The parameter gradients of the layers above, while [`backward`] runs on this thread.
    static SINK: RefCell<Option<Vec<(Tensor, Tensor)>>> = const { RefCell::new(None) };
}

/// `loss.backward()`, with the parameter gradients of [`linear`] and [`conv2d`] handed over
/// as computed. Candle's store adds every gradient to a fresh zero tensor (a memset and an
/// add over each weight, every step; memset and Candle's add took 19% of the samples of a
/// two-thread Maxout MLP training step, BENCHMARKS.md); here a
/// parameter's gradient is the product itself, or the sum of its parts in the order the
/// backward pass produced them where a parameter is used more than once.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    let outer = SINK.replace(Some(Vec::new()));
    let grads = loss.backward();
    let sunk = SINK.replace(outer).unwrap_or_default();
    let mut grads = grads?;
    for (param, grad) in sunk {
        let sum = match grads.remove(&param) {
            Some(earlier) => earlier.add(&grad)?,
            None => grad,
        };
        grads.insert(&param, sum);
    }
    Ok(grads)
}

/// The gradient `grad` of `param` for Candle to store, or `None` where [`backward`] takes it.
/// Only a variable's: Candle carries the gradient of any other tensor on to its inputs.
fn sink(param: &Tensor, grad: Tensor) -> Option<Tensor> {
    if !param.is_variable() {
        return Some(grad);
    }
    SINK.with_borrow_mut(|sink| match sink {
        Some(sunk) => {
            sunk.push((param.clone(), grad));
            None
        }
        None => Some(grad),
    })
}

thread_local! {
    // Read once per thread, as Candle reads it (backprop.rs).
    static DOUBLE_BACKPROP: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether Candle keeps the graph of gradients on this thread (second derivatives).
fn double_backprop() -> bool {
    DOUBLE_BACKPROP.with(|cell| match cell.get() {
        Some(b) => b,
        None => {
            let b = std::env::var("CANDLE_GRAD_DO_NOT_DETACH")
                .map(|s| !s.is_empty() && s != "0")
                .unwrap_or(false);
            cell.set(Some(b));
            b
        }
    })
}

/// The kernels serve CPU tensors of one float type, when no second derivative is wanted.
pub(crate) fn fast_path(tensors: &[&Tensor]) -> bool {
    let dtype = tensors[0].dtype();
    matches!(dtype, DType::F32 | DType::F64)
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == dtype)
        && !double_backprop()
}

/// A row-major or strided matrix view into a slice.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    /// Distance between rows and between columns, in elements.
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows × cols` matrix, without copying.
    fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = a·b` (or `dst += a·b` with `accumulate`), `dst` row-major `a.rows × b.cols`.
fn matmul<T: WithDType>(dst: &mut [T], a: Mat<'_, T>, b: Mat<'_, T>, accumulate: bool, par: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && dst.len() >= m * n && a.fits() && b.fits(),
        "matmul: mismatched operands {m}×{k} · {}×{n} into {}",
        b.rows,
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    // SAFETY: the assert above keeps every index of the three views inside its slice, `dst`
    // is exclusively borrowed and does not overlap the shared `a` and `b`.
    unsafe { gemm_raw(dst.as_mut_ptr(), a, b, accumulate, par) }
}

/// `a·b` as a new row-major buffer, the values Candle's `matmul` gives.
///
/// Where gemm's blocked path serves the shape, the buffer is not zeroed first: that path writes
/// every value of its first depth block without reading `dst` (`read_dst` false), and zeroing
/// Candle's product buffers took 6% of a two-thread Maxout MLP training step.
fn matmul_new<T: WithDType>(a: Mat<'_, T>, b: Mat<'_, T>, par: bool) -> Vec<T> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if !blocked_gemm(m, k, n) {
        let mut dst = vec![T::zero(); m * n];
        matmul(&mut dst, a, b, false, par);
        return dst;
    }
    assert!(
        b.rows == k && a.fits() && b.fits(),
        "matmul: mismatched operands {m}×{k} · {}×{n}",
        b.rows
    );
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the views are inside their slices (assert above); gemm's blocked path writes all
    // `m·n` values of the fresh buffer before anything reads them (`blocked_gemm`).
    unsafe {
        gemm_raw(
            dst.spare_capacity_mut().as_mut_ptr().cast(),
            a,
            b,
            false,
            par,
        );
        dst.set_len(m * n);
    }
    dst
}

/// Whether gemm 0.19 runs an `m×k · k×n` product through its blocked path, whose first depth
/// block stores each destination value without reading it: not its `k ≤ 2`, matrix-vector
/// or at most 16×16 special cases (`gemm_basic_generic`).
fn blocked_gemm(m: usize, k: usize, n: usize) -> bool {
    m > 1 && n > 1 && k > 2 && m * n > 16 * 16
}

/// gemm of the two views into row-major `dst` (`a.rows × b.cols`), over the compute threads
/// where `par`; the call Candle's `matmul` makes (`read_dst` false, `dst` scaled by zero).
///
/// # Safety
/// Every index of `a` and `b` lies inside its slice, `dst` is valid for `a.rows · b.cols`
/// writes (and reads where `accumulate`) and overlaps neither, and `a.cols > 0`.
unsafe fn gemm_raw<T: WithDType>(
    dst: *mut T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    accumulate: bool,
    par: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if par && threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The contiguous data of a CPU tensor of type `T`.
fn cpu_slice<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("kernels: expected a contiguous tensor"),
    }
}

/// Runs `f` on the contiguous CPU data of `t`.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu_slice(cpu, layout)?),
        _ => bail!("kernels: expected a CPU tensor"),
    }
}

/// Dispatches `$body` with `$t` bound to the Rust type of `$dtype` (f32 or f64).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            other => bail!("kernels: expected f32 or f64, got {other:?}"),
        }
    };
}

/// `w`, a `(rows, cols)` matrix, transposed into a new contiguous `(cols, rows)` tensor: the
/// layout [`linear_transposed`] reads.
pub fn transposed(w: &Tensor) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let t = Tensor::zeros((cols, rows), w.dtype(), w.device())?;
    transpose_into(&t, w)?;
    Ok(t)
}

/// Writes `w` (`(rows, cols)`) transposed into `t` (`(cols, rows)`, contiguous), in place.
pub fn transpose_into(t: &Tensor, w: &Tensor) -> Result<()> {
    let (rows, cols) = w.dims2()?;
    if t.dims() != [cols, rows] || !t.is_contiguous() {
        bail!("transpose: expected a contiguous {cols}×{rows} destination for {rows}×{cols}, got {:?}", t.shape())
    }
    if !fast_path(&[w, t]) {
        return t.slice_set(&w.t()?.contiguous()?, 0, 0);
    }
    t.inplace_op2(&w.contiguous()?, &Transpose)
}

/// [`transpose_into`] as an in-place op on the destination.
struct Transpose;

impl candle_core::InplaceOp2 for Transpose {
    fn name(&self) -> &'static str {
        "gauntlet-transpose"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (rows, cols) = l2.shape().dims2()?;
        match s2.dtype() {
            DType::F32 => {
                let (t, w) = (cpu_slice_mut::<f32>(s1, l1)?, cpu_slice::<f32>(s2, l2)?);
                transpose_bands(w, t, rows, cols, band_f32);
            }
            _ => by_dtype!(s2.dtype(), T => {
                let (t, w) = (cpu_slice_mut::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
                transpose_bands(w, t, rows, cols, band_tiles::<T>);
            }),
        }
        Ok(())
    }
}

/// Side of the scalar transposition's square block.
const TILE: usize = 64;

/// `t ← wᵀ` for row-major `w` (`rows × cols`): one band of rows of `t` (columns of `w`) per
/// compute thread, each transposed by `band(w, rows of t, rows, cols, first column of w)`.
/// Wide bands read each row of `w` by long runs: at 64 columns a band took a quarter longer
/// in a training step, where `w` comes from memory.
fn transpose_bands<T: Send + Sync>(
    w: &[T],
    t: &mut [T],
    rows: usize,
    cols: usize,
    band: impl Fn(&[T], &mut [T], usize, usize, usize) + Send + Sync,
) {
    assert!(
        w.len() == rows * cols && t.len() == rows * cols,
        "transpose: {} and {} values for {rows}×{cols}",
        w.len(),
        t.len()
    );
    if rows == 0 || cols == 0 {
        return;
    }
    let width = cols
        .div_ceil(rayon::current_num_threads())
        .next_multiple_of(8);
    t.par_chunks_mut(width * rows)
        .enumerate()
        .for_each(|(i, out)| band(w, out, rows, cols, i * width));
}

/// One band of [`transpose_bands`], `TILE` columns at a time through a `TILE × TILE` block
/// that stays in L1, so that reads and writes both go by runs of whole cache lines (a copy by
/// columns of `w` waited on a cache miss per row).
fn band_tiles<T: Copy + Default>(w: &[T], out: &mut [T], rows: usize, cols: usize, j0: usize) {
    let mut tile = [[T::default(); TILE]; TILE];
    for (k, out) in out.chunks_mut(TILE * rows).enumerate() {
        let (j0, width) = (j0 + k * TILE, out.len() / rows);
        for i0 in (0..rows).step_by(TILE) {
            let height = TILE.min(rows - i0);
            for i in 0..height {
                let at = (i0 + i) * cols + j0;
                for (line, &v) in tile.iter_mut().zip(&w[at..at + width]) {
                    line[i] = v;
                }
            }
            for (row, line) in out.chunks_exact_mut(rows).zip(&tile) {
                row[i0..i0 + height].copy_from_slice(&line[..height]);
            }
        }
    }
}

/// [`band_tiles`] for f32 by 8×8 AVX blocks where the CPU has AVX, eight rows of `w` at a
/// time across the band.
fn band_f32(w: &[f32], out: &mut [f32], rows: usize, cols: usize, j0: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        let width = out.len() / rows;
        assert!(out.len() == width * rows && j0 + width <= cols && w.len() == rows * cols);
        // SAFETY: AVX is present (checked above); the assert keeps every block inside `w`
        // and `out` (`avx::band`'s contract).
        unsafe { avx::band(w, out, rows, cols, j0) };
        return;
    }
    band_tiles(w, out, rows, cols, j0)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// [`super::band_f32`]: whole 8×8 blocks by register shuffles, the edges value by value.
    ///
    /// # Safety
    /// The CPU has AVX; `out.len() == width·rows` for the band's `width` columns of `w`
    /// from `j0`, `j0 + width ≤ cols` and `w.len() == rows·cols`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn band(w: &[f32], out: &mut [f32], rows: usize, cols: usize, j0: usize) {
        let width = out.len() / rows;
        let (full_rows, full_cols) = (rows / 8 * 8, width / 8 * 8);
        let (src, dst) = (w.as_ptr(), out.as_mut_ptr());
        for i in (0..full_rows).step_by(8) {
            for j in (0..full_cols).step_by(8) {
                // SAFETY: rows i..i+8 of `w` at columns j0+j..j0+j+8 and rows j..j+8 of `out`
                // at columns i..i+8 lie inside the slices (the function's contract).
                unsafe {
                    block(
                        src.add(i * cols + j0 + j),
                        cols,
                        dst.add(j * rows + i),
                        rows,
                    )
                };
            }
        }
        for j in 0..width {
            let from = if j < full_cols { full_rows } else { 0 };
            for i in from..rows {
                out[j * rows + i] = w[i * cols + j0 + j];
            }
        }
    }

    /// The 8×8 block at `src` (row stride `s`) transposed to `dst` (row stride `d`).
    #[target_feature(enable = "avx")]
    unsafe fn block(src: *const f32, s: usize, dst: *mut f32, d: usize) {
        // SAFETY: the caller keeps all eight rows of eight values inside its buffers.
        unsafe {
            let mut r = [_mm256_setzero_ps(); 8];
            for (k, row) in r.iter_mut().enumerate() {
                *row = _mm256_loadu_ps(src.add(k * s));
            }
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let q = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            for k in 0..4 {
                _mm256_storeu_ps(
                    dst.add(k * d),
                    _mm256_permute2f128_ps::<0x20>(q[k], q[k + 4]),
                );
                _mm256_storeu_ps(
                    dst.add((k + 4) * d),
                    _mm256_permute2f128_ps::<0x31>(q[k], q[k + 4]),
                );
            }
        }
    }
}

/// The fully connected layer as one custom op over `(xs, weight, bias)`.
struct Linear {
    input_grad: bool,
    weight_grads: bool,
    /// The weight transposed, `(in, out)` row-major, where the caller keeps one.
    weight_t: Option<Tensor>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "gauntlet-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, fan_in) = l1.shape().dims2()?;
        let (fan_out, w_in) = l2.shape().dims2()?;
        if w_in != fan_in || l3.shape().dims1()? != fan_out {
            bail!(
                "linear: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        by_dtype!(s1.dtype(), T => {
            let (x, w, b) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?, cpu_slice::<T>(s3, l3)?);
            let product = |wt: Mat<'_, T>| matmul_new(Mat::rows(x, batch, fan_in), wt, true);
            let mut y = match &self.weight_t {
                Some(t) => with_slice::<T, _>(t, |t| Ok(product(Mat::rows(t, fan_in, fan_out))))?,
                None => product(Mat::transposed(w, fan_out, fan_in)),
            };
            // The bias after the product, as Candle's matmul + broadcast_add rounds.
            for row in y.chunks_mut(fan_out) {
                for (v, &bias) in row.iter_mut().zip(b) {
                    *v += bias;
                }
            }
            Ok((T::to_cpu_storage_owned(y), (batch, fan_out).into()))
        })
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (batch, fan_in) = xs.dims2()?;
        let fan_out = weight.dim(0)?;
        // The products Candle's `matmul` makes, into buffers it would zero first.
        let product = |a: &Tensor, b: &Tensor, dx: bool, shape: (usize, usize)| -> Result<Tensor> {
            by_dtype!(xs.dtype(), T => {
                let y = with_slice::<T, _>(a, |a| {
                    with_slice::<T, _>(b, |b| {
                        Ok(match dx {
                            true => matmul_new(Mat::rows(a, batch, fan_out), Mat::rows(b, fan_out, fan_in), true),
                            false => matmul_new(Mat::transposed(a, batch, fan_out), Mat::rows(b, batch, fan_in), true),
                        })
                    })
                })?;
                Tensor::from_vec(y, shape, xs.device())
            })
        };
        let dx = match self.input_grad {
            true => Some(product(&grad, weight, true, (batch, fan_in))?),
            false => None,
        };
        let (dw, db) = match self.weight_grads {
            true => (
                sink(weight, product(&grad, xs, false, (fan_out, fan_in))?),
                sink(bias, column_sums(&grad)?),
            ),
            false => (None, None),
        };
        Ok((dx, dw, db))
    }
}

/// Momentum SGD's update in place: `v ← v·μ − g·lr`, then `w ← w + v`, where the gradient `g`
/// is the sum of `grads`, a batch's shard parts, from the first on; then, with a `max_norm`,
/// each row of `w` (one per output unit) clipped to it as [`max_norm_rows`] clips it. The
/// velocity lives in the caller's memory (`velocity`, the weight's values in order, of its
/// type), so that one pass over both updates it and the weight (Candle lends one tensor at a
/// time for writing).
///
/// Each value is rounded as Candle's `add` (the sum of the parts), `affine` (a product plus
/// zero), `sub` and `add` round it, so training is bit for bit what those tensor ops and
/// `layers::apply_max_norm` gave, in one pass instead of six (and the max-norm's five), with
/// no new buffers: the update was a seventh of the Maxout MLP's training step. Returns
/// `false`, touching nothing, where the kernels do not serve; the caller then uses tensor ops.
pub fn sgd_momentum(
    weight: &Tensor,
    velocity: &mut CpuStorage,
    grads: &[&Tensor],
    momentum: f64,
    lr: f64,
    max_norm: Option<f64>,
) -> Result<bool> {
    let fits = velocity.dtype() == weight.dtype()
        && storage_len(velocity) == Some(weight.elem_count())
        && !(max_norm.is_some() && weight.rank() == 0);
    if grads.is_empty() || !fits || !in_place_serves(weight, grads) {
        return Ok(false);
    }
    let rows = weight.dims().first().copied().unwrap_or(1).max(1);
    let op = HostSgd {
        velocity: RefCell::new(velocity),
        momentum,
        lr,
        clip: max_norm.map(|c| (c, weight.elem_count() / rows)),
    };
    match grads {
        [g] => weight.inplace_op2(g, &op)?,
        [a, b] => weight.inplace_op3(a, b, &op)?,
        // More than two shards (more than two threads): all but the last summed first.
        [first, middle @ .., last] => {
            let head = middle
                .iter()
                .try_fold((*first).clone(), |sum, g| sum.add(g))?;
            weight.inplace_op3(&head, last, &op)?
        }
        [] => return Ok(false),
    }
    Ok(true)
}

/// The number of values of a float CPU storage.
fn storage_len(s: &CpuStorage) -> Option<usize> {
    match s {
        CpuStorage::F32(v) => Some(v.len()),
        CpuStorage::F64(v) => Some(v.len()),
        _ => None,
    }
}

/// [`sgd_momentum`] as an in-place op on the weight.
struct HostSgd<'a> {
    velocity: RefCell<&'a mut CpuStorage>,
    momentum: f64,
    lr: f64,
    clip: Option<(f64, usize)>,
}

impl HostSgd<'_> {
    /// `v ← v·μ + 0 − (g·lr + 0)`, `w ← w + v`, then each row of `w` clipped: chunk by chunk
    /// (whole rows where it clips), each value rounded as the tensor ops round it.
    fn apply<T: WithDType + VecOps>(&self, w: &mut [T], a: &[T], b: Option<&[T]>) -> Result<()> {
        let mut guard = self.velocity.borrow_mut();
        let v = storage_slice_mut::<T>(&mut guard)?;
        let (mu, lr, zero) = (
            T::from_f64(self.momentum),
            T::from_f64(self.lr),
            T::from_f64(0.0),
        );
        let clip = self
            .clip
            .filter(|&(_, row_len)| row_len > 0)
            .map(|(c, row_len)| (RowClip { max_norm: c }, row_len));
        let pass = |squares: &mut Vec<T>, w: &mut [T], v: &mut [T], a: &[T], b: Option<&[T]>| {
            match b {
                Some(b) => {
                    for (((w, v), &ga), &gb) in w.iter_mut().zip(v.iter_mut()).zip(a).zip(b) {
                        *v = velocity(*v, ga + gb, mu, lr, zero);
                        *w += *v;
                    }
                }
                None => {
                    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(a) {
                        *v = velocity(*v, g, mu, lr, zero);
                        *w += *v;
                    }
                }
            }
            if let Some((clip, row_len)) = &clip {
                w.chunks_mut(*row_len)
                    .for_each(|row| clip.apply(squares, row));
            }
        };
        let row_len = clip.as_ref().map_or(1, |(_, r)| *r);
        if !split_pass(w.len()) {
            pass(&mut Vec::with_capacity(row_len), w, v, a, b);
            return Ok(());
        }
        let chunk = row_len * (PASS_CHUNK / row_len).max(1);
        w.par_chunks_mut(chunk)
            .zip(v.par_chunks_mut(chunk))
            .enumerate()
            .for_each_init(
                || Vec::with_capacity(row_len),
                |s, (i, (w, v))| {
                    let span = i * chunk..i * chunk + w.len();
                    pass(s, w, v, &a[span.clone()], b.map(|b| &b[span]));
                },
            );
        Ok(())
    }
}

impl candle_core::InplaceOp2 for HostSgd<'_> {
    fn name(&self) -> &'static str {
        "gauntlet-sgd"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        by_dtype!(s2.dtype(), T => {
            let (w, g) = (cpu_slice_mut::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
            self.apply(w, g, None)
        })
    }
}

impl candle_core::InplaceOp3 for HostSgd<'_> {
    fn name(&self) -> &'static str {
        "gauntlet-sgd"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        by_dtype!(s2.dtype(), T => {
            let w = cpu_slice_mut::<T>(s1, l1)?;
            let (a, b) = (cpu_slice::<T>(s2, l2)?, cpu_slice::<T>(s3, l3)?);
            self.apply(w, a, Some(b))
        })
    }
}

/// `clean ← clean·α + adv·(1 − α)` in place: the α-mix of a clean and an adversarial
/// gradient, in one pass.
pub fn mix_assign(clean: &Tensor, adv: &Tensor, alpha: f64) -> Result<bool> {
    if !in_place_serves(clean, &[adv]) {
        return Ok(false);
    }
    clean.inplace_op2(adv, &Mix { alpha })?;
    Ok(true)
}

/// Whether the in-place passes serve `dst` with operands `srcs`: CPU, one float type, every
/// tensor contiguous and of `dst`'s shape.
fn in_place_serves(dst: &Tensor, srcs: &[&Tensor]) -> bool {
    let fits = |t: &Tensor| t.is_contiguous() && t.shape() == dst.shape();
    let mut all = vec![dst];
    all.extend_from_slice(srcs);
    fast_path(&all) && all.into_iter().all(fits)
}

/// Rescales in place every row of `weight` (`[rows, …]`, one row per output unit) whose
/// Euclidean norm exceeds `max_norm` to that norm: `row · min(‖row‖, c) / max(‖row‖, 1e-7)`,
/// bit for bit as the tensor ops of `layers::apply_max_norm` compute it, in one pass (they
/// made five, and a copy). A row whose factor is exactly one is not written. Returns `false`
/// where the kernels do not serve.
pub fn max_norm_rows(weight: &Tensor, max_norm: f64) -> Result<bool> {
    if !fast_path(&[weight]) || !weight.is_contiguous() || weight.rank() == 0 {
        return Ok(false);
    }
    weight.inplace_op1(&MaxNorm { max_norm })?;
    Ok(true)
}

/// The mutable contiguous data of a CPU storage of type `T`.
fn cpu_slice_mut<'a, T: WithDType>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Result<&'a mut [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("kernels: expected a contiguous tensor")
    };
    Ok(&mut storage_slice_mut::<T>(storage)?[start..end])
}

/// All the data of a CPU storage of type `T`, mutable.
fn storage_slice_mut<T: WithDType>(storage: &mut CpuStorage) -> Result<&mut [T]> {
    let dtype = storage.dtype();
    Ok(match storage {
        CpuStorage::F32(v) if T::DTYPE == DType::F32 => same_type_slice(v),
        CpuStorage::F64(v) if T::DTYPE == DType::F64 => same_type_slice(v),
        _ => bail!("kernels: expected {:?}, got {dtype:?}", T::DTYPE),
    })
}

/// `v` as `&mut [T]`, where `T` is `v`'s own element type (checked by the caller's dtype match).
fn same_type_slice<S: WithDType, T: WithDType>(v: &mut [S]) -> &mut [T] {
    assert_eq!(S::DTYPE, T::DTYPE);
    // SAFETY: S and T are the same type (same DType), so size, alignment and validity agree.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<T>(), v.len()) }
}

/// Buffers at least this long are split over the compute threads, in chunks of this size.
const PASS_CHUNK: usize = 16 * 1024;

/// Whether a pass over `len` values is worth splitting over the compute threads.
fn split_pass(len: usize) -> bool {
    len >= 4 * PASS_CHUNK && rayon::current_num_threads() > 1
}

/// `f` over `dst` and `src` in chunks over the compute threads: every value is computed on
/// its own, so the bits do not depend on the split.
fn par_zip<T: WithDType>(dst: &mut [T], src: &[T], f: impl Fn(&mut [T], &[T]) + Sync) {
    if !split_pass(dst.len()) {
        return f(dst, src);
    }
    dst.par_chunks_mut(PASS_CHUNK)
        .zip(src.par_chunks(PASS_CHUNK))
        .for_each(|(d, s)| f(d, s));
}

/// `c ← c·α + a·(1 − α)` in place on `c` ([`mix_assign`]).
struct Mix {
    alpha: f64,
}

/// Momentum's new velocity `v·μ + 0 − (g·lr + 0)`, rounded as Candle's `affine` and `sub`.
#[inline]
fn velocity<T: WithDType>(v: T, g: T, mu: T, lr: T, zero: T) -> T {
    (v * mu + zero) - (g * lr + zero)
}

impl candle_core::InplaceOp2 for Mix {
    fn name(&self) -> &'static str {
        "gauntlet-gradient-mix"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        by_dtype!(s2.dtype(), T => {
            let (dst, src) = (cpu_slice_mut::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
            let (a, b) = (T::from_f64(self.alpha), T::from_f64(1.0 - self.alpha));
            par_zip(dst, src, |dst, src| {
                for (c, &g) in dst.iter_mut().zip(src) {
                    *c = *c * a + g * b;
                }
            });
            Ok(())
        })
    }
}

/// [`max_norm_rows`] as an in-place op.
struct MaxNorm {
    max_norm: f64,
}

impl MaxNorm {
    fn apply<T: WithDType + VecOps>(&self, w: &mut [T], row_len: usize) {
        let clip = RowClip {
            max_norm: self.max_norm,
        };
        if !split_pass(w.len()) {
            let mut squares = Vec::with_capacity(row_len);
            w.chunks_mut(row_len)
                .for_each(|row| clip.apply(&mut squares, row));
        } else {
            w.par_chunks_mut(row_len)
                .for_each_init(|| Vec::with_capacity(row_len), |s, row| clip.apply(s, row));
        }
    }
}

/// The max-norm clip of one row: `row · min(‖row‖, c) / max(‖row‖, 1e-7)`.
struct RowClip {
    max_norm: f64,
}

impl RowClip {
    /// The norm is summed by Candle's own reduction and every step rounds as the tensor ops
    /// round, so the rescaled row is theirs bit for bit. `squares` is scratch space.
    fn apply<T: WithDType + VecOps>(&self, squares: &mut Vec<T>, row: &mut [T]) {
        let (max, tiny) = (T::from_f64(self.max_norm), T::from_f64(1e-7));
        squares.clear();
        squares.extend(row.iter().map(|&v| v * v));
        let mut sum = T::from_f64(0.0);
        // SAFETY: `squares` holds `row.len()` values and `sum` is a valid destination.
        unsafe { T::vec_reduce_sum(squares.as_ptr(), &mut sum, squares.len()) };
        let norm = T::from_f64(sum.to_f64().sqrt());
        let kept = if norm < max { norm } else { max };
        let floor = if norm > tiny { norm } else { tiny };
        if kept == floor {
            return; // a factor of exactly one
        }
        let factor = kept / floor;
        row.iter_mut().for_each(|v| *v *= factor);
    }
}

impl candle_core::InplaceOp1 for MaxNorm {
    fn name(&self) -> &'static str {
        "gauntlet-max-norm"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let rows = l.shape().dims()[0];
        let row_len = l.shape().elem_count() / rows.max(1);
        if row_len == 0 {
            return Ok(());
        }
        by_dtype!(s.dtype(), T => {
            self.apply(cpu_slice_mut::<T>(s, l)?, row_len);
            Ok(())
        })
    }
}

/// The sums over the rows of a contiguous `(rows, cols)` CPU matrix: `grad.sum(0)` with
/// Candle's order (from zero, row after row) in one vectorised pass rather than its
/// index-decoding loop.
fn column_sums(grad: &Tensor) -> Result<Tensor> {
    let (_, cols) = grad.dims2()?;
    by_dtype!(grad.dtype(), T => {
        let sums = with_slice::<T, _>(grad, |g| {
            let mut sums = vec![T::from_f64(0.0); cols];
            for row in g.chunks_exact(cols.max(1)) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            Ok(sums)
        })?;
        Tensor::from_vec(sums, cols, grad.device())
    })
}

/// [`max_pieces`] as a custom op, producing `[outer, inner]`.
/// The larger of the kept maximum `m` and a later value `v`, keeping `m` unless `v` is
/// strictly greater: the rule of every maximum here (maxout, the conv blocks, eval pooling),
/// so that they agree to the bit on ties. A select, which vectorizes, not a branch.
#[inline]
pub(crate) fn keep_max<T: PartialOrd>(m: T, v: T) -> T {
    if v > m {
        v
    } else {
        m
    }
}

struct MaxPieces {
    pieces: usize,
    inner: usize,
}

impl MaxPieces {
    fn forward<T: WithDType>(&self, z: &[T]) -> Vec<T> {
        if self.inner == 1 {
            // Fully connected maxout: one pass over short groups (the general loop below
            // costs a slice extend per group, a fifth of the Maxout MLP's forward).
            return z
                .chunks_exact(self.pieces)
                .map(|g| g[1..].iter().fold(g[0], |m, &v| keep_max(m, v)))
                .collect();
        }
        let group = self.pieces * self.inner;
        let mut out = Vec::with_capacity(z.len() / self.pieces);
        for g in z.chunks_exact(group) {
            let start = out.len();
            out.extend_from_slice(&g[..self.inner]);
            for piece in g.chunks_exact(self.inner).skip(1) {
                for (m, &v) in out[start..].iter_mut().zip(piece) {
                    *m = keep_max(*m, v);
                }
            }
        }
        out
    }

    /// The output gradient routed to every piece equal to its group's maximum.
    fn backward<T: WithDType>(&self, z: &[T], max: &[T], grad: &[T]) -> Vec<T> {
        let mut dz = vec![T::from_f64(0.0); z.len()];
        if self.inner == 1 {
            for ((dz_g, z_g), (&m, &g)) in dz
                .chunks_exact_mut(self.pieces)
                .zip(z.chunks_exact(self.pieces))
                .zip(max.iter().zip(grad))
            {
                for (d, &v) in dz_g.iter_mut().zip(z_g) {
                    if v == m {
                        *d = g;
                    }
                }
            }
            return dz;
        }
        let group = self.pieces * self.inner;
        for ((dz_g, z_g), (m_g, g_g)) in dz.chunks_exact_mut(group).zip(z.chunks_exact(group)).zip(
            max.chunks_exact(self.inner)
                .zip(grad.chunks_exact(self.inner)),
        ) {
            for (dz_p, z_p) in dz_g
                .chunks_exact_mut(self.inner)
                .zip(z_g.chunks_exact(self.inner))
            {
                for (((d, &v), &m), &g) in dz_p.iter_mut().zip(z_p).zip(m_g).zip(g_g) {
                    if v == m {
                        *d = g;
                    }
                }
            }
        }
        dz
    }
}

impl candle_core::CustomOp1 for MaxPieces {
    fn name(&self) -> &'static str {
        "gauntlet-maxout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let outer = layout.shape().elem_count() / (self.pieces * self.inner);
        by_dtype!(storage.dtype(), T => {
            let out = self.forward(cpu_slice::<T>(storage, layout)?);
            Ok((T::to_cpu_storage_owned(out), (outer, self.inner).into()))
        })
    }

    fn bwd(&self, zs: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (res, grad) = (res.contiguous()?, grad.contiguous()?);
        by_dtype!(zs.dtype(), T => {
            let dz = with_slice::<T, _>(zs, |z| {
                with_slice::<T, _>(&res, |m| with_slice::<T, _>(&grad, |g| Ok(self.backward(z, m, g))))
            })?;
            Ok(Some(Tensor::from_vec(dz, zs.shape(), zs.device())?))
        })
    }
}

/// [`relu`] as a custom op.
struct Relu;

impl candle_core::CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "gauntlet-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(storage.dtype(), T => {
            let x = cpu_slice::<T>(storage, layout)?;
            let out: Vec<T> = x.iter().map(|&v| v.max(0.0)).collect();
            Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
        })
    }

    fn bwd(&self, xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        by_dtype!(xs.dtype(), T => {
            let dx = with_slice::<T, _>(xs, |x| {
                with_slice::<T, _>(&grad, |g| {
                    // g·1 or g·0 as Candle multiplies them: the same signed zeros and NaNs.
                    Ok(x.iter()
                        .zip(g)
                        .map(|(&v, &g)| g * if v >= 0.0 { 1.0 } else { 0.0 })
                        .collect::<Vec<T>>())
                })
            })?;
            Ok(Some(Tensor::from_vec(dx, xs.shape(), xs.device())?))
        })
    }
}

/// [`sigmoid`] as a custom op.
struct Sigmoid;

/// Element-wise passes that cost a few nanoseconds a value (an `exp`, a random draw) split at
/// this many values: a shorter buffer than [`PASS_CHUNK`] pays for the hand-over.
pub(crate) const MAP_CHUNK: usize = 4096;

/// `f(start, chunk)` over `dst` in chunks of [`MAP_CHUNK`] over the compute threads, `start`
/// being the chunk's offset, where `dst` holds at least two chunks; `f` must compute each value
/// from its index alone, so that the bits do not depend on the split.
pub(crate) fn par_fill<T: Send>(dst: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    if dst.len() < 2 * MAP_CHUNK || rayon::current_num_threads() == 1 {
        return f(0, dst);
    }
    dst.par_chunks_mut(MAP_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| f(i * MAP_CHUNK, chunk));
}

impl candle_core::CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "gauntlet-sigmoid"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(storage.dtype(), T => {
            let x = cpu_slice::<T>(storage, layout)?;
            let mut out = vec![0 as T; x.len()];
            par_fill(&mut out, |start, out| {
                for (s, &v) in out.iter_mut().zip(&x[start..]) {
                    *s = ((-v).exp() + 1.0).recip();
                }
            });
            Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
        })
    }

    fn bwd(&self, xs: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (res, grad) = (res.contiguous()?, grad.contiguous()?);
        by_dtype!(xs.dtype(), T => {
            let dx = with_slice::<T, _>(&res, |s| {
                with_slice::<T, _>(&grad, |g| {
                    let mut dx = vec![0 as T; s.len()];
                    // g·((1 − s)·s), the products Candle's backward makes.
                    par_fill(&mut dx, |start, dx| {
                        for ((d, &s), &g) in dx.iter_mut().zip(&s[start..]).zip(&g[start..]) {
                            *d = g * ((1.0 - s) * s);
                        }
                    });
                    Ok(dx)
                })
            })?;
            Ok(Some(Tensor::from_vec(dx, xs.shape(), xs.device())?))
        })
    }
}

/// [`crate::conv::max_pool`] as a custom op: each window's first maximum forward, and each
/// output gradient added onto its window's arg-max backward (overlapping windows may share
/// one).
pub(crate) struct MaxPool {
    windows: Windows,
    /// The forward pass's arg-max, kept for the backward.
    argmax: OnceLock<Vec<u32>>,
}

impl MaxPool {
    pub(crate) fn new(windows: Windows) -> Self {
        MaxPool {
            windows,
            argmax: OnceLock::new(),
        }
    }
}

impl candle_core::CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "gauntlet-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, channels, _, _) = layout.shape().dims4()?;
        let (oh, ow) = (self.windows.oh, self.windows.ow);
        by_dtype!(storage.dtype(), T => {
            let x = cpu_slice::<T>(storage, layout)?;
            let index = self.windows.argmax(x);
            let out: Vec<T> = index.iter().map(|&i| x[i as usize]).collect();
            // A second forward of the same op would find the same arg-max.
            let _ = self.argmax.set(index);
            Ok((T::to_cpu_storage_owned(out), (batch, channels, oh, ow).into()))
        })
    }

    fn bwd(&self, xs: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        by_dtype!(xs.dtype(), T => {
            let dx = with_slice::<T, _>(xs, |x| {
                with_slice::<T, _>(&grad, |g| {
                    let computed;
                    let index = match self.argmax.get() {
                        Some(index) => index,
                        None => {
                            computed = self.windows.argmax(x);
                            &computed
                        }
                    };
                    let mut dx = vec![T::from_f64(0.0); x.len()];
                    for (&i, &g) in index.iter().zip(g) {
                        dx[i as usize] += g;
                    }
                    Ok(dx)
                })
            })?;
            Ok(Some(Tensor::from_vec(dx, xs.shape(), xs.device())?))
        })
    }
}

/// Geometry of a convolution with zero padding and a stride, per image.
#[derive(Clone, Copy, Debug)]
struct ConvShape {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    pad: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl ConvShape {
    fn new(x: &Shape, w: &Shape, bias: &Shape, pad: usize, stride: usize) -> Result<(usize, Self)> {
        let (batch, c_in, h, wd) = x.dims4()?;
        let (c_out, w_in, k, k2) = w.dims4()?;
        if w_in != c_in || k != k2 || bias.dims1()? != c_out {
            bail!("conv2d: input {x:?}, kernel {w:?} and bias {bias:?} do not fit (square kernels only)")
        }
        if h + 2 * pad < k || wd + 2 * pad < k {
            bail!("conv2d: kernel {k} larger than the padded input {h}×{wd} (pad {pad})")
        }
        if stride == 0 {
            bail!("conv2d: stride must be positive")
        }
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (wd + 2 * pad - k) / stride + 1,
        );
        Ok((
            batch,
            ConvShape {
                c_in,
                h,
                w: wd,
                c_out,
                k,
                pad,
                stride,
                oh,
                ow,
            },
        ))
    }

    /// Rows of the im2col matrix: one per input channel and kernel position.
    fn patch(&self) -> usize {
        self.c_in * self.k * self.k
    }

    fn out_len(&self) -> usize {
        self.oh * self.ow
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// The input channel and kernel position of row `r` of the im2col matrix.
    fn row_at(&self, r: usize) -> (usize, usize, usize) {
        let k = self.k;
        (r / (k * k), r / k % k, r % k)
    }

    /// Whether the forward computes the convolution pixel by pixel, `[oh·ow, c_out] =
    /// im2col(x)ᵀ · Wᵀ`. gemm's 16-row tiles then run along the channels instead of the
    /// pixels, whose ragged counts on small planes (81 and 36 in the conv Maxout network's
    /// upper layers) left a last tile nearly empty: its 8-row kernel took 9% of that
    /// network's forward. The transposed im2col copies runs of `k` values instead of `ow`:
    /// not worth it for wide planes and small kernels. Each value is the same sum in the same
    /// order either way. The backward then runs pixel-major too (input and weight gradients).
    fn by_pixels(&self) -> bool {
        !self.out_len().is_multiple_of(8) && self.c_out.is_multiple_of(8) && self.ow <= 2 * self.k
    }

    /// The same convolution over the input with its padding written out: no padding left.
    fn padded(&self) -> ConvShape {
        ConvShape {
            h: self.h + 2 * self.pad,
            w: self.w + 2 * self.pad,
            pad: 0,
            ..*self
        }
    }

    /// The im2col matrix `[patch, oh·ow]` of one image. With padding, the image is first
    /// copied into `buf` between zero borders: then every output row is one run of `ow` image
    /// values, without the short zero fills and bounds of each row that cost more than the
    /// copies on small planes.
    fn im2col<T: WithDType>(&self, x: &[T], cols: &mut [T], buf: &mut Vec<T>) {
        let (g, x) = self.without_padding(x, buf);
        g.im2col_unpadded(x, cols);
    }

    /// The im2col matrix transposed, `[oh·ow, patch]`: the patch of each output pixel in a
    /// row, as [`Self::im2col`] pads.
    fn im2col_pixels<T: WithDType>(&self, x: &[T], cols: &mut [T], buf: &mut Vec<T>) {
        let (g, x) = self.without_padding(x, buf);
        let (k, s, plane_len) = (g.k, g.stride, g.h * g.w);
        for (px, row) in cols[..g.out_len() * g.patch()]
            .chunks_exact_mut(g.patch())
            .enumerate()
        {
            let (oy, ox) = (px / g.ow, px % g.ow);
            for (plane, chan) in x.chunks_exact(plane_len).zip(row.chunks_exact_mut(k * k)) {
                for (ki, dst) in chan.chunks_exact_mut(k).enumerate() {
                    let at = (oy * s + ki) * g.w + ox * s;
                    copy_short(dst, &plane[at..at + k]);
                }
            }
        }
    }

    /// This convolution without padding and its input: `x` itself, or `x` copied into `buf`
    /// between zero borders.
    fn without_padding<'a, T: WithDType>(
        &self,
        x: &'a [T],
        buf: &'a mut Vec<T>,
    ) -> (ConvShape, &'a [T]) {
        if self.pad == 0 {
            return (*self, x);
        }
        let padded = self.padded();
        buf.clear();
        buf.resize(padded.in_len(), T::zero());
        for (at, at_padded) in self.image_rows() {
            buf[at_padded..at_padded + self.w].copy_from_slice(&x[at..at + self.w]);
        }
        (padded, buf)
    }

    /// Where each row of the image (every channel's, `w` values) starts, in the image and
    /// in the image padded as [`Self::padded`].
    fn image_rows(&self) -> impl Iterator<Item = (usize, usize)> {
        let (p, pw, ph) = (self.pad, self.w + 2 * self.pad, self.h + 2 * self.pad);
        let (h, w) = (self.h, self.w);
        (0..self.c_in * h).map(move |r| {
            let (c, y) = (r / h, r % h);
            (r * w, (c * ph + y + p) * pw + p)
        })
    }

    fn im2col_unpadded<T: WithDType>(&self, x: &[T], cols: &mut [T]) {
        debug_assert_eq!(self.pad, 0);
        let (n, ow, s, plane_len) = (self.out_len(), self.ow, self.stride, self.h * self.w);
        for (r, row) in cols[..self.patch() * n].chunks_exact_mut(n).enumerate() {
            let (c, ki, kj) = self.row_at(r);
            let plane = &x[c * plane_len..(c + 1) * plane_len];
            for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                let at = (oy * s + ki) * self.w + kj;
                if s == 1 {
                    copy_short(dst, &plane[at..at + ow]);
                } else {
                    for (d, &v) in dst.iter_mut().zip(plane[at..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Adds the im2col-shaped gradient `cols` (`[patch, oh·ow]`, or `[oh·ow, patch]` where
    /// `by_pixels`) back onto the image gradient `dx` (col2im). Each value of `dx` gets its
    /// terms in im2col's row order either way. With padding, the sums run in `buf` (the padded
    /// image) and its inside is added onto `dx`: the same terms in the same order.
    fn col2im<T: WithDType>(&self, cols: &[T], dx: &mut [T], buf: &mut Vec<T>, by_pixels: bool) {
        let sum = |g: &ConvShape, dst: &mut [T]| match by_pixels {
            true => g.col2im_pixels_unpadded(cols, dst),
            false => g.col2im_unpadded(cols, dst),
        };
        if self.pad == 0 {
            return sum(self, dx);
        }
        let padded = self.padded();
        buf.clear();
        buf.resize(padded.in_len(), T::zero());
        sum(&padded, buf);
        for (at, at_padded) in self.image_rows() {
            let src = &buf[at_padded..at_padded + self.w];
            for (d, &v) in dx[at..at + self.w].iter_mut().zip(src) {
                *d += v;
            }
        }
    }

    /// col2im of the pixel-major `[oh·ow, patch]` gradient. The pixels run last to first: the
    /// terms of a value of `dx` then come by ascending kernel position, in
    /// [`Self::col2im_unpadded`]'s order, so the sums are bit for bit its sums.
    fn col2im_pixels_unpadded<T: WithDType>(&self, cols: &[T], dx: &mut [T]) {
        debug_assert_eq!(self.pad, 0);
        let (k, s, plane_len) = (self.k, self.stride, self.h * self.w);
        let rows = cols[..self.out_len() * self.patch()].chunks_exact(self.patch());
        for (px, row) in rows.enumerate().rev() {
            let (oy, ox) = (px / self.ow, px % self.ow);
            for (plane, chan) in dx.chunks_exact_mut(plane_len).zip(row.chunks_exact(k * k)) {
                for (ki, src) in chan.chunks_exact(k).enumerate() {
                    let at = (oy * s + ki) * self.w + ox * s;
                    for (d, &v) in plane[at..at + k].iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }

    fn col2im_unpadded<T: WithDType>(&self, cols: &[T], dx: &mut [T]) {
        debug_assert_eq!(self.pad, 0);
        let (n, ow, s, plane_len) = (self.out_len(), self.ow, self.stride, self.h * self.w);
        for (r, row) in cols[..self.patch() * n].chunks_exact(n).enumerate() {
            let (c, ki, kj) = self.row_at(r);
            let plane = &mut dx[c * plane_len..(c + 1) * plane_len];
            for (oy, src) in row.chunks_exact(ow).enumerate() {
                let at = (oy * s + ki) * self.w + kj;
                if s == 1 {
                    for (d, &v) in plane[at..at + ow].iter_mut().zip(src) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in plane[at..].iter_mut().step_by(s).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows of im2col (an output row, often 8-24
/// values), in fixed blocks of 8 the compiler keeps in registers instead of calling memmove.
#[inline(always)]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let block: [T; 8] = s.try_into().expect("8 values");
        d.copy_from_slice(&block);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// The convolution with bias as one custom op over `(xs, weight, bias)`.
struct Conv2d {
    pad: usize,
    stride: usize,
    input_grad: bool,
    weight_grads: bool,
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "gauntlet-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, g) = ConvShape::new(l1.shape(), l2.shape(), l3.shape(), self.pad, self.stride)?;
        by_dtype!(s1.dtype(), T => {
            let (x, w, b) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?, cpu_slice::<T>(s3, l3)?);
            let n = g.out_len();
            let mut y = vec![T::from_f64(0.0); batch * g.c_out * n];
            // One image per task: every thread works on its own im2col buffer.
            y.par_chunks_mut(g.c_out * n)
                .zip(x.par_chunks(g.in_len()))
                .for_each_init(
                    || (vec![T::from_f64(0.0); g.patch() * n], Vec::new()),
                    |(cols, buf), (y_b, x_b)| {
                        for (row, &bias) in y_b.chunks_mut(n).zip(b) {
                            row.fill(bias);
                        }
                        g.im2col(x_b, cols, buf);
                        matmul(
                            y_b,
                            Mat::rows(w, g.c_out, g.patch()),
                            Mat::rows(cols, g.patch(), n),
                            true,
                            false,
                        );
                    },
                );
            Ok((T::to_cpu_storage_owned(y), (batch, g.c_out, g.oh, g.ow).into()))
        })
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !self.input_grad && !self.weight_grads {
            return Ok((None, None, None));
        }
        let (_, g) = ConvShape::new(
            xs.shape(),
            weight.shape(),
            bias.shape(),
            self.pad,
            self.stride,
        )?;
        let grad = grad.contiguous()?;
        let dev = xs.device();
        by_dtype!(xs.dtype(), T => {
            let dx = match self.input_grad {
                true => {
                    let dx = with_slice::<T, _>(weight, |w| {
                        with_slice::<T, _>(&grad, |dy| Ok(g.input_grad(w, dy)))
                    })?;
                    Some(Tensor::from_vec(dx, xs.shape(), dev)?)
                }
                false => None,
            };
            let (dw, db) = match self.weight_grads {
                true => {
                    let xs = xs.contiguous()?;
                    let (dw, db) = with_slice::<T, _>(&xs, |x| {
                        with_slice::<T, _>(&grad, |dy| Ok(g.weight_grads(x, dy)))
                    })?;
                    (
                        sink(weight, Tensor::from_vec(dw, weight.shape(), dev)?),
                        sink(bias, Tensor::from_vec(db, bias.shape(), dev)?),
                    )
                }
                false => (None, None),
            };
            Ok((dx, dw, db))
        })
    }
}

impl ConvShape {
    /// The input gradient from the output gradient `dy`: per image, `col2im(Wᵀ · dy_b)`.
    fn input_grad<T: WithDType>(&self, w: &[T], dy: &[T]) -> Vec<T> {
        let (n, patch) = (self.out_len(), self.patch());
        let mut dx = vec![T::from_f64(0.0); dy.len() / (self.c_out * n) * self.in_len()];
        dx.par_chunks_mut(self.in_len())
            .zip(dy.par_chunks(self.c_out * n))
            .for_each_init(
                || (vec![T::from_f64(0.0); patch * n], Vec::new()),
                |(cols, buf), (dx_b, dy_b)| self.add_input_grad(w, dy_b, cols, buf, dx_b),
            );
        dx
    }

    /// Adds one image's input gradient `col2im(Wᵀ · dy_b)` onto `dx_b`; `cols` and `buf` are
    /// [`Self::im2col`]'s buffers. Where [`Self::by_pixels`], the product is the pixel-major
    /// `dy_bᵀ · W`: gemm's register tiles then run along the patch (thousands of rows) instead
    /// of a few dozen pixels, 13-30% faster on the conv Maxout's upper layers, and its blocked
    /// path sums each value in the same order (the same bits).
    fn add_input_grad<T: WithDType>(
        &self,
        w: &[T],
        dy_b: &[T],
        cols: &mut [T],
        buf: &mut Vec<T>,
        dx_b: &mut [T],
    ) {
        let (n, patch, c) = (self.out_len(), self.patch(), self.c_out);
        let by_pixels = self.by_pixels();
        let (a, b) = match by_pixels {
            true => (Mat::transposed(dy_b, c, n), Mat::rows(w, c, patch)),
            false => (Mat::transposed(w, c, patch), Mat::rows(dy_b, c, n)),
        };
        matmul(cols, a, b, false, false);
        self.col2im(cols, dx_b, buf, by_pixels);
    }

    /// The weight and bias gradients from the input `x` and the output gradient `dy`:
    /// `Σ_b dy_b · im2col(x_b)ᵀ` and `Σ_b Σ_pixels dy_b`. The batch is cut into one run of
    /// images per compute thread, each summed in order into its own buffers, and the runs'
    /// sums are added in order: the same thread count gives the same bits.
    fn weight_grads<T: WithDType>(&self, x: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
        let (n, patch) = (self.out_len(), self.patch());
        let (x_len, dy_len) = (self.in_len(), self.c_out * n);
        let batch = dy.len() / dy_len.max(1);
        let run = batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let zero = T::from_f64(0.0);
        let runs: Vec<(Vec<T>, Vec<T>)> = x
            .par_chunks(run * x_len)
            .zip(dy.par_chunks(run * dy_len))
            .map(|(xs, dys)| {
                let mut dw = vec![zero; self.c_out * patch];
                let mut db = vec![zero; self.c_out];
                let (mut cols, mut buf) = (vec![zero; patch * n], Vec::new());
                for (x_b, dy_b) in xs.chunks(x_len).zip(dys.chunks(dy_len)) {
                    self.add_weight_grads(x_b, dy_b, &mut cols, &mut buf, &mut dw, &mut db);
                }
                (dw, db)
            })
            .collect();
        self.sum_runs(runs)
    }

    /// Adds one image's weight and bias gradients, `dy_b · im2col(x_b)ᵀ` and `dy_b`'s row
    /// sums, onto `dw` and `db`; `cols` and `buf` are [`Self::im2col`]'s buffers.
    fn add_weight_grads<T: WithDType>(
        &self,
        x_b: &[T],
        dy_b: &[T],
        cols: &mut [T],
        buf: &mut Vec<T>,
        dw: &mut [T],
        db: &mut [T],
    ) {
        let (n, patch) = (self.out_len(), self.patch());
        // Pixel-major where the forward is: gemm is 7-15% faster on the conv Maxout's layers
        // with the same order of sums.
        let cols_t = match self.by_pixels() {
            true => {
                self.im2col_pixels(x_b, cols, buf);
                Mat::rows(&cols[..], n, patch)
            }
            false => {
                self.im2col(x_b, cols, buf);
                Mat::transposed(&cols[..], patch, n)
            }
        };
        matmul(dw, Mat::rows(dy_b, self.c_out, n), cols_t, true, false);
        for (s, row) in db.iter_mut().zip(dy_b.chunks(n)) {
            *s += row.iter().fold(T::zero(), |acc, &v| acc + v);
        }
    }

    /// The runs' weight and bias gradients added in run order.
    fn sum_runs<T: WithDType>(&self, runs: Vec<(Vec<T>, Vec<T>)>) -> (Vec<T>, Vec<T>) {
        let zero = T::zero();
        let mut runs = runs.into_iter();
        let (mut dw, mut db) = runs.next().unwrap_or_else(|| {
            (
                vec![zero; self.c_out * self.patch()],
                vec![zero; self.c_out],
            )
        });
        for (w, b) in runs {
            dw.iter_mut().zip(&w).for_each(|(s, &v)| *s += v);
            db.iter_mut().zip(&b).for_each(|(s, &v)| *s += v);
        }
        (dw, db)
    }
}

/// The activation of a [`conv_block`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockActivation {
    Relu,
    /// Maxout over groups of `pieces` consecutive channels.
    Maxout(usize),
}

/// The most maxout pieces a [`conv_block`] takes: each output keeps its tied pieces in a byte.
pub const BLOCK_MAX_PIECES: usize = 8;

/// [`conv2d`], then ReLU or maxout, then max pooling if `pool` is given, as one custom op:
/// the values and gradients of [`conv2d`], [`relu`] or [`max_pieces`] and
/// [`crate::conv::max_pool2d`] in a row, bit for bit, without their intermediate tensors.
///
/// Why: in a conv training step each of those layers wrote a batch-sized output, and
/// Candle's backward a zero tensor plus a sum for each of their gradients, most of a dozen
/// fresh buffers of up to 13 MB per conv layer, every one faulted in page by page. Here the
/// convolution's output lives in a per-thread buffer for one image; the forward keeps, per
/// output value, the position it came from and which pieces pass the gradient back, and the
/// backward rebuilds each image's output gradient from them in the same buffer.
///
/// Returns `None`, computing nothing, where the kernels do not serve (off the CPU, for other
/// dtypes, with double backprop) or for more than [`BLOCK_MAX_PIECES`] pieces: the caller
/// then runs the layers one by one.
#[allow(clippy::too_many_arguments)]
pub fn conv_block(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    pad: usize,
    stride: usize,
    act: BlockActivation,
    pool: Option<&crate::conv::PoolGeometry>,
    grads: Gradients,
) -> Result<Option<Tensor>> {
    let pieces = match act {
        BlockActivation::Relu => 1,
        BlockActivation::Maxout(p) => p,
    };
    if !fast_path(&[xs, weight, bias]) || pieces > BLOCK_MAX_PIECES {
        return Ok(None);
    }
    let (_, g) = ConvShape::new(xs.shape(), weight.shape(), bias.shape(), pad, stride)?;
    if pieces == 0 || g.c_out % pieces != 0 {
        bail!(
            "maxout: {} channels do not split into groups of {pieces} pieces",
            g.c_out
        )
    }
    if (g.c_out * g.out_len()) as u64 > u32::MAX as u64 {
        bail!(
            "conv block: expected at most u32::MAX values per image, got {}",
            g.c_out * g.out_len()
        )
    }
    let pool = pool.map(|p| Windows::new(p, g.oh, g.ow)).transpose()?;
    let op = ConvBlock {
        pad,
        stride,
        act,
        pool,
        input_grad: xs.track_op(),
        weight_grads: grads == Gradients::All,
        backward: grads != Gradients::None,
        route: OnceLock::new(),
    };
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
        .map(Some)
}

/// `values` cut into `batch` slices of `len`, or `batch` empty slices where it is empty (a
/// route the pass does not keep).
fn per_image<U>(values: &mut [U], len: usize, batch: usize) -> Vec<&mut [U]> {
    match values.is_empty() {
        true => (0..batch).map(|_| Default::default()).collect(),
        false => values.chunks_mut(len).collect(),
    }
}

/// What a [`conv_block`] needs of a float type beside Candle's `WithDType`.
trait Real: WithDType {
    /// `max(self, 0)` as [`relu`] rounds it.
    fn relu(self) -> Self;
}

impl Real for f32 {
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

impl Real for f64 {
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

/// One image's convolution output in a [`conv_block`]: `c` channels of `n` pixels, stored
/// `[c, n]`, or `[n, c]` where the forward runs [`ConvShape::by_pixels`].
#[derive(Clone, Copy)]
struct ConvOut<'a, T> {
    y: &'a [T],
    c: usize,
    n: usize,
    by_pixels: bool,
}

impl<T: Copy> ConvOut<'_, T> {
    fn at(&self, channel: usize, px: usize) -> T {
        match self.by_pixels {
            true => self.y[px * self.c + channel],
            false => self.y[channel * self.n + px],
        }
    }
}

/// Where a [`conv_block`]'s output values came from, per image and output value.
struct Route {
    /// The value's position in the image's activation map (`[units, oh, ow]`), where the
    /// block pools; empty where it does not (the position is the value's own).
    index: Vec<u32>,
    /// The pieces that pass the value's gradient back, bit `p` for piece `p` (bit 0 for
    /// ReLU): the ReLU's `x ≥ 0`, the maxout's pieces equal to the maximum.
    mask: Vec<u8>,
}

struct ConvBlock {
    pad: usize,
    stride: usize,
    act: BlockActivation,
    pool: Option<Windows>,
    input_grad: bool,
    weight_grads: bool,
    /// Whether a backward may follow: without one the forward keeps no routes.
    backward: bool,
    /// The forward pass's routes, kept for the backward.
    route: OnceLock<Route>,
}

impl ConvBlock {
    fn shape(&self, x: &Shape, w: &Shape, b: &Shape) -> Result<(usize, ConvShape)> {
        ConvShape::new(x, w, b, self.pad, self.stride)
    }

    /// Convolution channels per activation unit: maxout's pieces, 1 for ReLU.
    fn pieces(&self) -> usize {
        match self.act {
            BlockActivation::Relu => 1,
            BlockActivation::Maxout(p) => p,
        }
    }

    /// `(units, values per image of the activation map, of the output)`.
    fn sizes(&self, g: &ConvShape) -> (usize, usize, usize) {
        let units = g.c_out / self.pieces();
        let act_len = units * g.out_len();
        let out_len = match &self.pool {
            Some(p) => units * p.oh * p.ow,
            None => act_len,
        };
        (units, act_len, out_len)
    }

    /// The activation map `[units, n]` of one image's convolution output into `act`.
    fn activate<T: Real>(&self, out: ConvOut<'_, T>, act: &mut [T]) {
        let ConvOut { y, c, n, by_pixels } = out;
        match (self.act, by_pixels) {
            (BlockActivation::Relu, false) => {
                act.iter_mut().zip(y).for_each(|(a, &v)| *a = v.relu())
            }
            (BlockActivation::Relu, true) => {
                for (px, row) in y.chunks_exact(c).enumerate() {
                    for (u, &v) in row.iter().enumerate() {
                        act[u * n + px] = v.relu();
                    }
                }
            }
            // As `MaxPieces::forward`: the first piece, then each later one that is larger.
            (BlockActivation::Maxout(p), false) => {
                for (a_u, group) in act.chunks_exact_mut(n).zip(y.chunks_exact(p * n)) {
                    a_u.copy_from_slice(&group[..n]);
                    for piece in group.chunks_exact(n).skip(1) {
                        for (m, &v) in a_u.iter_mut().zip(piece) {
                            *m = keep_max(*m, v);
                        }
                    }
                }
            }
            (BlockActivation::Maxout(p), true) => {
                for (px, row) in y.chunks_exact(c).enumerate() {
                    for (u, group) in row.chunks_exact(p).enumerate() {
                        act[u * n + px] = group[1..].iter().fold(group[0], |m, &v| keep_max(m, v));
                    }
                }
            }
        }
    }

    /// The pieces through which activation value `a` of unit `u` at pixel `px` passes its
    /// gradient.
    fn passes<T: Real>(&self, out: ConvOut<'_, T>, u: usize, px: usize, a: T) -> u8 {
        let at = |ch: usize| out.at(ch, px);
        match self.act {
            // As `Relu`'s backward: x ≥ 0 passes.
            BlockActivation::Relu => u8::from(at(u) >= T::zero()),
            // As `MaxPieces::backward`: every piece equal to the maximum.
            BlockActivation::Maxout(p) => {
                (0..p).fold(0, |bits, q| bits | (u8::from(at(u * p + q) == a) << q))
            }
        }
    }

    /// One image's convolution output gradient `dy` (`[c_out, n]`) from its output gradient
    /// `grad` and its routes (`index` empty where the block does not pool), summed as the
    /// pooling's backward sums onto each window's arg-max. Activation value `i` (unit `i / n`)
    /// is fed by channels `(i / n)·pieces + q`: for ReLU channel `i` itself.
    fn conv_grad<T: Real>(&self, grad: &[T], mask: &[u8], index: &[u32], n: usize, dy: &mut [T]) {
        let (pieces, zero) = (self.pieces(), T::zero());
        if index.is_empty() && pieces == 1 {
            // Every value its own: `0 + g` rounds as the sum onto a zero gradient.
            for ((d, &gv), &m) in dy.iter_mut().zip(grad).zip(mask) {
                *d = zero + if m != 0 { gv } else { zero };
            }
            return;
        }
        dy.fill(zero);
        for (o, (&gv, &m)) in grad.iter().zip(mask).enumerate() {
            if m == 0 {
                continue;
            }
            let i = index.get(o).map_or(o, |&i| i as usize);
            if pieces == 1 {
                dy[i] += gv;
                continue;
            }
            let (u, px) = (i / n, i % n);
            for q in (0..pieces).filter(|q| m >> q & 1 == 1) {
                dy[(u * pieces + q) * n + px] += gv;
            }
        }
    }

    fn forward<T: Real>(
        &self,
        g: &ConvShape,
        batch: usize,
        x: &[T],
        w: &[T],
        b: &[T],
    ) -> (Vec<T>, Route) {
        let (n, patch) = (g.out_len(), g.patch());
        let (units, act_len, out_len) = self.sizes(g);
        let zero = T::zero();
        let mut out = vec![zero; batch * out_len];
        // Routes only where a backward may follow; the index only where the block pools.
        let routed = if self.backward { batch * out_len } else { 0 };
        let pooled = self.pool.is_some();
        let mut mask = vec![0u8; routed];
        let mut index = vec![0u32; if pooled { routed } else { 0 }];
        if out_len == 0 {
            return (out, Route { index, mask });
        }
        let (mask_chunks, index_chunks) = (
            per_image(&mut mask, out_len, batch),
            per_image(&mut index, out_len, batch),
        );
        let by_pixels = g.by_pixels();
        let mut wt = vec![zero; if by_pixels { w.len() } else { 0 }];
        if by_pixels {
            for (c, row) in w.chunks_exact(patch).enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    wt[r * g.c_out + c] = v;
                }
            }
        }
        // One image per task: every thread works on its own buffers.
        out.par_chunks_mut(out_len)
            .zip(mask_chunks)
            .zip(index_chunks)
            .zip(x.par_chunks(g.in_len()))
            .for_each_init(
                || {
                    let act = vec![zero; if pooled { act_len } else { 0 }];
                    (
                        vec![zero; g.c_out * n],
                        vec![zero; patch * n],
                        act,
                        Vec::new(),
                    )
                },
                |(y, cols, act, buf), (((out_b, mask_b), index_b), x_b)| {
                    if by_pixels {
                        for row in y.chunks_exact_mut(g.c_out) {
                            row.copy_from_slice(b);
                        }
                        g.im2col_pixels(x_b, cols, buf);
                        let (cols, wt) =
                            (Mat::rows(cols, n, patch), Mat::rows(&wt, patch, g.c_out));
                        matmul(y, cols, wt, true, false);
                    } else {
                        for (row, &bias) in y.chunks_mut(n).zip(b) {
                            row.fill(bias);
                        }
                        g.im2col(x_b, cols, buf);
                        let (w, cols) = (Mat::rows(w, g.c_out, patch), Mat::rows(cols, patch, n));
                        matmul(y, w, cols, true, false);
                    }
                    let conv = ConvOut {
                        y: &y[..],
                        c: g.c_out,
                        n,
                        by_pixels,
                    };
                    match &self.pool {
                        // Without a backward `mask_b` is empty: no masks.
                        None => {
                            self.activate(conv, out_b);
                            let units = mask_b.chunks_exact_mut(n).zip(out_b.chunks_exact(n));
                            for (u, (m_u, a_u)) in units.enumerate() {
                                for (px, (m, &a)) in m_u.iter_mut().zip(a_u).enumerate() {
                                    *m = self.passes(conv, u, px, a);
                                }
                            }
                        }
                        Some(win) if !self.backward => {
                            self.activate(conv, act);
                            let po = win.oh * win.ow;
                            for (u, o) in out_b.chunks_exact_mut(po).enumerate().take(units) {
                                win.plane_max(&act[u * n..(u + 1) * n], o);
                            }
                        }
                        Some(win) => {
                            self.activate(conv, act);
                            let po = win.oh * win.ow;
                            for (u, idx) in index_b.chunks_exact_mut(po).enumerate().take(units) {
                                win.plane_argmax(&act[u * n..(u + 1) * n], (u * n) as u32, idx);
                            }
                            for ((o, m), &i) in
                                out_b.iter_mut().zip(mask_b.iter_mut()).zip(index_b.iter())
                            {
                                let i = i as usize;
                                *o = act[i];
                                *m = self.passes(conv, i / n, i % n, act[i]);
                            }
                        }
                    }
                },
            );
        (out, Route { index, mask })
    }

    /// The input gradient and the weight and bias gradients (as asked for) from the output
    /// gradient `grad`. The batch is cut into one run of images per compute thread, as
    /// [`ConvShape::weight_grads`] cuts it: the same sums in the same order.
    #[allow(clippy::type_complexity)]
    fn backward<T: Real>(
        &self,
        g: &ConvShape,
        x: &[T],
        w: &[T],
        grad: &[T],
        route: &Route,
    ) -> (Option<Vec<T>>, Option<(Vec<T>, Vec<T>)>) {
        let (n, patch, x_len) = (g.out_len(), g.patch(), g.in_len());
        let (_, _, out_len) = self.sizes(g);
        let batch = grad.len() / out_len.max(1);
        let zero = T::zero();
        let mut dx = vec![zero; if self.input_grad { batch * x_len } else { 0 }];
        let run = batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
        let runs = batch.div_ceil(run);
        let dx_chunks: Vec<&mut [T]> = match self.input_grad {
            true => dx.chunks_mut((run * x_len).max(1)).collect(),
            false => (0..runs).map(|_| Default::default()).collect(),
        };
        let sums: Vec<(Vec<T>, Vec<T>)> = dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(r, dx_run)| {
                let (wg, dw_len) = (self.weight_grads, g.c_out * patch);
                let mut dw = vec![zero; if wg { dw_len } else { 0 }];
                let mut db = vec![zero; if wg { g.c_out } else { 0 }];
                let (mut dy, mut cols) = (vec![zero; g.c_out * n], vec![zero; patch * n]);
                let mut buf = Vec::new();
                for img in r * run..((r + 1) * run).min(batch) {
                    let at = img * out_len;
                    let index = match self.pool {
                        Some(_) => &route.index[at..at + out_len],
                        None => &[][..],
                    };
                    let (g_b, m_b) = (&grad[at..at + out_len], &route.mask[at..at + out_len]);
                    self.conv_grad(g_b, m_b, index, n, &mut dy);
                    let x_b = &x[img * x_len..(img + 1) * x_len];
                    if self.input_grad {
                        let j = img - r * run;
                        let dx_b = &mut dx_run[j * x_len..(j + 1) * x_len];
                        g.add_input_grad(w, &dy, &mut cols, &mut buf, dx_b);
                    }
                    if wg {
                        g.add_weight_grads(x_b, &dy, &mut cols, &mut buf, &mut dw, &mut db);
                    }
                }
                (dw, db)
            })
            .collect();
        let params = self.weight_grads.then(|| g.sum_runs(sums));
        (self.input_grad.then_some(dx), params)
    }
}

impl CustomOp3 for ConvBlock {
    fn name(&self) -> &'static str {
        "gauntlet-conv-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, g) = self.shape(l1.shape(), l2.shape(), l3.shape())?;
        let (units, _, _) = self.sizes(&g);
        let (oh, ow) = match &self.pool {
            Some(p) => (p.oh, p.ow),
            None => (g.oh, g.ow),
        };
        by_dtype!(s1.dtype(), T => {
            let (x, w, b) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?, cpu_slice::<T>(s3, l3)?);
            let (out, route) = self.forward(&g, batch, x, w, b);
            if self.backward {
                // A second forward of the same op would find the same routes.
                let _ = self.route.set(route);
            }
            Ok((T::to_cpu_storage_owned(out), (batch, units, oh, ow).into()))
        })
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Before the early return: the weights of an eval pass over data may still be asked.
        if !self.backward {
            bail!("conv block: a backward through a pass built for evaluation logits only (Gradients::None)")
        }
        if !self.input_grad && !self.weight_grads {
            return Ok((None, None, None));
        }
        let Some(route) = self.route.get() else {
            bail!("conv block: backward before forward")
        };
        let (_, g) = self.shape(xs.shape(), weight.shape(), bias.shape())?;
        let (grad, xs) = (grad.contiguous()?, xs.contiguous()?);
        let dev = xs.device();
        by_dtype!(xs.dtype(), T => {
            let (dx, params) = with_slice::<T, _>(&xs, |x| {
                with_slice::<T, _>(weight, |w| {
                    with_slice::<T, _>(&grad, |dy| Ok(self.backward(&g, x, w, dy, route)))
                })
            })?;
            let dx = dx.map(|dx| Tensor::from_vec(dx, xs.shape(), dev)).transpose()?;
            let (dw, db) = match params {
                Some((dw, db)) => (
                    sink(weight, Tensor::from_vec(dw, weight.shape(), dev)?),
                    sink(bias, Tensor::from_vec(db, bias.shape(), dev)?),
                ),
                None => (None, None),
            };
            Ok((dx, dw, db))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX 8×8 blocks and their scalar edges give the scalar tiles' transposition (the
    /// path of a CPU without AVX), value by value, around the block, tile and band sizes, on
    /// one, two and three threads (bands of other widths).
    #[test]
    fn simd_and_scalar_transpositions_agree() {
        let shapes = [
            (1, 1),
            (8, 8),
            (9, 17),
            (7, 70),
            (16, 64),
            (65, 129),
            (240, 1200),
        ];
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            for (rows, cols) in shapes {
                let w: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
                let (mut fast, mut slow) = (vec![f32::NAN; rows * cols], vec![0f32; rows * cols]);
                pool.install(|| {
                    transpose_bands(&w, &mut fast, rows, cols, band_f32);
                    transpose_bands(&w, &mut slow, rows, cols, band_tiles::<f32>);
                });
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fast), bits(&slow), "{rows}×{cols}, {threads} threads");
                // Value (i, j) of `w` is value (j, i) of its transposition.
                let moved = (0..rows * cols).all(|k| slow[(k % cols) * rows + k / cols] == w[k]);
                assert!(moved, "{rows}×{cols}, {threads} threads");
            }
        }
    }

    /// [`matmul_new`] skips zeroing where [`blocked_gemm`] says gemm writes every value: with
    /// the destination filled with NaN, a product without `read_dst` must be the one into
    /// zeros bit for bit, in the three layouts the fully connected layer uses, over several
    /// depth blocks and edge tiles, on one thread and on two.
    #[test]
    fn blocked_gemm_writes_every_destination_value_before_reading_it() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool");
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 1999) as f32 / 999.5 - 1.0)
                .collect()
        };
        for (m, k, n) in [
            (50, 784, 1200),
            (100, 240, 10),
            (17, 5, 33),
            (3, 97, 300),
            (257, 3, 2),
            (64, 1300, 65),
        ] {
            assert!(blocked_gemm(m, k, n), "{m}×{k}·{k}×{n}");
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let layouts = [
                (Mat::rows(&a, m, k), Mat::transposed(&b, n, k)),
                (Mat::rows(&a, m, k), Mat::rows(&b, k, n)),
                (Mat::transposed(&a, k, m), Mat::rows(&b, k, n)),
            ];
            for (lhs, rhs) in layouts {
                for par in [false, true] {
                    let into = |fill: f32| -> Vec<u32> {
                        let mut dst = vec![fill; m * n];
                        // SAFETY: the views cover their slices exactly; `dst` holds m·n values.
                        pool.install(|| unsafe {
                            gemm_raw(dst.as_mut_ptr(), lhs, rhs, false, par)
                        });
                        dst.iter().map(|v| v.to_bits()).collect()
                    };
                    let zeroed = into(0.0);
                    assert_eq!(into(f32::NAN), zeroed, "{m}×{k}·{k}×{n}, par {par}");
                    let fresh = pool.install(|| matmul_new(lhs, rhs, par));
                    assert_eq!(
                        fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        zeroed
                    );
                }
            }
        }
        assert!(
            !blocked_gemm(16, 100, 16) && !blocked_gemm(100, 2, 100) && !blocked_gemm(1, 100, 300)
        );
    }

    /// Where the convolution runs pixel-major ([`ConvShape::by_pixels`]), its input and weight
    /// gradients are bit for bit those of the channel-major products and col2im, with padding
    /// and strides, at the conv Maxout network's second-layer sizes and small odd ones that
    /// gemm still blocks (its smallest products sum in another order).
    #[test]
    fn pixel_major_conv_gradients_are_the_channel_major_bits() {
        let value =
            |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0;
        // (c_in, h, c_out, k, pad, stride)
        for (c_in, h, c_out, k, pad, stride) in [
            (48, 10, 96, 8, 3, 1),
            (3, 9, 16, 5, 1, 1),
            (2, 11, 16, 4, 2, 2),
            (1, 8, 24, 4, 0, 1),
        ] {
            let x_shape = Shape::from((1, c_in, h, h));
            let w_shape = Shape::from((c_out, c_in, k, k));
            let (_, g) = ConvShape::new(&x_shape, &w_shape, &Shape::from(c_out), pad, stride)
                .expect("shapes fit");
            assert!(g.by_pixels(), "{g:?} should run pixel-major");
            let (n, patch) = (g.out_len(), g.patch());
            let x: Vec<f32> = (0..g.in_len()).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..c_out * patch).map(|i| value(i, 2)).collect();
            let dy: Vec<f32> = (0..c_out * n).map(|i| value(i, 3)).collect();
            let (mut cols, mut buf) = (vec![0f32; patch * n], Vec::new());

            let mut dx = vec![0f32; g.in_len()];
            g.add_input_grad(&w, &dy, &mut cols, &mut buf, &mut dx);
            let (mut dw, mut db) = (vec![0f32; c_out * patch], vec![0f32; c_out]);
            g.add_weight_grads(&x, &dy, &mut cols, &mut buf, &mut dw, &mut db);

            let mut dx_ref = vec![0f32; g.in_len()];
            let (wt, dy_m) = (Mat::transposed(&w, c_out, patch), Mat::rows(&dy, c_out, n));
            matmul(&mut cols, wt, dy_m, false, false);
            g.col2im(&cols, &mut dx_ref, &mut buf, false);
            let mut dw_ref = vec![0f32; c_out * patch];
            g.im2col(&x, &mut cols, &mut buf);
            let cols_t = Mat::transposed(&cols[..], patch, n);
            matmul(&mut dw_ref, Mat::rows(&dy, c_out, n), cols_t, true, false);

            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(dx.iter().any(|&v| v != 0.0) && dw.iter().any(|&v| v != 0.0));
            assert_eq!(bits(&dx), bits(&dx_ref), "input gradient, {g:?}");
            assert_eq!(bits(&dw), bits(&dw_ref), "weight gradient, {g:?}");
        }
    }
}

//! Whole-example bookkeeping on batches: selecting rows and replacing them by copying only, so
//! an example frozen by an attack or an evaluation comes back bit for bit.

use candle_core::{bail, Result, Tensor};

/// The rows `rows` of `xs`, in that order (`xs` itself when `rows` is every row in order).
///
/// # Shapes
/// - `xs`: `(batch, ...)`; returns `(rows.len(), ...)`
pub(crate) fn select_rows(xs: &Tensor, rows: &[usize]) -> Result<Tensor> {
    if is_every_row(rows, xs.dim(0)?) {
        return Ok(xs.clone());
    }
    let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
    xs.index_select(&Tensor::from_vec(ids, rows.len(), xs.device())?, 0)
}

/// `base` with its rows `rows` replaced by the rows of `src`, in order.
///
/// # Shapes
/// - `base`: `(batch, ...)`; `src`: `(rows.len(), ...)`; returns the shape of `base`
pub(crate) fn replace_rows(base: &Tensor, rows: &[usize], src: &Tensor) -> Result<Tensor> {
    let batch = base.dim(0)?;
    if rows.is_empty() {
        return Ok(base.clone());
    }
    if is_every_row(rows, batch) {
        return Ok(src.clone());
    }
    // Spread `src` to the batch (row i of `base` gets the row of `src` that replaces it, or a
    // dummy), then choose per row: index_select and where_cond copy values, they never round.
    let mut position = vec![0u32; batch];
    let mut replaced = vec![false; batch];
    for (k, &i) in rows.iter().enumerate() {
        position[i] = k as u32;
        replaced[i] = true;
    }
    let spread = src.index_select(&Tensor::from_vec(position, batch, base.device())?, 0)?;
    where_rows(&replaced, &spread, base)
}

/// Row `i` of `on_true` where `mask[i]`, else row `i` of `on_false`.
///
/// # Shapes
/// - `on_true`, `on_false`: `(mask.len(), ...)`; returns the same shape
pub(crate) fn where_rows(mask: &[bool], on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; on_false.rank()];
    shape[0] = mask.len();
    let flags: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    Tensor::from_vec(flags, mask.len(), on_false.device())?
        .reshape(shape)?
        .broadcast_as(on_false.shape())?
        .where_cond(on_true, on_false)
}

/// Fails unless the output of the attack `name` has the shape of its input.
pub(crate) fn check_output_shape(name: &str, out: &Tensor, input: &Tensor) -> Result<()> {
    if out.dims() != input.dims() {
        bail!(
            "attack {name} returned shape {:?}, expected {:?}",
            out.dims(),
            input.dims()
        )
    }
    Ok(())
}

fn is_every_row(rows: &[usize], batch: usize) -> bool {
    rows.len() == batch && rows.iter().enumerate().all(|(k, &i)| k == i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_are_selected_and_replaced_exactly() -> Result<()> {
        let base = Tensor::new(&[[[1f32, 2.]], [[3., 4.]], [[5., 6.]]], &Device::Cpu)?;
        let picked = select_rows(&base, &[2, 0])?;
        assert_eq!(picked.to_vec3::<f32>()?, [[[5., 6.]], [[1., 2.]]]);
        let src = Tensor::new(&[[[0.1f32, 0.2]], [[0.3, 0.4]]], &Device::Cpu)?;
        let out = replace_rows(&base, &[2, 0], &src)?;
        assert_eq!(
            out.to_vec3::<f32>()?,
            [[[0.3, 0.4]], [[3., 4.]], [[0.1, 0.2]]]
        );
        assert_eq!(
            replace_rows(&base, &[], &src)?.to_vec3::<f32>()?,
            base.to_vec3::<f32>()?
        );
        assert_eq!(
            select_rows(&base, &[0, 1, 2])?.to_vec3::<f32>()?,
            base.to_vec3::<f32>()?
        );
        Ok(())
    }
}

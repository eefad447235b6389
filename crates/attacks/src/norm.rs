//! [`Norm`]: the geometry of an Lp threat model, the one core every attack and regularizer
//! shares (DESIGN.md, "one Lp core").
//!
//! A norm supplies four per-example operations on `[B, ...]` tensors, each taken over all
//! non-batch dimensions: the norm itself, the steepest-ascent perturbation `r*` inside the
//! ε-ball (research/paper.md §1.3), the projection onto the ε-ball, and a uniform sample from
//! it. Attacks never contain per-norm code; they call these.

use std::fmt;
use std::str::FromStr;

use candle_core::{bail, DType, Device, Result, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Exp1, Gamma};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An Lp norm, `1 ≤ p ≤ ∞`, measured per example over all non-batch dimensions.
///
/// Build it with [`Norm::new`], which maps `p = 1, 2, ∞` to [`Norm::L1`], [`Norm::L2`] and
/// [`Norm::Linf`], so `Lp(p)` always means `1 < p < ∞`, `p ≠ 2`. Every operation re-checks an
/// `Lp(p)` written by hand and fails on `p < 1` or NaN.
///
/// In TOML a norm is a number `p ≥ 1` or a string: `norm = "inf"`, `norm = 2`, `norm = 1.5`
/// (`"linf"`, `"l1"`, `"l2"`, `"l1.5"` and `"2"` are accepted too). It serializes as `"inf"`
/// or as the number `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    L1,
    L2,
    Linf,
    Lp(f64),
}

impl Norm {
    /// The Lp norm for `p ≥ 1` (`f64::INFINITY` gives [`Norm::Linf`]).
    pub fn new(p: f64) -> Result<Norm> {
        if p.is_nan() || p < 1.0 {
            bail!("p must be >= 1 (an Lp norm), got {p}")
        }
        Ok(if p == 1.0 {
            Norm::L1
        } else if p == 2.0 {
            Norm::L2
        } else if p.is_infinite() {
            Norm::Linf
        } else {
            Norm::Lp(p)
        })
    }

    /// The exponent `p` (`f64::INFINITY` for [`Norm::Linf`]).
    pub fn p(&self) -> f64 {
        match *self {
            Norm::L1 => 1.0,
            Norm::L2 => 2.0,
            Norm::Linf => f64::INFINITY,
            Norm::Lp(p) => p,
        }
    }

    /// The dual norm `q` with `1/p + 1/q = 1`: `max_{‖r‖_p ≤ ε} gᵀr = ε‖g‖_q`.
    pub fn dual(&self) -> Norm {
        match *self {
            Norm::L1 => Norm::Linf,
            Norm::L2 => Norm::L2,
            Norm::Linf => Norm::L1,
            Norm::Lp(p) => {
                let q = p / (p - 1.0);
                // An invalid `Lp` stays invalid, so the next operation reports it.
                Norm::new(q).unwrap_or(Norm::Lp(q))
            }
        }
    }

    /// Stable identifier for result files: `"linf"`, `"l2"`, `"l1"`, `"l1.5"`.
    pub fn name(&self) -> String {
        match *self {
            Norm::L1 => "l1".to_string(),
            Norm::L2 => "l2".to_string(),
            Norm::Linf => "linf".to_string(),
            Norm::Lp(p) => format!("l{p}"),
        }
    }

    /// `self` with a hand-written `Lp(p)` validated and normalised.
    fn checked(self) -> Result<Norm> {
        match self {
            Norm::Lp(p) => Norm::new(p),
            norm => Ok(norm),
        }
    }

    /// The norm of each example.
    ///
    /// Computed scale-free (`M · ‖x/M‖_p` with `M = max|x|`), so gradients of ~1e-20 do not
    /// underflow when raised to the power `p`.
    ///
    /// # Shapes
    /// - `xs`: `(batch, ...)`; returns `(batch,)` in the dtype of `xs`
    pub fn norm(&self, xs: &Tensor) -> Result<Tensor> {
        let norm = self.checked()?;
        let abs = rows(&xs.detach())?.abs()?;
        let max = abs.max_keepdim(1)?;
        let res = match norm {
            Norm::Linf => max,
            Norm::L1 => abs.sum_keepdim(1)?,
            Norm::L2 => {
                let u = abs.broadcast_div(&nonzero(&max)?)?;
                u.sqr()?.sum_keepdim(1)?.sqrt()?.mul(&max)?
            }
            Norm::Lp(p) => {
                let u = abs.broadcast_div(&nonzero(&max)?)?;
                u.powf(p)?.sum_keepdim(1)?.powf(1.0 / p)?.mul(&max)?
            }
        };
        res.squeeze(1)
    }

    /// The steepest-ascent perturbation `r* = argmax_{‖r‖_p ≤ ε} gᵀr` of each example, for
    /// which `‖r*‖_p = ε` and `gᵀr* = ε‖g‖_q` (research/paper.md §1.3):
    ///
    /// - `Linf`: `ε · sign(g)`, with `sign(0) = 0` (FGSM);
    /// - `L2`: `ε · g / ‖g‖₂`;
    /// - `L1`: the whole budget on the largest `|g_j|`, split evenly over ties;
    /// - `Lp`: `ε · sign(g) ⊙ u^(q−1) / ‖u‖_q^(q−1)` with `u = |g| / max|g|`.
    ///
    /// Every row is first divided by its own `max|g|` (paper.md §1.5 item 4), so the result
    /// does not depend on the gradient's scale: the ~1e-13 gradients of a confident model give
    /// the same `r*` as their rescaled copies, with no fixed floor on the norm. A zero row gives
    /// a zero perturbation.
    ///
    /// # Shapes
    /// - `grad`: `(batch, ...)`; returns the same shape and dtype, detached
    pub fn steepest(&self, grad: &Tensor, eps: f64) -> Result<Tensor> {
        let norm = self.checked()?;
        check_eps(eps)?;
        let flat = rows(&grad.detach())?;
        let dtype = flat.dtype();
        let r = match norm {
            Norm::Linf => flat.sign()?,
            Norm::L1 => {
                let abs = flat.abs()?;
                let max = abs.max_keepdim(1)?;
                // The maximum is one of the row's own values, so equality finds it exactly;
                // the second factor drops all-zero rows, where every coordinate "ties".
                let top = abs
                    .broadcast_eq(&max)?
                    .to_dtype(dtype)?
                    .broadcast_mul(&max.gt(0.0)?.to_dtype(dtype)?)?;
                let ties = top.sum_keepdim(1)?.maximum(1.0)?;
                flat.sign()?.mul(&top)?.broadcast_div(&ties)?
            }
            Norm::L2 => {
                let u = flat.broadcast_div(&nonzero(&flat.abs()?.max_keepdim(1)?)?)?;
                // ‖u‖₂ ≥ 1 whenever the row is non-zero (its largest entry is exactly 1), so
                // the lower bound only turns 0/0 into 0/1 on zero rows.
                let len = u.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1.0)?;
                u.broadcast_div(&len)?
            }
            Norm::Lp(p) => {
                let q = p / (p - 1.0);
                let abs = flat.abs()?;
                let u = abs.broadcast_div(&nonzero(&abs.max_keepdim(1)?)?)?;
                // ‖u‖_q^(q−1) = (Σ u^q)^((q−1)/q) ≥ 1 on non-zero rows, as for L2.
                let len = u
                    .powf(q)?
                    .sum_keepdim(1)?
                    .powf((q - 1.0) / q)?
                    .maximum(1.0)?;
                flat.sign()?.mul(&u.powf(q - 1.0)?)?.broadcast_div(&len)?
            }
        };
        r.affine(eps, 0.0)?.reshape(grad.shape())
    }

    /// The projection of each example onto the ε-ball.
    ///
    /// `Linf`, `L2` and `L1` give the Euclidean projection (the nearest point of the ball):
    /// clamping, rescaling by `min(1, ε/‖δ‖₂)`, and the sorting-based simplex projection of
    /// Duchi et al. (2008) respectively. For other `p` this is the *radial* projection
    /// `δ · min(1, ε/‖δ‖_p)`: it lands in the ball and leaves inner points alone, but is not
    /// the nearest point in general.
    ///
    /// # Shapes
    /// - `delta`: `(batch, ...)`; returns the same shape and dtype, detached
    pub fn project(&self, delta: &Tensor, eps: f64) -> Result<Tensor> {
        let norm = self.checked()?;
        check_eps(eps)?;
        let delta = delta.detach();
        if eps == 0.0 {
            return delta.zeros_like();
        }
        match norm {
            Norm::Linf => delta.clamp(-eps, eps),
            Norm::L1 => project_l1(&delta, eps),
            Norm::L2 | Norm::Lp(_) => {
                let len = norm.norm(&delta)?.maximum(eps)?;
                // eps / max(‖δ‖, eps) is exactly 1 for inner points (x / x = 1 in IEEE), so
                // they come back bit for bit.
                let factor = len.ones_like()?.affine(eps, 0.0)?.div(&len)?;
                rows(&delta)?
                    .broadcast_mul(&factor.unsqueeze(1)?)?
                    .reshape(delta.shape())
            }
        }
    }

    /// [`Norm::project`] with a radius of its own for each example, as the minimum-norm
    /// attacks need: row `i` onto the ball of radius `eps[i]`.
    ///
    /// # Shapes
    /// - `delta`: `(eps.len(), ...)`; returns the same shape and dtype, detached
    pub fn project_each(&self, delta: &Tensor, eps: &[f64]) -> Result<Tensor> {
        let norm = self.checked()?;
        for &e in eps {
            check_eps(e)?;
        }
        let delta = delta.detach();
        let flat = rows(&delta)?;
        if flat.dim(0)? != eps.len() {
            bail!(
                "expected one radius per example ({}), got {}",
                flat.dim(0)?,
                eps.len()
            )
        }
        let column = Tensor::from_vec(eps.to_vec(), (eps.len(), 1), &Device::Cpu)?
            .to_dtype(flat.dtype())?
            .to_device(flat.device())?;
        let res = match norm {
            Norm::Linf => flat
                .broadcast_minimum(&column)?
                .broadcast_maximum(&column.neg()?)?,
            Norm::L1 => {
                let values: Vec<f64> = flat
                    .to_dtype(DType::F64)?
                    .to_vec2::<f64>()?
                    .iter()
                    .zip(eps)
                    .flat_map(|(row, &e)| {
                        if e == 0.0 {
                            vec![0.0; row.len()]
                        } else {
                            project_row_l1(row, e)
                        }
                    })
                    .collect();
                Tensor::from_vec(values, flat.shape(), &Device::Cpu)?
                    .to_dtype(flat.dtype())?
                    .to_device(flat.device())?
            }
            Norm::L2 | Norm::Lp(_) => {
                let lens = norm.norm(&flat)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                // Inner rows keep a factor of exactly 1, so they come back bit for bit.
                let factors: Vec<f64> = lens
                    .iter()
                    .zip(eps)
                    .map(|(&len, &e)| if len > e { e / len } else { 1.0 })
                    .collect();
                let factors = Tensor::from_vec(factors, (eps.len(), 1), &Device::Cpu)?
                    .to_dtype(flat.dtype())?
                    .to_device(flat.device())?;
                flat.broadcast_mul(&factors)?
            }
        };
        res.reshape(delta.shape())
    }

    /// A sample from the uniform distribution on the ε-ball, one per example, shaped like
    /// `like` and drawn from `rng` (Candle's own CPU generator cannot be seeded).
    ///
    /// `Linf` draws every coordinate from `U(−ε, ε)`. Every other `p` uses the method of
    /// Barthe, Guédon, Mendelson & Naor (2005), "A probabilistic approach to the geometry of
    /// the ℓ_p^n-ball" (arXiv:math/0503650): if `Y_1..Y_n` are independent with density
    /// `∝ exp(−|t|^p)` and `Z ~ Exp(1)`, then `Y / (Σ|Y_j|^p + Z)^(1/p)` is uniform in the unit
    /// ball. `|Y_j|^p` is `Gamma(1/p, 1)`, so each coordinate is drawn as a random sign times
    /// `(G_j / (Σ G + Z))^(1/p)`, which never overflows.
    ///
    /// # Shapes
    /// - `like`: `(batch, ...)`; returns the same shape, dtype and device
    pub fn random<R: Rng + ?Sized>(&self, like: &Tensor, eps: f64, rng: &mut R) -> Result<Tensor> {
        let norm = self.checked()?;
        check_eps(eps)?;
        let (batch, dim) = rows(like)?.dims2()?;
        if eps == 0.0 {
            return like.zeros_like();
        }
        let mut values = Vec::with_capacity(batch * dim);
        match norm {
            Norm::Linf => values.extend((0..batch * dim).map(|_| rng.random_range(-eps..=eps))),
            norm => {
                let p = norm.p();
                let gamma =
                    Gamma::new(1.0 / p, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                let mut row = vec![0f64; dim];
                for _ in 0..batch {
                    row.iter_mut().for_each(|g| *g = gamma.sample(rng));
                    let z: f64 = Exp1.sample(rng);
                    let total = row.iter().sum::<f64>() + z;
                    values.extend(row.iter().map(|&g| {
                        let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                        sign * eps * (g / total).powf(1.0 / p)
                    }));
                }
            }
        }
        Tensor::from_vec(values, like.shape(), &Device::Cpu)?
            .to_dtype(like.dtype())?
            .to_device(like.device())
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Norm {
    type Err = candle_core::Error;

    /// `"inf"`, `"linf"`, `"l1"`, `"l2"`, `"l1.5"`, `"2"`, `"1.5"` (case-insensitive), as
    /// [`gauntlet_results::Lp`] reads them.
    fn from_str(s: &str) -> Result<Norm> {
        s.parse::<gauntlet_results::Lp>()
            .map_err(candle_core::Error::msg)?
            .try_into()
    }
}

/// Written and read as [`gauntlet_results::Lp`]: `"inf"` or the number `p`.
impl Serialize for Norm {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        gauntlet_results::Lp::from(*self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Norm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Norm, D::Error> {
        let lp = gauntlet_results::Lp::deserialize(deserializer)?;
        Norm::try_from(lp).map_err(de::Error::custom)
    }
}

impl From<Norm> for gauntlet_results::Lp {
    fn from(norm: Norm) -> Self {
        gauntlet_results::Lp { p: norm.p() }
    }
}

impl TryFrom<gauntlet_results::Lp> for Norm {
    type Error = candle_core::Error;

    /// Fails on a hand-written `p < 1` or NaN.
    fn try_from(norm: gauntlet_results::Lp) -> Result<Norm> {
        Norm::new(norm.p)
    }
}

/// Fails unless `eps` is finite and non-negative.
pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("eps must be finite and >= 0, got {eps}")
    }
    Ok(())
}

/// `[B, ...]` as `[B, D]`; a rank-1 `[B]` is a batch of scalars.
fn rows(xs: &Tensor) -> Result<Tensor> {
    let res = match xs.rank() {
        0 => bail!("expected a batch tensor (batch, ...), got a scalar"),
        1 => xs.unsqueeze(1)?,
        _ => xs.flatten_from(1)?,
    };
    if res.dim(1)? == 0 {
        bail!("expected non-empty examples, got shape {:?}", xs.shape())
    }
    Ok(res)
}

/// Per-row maxima with zeros replaced by ones, so dividing an all-zero row by it gives zeros.
fn nonzero(max: &Tensor) -> Result<Tensor> {
    max.add(&max.eq(0.0)?.to_dtype(max.dtype())?)
}

/// Duchi et al. (2008), "Efficient projections onto the l1-ball for learning in high
/// dimensions", Fig. 1, row by row on the CPU in f64.
fn project_l1(delta: &Tensor, eps: f64) -> Result<Tensor> {
    let flat = rows(delta)?;
    let values: Vec<f64> = flat
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?
        .iter()
        .flat_map(|row| project_row_l1(row, eps))
        .collect();
    Tensor::from_vec(values, delta.shape(), &Device::Cpu)?
        .to_dtype(delta.dtype())?
        .to_device(delta.device())
}

/// The nearest point to `v` with `‖w‖₁ ≤ eps` (`eps > 0`): `w_j = sign(v_j) max(|v_j| − θ, 0)`.
fn project_row_l1(v: &[f64], eps: f64) -> Vec<f64> {
    if v.iter().map(|x| x.abs()).sum::<f64>() <= eps {
        return v.to_vec();
    }
    let mut sorted: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    // θ = (Σ_{j≤ρ} u_j − ε) / ρ for the largest ρ with u_ρ > θ_ρ; the condition holds exactly
    // for j = 1..ρ (Duchi et al., Lemma 2), so the scan stops at the first failure. With
    // ε > 0 it holds at j = 1, so θ is always set.
    let mut cumsum = 0.0;
    let mut theta = 0.0;
    for (j, &u) in sorted.iter().enumerate() {
        cumsum += u;
        let candidate = (cumsum - eps) / (j + 1) as f64;
        if u > candidate {
            theta = candidate;
        } else {
            break;
        }
    }
    v.iter()
        .map(|&x| x.signum() * (x.abs() - theta).max(0.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    const PS: [f64; 5] = [1.0, 1.5, 2.0, 3.0, f64::INFINITY];

    /// ‖v‖_p in f64, scale-free like the code under test but written independently.
    fn ref_norm(v: &[f64], p: f64) -> f64 {
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        if max == 0.0 || p.is_infinite() {
            return max;
        }
        max * v
            .iter()
            .map(|x| (x.abs() / max).powf(p))
            .sum::<f64>()
            .powf(1.0 / p)
    }

    fn rows_f64(t: &Tensor) -> Vec<Vec<f64>> {
        rows(t)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    /// A random `[B, ...]` tensor: some exact zeros, an all-zero first row in every third case.
    fn random_case(rng: &mut ChaCha8Rng, case: usize, scale: f64) -> Result<Tensor> {
        let batch = rng.random_range(1..5);
        let dim = rng.random_range(1..30);
        let values: Vec<f32> = (0..batch * dim)
            .map(|i| {
                if (case.is_multiple_of(3) && i < dim) || rng.random_bool(0.2) {
                    0.0
                } else {
                    (rng.sample::<f64, _>(StandardNormal) * scale) as f32
                }
            })
            .collect();
        let shape: Vec<usize> = if case.is_multiple_of(2) {
            vec![batch, dim]
        } else {
            vec![batch, 1, dim, 1]
        };
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    #[test]
    fn new_normalises_special_p_and_rejects_p_below_one() {
        assert_eq!(Norm::new(1.0).unwrap(), Norm::L1);
        assert_eq!(Norm::new(2.0).unwrap(), Norm::L2);
        assert_eq!(Norm::new(f64::INFINITY).unwrap(), Norm::Linf);
        assert_eq!(Norm::new(1.5).unwrap(), Norm::Lp(1.5));
        for bad in [0.5, 0.0, -1.0, f64::NAN] {
            let err = Norm::new(bad)
                .expect_err("p < 1 must be rejected")
                .to_string();
            assert!(err.contains("p must be >= 1"), "{err}");
        }
        // A hand-written invalid Lp is caught by every operation.
        let g = Tensor::ones((1, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(Norm::Lp(0.5).steepest(&g, 1.0).is_err());
        assert!(Norm::Lp(0.5).norm(&g).is_err());
        assert!(Norm::L2.steepest(&g, -1.0).is_err());
        assert!(Norm::L2.project(&g, f64::NAN).is_err());
    }

    #[test]
    fn dual_names_and_display() {
        assert_eq!(Norm::L1.dual(), Norm::Linf);
        assert_eq!(Norm::Linf.dual(), Norm::L1);
        assert_eq!(Norm::L2.dual(), Norm::L2);
        assert_eq!(Norm::Lp(1.5).dual(), Norm::Lp(3.0));
        assert_eq!(Norm::Lp(3.0).dual(), Norm::Lp(1.5));
        assert_eq!(Norm::Lp(2.0).dual(), Norm::L2);
        let names: Vec<String> = [Norm::Linf, Norm::L2, Norm::L1, Norm::Lp(1.5)]
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["linf", "l2", "l1", "l1.5"]);
        assert_eq!(Norm::Linf.p(), f64::INFINITY);
    }

    #[test]
    fn parses_and_round_trips_through_toml() {
        #[derive(Debug, PartialEq, Deserialize, Serialize)]
        struct Wrap {
            norm: Norm,
        }
        let parse = |s: &str| toml::from_str::<Wrap>(s).map(|w| w.norm);
        assert_eq!(parse("norm = \"inf\"").unwrap(), Norm::Linf);
        assert_eq!(parse("norm = \"linf\"").unwrap(), Norm::Linf);
        assert_eq!(parse("norm = inf").unwrap(), Norm::Linf);
        assert_eq!(parse("norm = 2").unwrap(), Norm::L2);
        assert_eq!(parse("norm = \"2\"").unwrap(), Norm::L2);
        assert_eq!(parse("norm = \"l2\"").unwrap(), Norm::L2);
        assert_eq!(parse("norm = \"L1\"").unwrap(), Norm::L1);
        assert_eq!(parse("norm = 1").unwrap(), Norm::L1);
        assert_eq!(parse("norm = 1.5").unwrap(), Norm::Lp(1.5));
        assert_eq!(parse("norm = 2.0").unwrap(), Norm::L2);
        for bad in [
            "norm = 0.5",
            "norm = -2",
            "norm = \"foo\"",
            "norm = \"nan\"",
            "norm = true",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be rejected");
        }
        let err = parse("norm = 0.5").unwrap_err().to_string();
        assert!(err.contains("p must be >= 1"), "{err}");
        for norm in [Norm::Linf, Norm::L1, Norm::L2, Norm::Lp(1.5), Norm::Lp(3.0)] {
            let text = toml::to_string(&Wrap { norm }).unwrap();
            assert_eq!(parse(&text).unwrap(), norm, "{text}");
        }
        assert_eq!(
            toml::to_string(&Wrap { norm: Norm::L2 }).unwrap().trim(),
            "norm = 2"
        );
        assert_eq!(
            toml::to_string(&Wrap { norm: Norm::Linf }).unwrap().trim(),
            "norm = \"inf\""
        );
        assert_eq!(serde_json::to_string(&Norm::Lp(1.5)).unwrap(), "1.5");
    }

    #[test]
    fn norm_matches_f64_reference_at_every_scale() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for p in PS {
            let norm = Norm::new(p)?;
            for case in 0..20 {
                // 1e-30 squared underflows f32: only the scale-free form survives it.
                let scale = [1.0, 1e-20, 1e-30, 1e3][case % 4];
                let xs = random_case(&mut rng, case, scale)?;
                let got = norm.norm(&xs)?;
                assert_eq!(got.dims1()?, xs.dim(0)?);
                for (row, got) in rows_f64(&xs).iter().zip(got.to_vec1::<f32>()?) {
                    let want = ref_norm(row, p);
                    assert!(
                        close(got as f64, want, 1e-5),
                        "p {p} scale {scale}: got {got}, want {want}"
                    );
                }
            }
        }
        // A rank-1 tensor is a batch of scalars.
        let xs = Tensor::new(&[-3f32, 0.0, 2.0], &Device::Cpu)?;
        assert_eq!(Norm::Lp(1.5).norm(&xs)?.to_vec1::<f32>()?, [3.0, 0.0, 2.0]);
        Ok(())
    }

    #[test]
    fn steepest_hand_computed_cases() -> Result<()> {
        let dev = &Device::Cpu;
        // sign(0) = 0.
        let g = Tensor::new(&[[0f32, 2.0, -3.0]], dev)?;
        assert_eq!(
            Norm::Linf.steepest(&g, 0.5)?.to_vec2::<f32>()?,
            [[0.0, 0.5, -0.5]]
        );
        // L1: the budget is split over the two tied coordinates of largest |g|.
        let g = Tensor::new(&[[1f32, -3.0, 3.0, 0.0]], dev)?;
        assert_eq!(
            Norm::L1.steepest(&g, 1.0)?.to_vec2::<f32>()?,
            [[0.0, -0.5, 0.5, 0.0]]
        );
        // L2: (3, −4) / 5.
        let r = Norm::L2
            .steepest(&Tensor::new(&[[3e-20f32, -4e-20]], dev)?, 1.0)?
            .to_vec2::<f32>()?;
        assert!(
            (r[0][0] - 0.6).abs() < 1e-6 && (r[0][1] + 0.8).abs() < 1e-6,
            "{r:?}"
        );
        // p = 3, q = 3/2, g = (1, 2): u = (1/2, 1), r = (√(1/2), 1) / (1 + (1/2)^(3/2))^(1/3)
        //   = (0.639_234, 0.904_013_4) (Python).
        let r = Norm::Lp(3.0)
            .steepest(&Tensor::new(&[[1f32, 2.0]], dev)?, 1.0)?
            .to_vec2::<f32>()?;
        assert!(
            (r[0][0] - 0.639_234).abs() < 1e-5 && (r[0][1] - 0.904_013_4).abs() < 1e-5,
            "{r:?}"
        );
        Ok(())
    }

    #[test]
    fn steepest_attains_eps_and_holder_equality_for_random_gradients() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for p in PS {
            let norm = Norm::new(p)?;
            let q = norm.dual().p();
            for case in 0..50 {
                let scale = [1.0, 1e-20, 1e-13, 1e3, 1e-30][case % 5];
                let g = random_case(&mut rng, case, scale)?;
                let eps = rng.random_range(0.01..2.0);
                let r = norm.steepest(&g, eps)?;
                assert_eq!((r.shape(), r.dtype()), (g.shape(), g.dtype()));
                for (g_row, r_row) in rows_f64(&g).iter().zip(rows_f64(&r)) {
                    assert!(r_row.iter().all(|x| x.is_finite()), "p {p}: {r_row:?}");
                    if g_row.iter().all(|&x| x == 0.0) {
                        assert!(
                            r_row.iter().all(|&x| x == 0.0),
                            "p {p}: zero gradient gave {r_row:?}"
                        );
                        continue;
                    }
                    let r_norm = ref_norm(&r_row, p);
                    assert!(
                        close(r_norm, eps, 1e-4),
                        "p {p} scale {scale}: ‖r‖ = {r_norm}, eps {eps}"
                    );
                    let dot: f64 = g_row.iter().zip(&r_row).map(|(a, b)| a * b).sum();
                    let want = eps * ref_norm(g_row, q);
                    assert!(
                        close(dot, want, 1e-4),
                        "p {p} scale {scale}: gᵀr = {dot}, eps‖g‖_q = {want}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn steepest_keeps_f64_and_zero_eps_gives_zero() -> Result<()> {
        let g = Tensor::new(&[[1e-200f64, -2e-200], [0.0, 0.0]], &Device::Cpu)?;
        for p in PS {
            let r = Norm::new(p)?.steepest(&g, 0.3)?;
            assert_eq!(r.dtype(), DType::F64);
            let r = r.to_vec2::<f64>()?;
            assert!(close(ref_norm(&r[0], p), 0.3, 1e-12), "p {p}: {r:?}");
            assert_eq!(r[1], [0.0, 0.0]);
            let zero = Norm::new(p)?.steepest(&g, 0.0)?.to_vec2::<f64>()?;
            assert!(zero.iter().flatten().all(|&x| x == 0.0));
        }
        Ok(())
    }

    /// `w` is the Euclidean projection of `v` onto the ε-ball of `p` iff `(v − w)ᵀ(z − w) ≤ 0`
    /// for every `z` in the ball, i.e. `ε‖v − w‖_q ≤ (v − w)ᵀw`.
    fn is_euclidean_projection(v: &[f64], w: &[f64], eps: f64, p: f64) -> bool {
        let diff: Vec<f64> = v.iter().zip(w).map(|(a, b)| a - b).collect();
        let q = Norm::new(p).unwrap().dual().p();
        let lhs = eps * ref_norm(&diff, q);
        let rhs: f64 = diff.iter().zip(w).map(|(d, x)| d * x).sum();
        lhs <= rhs + 1e-5 * (1.0 + lhs.abs())
    }

    #[test]
    fn each_row_projects_onto_its_own_radius_as_project_does() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for p in PS {
            let norm = Norm::new(p)?;
            for case in 0..30 {
                let delta = random_case(&mut rng, case, [0.1, 1.0, 10.0][case % 3])?;
                let batch = delta.dim(0)?;
                let radii: Vec<f64> = (0..batch)
                    .map(|i| {
                        if i == 1 {
                            0.0
                        } else {
                            rng.random_range(0.05..2.0)
                        }
                    })
                    .collect();
                let each = rows_f64(&norm.project_each(&delta, &radii)?);
                for (i, &eps) in radii.iter().enumerate() {
                    let alone = rows_f64(&norm.project(&delta.narrow(0, i, 1)?, eps)?);
                    for (a, b) in each[i].iter().zip(&alone[0]) {
                        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "p {p}: {a} vs {b}");
                    }
                }
            }
        }
        assert!(Norm::L2
            .project_each(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?, &[1.0])
            .is_err());
        Ok(())
    }

    #[test]
    fn projection_lands_in_ball_is_idempotent_and_keeps_inner_points() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for p in PS {
            let norm = Norm::new(p)?;
            for case in 0..50 {
                let scale = [0.01, 0.1, 1.0, 10.0][case % 4];
                let delta = random_case(&mut rng, case, scale)?;
                let eps = rng.random_range(0.05..2.0);
                let once = norm.project(&delta, eps)?;
                let twice = norm.project(&once, eps)?;
                assert_eq!((once.shape(), once.dtype()), (delta.shape(), delta.dtype()));
                let rows_in = rows_f64(&delta);
                for ((v, w), w2) in rows_in.iter().zip(rows_f64(&once)).zip(rows_f64(&twice)) {
                    assert!(
                        ref_norm(&w, p) <= eps + 1e-5,
                        "p {p}: ‖w‖ = {} > eps {eps}",
                        ref_norm(&w, p)
                    );
                    for (a, b) in w.iter().zip(&w2) {
                        assert!(
                            (a - b).abs() <= 1e-6 * eps.max(1.0),
                            "p {p}: not idempotent {w:?} {w2:?}"
                        );
                    }
                    if ref_norm(v, p) < 0.999 * eps {
                        assert_eq!(v, &w, "p {p}: an inner point moved");
                    }
                    if p == 1.0 || p == 2.0 || p.is_infinite() {
                        assert!(
                            is_euclidean_projection(v, &w, eps, p),
                            "p {p}: {v:?} -> {w:?}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn l1_projection_matches_hand_computation_and_brute_force() -> Result<()> {
        // v = (3, 1, −2), ε = 2: sorted |v| = (3, 2, 1), cumsums (3, 5, 6);
        // θ_1 = 1 < 3, θ_2 = 3/2 < 2, θ_3 = 4/3 > 1, so ρ = 2, θ = 3/2 and w = (3/2, 0, −1/2).
        let v = [3.0, 1.0, -2.0];
        let w = Norm::L1
            .project(&Tensor::new(&[v], &Device::Cpu)?, 2.0)?
            .to_vec2::<f64>()?;
        assert_eq!(w[0], [1.5, 0.0, -0.5]);
        // Brute force: the nearest of a fine grid on the sphere |a| + |b| + |c| = 2 (the
        // projection of an outer point lies on it) is w, up to the grid spacing.
        let dist = |z: [f64; 3]| z.iter().zip(&v).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        let (mut best, mut best_z) = (f64::INFINITY, [0.0; 3]);
        for i in -200i32..=200 {
            for j in -200i32..=200 {
                let (a, b) = (i as f64 / 100.0, j as f64 / 100.0);
                let rest = 2.0 - a.abs() - b.abs();
                if rest < 0.0 {
                    continue;
                }
                for z in [[a, b, rest], [a, b, -rest]] {
                    if dist(z) < best {
                        (best, best_z) = (dist(z), z);
                    }
                }
            }
        }
        assert!(
            dist([1.5, 0.0, -0.5]) <= best + 1e-12,
            "grid found {best_z:?} closer"
        );
        assert!(
            best_z.iter().zip(&w[0]).all(|(a, b)| (a - b).abs() < 0.011),
            "{best_z:?}"
        );
        Ok(())
    }

    #[test]
    fn projection_onto_a_zero_ball_is_zero() -> Result<()> {
        let delta = Tensor::new(&[[0.5f32, -1.0], [0.0, 0.0]], &Device::Cpu)?;
        for p in PS {
            let w = Norm::new(p)?.project(&delta, 0.0)?.to_vec2::<f32>()?;
            assert_eq!(w, [[0.0, 0.0], [0.0, 0.0]], "p {p}");
        }
        Ok(())
    }

    #[test]
    fn random_samples_lie_in_the_ball_and_follow_the_seed() -> Result<()> {
        let like = Tensor::zeros((200, 1, 2, 3), DType::F32, &Device::Cpu)?;
        for p in PS {
            let norm = Norm::new(p)?;
            let draw = |seed| norm.random(&like, 0.7, &mut ChaCha8Rng::seed_from_u64(seed));
            let sample = draw(1)?;
            assert_eq!(
                (sample.shape(), sample.dtype()),
                (like.shape(), like.dtype())
            );
            assert!(rows_f64(&sample)
                .iter()
                .all(|row| ref_norm(row, p) <= 0.7 * (1.0 + 1e-6)));
            let a = sample.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(a, draw(1)?.flatten_all()?.to_vec1::<f32>()?);
            assert_ne!(a, draw(2)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn random_samples_fill_the_ball_uniformly() -> Result<()> {
        // Uniform in a d-dimensional ball: P(‖x‖ ≤ rε) = r^d for any norm, and each coordinate
        // is symmetric. With n = 20 000 the standard error of a fraction near 1/2 is 0.0035.
        let n = 20_000;
        for dim in [2usize, 10] {
            let like = Tensor::zeros((n, dim), DType::F32, &Device::Cpu)?;
            let radius = 0.5f64.powf(1.0 / dim as f64);
            for p in PS {
                let norm = Norm::new(p)?;
                let sample = norm.random(&like, 2.0, &mut ChaCha8Rng::seed_from_u64(7))?;
                let rows = rows_f64(&sample);
                let inner = rows
                    .iter()
                    .filter(|r| ref_norm(r, p) <= radius * 2.0)
                    .count() as f64
                    / n as f64;
                let positive = rows.iter().filter(|r| r[0] > 0.0).count() as f64 / n as f64;
                assert!(
                    (inner - 0.5).abs() < 0.02,
                    "dim {dim} p {p}: inner fraction {inner}"
                );
                assert!(
                    (positive - 0.5).abs() < 0.02,
                    "dim {dim} p {p}: positive fraction {positive}"
                );
                if dim == 2 {
                    let quarter =
                        rows.iter().filter(|r| ref_norm(r, p) <= 1.0).count() as f64 / n as f64;
                    assert!(
                        (quarter - 0.25).abs() < 0.015,
                        "p {p}: fraction inside eps/2 is {quarter}"
                    );
                }
            }
        }
        Ok(())
    }
}

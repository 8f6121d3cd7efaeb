//! Implicit-feedback ALS (Hu, Koren & Volinsky 2008): users and items get `k`
//! factors such that `x_u · y_i` approaches 1 for observed pairs and 0 otherwise,
//! each observed pair weighted by its confidence `c_ui = 1 + alpha · value`
//! (or `1 + alpha · ln(1 + value / epsilon)` with log scaling).
//!
//! Each half-iteration solves every row's regularised least squares with the
//! other side fixed. The default solver is conjugate gradient with a few steps per
//! row warm-started from the previous factors (Takács et al. 2011, as implicit
//! does); the exact Cholesky solve is kept to check it. Rows are solved in parallel
//! on the current rayon pool; the stop flag is checked between rows. The solve has
//! builds picked at run time: with the vectors in AVX-512 or AVX2 registers
//! (`simd`, for k a multiple of 16 up to 128, or of 8 up to 64), and for other k
//! an autovectorised AVX2 build and a portable one.

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod simd;

use super::dense::{axpy_with, dot, dot_with, gemm_nt, gram, symv};
use super::{Csr, Recommender, StopFlag, Stopped};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    ConjugateGradient { steps: usize },
    Cholesky,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlsParams {
    pub factors: usize,
    pub iterations: usize,
    pub regularization: f32,
    pub alpha: f32,
    /// `Some(epsilon)`: confidence `1 + alpha · ln(1 + value / epsilon)`.
    pub log_epsilon: Option<f32>,
    pub solver: Solver,
    pub seed: u64,
    /// Compute the training loss after every iteration (costs about one extra
    /// half-iteration of arithmetic).
    pub loss: bool,
    /// Scale each row's regularization by its number of interactions (ALS-WR,
    /// Zhou et al. 2008), so one setting suits small and large data alike.
    pub scale_regularization: bool,
}

impl Default for AlsParams {
    fn default() -> Self {
        Self {
            factors: 64,
            iterations: 15,
            regularization: 0.3,
            alpha: 0.25,
            log_epsilon: None,
            solver: Solver::ConjugateGradient { steps: 3 },
            seed: 42,
            loss: false,
            scale_regularization: true,
        }
    }
}

/// Fitted factors, row-major: `user_factors` is users×k, `item_factors` items×k.
#[derive(Debug, Clone, PartialEq)]
pub struct AlsModel {
    pub factors: usize,
    pub user_factors: Vec<f32>,
    pub item_factors: Vec<f32>,
}

impl AlsModel {
    /// Whether every factor is a finite number. Extreme confidences (a huge
    /// `alpha` times a huge value) overflow in the solve and leave NaN factors,
    /// whose scores rank nothing: such a model must not be used.
    pub fn is_finite(&self) -> bool {
        self.user_factors
            .iter()
            .chain(&self.item_factors)
            .all(|v| v.is_finite())
    }
}

/// What training observed: the loss per iteration when asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitReport {
    pub losses: Vec<f32>,
}

/// The confidence weights: `c − 1 = alpha · data` for each stored cell.
pub struct Confidence<'a> {
    pub matrix: Cow<'a, Csr>,
    pub alpha: f32,
}

impl Confidence<'_> {
    /// Column indices and `c − 1` weights (before `alpha`) of row `r`.
    pub(crate) fn row(&self, r: usize) -> (&[u32], &[f32]) {
        self.matrix.row(r)
    }
}

/// The confidence of each observed pair, borrowing the values when they serve as
/// they are (all positive, no log scaling: no copy of the largest input), else
/// a transformed copy with zero and negative observations dropped (an
/// implicit-feedback model has no use for them).
pub fn confidence<'a>(values: &'a Csr, params: &AlsParams) -> Confidence<'a> {
    let alpha = params.alpha;
    if params.log_epsilon.is_none() && values.data.iter().all(|&v| v > 0.0) {
        return Confidence {
            matrix: Cow::Borrowed(values),
            alpha,
        };
    }
    let mut rows = Vec::with_capacity(values.nnz());
    let mut cols = Vec::with_capacity(values.nnz());
    let mut vals = Vec::with_capacity(values.nnz());
    for r in 0..values.n_rows {
        let (idx, v) = values.row(r);
        for (&c, &v) in idx.iter().zip(v) {
            if v > 0.0 {
                let scaled = match params.log_epsilon {
                    Some(eps) => (1.0 + v / eps).ln(),
                    None => v,
                };
                rows.push(r as u32);
                cols.push(c);
                vals.push(scaled);
            }
        }
    }
    Confidence {
        matrix: Cow::Owned(Csr::from_triplets(
            values.n_rows,
            values.n_cols,
            &rows,
            &cols,
            &vals,
        )),
        alpha,
    }
}

/// Fits ALS on a user×item matrix of interaction values.
pub fn fit(
    values: &Csr,
    params: &AlsParams,
    stop: &StopFlag,
) -> Result<(AlsModel, FitReport), Stopped> {
    let k = params.factors;
    let cui = confidence(values, params);
    let ciu = Confidence {
        matrix: Cow::Owned(cui.matrix.transpose()),
        alpha: cui.alpha,
    };
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut init =
        |n: usize| -> Vec<f32> { (0..n * k).map(|_| rng.random::<f32>() * 0.01).collect() };
    let mut x = init(cui.matrix.n_rows);
    let mut y = init(cui.matrix.n_cols);
    let mut report = FitReport::default();
    for _ in 0..params.iterations {
        solve_side(&cui, &y, &mut x, None, params, stop)?;
        solve_side(&ciu, &x, &mut y, None, params, stop)?;
        if params.loss {
            report.losses.push(loss(&cui, &ciu, &x, &y, k, params));
        }
    }
    Ok((
        AlsModel {
            factors: k,
            user_factors: x,
            item_factors: y,
        },
        report,
    ))
}

/// Solves every row of `x` given the fixed factors `fixed` of the other side.
/// With a `prior` (rows like `x`'s), the penalty pulls each row toward its
/// prior row instead of toward zero: `λ‖x − prior‖²` (`fm`'s `als` loss
/// shrinks a known item toward what its content predicts).
pub(crate) fn solve_side(
    conf: &Confidence,
    fixed: &[f32],
    x: &mut [f32],
    prior: Option<&[f32]>,
    params: &AlsParams,
    stop: &StopFlag,
) -> Result<(), Stopped> {
    let k = params.factors;
    let mut yty = gram(fixed, k);
    if !params.scale_regularization {
        for d in 0..k {
            yty[d * k + d] += params.regularization;
        }
    }
    let wide = has_avx2_fma();
    #[cfg(target_arch = "x86_64")]
    let kernel = simd::Kernel::detect(k);
    x.par_chunks_mut(k).enumerate().try_for_each_init(
        || vec![0f32; 3 * k],
        |scratch, (row, xu)| {
            if stop.is_stopped() {
                return Err(Stopped);
            }
            let (items, w) = conf.row(row);
            let a = conf.alpha;
            // ALS-WR: this row's own λ·n on the diagonal, on top of YᵀY.
            let extra = if params.scale_regularization {
                params.regularization * items.len() as f32
            } else {
                0.0
            };
            let sys = RowSystem {
                yty: &yty,
                extra,
                y: fixed,
                items,
                w,
                alpha: a,
                prior: prior.map(|p| {
                    let weight = match params.scale_regularization {
                        true => extra,
                        false => params.regularization,
                    };
                    (&p[row * k..(row + 1) * k], weight)
                }),
            };
            #[cfg(target_arch = "x86_64")]
            if let (Solver::ConjugateGradient { steps }, Some(kernel)) = (params.solver, kernel) {
                // SAFETY: detect() returned the kernel for this k on this CPU.
                unsafe { kernel.cg_row(&sys, xu, steps) };
                return Ok(());
            }
            match params.solver {
                #[cfg(target_arch = "x86_64")]
                Solver::ConjugateGradient { steps } if wide => {
                    // SAFETY: `wide` is true only when the CPU has AVX2 and FMA.
                    unsafe { cg_row_avx2(&sys, xu, steps, scratch) }
                }
                Solver::ConjugateGradient { steps } => cg_row::<false>(&sys, xu, steps, scratch),
                Solver::Cholesky => cholesky_row(&sys, xu),
            }
            Ok(())
        },
    )
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`cg_row`] compiled for AVX2: the binary stays portable (baseline x86-64) while
/// the solver's dot and axpy loops use 256-bit registers where the CPU has them.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn cg_row_avx2(sys: &RowSystem, x: &mut [f32], steps: usize, scratch: &mut [f32]) {
    cg_row::<true>(sys, x, steps, scratch)
}

/// One row's regularised least-squares system `(YᵀY + λI + Yᵀ(C−I)Y) x = YᵀC p`:
/// `yty` holds `YᵀY` (plus λI unless scaled), `extra` the row's own diagonal
/// term, `y` the fixed factors, and `C − I` is `alpha · w` on the row's `items`.
/// A `prior` row `q` with its weight `λ` adds `λq` to the right-hand side.
#[derive(Clone, Copy)]
struct RowSystem<'a> {
    yty: &'a [f32],
    extra: f32,
    y: &'a [f32],
    items: &'a [u32],
    w: &'a [f32],
    alpha: f32,
    prior: Option<(&'a [f32], f32)>,
}

/// A few conjugate-gradient steps on the row's system, from the current `x`.
#[inline(always)]
fn cg_row<const FMA: bool>(sys: &RowSystem, x: &mut [f32], steps: usize, scratch: &mut [f32]) {
    let RowSystem {
        yty,
        extra,
        y,
        items,
        w,
        alpha,
        prior,
    } = *sys;
    let k = x.len();
    let (r, rest) = scratch.split_at_mut(k);
    let (p, ap) = rest.split_at_mut(k);
    // r = b − A x
    symv::<FMA>(yty, x, r);
    axpy_with::<FMA>(extra, x, r);
    r.iter_mut().for_each(|v| *v = -*v);
    if let Some((q, weight)) = prior {
        axpy_with::<FMA>(weight, q, r);
    }
    for (n, (&i, &wi)) in items.iter().zip(w).enumerate() {
        if let Some(&ahead) = items.get(n + PREFETCH_AHEAD) {
            prefetch_row(&y[ahead as usize * k..(ahead as usize + 1) * k]);
        }
        let yi = &y[i as usize * k..(i as usize + 1) * k];
        let cm1 = alpha * wi;
        axpy_with::<FMA>(1.0 + cm1 * (1.0 - dot_with::<FMA>(yi, x)), yi, r);
    }
    p.copy_from_slice(r);
    let mut rsold = dot_with::<FMA>(r, r);
    if rsold < 1e-20 {
        return;
    }
    for _ in 0..steps {
        symv::<FMA>(yty, p, ap);
        axpy_with::<FMA>(extra, p, ap);
        for (&i, &wi) in items.iter().zip(w) {
            let yi = &y[i as usize * k..(i as usize + 1) * k];
            axpy_with::<FMA>(alpha * wi * dot_with::<FMA>(yi, p), yi, ap);
        }
        let step = rsold / dot_with::<FMA>(p, ap);
        axpy_with::<FMA>(step, p, x);
        axpy_with::<FMA>(-step, ap, r);
        let rsnew = dot_with::<FMA>(r, r);
        if rsnew < 1e-20 {
            break;
        }
        let beta = rsnew / rsold;
        for (pi, ri) in p.iter_mut().zip(r.iter()) {
            *pi = ri + beta * *pi;
        }
        rsold = rsnew;
    }
}

/// Rows ahead whose factors the first pass over a row's items prefetches.
const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to bring a row of factors into cache: the first pass over a row's
/// items gathers rows scattered over the other side's factors (later passes find
/// them in L1).
#[inline(always)]
fn prefetch_row(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: prefetching is a hint; the pointer is in bounds of `row`.
        unsafe {
            std::arch::x86_64::_mm_prefetch(line.as_ptr().cast(), std::arch::x86_64::_MM_HINT_T0);
        }
    }
}

/// The exact solution of the same system, in f64.
fn cholesky_row(sys: &RowSystem, x: &mut [f32]) {
    let RowSystem {
        yty,
        extra,
        y,
        items,
        w,
        alpha,
        prior,
    } = *sys;
    let k = x.len();
    let mut a = nalgebra::DMatrix::<f64>::from_fn(k, k, |i, j| {
        f64::from(yty[i * k + j]) + if i == j { f64::from(extra) } else { 0.0 }
    });
    let mut b = nalgebra::DVector::<f64>::zeros(k);
    if let Some((q, weight)) = prior {
        for r in 0..k {
            b[r] += f64::from(weight) * f64::from(q[r]);
        }
    }
    for (&i, &wi) in items.iter().zip(w) {
        let yi = &y[i as usize * k..(i as usize + 1) * k];
        let cm1 = f64::from(alpha) * f64::from(wi);
        for r in 0..k {
            b[r] += (1.0 + cm1) * f64::from(yi[r]);
            for s in 0..k {
                a[(r, s)] += cm1 * f64::from(yi[r]) * f64::from(yi[s]);
            }
        }
    }
    if let Some(chol) = a.cholesky() {
        let sol = chol.solve(&b);
        for (xi, s) in x.iter_mut().zip(sol.iter()) {
            *xi = *s as f32;
        }
    }
}

/// Mean weighted squared error over all user×item cells plus the penalty:
/// `Σ_u xᵀ(YᵀY)x + Σ_observed (c(1−s)² − s²) + λ(Σ w_u‖x_u‖² + Σ w_i‖y_i‖²)` (`w` is
/// the row's interaction count with scaled regularization, else 1), divided by the
/// number of cells.
pub fn loss(
    cui: &Confidence,
    ciu: &Confidence,
    x: &[f32],
    y: &[f32],
    k: usize,
    params: &AlsParams,
) -> f32 {
    let yty = gram(y, k);
    let total: f64 = (0..cui.matrix.n_rows)
        .into_par_iter()
        .map_init(
            || vec![0f32; k],
            |tmp, u| {
                let xu = &x[u * k..(u + 1) * k];
                symv::<false>(&yty, xu, tmp);
                let mut l = f64::from(dot(xu, tmp));
                let (items, w) = cui.row(u);
                for (&i, &wi) in items.iter().zip(w) {
                    let s = dot(xu, &y[i as usize * k..(i as usize + 1) * k]);
                    let ci = 1.0 + cui.alpha * wi;
                    l += f64::from(ci * (1.0 - s) * (1.0 - s) - s * s);
                }
                l
            },
        )
        .sum();
    let penalty = |m: &Confidence, f: &[f32]| -> f64 {
        f.chunks_exact(k.max(1))
            .enumerate()
            .map(|(r, row)| {
                let w = if params.scale_regularization {
                    m.row(r).0.len() as f64
                } else {
                    1.0
                };
                w * f64::from(dot(row, row))
            })
            .sum()
    };
    let reg = f64::from(params.regularization) * (penalty(cui, x) + penalty(ciu, y));
    let cells = (cui.matrix.n_rows * cui.matrix.n_cols).max(1) as f64;
    ((total + reg) / cells) as f32
}

impl Recommender for AlsModel {
    fn n_items(&self) -> usize {
        self.item_factors
            .len()
            .checked_div(self.factors)
            .unwrap_or(0)
    }

    fn score_block(&self, users: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
        let k = self.factors;
        let mut q = Vec::with_capacity(users.len() * k);
        for &u in users {
            q.extend_from_slice(&self.user_factors[u as usize * k..(u as usize + 1) * k]);
        }
        gemm_nt(
            &q,
            &self.item_factors[items.start * k..items.end * k],
            k,
            out,
        );
    }

    fn item_tile(&self) -> usize {
        crate::models::dense::DENSE_ITEM_TILE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_csr(users: usize, items: usize, per_user: usize, seed: u64) -> Csr {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut r, mut c, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for u in 0..users {
            for _ in 0..per_user {
                r.push(u as u32);
                c.push(rng.random_range(0..items as u32));
                v.push(rng.random_range(1..5) as f32);
            }
        }
        Csr::from_triplets(users, items, &r, &c, &v)
    }

    #[test]
    fn cg_converges_to_cholesky() {
        let m = random_csr(40, 30, 6, 1);
        let params = AlsParams {
            factors: 8,
            iterations: 3,
            ..AlsParams::default()
        };
        let (model, _) = fit(&m, &params, &StopFlag::default()).unwrap();
        let conf = confidence(&m, &params);
        let k = params.factors;
        let mut yty = gram(&model.item_factors, k);
        for d in 0..k {
            yty[d * k + d] += params.regularization;
        }
        for u in 0..m.n_rows {
            let (items, w) = conf.row(u);
            let sys = RowSystem {
                yty: &yty,
                extra: 0.0,
                y: &model.item_factors,
                items,
                w,
                alpha: conf.alpha,
                prior: None,
            };
            let mut exact = vec![0f32; k];
            cholesky_row(&sys, &mut exact);
            // Many CG steps from zero must reach the exact solution.
            let mut approx = vec![0f32; k];
            cg_row::<false>(&sys, &mut approx, 50, &mut vec![0f32; 3 * k]);
            for (a, e) in approx.iter().zip(&exact) {
                assert!(
                    (a - e).abs() < 1e-3 * (1.0 + e.abs()),
                    "user {u}: {a} vs {e}"
                );
            }
        }
    }

    /// The register kernels take the same CG steps as the portable one: after
    /// three steps (the default) and after enough steps to converge to Cholesky.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn register_kernels_match_portable() {
        use simd::Kernel;
        let mut rng = StdRng::seed_from_u64(9);
        for (kernel, k) in [16, 32, 48, 64, 128]
            .into_iter()
            .map(|k| (Kernel::Avx512, k))
            .chain([8, 24, 64].into_iter().map(|k| (Kernel::Avx2, k)))
        {
            if !kernel.supports(k) {
                eprintln!("this CPU cannot run {kernel:?}: k = {k} is not exercised");
                continue;
            }
            let items = 50;
            let y: Vec<f32> = (0..items * k).map(|_| rng.random::<f32>() - 0.5).collect();
            let mut yty = gram(&y, k);
            for d in 0..k {
                yty[d * k + d] += 0.1;
            }
            let row: Vec<u32> = (0..items as u32).filter(|_| rng.random_bool(0.4)).collect();
            let w: Vec<f32> = row.iter().map(|_| rng.random_range(1..5) as f32).collect();
            let x0: Vec<f32> = (0..k).map(|_| rng.random::<f32>() * 0.1).collect();
            let prior: Vec<f32> = (0..k).map(|_| rng.random::<f32>() - 0.5).collect();
            let sys = RowSystem {
                yty: &yty,
                extra: 2.0,
                y: &y,
                items: &row,
                w: &w,
                alpha: 0.7,
                prior: Some((&prior, 1.5)),
            };
            for steps in [3, 60] {
                let (mut fast, mut slow) = (x0.clone(), x0.clone());
                // SAFETY: supports(k) held above.
                unsafe { kernel.cg_row(&sys, &mut fast, steps) };
                cg_row::<false>(&sys, &mut slow, steps, &mut vec![0f32; 3 * k]);
                let mut exact = vec![0f32; k];
                cholesky_row(&sys, &mut exact);
                for d in 0..k {
                    let (f, s) = (fast[d], slow[d]);
                    assert!(
                        (f - s).abs() < 1e-3 * (1.0 + s.abs()),
                        "{kernel:?} k {k}, {steps} steps, [{d}]: {f} vs {s}"
                    );
                    if steps > k / 2 {
                        let e = exact[d];
                        assert!(
                            (f - e).abs() < 1e-3 * (1.0 + e.abs()),
                            "{kernel:?} k {k}: {f} vs {e}"
                        );
                    }
                }
                assert_ne!(fast, x0, "k {k}: the kernel must move x");
            }
        }
    }

    #[test]
    fn loss_falls_and_solvers_agree() {
        let m = random_csr(60, 40, 8, 2);
        let cg = AlsParams {
            factors: 6,
            iterations: 8,
            loss: true,
            ..AlsParams::default()
        };
        let (_, report) = fit(&m, &cg, &StopFlag::default()).unwrap();
        assert!(
            report.losses.last() < report.losses.first(),
            "{:?}",
            report.losses
        );
        let chol = AlsParams {
            solver: Solver::Cholesky,
            ..cg.clone()
        };
        let (_, exact) = fit(&m, &chol, &StopFlag::default()).unwrap();
        let (a, b) = (
            *report.losses.last().unwrap(),
            *exact.losses.last().unwrap(),
        );
        assert!((a - b).abs() / b < 0.05, "cg {a} vs cholesky {b}");
    }

    #[test]
    fn zero_values_are_dropped_like_absent_cells() {
        let m = random_csr(30, 20, 5, 4);
        // Zero every second cell: the borrowed (all-positive) path no longer applies.
        let cells: Vec<(u32, u32, f32)> = (0..m.n_rows)
            .flat_map(|u| {
                let (idx, val) = m.row(u);
                idx.iter()
                    .zip(val)
                    .enumerate()
                    .map(move |(n, (&i, &x))| (u as u32, i, if n % 2 == 0 { x } else { 0.0 }))
            })
            .collect();
        let csr = |cells: &[(u32, u32, f32)]| {
            let r: Vec<u32> = cells.iter().map(|c| c.0).collect();
            let c: Vec<u32> = cells.iter().map(|c| c.1).collect();
            let v: Vec<f32> = cells.iter().map(|c| c.2).collect();
            Csr::from_triplets(m.n_rows, m.n_cols, &r, &c, &v)
        };
        let with_zero = csr(&cells);
        let positives: Vec<_> = cells.into_iter().filter(|c| c.2 > 0.0).collect();
        let positive = csr(&positives);
        assert!(matches!(
            confidence(&with_zero, &AlsParams::default()).matrix,
            Cow::Owned(_)
        ));
        assert!(matches!(
            confidence(&positive, &AlsParams::default()).matrix,
            Cow::Borrowed(_)
        ));
        let stop = StopFlag::default();
        let a = fit(&with_zero, &AlsParams::default(), &stop).unwrap().0;
        let b = fit(&positive, &AlsParams::default(), &stop).unwrap().0;
        assert_eq!(a, b);
    }

    #[test]
    fn stop_flag_interrupts() {
        let stop = StopFlag::default();
        stop.stop();
        let r = fit(&random_csr(5, 5, 2, 3), &AlsParams::default(), &stop);
        assert_eq!(r.err(), Some(Stopped));
    }
}

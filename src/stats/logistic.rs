//! Logistic regression by maximum likelihood, with an optional L2 penalty:
//! Newton's method (a Cholesky solve of the Hessian each iteration) for up to a
//! few hundred columns, L-BFGS beyond, and standard errors from the inverse
//! Hessian at the optimum. Rows are sparse (one-hot columns put a few non-zeros
//! among hundreds) and binomial (`successes` of `trials`), so one row may stand
//! for many impressions. Passes over the rows run on rayon.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rayon::prelude::*;
use serde::Serialize;

use crate::models::{StopFlag, Stopped};

/// Sparse rows, one per observation (CSR). Column 0 is the intercept by convention.
#[derive(Debug, Clone)]
pub struct Design {
    pub columns: usize,
    starts: Vec<usize>,
    index: Vec<u32>,
    value: Vec<f64>,
}

impl Design {
    pub fn new(columns: usize) -> Self {
        Design {
            columns,
            starts: vec![0],
            index: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Appends a row from its non-zero `(column, value)` entries.
    pub fn push(&mut self, entries: impl IntoIterator<Item = (u32, f64)>) {
        for (j, v) in entries {
            self.index.push(j);
            self.value.push(v);
        }
        self.starts.push(self.index.len());
    }

    pub fn rows(&self) -> usize {
        self.starts.len() - 1
    }

    fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let (a, b) = (self.starts[i], self.starts[i + 1]);
        (&self.index[a..b], &self.value[a..b])
    }

    /// The linear predictor of row `i`.
    pub fn eta(&self, i: usize, w: &[f64]) -> f64 {
        let (idx, val) = self.row(i);
        idx.iter().zip(val).map(|(&j, v)| w[j as usize] * v).sum()
    }

    /// Per column: in how many rows it is non-zero, its smallest and largest
    /// value there, and the trials and successes of those rows.
    pub fn column_summary(&self, outcome: &Outcome) -> Vec<ColumnSummary> {
        let mut out = vec![ColumnSummary::default(); self.columns];
        for i in 0..self.rows() {
            let (idx, val) = self.row(i);
            for (&j, &v) in idx.iter().zip(val) {
                let c = &mut out[j as usize];
                if c.rows == 0 {
                    (c.min, c.max) = (v, v);
                }
                c.rows += 1;
                c.min = c.min.min(v);
                c.max = c.max.max(v);
                c.trials += outcome.trials[i];
                c.successes += outcome.successes[i];
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnSummary {
    pub rows: usize,
    pub min: f64,
    pub max: f64,
    pub trials: f64,
    pub successes: f64,
}

impl ColumnSummary {
    /// Takes the same value in every one of `rows` rows (zero where it is absent).
    pub fn constant(&self, rows: usize) -> bool {
        self.rows == 0 || (self.min == self.max && (self.rows == rows || self.min == 0.0))
    }

    /// A 0/1 column whose rows are all failures or all successes: its
    /// unpenalised coefficient runs off to infinity (quasi-separation).
    pub fn separates(&self) -> bool {
        self.min == 1.0
            && self.max == 1.0
            && (self.successes == 0.0 || self.successes == self.trials)
    }
}

/// Each row's trials and successes (1 and 0/1 for an impression).
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub trials: &'a [f64],
    pub successes: &'a [f64],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    Newton,
    Lbfgs,
}

impl Solver {
    pub fn as_str(self) -> &'static str {
        match self {
            Solver::Newton => "newton",
            Solver::Lbfgs => "lbfgs",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Per column: the L2 penalty ½·λⱼ·wⱼ² (0 for the intercept).
    pub penalty: Vec<f64>,
    pub solver: Solver,
    pub max_iterations: usize,
}

/// Standard errors need the inverse Hessian: beyond this many columns (a
/// 2000² matrix per thread already) they are not computed.
pub const MAX_SE_COLUMNS: usize = 2000;

/// Newton stops when no coefficient moves more than this, relative to 1 + the
/// largest coefficient.
const TOLERANCE: f64 = 1e-10;
/// L-BFGS stops when its quasi-Newton step is this small: its inverse Hessian
/// is an estimate, so the step says how far the optimum is only roughly.
const LBFGS_TOLERANCE: f64 = 1e-9;

#[derive(Debug, Clone)]
pub struct Fit {
    pub coef: Vec<f64>,
    /// Absent beyond [`MAX_SE_COLUMNS`], or when the fit did not converge.
    pub se: Option<Vec<f64>>,
    pub iterations: usize,
    pub converged: bool,
    /// The log-likelihood at the optimum (without the penalty).
    pub loglik: f64,
    pub solver: Solver,
    /// The largest coefficient change in the last iteration.
    pub last_step: f64,
}

#[derive(Debug)]
pub enum FitError {
    /// The Hessian is singular: these columns are (nearly) linear combinations
    /// of each other, largest weight first.
    Collinear(Vec<usize>),
    Stopped,
}

impl From<Stopped> for FitError {
    fn from(_: Stopped) -> Self {
        FitError::Stopped
    }
}

/// ln(1 + eˣ) without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// One pass over the rows: the log-likelihood, its negative gradient and
/// (if asked) the Hessian of the negative log-likelihood (row-major, full).
struct Pass {
    loglik: f64,
    gradient: Vec<f64>,
    hessian: Option<Vec<f64>>,
}

/// Rows between checks of the stop flag.
const CHUNK: usize = 1 << 14;

fn pass(
    x: &Design,
    y: &Outcome,
    w: &[f64],
    hessian: bool,
    stop: &StopFlag,
) -> Result<Pass, Stopped> {
    let p = x.columns;
    let empty = || Pass {
        loglik: 0.0,
        gradient: vec![0.0; p],
        hessian: hessian.then(|| vec![0.0; p * p]),
    };
    // One accumulator per thread (a Hessian may be 2000² floats), each over
    // a contiguous share of the rows, checking the stop flag as it goes.
    let parts = rayon::current_num_threads()
        .min(x.rows() / CHUNK + 1)
        .max(1);
    let share = x.rows().div_ceil(parts).max(1);
    let totals: Vec<Pass> = (0..parts)
        .into_par_iter()
        .map(|k| {
            let mut acc = empty();
            for i in (k * share)..((k + 1) * share).min(x.rows()) {
                if i % CHUNK == 0 {
                    stop.check()?;
                }
                let (idx, val) = x.row(i);
                let eta: f64 = idx.iter().zip(val).map(|(&j, v)| w[j as usize] * v).sum();
                let (n, s) = (y.trials[i], y.successes[i]);
                acc.loglik += s * eta - n * softplus(eta);
                let mu = sigmoid(eta);
                let r = n * mu - s;
                for (&j, v) in idx.iter().zip(val) {
                    acc.gradient[j as usize] += r * v;
                }
                if let Some(h) = &mut acc.hessian {
                    let weight = n * mu * (1.0 - mu);
                    for (a, (&ja, va)) in idx.iter().zip(val).enumerate() {
                        let row = &mut h[ja as usize * p..(ja as usize + 1) * p];
                        let wa = weight * va;
                        for (&jb, vb) in idx[a..].iter().zip(&val[a..]) {
                            row[jb as usize] += wa * vb;
                        }
                    }
                }
            }
            Ok(acc)
        })
        .collect::<Result<_, Stopped>>()?;
    let mut totals = totals.into_iter();
    let mut total = totals.next().unwrap_or_else(empty);
    for b in totals {
        total.loglik += b.loglik;
        total
            .gradient
            .iter_mut()
            .zip(&b.gradient)
            .for_each(|(x, y)| *x += y);
        if let (Some(ha), Some(hb)) = (&mut total.hessian, &b.hessian) {
            ha.iter_mut().zip(hb).for_each(|(x, y)| *x += y);
        }
    }
    // Entries were added at (a, b) in the order the row lists its columns:
    // fold both triangles into one symmetric matrix.
    if let Some(h) = &mut total.hessian {
        for a in 0..p {
            for b in a + 1..p {
                let s = h[a * p + b] + h[b * p + a];
                h[a * p + b] = s;
                h[b * p + a] = s;
            }
        }
    }
    Ok(total)
}

/// The diagonal of the penalised Hessian at `w` (kept away from 0).
fn hessian_diagonal(x: &Design, y: &Outcome, w: &[f64], penalty: &[f64]) -> Vec<f64> {
    let mut d = penalty.to_vec();
    for i in 0..x.rows() {
        let (idx, val) = x.row(i);
        let mu = sigmoid(x.eta(i, w));
        let weight = y.trials[i] * mu * (1.0 - mu);
        for (&j, v) in idx.iter().zip(val) {
            d[j as usize] += weight * v * v;
        }
    }
    d.iter().map(|v| v.max(1e-12)).collect()
}

/// The penalised objective (to minimise) and its gradient at `w`.
fn objective(pass: &Pass, w: &[f64], penalty: &[f64]) -> (f64, Vec<f64>) {
    let mut f = -pass.loglik;
    let mut g = pass.gradient.clone();
    for j in 0..w.len() {
        f += 0.5 * penalty[j] * w[j] * w[j];
        g[j] += penalty[j] * w[j];
    }
    (f, g)
}

fn penalised_hessian(h: Vec<f64>, penalty: &[f64]) -> DMatrix<f64> {
    let p = penalty.len();
    let mut m = DMatrix::from_row_slice(p, p, &h);
    for j in 0..p {
        m[(j, j)] += penalty[j];
    }
    m
}

/// The largest |v|; NaN if any is NaN (so a NaN step never looks converged).
fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m: f64, x| {
        if x.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(x.abs())
        }
    })
}

/// Fits the coefficients. `start` is where the intercept (column 0) begins:
/// the log-odds of the pooled rate saves Newton a few iterations.
pub fn fit(
    x: &Design,
    y: &Outcome,
    options: &Options,
    start: f64,
    stop: &StopFlag,
) -> Result<Fit, FitError> {
    let mut w = vec![0.0; x.columns];
    if let Some(w0) = w.first_mut() {
        *w0 = start;
    }
    let with_hessian = x.columns <= MAX_SE_COLUMNS;
    let (iterations, converged, last_step, end) = match options.solver {
        Solver::Newton => newton(x, y, options, &mut w, stop)?,
        Solver::Lbfgs => {
            let (i, c, s) = lbfgs(x, y, options, &mut w, stop)?;
            (i, c, s, pass(x, y, &w, with_hessian, stop)?)
        }
    };
    let se = match end.hessian {
        Some(h) if with_hessian && converged => {
            let h = penalised_hessian(h, &options.penalty);
            let inverse = factor(&h)?.inverse();
            Some((0..x.columns).map(|j| inverse[(j, j)].sqrt()).collect())
        }
        _ => None,
    };
    Ok(Fit {
        coef: w,
        se,
        iterations,
        converged,
        loglik: end.loglik,
        solver: options.solver,
        last_step,
    })
}

/// Newton–Raphson, halving the step while a full one would lower the
/// penalised likelihood. Returns the pass (with Hessian) at the final `w`.
fn newton(
    x: &Design,
    y: &Outcome,
    options: &Options,
    w: &mut [f64],
    stop: &StopFlag,
) -> Result<(usize, bool, f64, Pass), FitError> {
    let mut at = pass(x, y, w, true, stop)?;
    let mut step_size = f64::INFINITY;
    for iteration in 1..=options.max_iterations {
        stop.check()?;
        let (f, g) = objective(&at, w, &options.penalty);
        let h = penalised_hessian(at.hessian.take().unwrap(), &options.penalty);
        let chol = match factor(&h) {
            Ok(c) => c,
            // Singular at the start: the columns themselves are dependent.
            Err(e) if iteration == 1 => return Err(e),
            // Singular later: the fitted rates reached 0 or 1, so the data
            // are separated and the coefficients run off; the caller names them.
            Err(_) => return Ok((iteration, false, step_size, at)),
        };
        let step = chol.solve(&DVector::from_vec(g));
        let mut scale = 1.0;
        let (next, next_pass) = loop {
            let next: Vec<f64> = w
                .iter()
                .zip(step.iter())
                .map(|(wj, s)| wj - scale * s)
                .collect();
            let trial = pass(x, y, &next, true, stop)?;
            let (f_next, _) = objective(&trial, &next, &options.penalty);
            // Equal within rounding counts as no worse: near the optimum the
            // objective is flat to the last digits.
            if f_next <= f + 1e-12 * f.abs().max(1.0) {
                break (next, trial);
            }
            if scale < 1e-10 || !f_next.is_finite() && scale < 1e-3 {
                // No step lowers the objective: give up, unconverged.
                return Ok((iteration, false, step_size, at));
            }
            scale /= 2.0;
        };
        step_size = scale * max_abs(step.as_slice());
        w.copy_from_slice(&next);
        at = next_pass;
        if step_size < TOLERANCE * (1.0 + max_abs(w)) {
            return Ok((iteration, true, step_size, at));
        }
    }
    Ok((options.max_iterations, false, step_size, at))
}

/// Limited-memory BFGS (ten pairs) with a backtracking (Armijo) line search.
fn lbfgs(
    x: &Design,
    y: &Outcome,
    options: &Options,
    w: &mut [f64],
    stop: &StopFlag,
) -> Result<(usize, bool, f64), FitError> {
    const MEMORY: usize = 10;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let evaluate = |w: &[f64]| -> Result<(f64, Vec<f64>), Stopped> {
        let at = pass(x, y, w, false, stop)?;
        Ok(objective(&at, w, &options.penalty))
    };
    let (mut f, mut g) = evaluate(w)?;
    // The Hessian's diagonal at the start scales the first guess of its
    // inverse: features on different scales (a salary, a 0/1 flag) would
    // otherwise cost hundreds of iterations.
    let diagonal = hessian_diagonal(x, y, w, &options.penalty);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut step_size = f64::INFINITY;
    for iteration in 1..=options.max_iterations {
        stop.check()?;
        // The two-loop recursion: d ≈ H⁻¹ g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, yv, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match pairs.back() {
            Some((s, yv, _)) => {
                let scaled: f64 = yv.iter().zip(&diagonal).map(|(y, d)| y * y / d).sum();
                dot(s, yv) / scaled
            }
            None => 1.0,
        };
        q.iter_mut()
            .zip(&diagonal)
            .for_each(|(v, d)| *v *= gamma / d);
        for ((s, yv, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let slope = -dot(&g, &q);
        if slope >= 0.0 {
            // Not a descent direction (rounding): restart from the gradient.
            pairs.clear();
            continue;
        }
        let mut t = 1.0;
        let (next, f_next, g_next) = loop {
            let next: Vec<f64> = w.iter().zip(&q).map(|(wi, di)| wi - t * di).collect();
            let (fn_, gn) = evaluate(&next)?;
            // Armijo; or, where the objective no longer resolves the decrease
            // (near the optimum), Hager and Zhang's approximate Wolfe test on
            // the slope, which still does.
            let new_slope = -dot(&gn, &q);
            let approximate = fn_ <= f + 1e-12 * f.abs()
                && new_slope <= (2.0 * 1e-4 - 1.0) * slope
                && new_slope >= 0.9 * slope;
            if fn_ <= f + 1e-4 * t * slope || approximate {
                break (next, fn_, gn);
            }
            if t < 1e-12 {
                // No step lowers the objective: converged only if the
                // quasi-Newton step says the optimum is this close.
                let near = max_abs(&q) < 1e-6 * (1.0 + max_abs(w));
                return Ok((iteration, near, max_abs(&q)));
            }
            t /= 2.0;
        };
        // The full quasi-Newton step estimates how far the optimum still is.
        step_size = max_abs(&q);
        let s: Vec<f64> = next.iter().zip(w.iter()).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&yv, &yv).sqrt() {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, yv, 1.0 / sy));
        }
        w.copy_from_slice(&next);
        (f, g) = (f_next, g_next);
        if step_size < LBFGS_TOLERANCE * (1.0 + max_abs(w)) {
            return Ok((iteration, true, step_size));
        }
    }
    Ok((options.max_iterations, false, step_size))
}

/// A column is a combination of the others when all but this share of its
/// (weighted) variance is explained by the columns before it.
const MIN_PIVOT: f64 = 1e-10;

/// The Cholesky factor of a Hessian, or the columns that make it singular.
/// Rounding can leave an exactly dependent column a tiny positive pivot, so a
/// pivot below [`MIN_PIVOT`] of its diagonal counts as singular.
fn factor(h: &DMatrix<f64>) -> Result<nalgebra::Cholesky<f64, nalgebra::Dyn>, FitError> {
    let singular = || FitError::Collinear(collinear(h));
    let chol = h.clone().cholesky().ok_or_else(singular)?;
    let l = chol.l_dirty();
    match (0..h.nrows()).any(|j| l[(j, j)] * l[(j, j)] < MIN_PIVOT * h[(j, j)]) {
        true => Err(singular()),
        false => Ok(chol),
    }
}

/// The columns behind a singular Hessian: the eigenvector of its smallest
/// eigenvalue (after scaling to unit diagonal), largest weights first.
fn collinear(h: &DMatrix<f64>) -> Vec<usize> {
    let p = h.nrows();
    let d: Vec<f64> = (0..p)
        .map(|j| h[(j, j)].max(f64::MIN_POSITIVE).sqrt())
        .collect();
    let scaled = DMatrix::from_fn(p, p, |a, b| h[(a, b)] / (d[a] * d[b]));
    // Bounded: nalgebra's default runs until convergence, which a singular
    // matrix may not reach.
    let Some(eigen) = SymmetricEigen::try_new(scaled, f64::EPSILON, 10_000) else {
        return Vec::new();
    };
    let smallest = eigen.eigenvalues.imin();
    let v = eigen.eigenvectors.column(smallest);
    let mut columns: Vec<usize> = (0..p).collect();
    columns.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
    // Those that carry the dependency, and at least the three that carry most.
    let keep = columns
        .iter()
        .take_while(|&&j| v[j].abs() > 0.1)
        .count()
        .max(3);
    columns.truncate(keep);
    columns
}

/// Held-out figures of predicted rates `p` on binomial rows: the log-loss per
/// trial and the AUC (ties count a half). The AUC is `None` when the rows hold
/// only successes or only failures.
pub fn heldout(p: &[f64], y: &Outcome) -> (f64, Option<f64>) {
    let clamp = |v: f64| v.clamp(1e-15, 1.0 - 1e-15);
    let mut loss = 0.0;
    let mut trials = 0.0;
    for (i, &pi) in p.iter().enumerate() {
        let (n, s) = (y.trials[i], y.successes[i]);
        loss -= s * clamp(pi).ln() + (n - s) * (1.0 - clamp(pi)).ln();
        trials += n;
    }
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let (mut negatives_below, mut area) = (0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        let mut end = k;
        let (mut pos, mut neg) = (0.0, 0.0);
        while end < order.len() && p[order[end]].total_cmp(&p[order[k]]).is_eq() {
            let i = order[end];
            pos += y.successes[i];
            neg += y.trials[i] - y.successes[i];
            end += 1;
        }
        area += pos * (negatives_below + 0.5 * neg);
        negatives_below += neg;
        k = end;
    }
    let positives: f64 = y.successes.iter().sum();
    let auc =
        (positives > 0.0 && negatives_below > 0.0).then(|| area / (positives * negatives_below));
    (loss / trials.max(1.0), auc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn design(rows: &[Vec<(u32, f64)>], columns: usize) -> Design {
        let mut x = Design::new(columns);
        for r in rows {
            x.push(r.iter().copied());
        }
        x
    }

    fn options(columns: usize, solver: Solver, l2: f64) -> Options {
        let mut penalty = vec![l2; columns];
        penalty[0] = 0.0;
        Options {
            penalty,
            solver,
            max_iterations: 200,
        }
    }

    /// One binary column: the MLE is the two groups' log-odds, in closed form,
    /// and the standard errors are √(1/(n p (1−p))) summed over the cells.
    #[test]
    fn two_groups_match_the_closed_form() {
        // Group 0: 3 of 20; group 1: 9 of 30, as binomial rows.
        let x = design(&[vec![(0, 1.0)], vec![(0, 1.0), (1, 1.0)]], 2);
        let (trials, successes) = ([20.0, 30.0], [3.0, 9.0]);
        let y = Outcome {
            trials: &trials,
            successes: &successes,
        };
        let logit = |s: f64, n: f64| (s / (n - s)).ln();
        let cell = |s: f64, n: f64| 1.0 / s + 1.0 / (n - s);
        for solver in [Solver::Newton, Solver::Lbfgs] {
            let fit = fit(&x, &y, &options(2, solver, 0.0), 0.0, &StopFlag::default()).unwrap();
            assert!(fit.converged, "{solver:?}");
            let b0 = logit(3.0, 20.0);
            let b1 = logit(9.0, 30.0) - b0;
            assert!((fit.coef[0] - b0).abs() < 1e-7, "{solver:?} {:?}", fit.coef);
            assert!((fit.coef[1] - b1).abs() < 1e-7, "{solver:?} {:?}", fit.coef);
            let se = fit.se.unwrap();
            assert!((se[0] - cell(3.0, 20.0).sqrt()).abs() < 1e-6);
            assert!((se[1] - (cell(3.0, 20.0) + cell(9.0, 30.0)).sqrt()).abs() < 1e-6);
        }
    }

    /// Same data as one row per impression: the same fit.
    #[test]
    fn impressions_equal_counts() {
        let mut rows = Vec::new();
        let mut s = Vec::new();
        for (group, n, c) in [(0, 20, 3), (1, 30, 9)] {
            for k in 0..n {
                rows.push(match group {
                    0 => vec![(0, 1.0)],
                    _ => vec![(0, 1.0), (1, 1.0)],
                });
                s.push(if k < c { 1.0 } else { 0.0 });
            }
        }
        let t = vec![1.0; s.len()];
        let y = Outcome {
            trials: &t,
            successes: &s,
        };
        let fit = fit(
            &design(&rows, 2),
            &y,
            &options(2, Solver::Newton, 0.0),
            0.0,
            &StopFlag::default(),
        )
        .unwrap();
        assert!((fit.coef[1] - ((9.0f64 / 21.0).ln() - (3.0f64 / 17.0).ln())).abs() < 1e-8);
    }

    /// With L2 the solvers agree; the penalised optimum sets the gradient to
    /// zero, checked directly.
    #[test]
    fn l2_optimum_has_zero_gradient() {
        let rows: Vec<Vec<(u32, f64)>> = (0..200)
            .map(|i| {
                let v = ((i * 37) % 11) as f64 / 10.0 - 0.5;
                vec![(0, 1.0), (1, v), (2 + (i % 3) as u32, 1.0)]
            })
            .collect();
        let s: Vec<f64> = (0..200)
            .map(|i| ((i * 7919) % 5 == 0) as u8 as f64)
            .collect();
        let t = vec![1.0; 200];
        let y = Outcome {
            trials: &t,
            successes: &s,
        };
        let x = design(&rows, 5);
        // Columns 2..5 sum to the intercept: only the penalty makes it identifiable.
        let newton = fit(
            &x,
            &y,
            &options(5, Solver::Newton, 1.0),
            0.0,
            &StopFlag::default(),
        )
        .unwrap();
        let lbfgs = fit(
            &x,
            &y,
            &options(5, Solver::Lbfgs, 1.0),
            0.0,
            &StopFlag::default(),
        )
        .unwrap();
        for j in 0..5 {
            assert!(
                (newton.coef[j] - lbfgs.coef[j]).abs() < 1e-6,
                "{j}: {:?} {:?}",
                newton.coef,
                lbfgs.coef
            );
        }
        let at = pass(&x, &y, &newton.coef, false, &StopFlag::default()).unwrap();
        let (_, g) = objective(&at, &newton.coef, &options(5, Solver::Newton, 1.0).penalty);
        assert!(max_abs(&g) < 1e-8, "{g:?}");
        // Unpenalised, the same columns are collinear, and say so.
        match fit(
            &x,
            &y,
            &options(5, Solver::Newton, 0.0),
            0.0,
            &StopFlag::default(),
        ) {
            Err(FitError::Collinear(cols)) => {
                let mut cols = cols;
                cols.sort();
                assert_eq!(cols, vec![0, 2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auc_and_logloss() {
        let t = [1.0, 1.0, 1.0, 1.0];
        let s = [0.0, 1.0, 0.0, 1.0];
        let y = Outcome {
            trials: &t,
            successes: &s,
        };
        // One positive above both negatives, one tied with a negative.
        let (loss, auc) = heldout(&[0.1, 0.9, 0.5, 0.5], &y);
        assert_eq!(auc, Some((2.0 + 1.0 + 0.5) / 4.0));
        let want = -(0.9f64.ln() + 0.9f64.ln() + 0.5f64.ln() + 0.5f64.ln()) / 4.0;
        assert!((loss - want).abs() < 1e-12);
        assert_eq!(
            heldout(
                &[0.1],
                &Outcome {
                    trials: &[1.0],
                    successes: &[0.0]
                }
            )
            .1,
            None
        );
    }
}

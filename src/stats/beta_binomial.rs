//! Empirical Bayes for per-item rates: the Beta(a, b) prior that makes the
//! items' (trials, successes) most likely under the beta-binomial model, and
//! each item's Beta posterior.
//!
//! The fit maximises the log marginal likelihood
//! Σᵢ ln B(a + cᵢ, b + fᵢ) − ln B(a, b) over (logit μ, ln κ), μ = a / (a + b),
//! κ = a + b, by Newton's method with the exact gradient and Hessian and a
//! Levenberg damping that keeps every step uphill. Items share counts, so each
//! sum runs over the distinct values of c, f and n, not over the items.
//!
//! When the items vary no more than binomial noise, the likelihood keeps rising
//! as κ → ∞ (all items share one rate): then a and b mean nothing. The fit says so
//! ([`Prior::flat`]) and the posterior of every item is the pooled rate.

use serde::Serialize;

use super::special::{beta_inc_ln, beta_quantile_ln, ln_beta, ln_rising};

/// Beyond this concentration the prior is a point mass for any data set seen in
/// practice (its standard deviation is under 1e-4 of the mean's).
const MAX_CONCENTRATION: f64 = 1e8;

/// ln of the smallest concentration tried (1e-6).
const MIN_W: f64 = -13.815_510_557_964_274;

/// The fitted prior of a set of items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prior {
    /// The prior's mean μ = a / (a + b); the pooled rate when [`Self::flat`].
    pub mean: f64,
    /// a and b; `None` when flat.
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// The data show no between-item variation: the likelihood rises all the way
    /// to κ = ∞, where every item has the pooled rate.
    pub flat: bool,
    /// The log marginal likelihood at the fit and with one rate for all items
    /// (κ = ∞), both without the binomial coefficients; `lr` is twice their
    /// difference, the likelihood-ratio statistic for between-item variation.
    pub log_likelihood: f64,
    pub log_likelihood_pooled: f64,
    pub lr: f64,
    pub items: usize,
    pub trials: u64,
    pub successes: u64,
    pub iterations: usize,
}

impl Prior {
    /// κ = a + b: how many trials the prior is worth.
    pub fn concentration(&self) -> Option<f64> {
        Some(self.a? + self.b?)
    }
}

/// Each distinct positive value and how many items have it.
fn histogram(values: impl Iterator<Item = u64>) -> Vec<(u64, f64)> {
    let mut v: Vec<u64> = values.filter(|&x| x > 0).collect();
    v.sort_unstable();
    let mut out: Vec<(u64, f64)> = Vec::new();
    for x in v {
        match out.last_mut() {
            Some((y, n)) if *y == x => *n += 1.0,
            _ => out.push((x, 1.0)),
        }
    }
    out
}

/// The log-likelihood and its derivatives in (a, b).
struct Eval {
    value: f64,
    grad: [f64; 2],
    /// ∂²/∂a², ∂²/∂b², ∂²/∂a∂b
    hess: [f64; 3],
}

struct Data {
    successes: Vec<(u64, f64)>,
    failures: Vec<(u64, f64)>,
    trials: Vec<(u64, f64)>,
}

impl Data {
    fn eval(&self, a: f64, b: f64) -> Eval {
        let sum = |h: &[(u64, f64)], x: f64| {
            h.iter().fold((0.0, 0.0, 0.0), |acc, &(v, n)| {
                let r = ln_rising(x, v);
                (acc.0 + n * r.0, acc.1 + n * r.1, acc.2 + n * r.2)
            })
        };
        let (sa, sb, sn) = (
            sum(&self.successes, a),
            sum(&self.failures, b),
            sum(&self.trials, a + b),
        );
        Eval {
            value: sa.0 + sb.0 - sn.0,
            grad: [sa.1 - sn.1, sb.1 - sn.1],
            hess: [sa.2 - sn.2, sb.2 - sn.2, -sn.2],
        }
    }
}

/// Fits the prior of items with `trials[i]` trials and `successes[i]` successes
/// (each ≤ its trials: the caller checks).
pub fn fit(trials: &[u64], successes: &[u64]) -> Prior {
    let (n, c): (u64, u64) = (trials.iter().sum(), successes.iter().sum());
    let pooled = if n > 0 { c as f64 / n as f64 } else { 0.0 };
    let ll_pooled = match (c, n - c) {
        (0, _) | (_, 0) => 0.0,
        (c, f) => c as f64 * pooled.ln() + f as f64 * (1.0 - pooled).ln(),
    };
    let flat = |iterations| Prior {
        mean: pooled,
        a: None,
        b: None,
        flat: true,
        log_likelihood: ll_pooled,
        log_likelihood_pooled: ll_pooled,
        lr: 0.0,
        items: trials.len(),
        trials: n,
        successes: c,
        iterations,
    };
    // No successes or no failures at all: every item's rate is 0 (or 1) as far as
    // the data can tell.
    if c == 0 || c == n {
        return flat(0);
    }
    let data = Data {
        successes: histogram(successes.iter().copied()),
        failures: histogram(trials.iter().zip(successes).map(|(n, c)| n - c)),
        trials: histogram(trials.iter().copied()),
    };
    let ab = |t: [f64; 2]| {
        let mu = 1.0 / (1.0 + (-t[0]).exp());
        let kappa = t[1].exp();
        (mu * kappa, (1.0 - mu) * kappa)
    };
    let max_w = MAX_CONCENTRATION.ln() + 1.0;
    let mut theta = [
        (pooled / (1.0 - pooled)).ln(),
        (2.0 / pooled.min(1.0 - pooled)).ln().min(max_w - 1.0),
    ];
    let mut lambda = 0.0f64;
    let mut iterations = 0;
    for it in 1..=500 {
        iterations = it;
        let (a, b) = ab(theta);
        let e = data.eval(a, b);
        let (mu, kappa) = (a / (a + b), a + b);
        // The chain rule to (u, w) = (logit μ, ln κ).
        let s = kappa * mu * (1.0 - mu);
        let (ga, gb) = (e.grad[0], e.grad[1]);
        let g = [s * (ga - gb), a * ga + b * gb];
        let [haa, hbb, hab] = e.hess;
        let huu = s * s * (haa + hbb - 2.0 * hab) + s * (1.0 - 2.0 * mu) * (ga - gb);
        let hww = a * a * haa + b * b * hbb + 2.0 * a * b * hab + a * ga + b * gb;
        let huw = s * (a * haa - b * hbb + (b - a) * hab) + s * (ga - gb);
        // Maximise: solve (−H + λ·diag) step = g, raising λ until the step climbs.
        let mut climbed = false;
        for _ in 0..60 {
            let (m11, m22) = (
                -huu + lambda * huu.abs().max(1e-12),
                -hww + lambda * hww.abs().max(1e-12),
            );
            let m12 = -huw;
            let det = m11 * m22 - m12 * m12;
            if !(m11 > 0.0 && det > 0.0) {
                lambda = (lambda * 10.0).max(1e-3);
                continue;
            }
            let step = [
                (m22 * g[0] - m12 * g[1]) / det,
                (m11 * g[1] - m12 * g[0]) / det,
            ];
            // κ is kept within [1e-6, 1e8·e]: below, items share nothing and the
            // posterior is the raw rate anyway; above, the prior is flat.
            let next = [theta[0] + step[0], (theta[1] + step[1]).clamp(MIN_W, max_w)];
            let (na, nb) = ab(next);
            let value = data.eval(na, nb).value;
            if value >= e.value - 1e-12 * e.value.abs() {
                let moved = (next[0] - theta[0]).abs().max((next[1] - theta[1]).abs());
                theta = next;
                lambda *= 0.1;
                climbed = moved > 1e-11 * (1.0 + theta[0].abs().max(theta[1].abs()));
                break;
            }
            lambda = (lambda * 10.0).max(1e-3);
        }
        if !climbed || theta[1] >= max_w {
            break;
        }
    }
    let (a, b) = ab(theta);
    let value = data.eval(a, b).value;
    if a + b >= MAX_CONCENTRATION || !value.is_finite() {
        return flat(iterations);
    }
    Prior {
        mean: a / (a + b),
        a: Some(a),
        b: Some(b),
        flat: false,
        log_likelihood: value,
        log_likelihood_pooled: ll_pooled,
        lr: 2.0 * (value - ll_pooled).max(0.0),
        items: trials.len(),
        trials: n,
        successes: c,
        iterations,
    }
}

/// One item's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Posterior {
    pub mean: f64,
    /// The central credible interval at the requested level.
    pub lower: f64,
    pub upper: f64,
    /// P(the item's rate > the reference rate).
    pub p_above: f64,
    /// How far the estimate sits from the raw rate toward the prior mean:
    /// κ / (κ + n), 1 for a flat prior.
    pub shrinkage: f64,
}

/// The posterior of an item with `c` successes in `n` trials under `prior`. With
/// a flat prior every item is the pooled rate, with the pooled data's own
/// uncertainty (Jeffreys' Beta(½ + Σc, ½ + Σf)).
pub fn posterior(prior: &Prior, c: u64, n: u64, level: f64, reference: f64) -> Posterior {
    let (alpha, beta, mean, shrinkage) = match (prior.a, prior.b) {
        (Some(a), Some(b)) => {
            let (alpha, beta) = (a + c as f64, b + (n - c) as f64);
            (
                alpha,
                beta,
                alpha / (alpha + beta),
                (a + b) / (a + b + n as f64),
            )
        }
        _ => (
            0.5 + prior.successes as f64,
            0.5 + (prior.trials - prior.successes) as f64,
            prior.mean,
            1.0,
        ),
    };
    let tail = (1.0 - level) / 2.0;
    let ln_b = ln_beta(alpha, beta);
    Posterior {
        mean,
        lower: beta_quantile_ln(alpha, beta, tail, ln_b),
        upper: beta_quantile_ln(alpha, beta, 1.0 - tail, ln_b),
        p_above: 1.0 - beta_inc_ln(alpha, beta, reference, ln_b),
        shrinkage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::special::beta_inc;

    /// The log marginal likelihood summed item by item, from ln B directly.
    fn direct(trials: &[u64], successes: &[u64], a: f64, b: f64) -> f64 {
        trials
            .iter()
            .zip(successes)
            .map(|(&n, &c)| ln_beta(a + c as f64, b + (n - c) as f64) - ln_beta(a, b))
            .sum()
    }

    #[test]
    fn the_grouped_likelihood_and_its_derivatives_are_exact() {
        let trials = [120, 20, 300, 300, 45, 1000];
        let successes = [0, 3, 2, 2, 1, 9];
        let data = Data {
            successes: histogram(successes.iter().copied()),
            failures: histogram(trials.iter().zip(&successes).map(|(n, c)| n - c)),
            trials: histogram(trials.iter().copied()),
        };
        let (a, b, h) = (1.7, 230.0, 1e-5);
        let e = data.eval(a, b);
        assert!((e.value - direct(&trials, &successes, a, b)).abs() < 1e-9);
        // Central differences of the value and the gradient.
        let v = |a, b| data.eval(a, b).value;
        let ga = (v(a + h, b) - v(a - h, b)) / (2.0 * h);
        let gb = (v(a, b + h * 100.0) - v(a, b - h * 100.0)) / (200.0 * h);
        assert!(
            (ga - e.grad[0]).abs() < 1e-6 * ga.abs().max(1.0),
            "{ga} {}",
            e.grad[0]
        );
        assert!(
            (gb - e.grad[1]).abs() < 1e-6 * gb.abs().max(1e-3),
            "{gb} {}",
            e.grad[1]
        );
        let haa = (data.eval(a + h, b).grad[0] - data.eval(a - h, b).grad[0]) / (2.0 * h);
        let hab = (data.eval(a + h, b).grad[1] - data.eval(a - h, b).grad[1]) / (2.0 * h);
        assert!(
            (haa - e.hess[0]).abs() < 1e-5 * haa.abs(),
            "{haa} {}",
            e.hess[0]
        );
        assert!(
            (hab - e.hess[2]).abs() < 1e-5 * hab.abs().max(1e-9),
            "{hab} {}",
            e.hess[2]
        );
    }

    #[test]
    fn the_fit_is_the_maximum_and_the_posterior_its_beta() {
        // Overdispersed by construction: rates 1%, 5% and 20%, 200 trials each.
        let trials = vec![200u64; 30];
        let successes: Vec<u64> = (0..30).map(|i| [2, 10, 40][i % 3]).collect();
        let p = fit(&trials, &successes);
        assert!(!p.flat && p.lr > 100.0, "{p:?}");
        let (a, b) = (p.a.unwrap(), p.b.unwrap());
        // A maximum: every small move in (a, b) lowers the likelihood.
        let best = direct(&trials, &successes, a, b);
        assert!((best - p.log_likelihood).abs() < 1e-8);
        for (da, db) in [
            (1.001, 1.0),
            (0.999, 1.0),
            (1.0, 1.001),
            (1.0, 0.999),
            (1.001, 1.001),
        ] {
            assert!(
                direct(&trials, &successes, a * da, b * db) < best,
                "{da} {db}"
            );
        }
        // The posterior of 0/200 is Beta(a, b + 200).
        let q = posterior(&p, 0, 200, 0.9, p.mean);
        assert!((q.mean - a / (a + b + 200.0)).abs() < 1e-15);
        assert!((beta_inc(a, b + 200.0, q.lower) - 0.05).abs() < 1e-10);
        assert!((beta_inc(a, b + 200.0, q.upper) - 0.95).abs() < 1e-10);
        assert!((q.shrinkage - (a + b) / (a + b + 200.0)).abs() < 1e-15);
        assert!(q.p_above < 0.5);
    }

    #[test]
    fn items_alike_give_a_flat_fit_and_the_pooled_rate() {
        // Exactly binomial-mean counts: no room for between-item variation.
        let trials = vec![1000u64; 40];
        let successes = vec![5u64; 40];
        let p = fit(&trials, &successes);
        assert!(p.flat && p.a.is_none(), "{p:?}");
        assert!((p.mean - 0.005).abs() < 1e-15);
        let q = posterior(&p, 0, 10, 0.95, 0.01);
        assert_eq!(q.mean, 0.005);
        assert!(q.lower < 0.005 && q.upper > 0.005 && q.shrinkage == 1.0);
        // No successes at all, or all successes: flat at 0 and 1.
        assert_eq!(fit(&[10, 20], &[0, 0]).mean, 0.0);
        assert_eq!(fit(&[10, 20], &[10, 20]).mean, 1.0);
        // All-or-nothing items: as little shrinkage as allowed, never NaN.
        let p = fit(&[10, 10, 10, 10], &[0, 10, 0, 10]);
        assert!(!p.flat && p.concentration().unwrap() < 1e-3, "{p:?}");
        let q = posterior(&p, 10, 10, 0.95, 0.5);
        assert!(
            q.mean > 0.999 && q.lower.is_finite() && q.upper <= 1.0,
            "{q:?}"
        );
    }
}

//! Bandit allocation over Beta posteriors: the probability that each arm is
//! best, exact by numerical integration for few arms and by seeded Monte Carlo
//! beyond; the allocation it implies (Thompson sampling or top-two Thompson
//! sampling, mixed with a minimum share); and off-policy evaluation of an
//! allocation against logged propensities (IPW and self-normalised IPW).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::special::{beta_inc_ln, beta_quantile_ln, ln_beta};
use crate::models::{StopFlag, Stopped};

/// An arm's posterior Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    pub a: f64,
    pub b: f64,
}

/// Tail mass left out of each arm's range of integration: far below the
/// integration's own error.
const TAIL: f64 = 1e-15;

/// Full draws that set Monte Carlo's level m.
const PILOT: usize = 32;

/// P(arm i is best) for every arm, by adaptive Gauss–Kronrod integration of
/// fᵢ(x)·Πⱼ≠ᵢ Fⱼ(x) over the range holding all but 10⁻¹⁵ of arm i's mass.
/// Costs about arms² × a few hundred incomplete-beta evaluations.
pub fn p_best_exact(arms: &[Arm], stop: &StopFlag) -> Result<Vec<f64>, Stopped> {
    let ln_b: Vec<f64> = arms.iter().map(|r| ln_beta(r.a, r.b)).collect();
    arms.par_iter()
        .enumerate()
        .map(|(i, arm)| {
            stop.check()?;
            let lo = beta_quantile_ln(arm.a, arm.b, TAIL, ln_b[i]);
            let hi = beta_quantile_ln(arm.a, arm.b, 1.0 - TAIL, ln_b[i]);
            let integrand = |x: f64| {
                let density =
                    ((arm.a - 1.0) * x.ln() + (arm.b - 1.0) * (-x).ln_1p() - ln_b[i]).exp();
                let others: f64 = arms
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(j, o)| beta_inc_ln(o.a, o.b, x, ln_b[j]))
                    .product();
                density * others
            };
            Ok(adaptive(&integrand, lo, hi, 1e-13))
        })
        .collect()
}

/// The (7, 15) Gauss–Kronrod rule on [a, b]: the Kronrod estimate and its
/// difference from the Gauss one (the error estimate).
fn kronrod(f: &dyn Fn(f64) -> f64, a: f64, b: f64) -> (f64, f64) {
    const XK: [f64; 8] = [
        0.991_455_371_120_812_6,
        0.949_107_912_342_758_5,
        0.864_864_423_359_769_1,
        0.741_531_185_599_394_4,
        0.586_087_235_467_691_1,
        0.405_845_151_377_397_2,
        0.207_784_955_007_898_5,
        0.0,
    ];
    const WK: [f64; 8] = [
        0.022_935_322_010_529_22,
        0.063_092_092_629_978_55,
        0.104_790_010_322_250_2,
        0.140_653_259_715_525_9,
        0.169_004_726_639_267_9,
        0.190_350_578_064_785_4,
        0.204_432_940_075_298_9,
        0.209_482_141_084_728,
    ];
    const WG: [f64; 4] = [
        0.129_484_966_168_869_7,
        0.279_705_391_489_276_7,
        0.381_830_050_505_118_9,
        0.417_959_183_673_469_4,
    ];
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let (mut k, mut g) = (0.0, 0.0);
    for (i, (&x, &w)) in XK.iter().zip(&WK).enumerate() {
        let sum = match i {
            7 => f(mid),
            _ => f(mid - half * x) + f(mid + half * x),
        };
        k += w * sum;
        // The Gauss nodes are the Kronrod nodes of odd index.
        if i % 2 == 1 {
            g += WG[i / 2] * sum;
        }
    }
    (k * half, ((k - g) * half).abs())
}

/// ∫ f over [a, b], globally adaptive (QUADPACK's QAG): the interval with the
/// largest error estimate is halved until the total is within `tol` (absolute,
/// or 1e-12 of the integral), or there are [`MAX_INTERVALS`] intervals.
fn adaptive(f: &dyn Fn(f64) -> f64, a: f64, b: f64, tol: f64) -> f64 {
    let mut parts = vec![(a, b, kronrod(f, a, b))];
    loop {
        let total: f64 = parts.iter().map(|p| p.2.0).sum();
        let error: f64 = parts.iter().map(|p| p.2.1).sum();
        if error <= tol.max(1e-12 * total.abs()) || parts.len() >= MAX_INTERVALS {
            return total;
        }
        let worst = (0..parts.len())
            .max_by(|&i, &j| parts[i].2.1.total_cmp(&parts[j].2.1))
            .unwrap_or(0);
        let (lo, hi, _) = parts.swap_remove(worst);
        let mid = (lo + hi) / 2.0;
        parts.push((lo, mid, kronrod(f, lo, mid)));
        parts.push((mid, hi, kronrod(f, mid, hi)));
    }
}

/// Subintervals at most, as QUADPACK's default `limit`.
const MAX_INTERVALS: usize = 1000;

/// A Gamma(shape) sampler (Marsaglia and Tsang; shapes below 1 by the boost
/// U^(1/shape)).
#[derive(Debug, Clone, Copy)]
struct Gamma {
    d: f64,
    c: f64,
    /// 1/shape when shape < 1, else 0.
    boost: f64,
}

impl Gamma {
    fn new(shape: f64) -> Self {
        let (s, boost) = if shape < 1.0 {
            (shape + 1.0, 1.0 / shape)
        } else {
            (shape, 0.0)
        };
        let d = s - 1.0 / 3.0;
        Gamma {
            d,
            c: 1.0 / (9.0 * d).sqrt(),
            boost,
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        loop {
            // A standard normal by the polar method.
            let z = loop {
                let (u, v): (f64, f64) = (
                    rng.random::<f64>() * 2.0 - 1.0,
                    rng.random::<f64>() * 2.0 - 1.0,
                );
                let s = u * u + v * v;
                if s > 0.0 && s < 1.0 {
                    break u * (-2.0 * s.ln() / s).sqrt();
                }
            };
            let v = 1.0 + self.c * z;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u: f64 = rng.random();
            if u < 1.0 - 0.0331 * z.powi(4) || u.ln() < 0.5 * z * z + self.d * (1.0 - v + v.ln()) {
                let g = self.d * v;
                return match self.boost {
                    0.0 => g,
                    e => g * rng.random::<f64>().powf(e),
                };
            }
        }
    }
}

/// P(arm i is best) by Monte Carlo: `draws` joint draws from the posteriors,
/// seeded (the same seed gives the same answer on any number of threads), and
/// each estimate's standard error. (xoshiro's stream: a uniform per arm per
/// draw must be cheap.)
///
/// With many arms, most draws of most arms cannot matter: only the top of the
/// joint draw does. So a pilot finds a level m that the best arm of a draw
/// almost always exceeds; each arm then exceeds m with its tail probability
/// 1 − Fⱼ(m) (one uniform per arm), and only the arms that do are drawn, from
/// their tail by inversion. A draw where none exceeds m draws every arm below
/// m instead. Both branches are exact conditionals, so the estimate is unbiased,
/// at a uniform per arm instead of two Gamma draws.
pub fn p_best_mc(
    arms: &[Arm],
    draws: usize,
    seed: u64,
    stop: &StopFlag,
) -> Result<(Vec<f64>, Vec<f64>), Stopped> {
    let k = arms.len();
    let samplers: Vec<(Gamma, Gamma)> = arms
        .iter()
        .map(|r| (Gamma::new(r.a), Gamma::new(r.b)))
        .collect();
    let draw = |i: usize, rng: &mut SmallRng| {
        let (x, y) = (samplers[i].0.sample(rng), samplers[i].1.sample(rng));
        x / (x + y)
    };
    // The pilot: the smallest maximum of a few full draws.
    let mut rng = SmallRng::seed_from_u64(seed);
    let level = (0..PILOT)
        .map(|_| {
            (0..k)
                .map(|i| draw(i, &mut rng))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .fold(f64::INFINITY, f64::min);
    let ln_b: Vec<f64> = arms.iter().map(|r| ln_beta(r.b, r.a)).collect();
    // P(Xᵢ > m) = I_{1−m}(b, a), accurate however small.
    let tails: Vec<f64> = arms
        .iter()
        .zip(&ln_b)
        .map(|(r, &lb)| beta_inc_ln(r.b, r.a, 1.0 - level, lb))
        .collect();
    // An inversion costs about thirty Gamma draws: worth it only when few
    // arms exceed m (a uniform per arm is nearly free).
    let thin = tails.iter().sum::<f64>() < 0.02 * k as f64;
    // Blocks of draws with their own seeds: the result does not depend on how
    // rayon splits the work.
    const BLOCK: usize = 1024;
    let wins = (0..draws.div_ceil(BLOCK))
        .into_par_iter()
        .map(|block| {
            stop.check()?;
            let mut rng = SmallRng::seed_from_u64(
                seed ^ (block as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let mut wins = vec![0u64; k];
            for _ in (block * BLOCK)..((block + 1) * BLOCK).min(draws) {
                let (mut best, mut best_value) = (0, f64::NEG_INFINITY);
                if thin {
                    for i in 0..k {
                        let u: f64 = rng.random();
                        if u < tails[i] {
                            // Xᵢ given Xᵢ > m: 1 − X', X' ~ Beta(b, a) below 1 − m.
                            let v: f64 = rng.random::<f64>() * tails[i];
                            let x = 1.0 - beta_quantile_ln(arms[i].b, arms[i].a, v, ln_b[i]);
                            if x > best_value {
                                (best, best_value) = (i, x);
                            }
                        }
                    }
                }
                if !thin || best_value == f64::NEG_INFINITY {
                    // Every arm, below m when no arm exceeded it.
                    for i in 0..k {
                        let x = loop {
                            let x = draw(i, &mut rng);
                            if !thin || x <= level {
                                break x;
                            }
                        };
                        if x > best_value {
                            (best, best_value) = (i, x);
                        }
                    }
                }
                wins[best] += 1;
            }
            Ok(wins)
        })
        .try_reduce(
            || vec![0u64; k],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                Ok(a)
            },
        )?;
    let n = draws.max(1) as f64;
    let p: Vec<f64> = wins.iter().map(|&w| w as f64 / n).collect();
    let se = p.iter().map(|&p| (p * (1.0 - p) / n).sqrt()).collect();
    Ok((p, se))
}

/// How P(best) becomes the share of traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Thompson sampling: each arm's share is its P(best).
    Thompson,
    /// Top-two Thompson sampling (Russo 2016) with β: the best arm of a draw
    /// with probability β, else the best of a redraw that excludes it, which
    /// keeps exploring the runner-up when one arm already dominates.
    TopTwo { beta: f64 },
}

/// The allocation: P(best) turned into shares by `rule`, then every arm
/// raised to `min_share` (taken from the others in proportion), so that
/// weights sum to 1 and none starves.
pub fn allocate(p_best: &[f64], rule: Rule, min_share: f64) -> Vec<f64> {
    let raw: Vec<f64> = match rule {
        Rule::Thompson => p_best.to_vec(),
        Rule::TopTwo { beta } => {
            // P(J = i) for the redraw: Σₖ≠ᵢ pₖ · pᵢ / (1 − pₖ).
            let runner_up: f64 = p_best
                .iter()
                .map(|&pk| if pk < 1.0 { pk / (1.0 - pk) } else { 0.0 })
                .sum();
            p_best
                .iter()
                .map(|&pi| {
                    let own = if pi < 1.0 { pi / (1.0 - pi) } else { 0.0 };
                    beta * pi + (1.0 - beta) * pi * (runner_up - own)
                })
                .collect()
        }
    };
    let total: f64 = raw.iter().sum();
    let k = raw.len() as f64;
    let free = 1.0 - min_share * k;
    raw.iter()
        .map(|&r| {
            let share = if total > 0.0 { r / total } else { 1.0 / k };
            min_share + free * share
        })
        .collect()
}

/// Off-policy estimates of a candidate policy's mean reward from logged rows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OffPolicy {
    /// Weights above this were clipped to it (`None`: not clipped).
    pub clip: Option<f64>,
    pub ipw: f64,
    pub ipw_se: f64,
    pub snipw: f64,
    pub snipw_se: f64,
    pub max_weight: f64,
    /// (Σw)² / Σw²: how many logged rows the estimate is worth.
    pub effective_sample_size: f64,
}

/// IPW and self-normalised IPW of rewards `r` with importance weights `w`
/// (candidate probability / logged propensity), clipped at `clip`.
pub fn off_policy(r: &[f64], w: &[f64], clip: Option<f64>) -> OffPolicy {
    let n = r.len().max(1) as f64;
    let w: Vec<f64> = w.iter().map(|&v| clip.map_or(v, |c| v.min(c))).collect();
    let wr: Vec<f64> = w.iter().zip(r).map(|(w, r)| w * r).collect();
    let sum_w: f64 = w.iter().sum();
    let ipw = wr.iter().sum::<f64>() / n;
    let variance = |v: &[f64], mean: f64| {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)
    };
    let snipw = if sum_w > 0.0 {
        wr.iter().sum::<f64>() / sum_w
    } else {
        f64::NAN
    };
    // The delta method: the self-normalised estimate's influence is
    // w·(r − snipw) / mean(w).
    let mean_w = sum_w / n;
    let influence: Vec<f64> = w
        .iter()
        .zip(r)
        .map(|(w, r)| w * (r - snipw) / mean_w)
        .collect();
    OffPolicy {
        clip,
        ipw,
        ipw_se: (variance(&wr, ipw) / n).sqrt(),
        snipw,
        snipw_se: (variance(&influence, 0.0) / n).sqrt(),
        max_weight: w.iter().fold(0.0, |m: f64, &v| m.max(v)),
        effective_sample_size: if sum_w > 0.0 {
            sum_w * sum_w / w.iter().map(|v| v * v).sum::<f64>()
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(B > A) for integer a_B in closed form (Evan Miller).
    fn two_arm_closed(a: Arm, b: Arm) -> f64 {
        (0..b.a as u64)
            .map(|i| {
                let i = i as f64;
                (ln_beta(a.a + i, a.b + b.b)
                    - (b.b + i).ln()
                    - ln_beta(1.0 + i, b.b)
                    - ln_beta(a.a, a.b))
                .exp()
            })
            .sum()
    }

    #[test]
    fn exact_matches_the_closed_form_and_sums_to_one() {
        let (a, b) = (Arm { a: 5.0, b: 276.0 }, Arm { a: 5.0, b: 269.0 });
        let p = p_best_exact(&[a, b], &StopFlag::default()).unwrap();
        let closed = two_arm_closed(a, b);
        assert!((p[1] - closed).abs() < 1e-10, "{p:?} against {closed}");
        assert!((p[0] + p[1] - 1.0).abs() < 1e-10);
        // A narrow arm among wide ones still integrates to a total of 1.
        let arms = [
            Arm {
                a: 500.0,
                b: 99_500.0,
            },
            Arm { a: 2.0, b: 300.0 },
            Arm { a: 1.0, b: 1.0 },
            Arm { a: 30.0, b: 5000.0 },
        ];
        let p = p_best_exact(&arms, &StopFlag::default()).unwrap();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{p:?}");
        // One arm far ahead: its integrand is 1 to the last digit, which once
        // made an error tolerance halved per level unreachable (a hang).
        let arms = [
            Arm { a: 50.0, b: 2032.0 },
            Arm { a: 77.0, b: 2601.0 },
            Arm {
                a: 833.0,
                b: 18413.0,
            },
        ];
        let p = p_best_exact(&arms, &StopFlag::default()).unwrap();
        assert!(
            (p.iter().sum::<f64>() - 1.0).abs() < 1e-9 && p[2] > 0.9999,
            "{p:?}"
        );
    }

    #[test]
    fn monte_carlo_agrees_with_exact_and_is_seeded() {
        let arms: Vec<Arm> = (0..12)
            .map(|i| Arm {
                a: 3.0 + i as f64 * 0.4,
                b: 300.0,
            })
            .collect();
        let exact = p_best_exact(&arms, &StopFlag::default()).unwrap();
        let (mc, se) = p_best_mc(&arms, 100_000, 7, &StopFlag::default()).unwrap();
        for i in 0..arms.len() {
            assert!(
                (mc[i] - exact[i]).abs() < 4.5 * se[i].max(1e-4),
                "{i}: {} against {}",
                mc[i],
                exact[i]
            );
        }
        let (again, _) = p_best_mc(&arms, 100_000, 7, &StopFlag::default()).unwrap();
        assert_eq!(mc, again);
        // Many arms, few of them contenders: the tail-only draws. The 2,000
        // hopeless arms (mean 0.1%) cannot change the contenders' chances.
        let contenders: Vec<Arm> = (0..10)
            .map(|i| Arm {
                a: 25.0 + i as f64 * 2.0,
                b: 1000.0,
            })
            .collect();
        let mut arms = contenders.clone();
        arms.extend((0..2000).map(|_| Arm { a: 2.0, b: 2000.0 }));
        let exact = p_best_exact(&contenders, &StopFlag::default()).unwrap();
        let (mc, se) = p_best_mc(&arms, 50_000, 3, &StopFlag::default()).unwrap();
        for i in 0..contenders.len() {
            assert!(
                (mc[i] - exact[i]).abs() < 4.5 * se[i].max(1e-4),
                "{i}: {} against {}",
                mc[i],
                exact[i]
            );
        }
        assert_eq!(mc[10..].iter().sum::<f64>(), 0.0);
    }

    #[test]
    fn allocation_keeps_the_minimum_share_and_sums_to_one() {
        let p = [0.9, 0.09, 0.01, 0.0];
        for rule in [Rule::Thompson, Rule::TopTwo { beta: 0.5 }] {
            let w = allocate(&p, rule, 0.05);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            assert!(w.iter().all(|&x| x >= 0.05 - 1e-15), "{w:?}");
            assert!(w[0] > w[1] && w[1] > w[2], "{w:?}");
        }
        // Top-two gives the runner-up more than plain Thompson sampling.
        let (t, tt) = (
            allocate(&p, Rule::Thompson, 0.0),
            allocate(&p, Rule::TopTwo { beta: 0.5 }, 0.0),
        );
        assert!(tt[1] > t[1] && tt[0] < t[0], "{t:?} {tt:?}");
        assert!((tt[0] - (0.5 * 0.9 + 0.5 * 0.9 * (0.09 / 0.91 + 0.01 / 0.99))).abs() < 1e-12);
    }

    #[test]
    fn off_policy_by_hand() {
        let r = [1.0, 0.0, 1.0, 0.0];
        let w = [2.0, 0.5, 0.5, 1.0];
        let e = off_policy(&r, &w, None);
        assert!((e.ipw - 2.5 / 4.0).abs() < 1e-15);
        assert!((e.snipw - 2.5 / 4.0).abs() < 1e-15);
        assert!((e.effective_sample_size - 16.0 / 5.5).abs() < 1e-12);
        assert_eq!(e.max_weight, 2.0);
        let c = off_policy(&r, &w, Some(1.0));
        assert!((c.ipw - 1.5 / 4.0).abs() < 1e-15);
        assert!((c.snipw - 1.5 / 3.0).abs() < 1e-15);
    }
}

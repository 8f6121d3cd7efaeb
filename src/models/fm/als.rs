//! `fm`'s `als` loss: implicit ALS's weighted squared error (Hu, Koren &
//! Volinsky 2008, as [`crate::models::als`]) over items that are the sum of an
//! identity embedding and their content features' embeddings, fitted by
//! alternating least squares.
//!
//! Each epoch solves the users as ALS does, then the content embeddings `W`
//! with the users fixed, then the identities:
//! - Items share features, so the content step does not split by row: it takes
//!   a few conjugate-gradient steps on `(Xᵀ A X + Λ) W = Xᵀ (B − A E)` from the
//!   previous `W`, where `A` applies each item's `UᵀU + Uᵀ(C − I)U`, `B` holds
//!   each item's `Uᵀ C p` and `E` the identity parts.
//! - The identity step is ALS's item step with the penalty pulling a known
//!   item toward its content prediction `XW` instead of toward zero: an item
//!   with few interactions stays near what its features say, one with many is
//!   free to differ. An item without interactions is its prediction alone.
//!
//! Regularisation is ALS-WR's throughout (the caller sets
//! `scale_regularization`): a row's λ is scaled by its number of interactions,
//! a feature's by the interactions of its items (times its weight in each).

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::FmModel;
use crate::models::als::{self, AlsParams, Confidence};
use crate::models::dense::{axpy, dot, gram, symv};
use crate::models::{Csr, StopFlag, Stopped};

/// What an `als` fit learns from.
pub struct AlsInput<'a> {
    /// Users × items interaction values (confidences as [`als::confidence`]).
    pub values: &'a Csr,
    /// Items × content features, rows already weighted.
    pub content: Option<&'a Csr>,
    /// Whether items with interactions get their own embedding beside their
    /// content.
    pub identity: bool,
}

pub fn fit(input: &AlsInput, p: &AlsParams, stop: &StopFlag) -> Result<FmModel, Stopped> {
    let k = p.factors;
    let cui = als::confidence(input.values, p);
    let ciu = Confidence {
        matrix: Cow::Owned(cui.matrix.transpose()),
        alpha: cui.alpha,
    };
    let n_items = ciu.matrix.n_rows;
    let own: Vec<bool> = (0..n_items)
        .map(|i| input.identity && !ciu.row(i).0.is_empty())
        .collect();
    let mut rng = StdRng::seed_from_u64(p.seed);
    let mut u: Vec<f32> = (0..cui.matrix.n_rows * k)
        .map(|_| rng.random::<f32>() * 0.01)
        .collect();
    let mut v: Vec<f32> = (0..n_items * k)
        .map(|n| match own[n / k] {
            true => rng.random::<f32>() * 0.01,
            false => 0.0,
        })
        .collect();
    // Content embeddings start small and random, as ALS's factors do (at zero,
    // a model without identities would stay at zero).
    let mut content = input.content.map(|x| Content::new(x, &ciu, p, &mut rng));
    let mut predicted = match &content {
        Some(content) => content.predict(),
        None => vec![0f32; n_items * k],
    };
    v.iter_mut().zip(&predicted).for_each(|(v, c)| *v += c);
    for _ in 0..p.iterations {
        als::solve_side(&cui, &v, &mut u, None, p, stop)?;
        if let Some(content) = &mut content {
            let g = gram(&u, k);
            let mut identity = std::mem::take(&mut v);
            for ((row, pred), &own) in identity
                .chunks_exact_mut(k)
                .zip(predicted.chunks_exact(k))
                .zip(&own)
            {
                match own {
                    true => row.iter_mut().zip(pred).for_each(|(e, c)| *e -= c),
                    false => row.fill(0.0),
                }
            }
            content.solve(&ciu, &u, &g, &identity, stop)?;
            predicted = content.predict();
            v = identity;
            v.iter_mut().zip(&predicted).for_each(|(v, c)| *v += c);
        }
        if input.identity {
            let prior = content.as_ref().map(|_| predicted.as_slice());
            als::solve_side(&ciu, &u, &mut v, prior, p, stop)?;
            for ((row, pred), &own) in v
                .chunks_exact_mut(k)
                .zip(predicted.chunks_exact(k))
                .zip(&own)
            {
                if !own {
                    row.copy_from_slice(pred);
                }
            }
        }
    }
    let widen = |m: &[f32], last: f32| -> Vec<f32> {
        m.chunks_exact(k)
            .flat_map(|r| r.iter().copied().chain([last]))
            .collect()
    };
    Ok(FmModel {
        factors: k,
        users: widen(&u, 1.0),
        items: widen(&v, 0.0),
    })
}

/// The content side: the item-feature matrix, its transpose, each feature's λ
/// and the embeddings `W` (features × k).
struct Content<'a> {
    x: &'a Csr,
    xt: Csr,
    lambda: Vec<f32>,
    w: Vec<f32>,
    k: usize,
}

/// Conjugate-gradient steps on `W` per epoch, warm-started as ALS's rows are.
const CONTENT_STEPS: usize = 3;

impl<'a> Content<'a> {
    fn new(x: &'a Csr, ciu: &Confidence, p: &AlsParams, rng: &mut StdRng) -> Self {
        let xt = x.transpose();
        let lambda = (0..xt.n_rows)
            .map(|f| {
                let (items, weights) = xt.row(f);
                let n: f32 = items
                    .iter()
                    .zip(weights)
                    .map(|(&i, &w)| w.abs() * ciu.row(i as usize).0.len() as f32)
                    .sum();
                p.regularization * n
            })
            .collect();
        Self {
            x,
            xt,
            lambda,
            w: (0..x.n_cols * p.factors)
                .map(|_| rng.random::<f32>() * 0.01)
                .collect(),
            k: p.factors,
        }
    }

    /// `XW`: every item's content part.
    fn predict(&self) -> Vec<f32> {
        sparse_times(self.x, &self.w, self.k)
    }

    /// Conjugate-gradient steps on `W` from its current value.
    fn solve(
        &mut self,
        ciu: &Confidence,
        u: &[f32],
        g: &[f32],
        identity: &[f32],
        stop: &StopFlag,
    ) -> Result<(), Stopped> {
        let k = self.k;
        // B − A E, item by item.
        let mut target = vec![0f32; identity.len()];
        target.par_chunks_mut(k).enumerate().try_for_each_init(
            || vec![0f32; k],
            |ae, (i, out)| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let (users, w) = ciu.row(i);
                for (&user, &wu) in users.iter().zip(w) {
                    axpy(1.0 + ciu.alpha * wu, &u[user as usize * k..][..k], out);
                }
                apply_a(ciu, u, g, i, &identity[i * k..][..k], ae);
                out.iter_mut().zip(ae.iter()).for_each(|(o, a)| *o -= a);
                Ok(())
            },
        )?;
        let mut r = sparse_times(&self.xt, &target, k);
        let mw = self.system(ciu, u, g, &self.w, stop)?;
        r.iter_mut().zip(&mw).for_each(|(r, m)| *r -= m);
        let mut dir = r.clone();
        let mut rs = inner(&r, &r);
        let first = rs;
        for _ in 0..CONTENT_STEPS {
            if rs <= first * 1e-12 || rs == 0.0 {
                break;
            }
            let ad = self.system(ciu, u, g, &dir, stop)?;
            let dad = inner(&dir, &ad);
            if dad <= 0.0 {
                break;
            }
            let step = (rs / dad) as f32;
            axpy(step, &dir, &mut self.w);
            axpy(-step, &ad, &mut r);
            let next = inner(&r, &r);
            let beta = (next / rs) as f32;
            dir.iter_mut().zip(&r).for_each(|(d, r)| *d = r + beta * *d);
            rs = next;
        }
        Ok(())
    }

    /// `(Xᵀ A X + Λ) d`.
    fn system(
        &self,
        ciu: &Confidence,
        u: &[f32],
        g: &[f32],
        d: &[f32],
        stop: &StopFlag,
    ) -> Result<Vec<f32>, Stopped> {
        let k = self.k;
        let xd = sparse_times(self.x, d, k);
        let mut axd = vec![0f32; xd.len()];
        axd.par_chunks_mut(k).enumerate().try_for_each(|(i, out)| {
            if stop.is_stopped() {
                return Err(Stopped);
            }
            apply_a(ciu, u, g, i, &xd[i * k..][..k], out);
            Ok(())
        })?;
        let mut out = sparse_times(&self.xt, &axd, k);
        for ((row, d), &l) in out
            .chunks_exact_mut(k)
            .zip(d.chunks_exact(k))
            .zip(&self.lambda)
        {
            axpy(l, d, row);
        }
        Ok(out)
    }
}

/// `out = (UᵀU + Uᵀ(C − I)U) y` for item `i`: `g` is `UᵀU`.
fn apply_a(ciu: &Confidence, u: &[f32], g: &[f32], i: usize, y: &[f32], out: &mut [f32]) {
    let k = y.len();
    symv::<false>(g, y, out);
    let (users, w) = ciu.row(i);
    for (&user, &wu) in users.iter().zip(w) {
        let ur = &u[user as usize * k..][..k];
        axpy(ciu.alpha * wu * dot(ur, y), ur, out);
    }
}

/// `m · d` for a sparse `m` and a dense `d` with rows of `k`.
fn sparse_times(m: &Csr, d: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.n_rows * k];
    out.par_chunks_mut(k).enumerate().for_each(|(r, row)| {
        let (cols, vals) = m.row(r);
        for (&c, &v) in cols.iter().zip(vals) {
            axpy(v, &d[c as usize * k..][..k], row);
        }
    });
    out
}

/// A long dot product, summed in f64 so its rounding does not depend on length.
fn inner(a: &[f32], b: &[f32]) -> f64 {
    a.par_chunks(4096)
        .zip(b.par_chunks(4096))
        .map(|(a, b)| f64::from(dot(a, b)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Recommender;

    /// Two groups of users each like one half of 20 items; every item carries
    /// its half as a content feature, and item 20 has that feature alone.
    fn planted() -> (Csr, Csr) {
        let (n_users, n_items) = (40, 21);
        let (mut r, mut c) = (Vec::new(), Vec::new());
        for u in 0..n_users as u32 {
            for i in 0..20u32 {
                if (u % 2 == i % 2) && (u + i) % 3 != 0 {
                    r.push(u);
                    c.push(i);
                }
            }
        }
        let values: Vec<f32> = (0..r.len()).map(|n| 1.0 + (n % 4) as f32).collect();
        let items: Vec<u32> = (0..n_items as u32).collect();
        let halves: Vec<u32> = items.iter().map(|i| i % 2).collect();
        (
            Csr::from_triplets(n_users, n_items, &r, &c, &values),
            Csr::from_triplets(n_items, 2, &items, &halves, &vec![1.0; n_items]),
        )
    }

    fn params() -> AlsParams {
        AlsParams {
            factors: 8,
            iterations: 10,
            seed: 3,
            ..AlsParams::default()
        }
    }

    /// Users' mean score of item `i`: (even users, odd users).
    fn by_half(model: &FmModel, i: usize) -> (f32, f32) {
        let mut scores = vec![0f32; 40];
        model.score_block(&(0..40).collect::<Vec<_>>(), i..i + 1, &mut scores);
        let even: f32 = scores.iter().step_by(2).sum();
        let odd: f32 = scores.iter().skip(1).step_by(2).sum();
        (even / 20.0, odd / 20.0)
    }

    #[test]
    fn identity_alone_is_the_als_model() {
        let (values, _) = planted();
        // Item 20 has no interactions; drop it so both models draw the same
        // initial factors.
        let values = Csr {
            n_cols: 20,
            ..values
        };
        let input = AlsInput {
            values: &values,
            content: None,
            identity: true,
        };
        let ours = fit(&input, &params(), &StopFlag::default()).unwrap();
        let (als, _) = als::fit(&values, &params(), &StopFlag::default()).unwrap();
        let narrow = |m: &[f32]| -> Vec<f32> {
            m.chunks_exact(9)
                .flat_map(|r| r[..8].iter().copied())
                .collect()
        };
        assert_eq!(narrow(&ours.users), als.user_factors);
        assert_eq!(narrow(&ours.items), als.item_factors);
    }

    #[test]
    fn a_new_item_reaches_the_users_of_its_features() {
        let (values, content) = planted();
        for identity in [true, false] {
            let input = AlsInput {
                values: &values,
                content: Some(&content),
                identity,
            };
            let model = fit(&input, &params(), &StopFlag::default()).unwrap();
            assert!(model.is_finite());
            // item 20 is in half 0: even users should like it, odd users not
            let (even, odd) = by_half(&model, 20);
            assert!(
                even > 0.1 && even > 3.0 * odd.max(0.0),
                "identity {identity}: even users {even}, odd {odd}"
            );
            // a known item of half 1 the other way round
            let (even, odd) = by_half(&model, 1);
            assert!(
                odd > 3.0 * even.max(0.0),
                "identity {identity}: even {even}, odd {odd}"
            );
        }
    }

    #[test]
    fn a_stop_ends_the_fit() {
        let (values, content) = planted();
        let input = AlsInput {
            values: &values,
            content: Some(&content),
            identity: true,
        };
        let stop = StopFlag::default();
        stop.stop();
        assert_eq!(fit(&input, &params(), &stop).unwrap_err(), Stopped);
    }
}

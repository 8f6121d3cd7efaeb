//! A hybrid factorization model in the style of LightFM (Kula 2015): a user and
//! an item are each the weighted sum of their features' embeddings (an identity
//! feature and content features), with feature biases; the score of an item for
//! a user is `user · item + item bias`. Items with no interactions still have
//! content features, so they get a representation and can be recommended.
//!
//! This module trains on implicit positives by SGD with Adagrad, with WARP
//! (sample negatives until one outranks the positive, up to `max_sampled`, and
//! weigh the update by the rank that implies) or BPR (one negative, logistic
//! loss). [`als`] fits the same kind of model to implicit ALS's weighted
//! squared error instead.
//!
//! Parallel in the Hogwild style: rayon threads take chunks of the shuffled
//! positives and update the shared parameters without locks (see `Shared`). With
//! one thread a seed gives the same model every time; with more, threads
//! interleave differently from run to run and the figures vary a little (as
//! LightFM's do).

pub mod als;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::dense::{axpy, dot, gemm_nt};
use super::{Csr, Recommender, StopFlag, Stopped};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Warp,
    Bpr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FmParams {
    pub factors: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    pub loss: Loss,
    /// WARP: negatives tried per positive before giving up.
    pub max_sampled: usize,
    /// L2 penalty on the user (item) feature parameters an update touches.
    pub user_alpha: f32,
    pub item_alpha: f32,
    pub seed: u64,
}

/// What a fit learns from.
pub struct FmInput<'a> {
    /// Users × items; every stored entry is a positive (values are ignored).
    pub positives: &'a Csr,
    /// Users × user features and items × item features, rows already weighted
    /// (LightFM normalises each row to sum 1).
    pub user_features: &'a Csr,
    pub item_features: &'a Csr,
    /// The items negatives are drawn from: those with interactions, so an item
    /// nobody has seen yet is never pushed down for it.
    pub negatives: &'a [u32],
}

/// The fitted model as users' and items' representations, `k + 1` wide: a user
/// row ends in 1 and an item row in its bias, so a score is one dot product.
#[derive(Debug, Clone, PartialEq)]
pub struct FmModel {
    pub factors: usize,
    pub users: Vec<f32>,
    pub items: Vec<f32>,
}

impl FmModel {
    pub fn width(&self) -> usize {
        self.factors + 1
    }

    /// The items' embeddings without their biases (for item→item cosine).
    pub fn item_embeddings(&self) -> Vec<f32> {
        self.items
            .chunks_exact(self.width())
            .flat_map(|r| r[..self.factors].iter().copied())
            .collect()
    }

    pub fn is_finite(&self) -> bool {
        self.users.iter().chain(&self.items).all(|v| v.is_finite())
    }
}

impl Recommender for FmModel {
    fn n_items(&self) -> usize {
        self.items.len() / self.width()
    }

    fn score_block(&self, rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
        let w = self.width();
        let mut q = Vec::with_capacity(rows.len() * w);
        for &u in rows {
            q.extend_from_slice(&self.users[u as usize * w..(u as usize + 1) * w]);
        }
        gemm_nt(&q, &self.items[items.start * w..items.end * w], w, out);
    }

    fn item_tile(&self) -> usize {
        super::dense::DENSE_ITEM_TILE
    }
}

/// The mean loss of each epoch: WARP's rank weight (0 when no sampled negative
/// outranked the positive) or BPR's `−ln σ(x_ui − x_uj)`.
#[derive(Debug, Clone, Default)]
pub struct FmReport {
    pub losses: Vec<f32>,
}

/// WARP's weight is capped, as in LightFM, so one unlucky sample cannot blow up.
const MAX_WARP_WEIGHT: f32 = 10.0;
/// Positives per parallel task: large enough to amortise the task, small enough
/// to balance two threads and to notice a stop quickly.
const CHUNK: usize = 2048;

/// Embeddings (`k`) and a bias per feature, with their Adagrad accumulators,
/// `w = k + 1` floats a feature each.
struct Table {
    w: usize,
    param: Vec<f32>,
    accum: Vec<f32>,
}

impl Table {
    /// LightFM's initialisation: embeddings uniform in ±0.5/k, biases 0,
    /// accumulators 1.
    fn new(rows: usize, k: usize, rng: &mut StdRng) -> Self {
        let w = k + 1;
        let param = (0..rows * w)
            .map(|i| {
                if i % w == k {
                    0.0
                } else {
                    (rng.random::<f32>() - 0.5) / k as f32
                }
            })
            .collect();
        Self {
            w,
            param,
            accum: vec![1.0; rows * w],
        }
    }

    fn shared(&mut self) -> Shared<'_> {
        Shared {
            w: self.w,
            rows: self.param.len() / self.w,
            param: self.param.as_mut_ptr(),
            accum: self.accum.as_mut_ptr(),
            _table: std::marker::PhantomData,
        }
    }
}

/// A [`Table`] the threads of a fit read and update at once, without locks:
/// Hogwild (Niu et al. 2011), as LightFM and word2vec do. Updates are sparse
/// (the features of one user and two items), so threads rarely touch the same
/// floats, and when they do, one update may overwrite part of another: SGD
/// absorbs that as noise. Plain loads and stores, not atomics, so the loops
/// over a row vectorise; no reference to the floats is ever formed, only raw
/// copies of a feature's row into a thread's own buffers and back.
struct Shared<'a> {
    w: usize,
    rows: usize,
    param: *mut f32,
    accum: *mut f32,
    _table: std::marker::PhantomData<&'a mut Table>,
}

// SAFETY: see the type's doc: concurrent access is by raw copies within the
// table's bounds (asserted in `read`), and the table
// outlives every thread (the borrow of `'a`).
unsafe impl Send for Shared<'_> {}
unsafe impl Sync for Shared<'_> {}

impl Shared<'_> {
    /// Copies feature `f`'s parameters (and accumulators) into `param` (`accum`).
    fn read(&self, f: u32, param: &mut [f32], accum: Option<&mut [f32]>) {
        assert!(
            (f as usize) < self.rows && param.len() == self.w,
            "feature {f} out of range"
        );
        let base = f as usize * self.w;
        // SAFETY: base + w ≤ rows · w (asserted).
        unsafe {
            copy(self.param.add(base), param.as_mut_ptr(), self.w);
            if let Some(accum) = accum {
                copy(self.accum.add(base), accum.as_mut_ptr(), self.w);
            }
        }
    }

    /// Asks the CPU to start loading feature `f`'s parameters: the next
    /// negative's row is random, and its load otherwise stalls the loop.
    fn prefetch(&self, f: u32) {
        #[cfg(target_arch = "x86_64")]
        if (f as usize) < self.rows {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            for line in (0..self.w).step_by(16) {
                // SAFETY: the address is inside the table (checked above); a
                // prefetch reads nothing the program sees.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(
                        self.param.add(f as usize * self.w + line) as *const i8
                    )
                };
            }
        }
    }

    /// Each row's representation, `k + 1` wide.
    fn all(&self, features: &Csr) -> Vec<f32> {
        let mut out = vec![0f32; features.n_rows * self.w];
        let mut row = vec![0f32; self.w];
        for (r, chunk) in out.chunks_exact_mut(self.w).enumerate() {
            self.represent(features.row(r), chunk, &mut row);
        }
        out
    }

    /// `out = Σ x_f · param_f` over a row of features; `row` is scratch.
    fn represent(&self, features: (&[u32], &[f32]), out: &mut [f32], row: &mut [f32]) {
        out.fill(0.0);
        for (&f, &x) in features.0.iter().zip(features.1) {
            self.read(f, row, None);
            axpy(x, row, out);
        }
    }

    /// One Adagrad step of every feature of a row along `grad` (the gradient of
    /// the loss with respect to the representation); `param` and `accum` are scratch.
    fn step(
        &self,
        features: (&[u32], &[f32]),
        grad: &[f32],
        rate: (f32, f32),
        param: &mut [f32],
        accum: &mut [f32],
    ) {
        let (lr, alpha) = rate;
        for (&f, &x) in features.0.iter().zip(features.1) {
            self.read(f, param, Some(&mut *accum));
            for ((p, a), &g) in param.iter_mut().zip(accum.iter_mut()).zip(grad) {
                let g = x * g + alpha * *p;
                *p -= lr * g / a.sqrt();
                *a += g * g;
            }
            let base = f as usize * self.w;
            // SAFETY: `read` checked base + w ≤ rows · w.
            unsafe {
                copy(param.as_ptr(), self.param.add(base), self.w);
                copy(accum.as_ptr(), self.accum.add(base), self.w);
            }
        }
    }
}

/// Copies `n` floats in blocks of eight, inline: `copy_nonoverlapping` of a
/// length known only at run time is a call to `memmove`, which cost half the
/// fit's time on rows of 65 floats.
///
/// # Safety
/// `src` and `dst` are valid for `n` floats and do not overlap.
unsafe fn copy(src: *const f32, dst: *mut f32, n: usize) {
    let blocks = n / 8;
    // SAFETY: every offset is below n, which the caller guarantees.
    unsafe {
        for b in 0..blocks {
            let v = (src.add(b * 8) as *const [f32; 8]).read_unaligned();
            (dst.add(b * 8) as *mut [f32; 8]).write_unaligned(v);
        }
        for d in blocks * 8..n {
            dst.add(d).write(src.add(d).read());
        }
    }
}

/// Scratch of one thread: vectors `k + 1` long, and per item feature its score
/// for the current user (`u · v_f + b_f`), valid where `stamp` is `generation`.
/// Items share content features, so the negatives WARP samples for one positive
/// mostly score from these instead of summing their features' rows again.
struct Scratch {
    user: Vec<f32>,
    pos: Vec<f32>,
    neg: Vec<f32>,
    grad: Vec<f32>,
    param: Vec<f32>,
    accum: Vec<f32>,
    memo: Vec<f32>,
    stamp: Vec<u32>,
    generation: u32,
}

impl Scratch {
    fn new(k: usize, item_features: usize) -> Self {
        let v = || vec![0.0; k + 1];
        Self {
            user: v(),
            pos: v(),
            neg: v(),
            grad: v(),
            param: v(),
            accum: v(),
            memo: vec![0.0; item_features],
            stamp: vec![0; item_features],
            generation: 0,
        }
    }

    /// Forgets the feature scores of the previous user.
    fn next_user(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
    }

    /// The current user's score of an item: `Σ x_f (u · v_f + b_f)`, which
    /// equals `u · item + item bias`.
    fn score(&mut self, items: &Shared, features: (&[u32], &[f32]), k: usize) -> f32 {
        let mut total = 0.0;
        for (&f, &x) in features.0.iter().zip(features.1) {
            let f = f as usize;
            if self.stamp[f] != self.generation {
                items.read(f as u32, &mut self.param, None);
                self.memo[f] = dot(&self.user[..k], &self.param[..k]) + self.param[k];
                self.stamp[f] = self.generation;
            }
            total += x * self.memo[f];
        }
        total
    }
}

/// Fits the model. Blocking and CPU-heavy: run it on the compute pool, where
/// its epochs run on rayon.
pub fn fit(input: &FmInput, p: &FmParams, stop: &StopFlag) -> Result<(FmModel, FmReport), Stopped> {
    let k = p.factors;
    let mut rng = StdRng::seed_from_u64(p.seed);
    let mut user_table = Table::new(input.user_features.n_cols, k, &mut rng);
    let mut item_table = Table::new(input.item_features.n_cols, k, &mut rng);
    let (users, items) = (user_table.shared(), item_table.shared());
    let m = input.positives;
    let mut pairs: Vec<(u32, u32)> = (0..m.n_rows)
        .flat_map(|u| m.row(u).0.iter().map(move |&i| (u as u32, i)))
        .collect();
    let mut report = FmReport::default();
    for epoch in 0..p.epochs {
        shuffle(&mut pairs, &mut rng);
        let seed = p.seed ^ ((epoch as u64 + 1) << 32);
        let losses: Result<Vec<f32>, Stopped> = pairs
            .par_chunks(CHUNK)
            .enumerate()
            .map_init(
                || Scratch::new(k, input.item_features.n_cols),
                |s, (c, chunk)| {
                    if stop.is_stopped() {
                        return Err(Stopped);
                    }
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(c as u64));
                    let mut loss = 0.0;
                    for (at, &(u, i)) in chunk.iter().enumerate() {
                        // The next positive's rows load while this one trains.
                        if let Some(&(u2, i2)) = chunk.get(at + 1) {
                            input
                                .user_features
                                .row(u2 as usize)
                                .0
                                .iter()
                                .for_each(|&f| users.prefetch(f));
                            input
                                .item_features
                                .row(i2 as usize)
                                .0
                                .iter()
                                .for_each(|&f| items.prefetch(f));
                        }
                        loss += sample(input, p, (&users, &items), (u, i), s, &mut rng);
                    }
                    Ok(loss)
                },
            )
            .collect();
        let total: f32 = losses?.iter().sum();
        report.losses.push(total / pairs.len().max(1) as f32);
    }
    let mut user_repr = users.all(input.user_features);
    for row in user_repr.chunks_exact_mut(k + 1) {
        row[k] = 1.0;
    }
    let model = FmModel {
        factors: k,
        users: user_repr,
        items: items.all(input.item_features),
    };
    Ok((model, report))
}

/// One positive's update; returns its loss.
fn sample(
    input: &FmInput,
    p: &FmParams,
    (users, items): (&Shared, &Shared),
    (u, i): (u32, u32),
    s: &mut Scratch,
    rng: &mut StdRng,
) -> f32 {
    let k = p.factors;
    let seen = input.positives.row(u as usize).0;
    let n = input.negatives.len();
    if n < 2 {
        return 0.0;
    }
    let user_f = input.user_features.row(u as usize);
    users.represent(user_f, &mut s.user, &mut s.param);
    s.next_user();
    let positive = s.score(items, input.item_features.row(i as usize), k);
    let mut found = None;
    let mut next = input.negatives[rng.random_range(0..n)];
    for sampled in 1..=p.max_sampled.max(1) {
        let j = next;
        next = input.negatives[rng.random_range(0..n)];
        for &f in input.item_features.row(next as usize).0 {
            items.prefetch(f);
        }
        if seen.binary_search(&j).is_ok() {
            continue;
        }
        let negative = s.score(items, input.item_features.row(j as usize), k);
        let diff = positive - negative;
        let weight = match p.loss {
            Loss::Warp if diff < 1.0 => {
                let rank = ((n - 1) / sampled) as f32;
                rank.max(1.0).ln().min(MAX_WARP_WEIGHT)
            }
            Loss::Warp => continue,
            Loss::Bpr => 1.0 / (1.0 + diff.exp()),
        };
        found = Some((j, weight, diff));
        break;
    }
    let Some((j, weight, diff)) = found else {
        return 0.0;
    };
    items.represent(
        input.item_features.row(i as usize),
        &mut s.pos,
        &mut s.param,
    );
    items.represent(
        input.item_features.row(j as usize),
        &mut s.neg,
        &mut s.param,
    );
    // Gradient ascent on weight · (x_ui − x_uj): the user moves towards the
    // positive and away from the negative, the items towards and away from the user.
    s.grad[..k].copy_from_slice(&s.neg[..k]);
    axpy(-1.0, &s.pos[..k], &mut s.grad[..k]);
    s.grad[..k].iter_mut().for_each(|g| *g *= weight);
    s.grad[k] = 0.0;
    users.step(
        user_f,
        &s.grad,
        (p.learning_rate, p.user_alpha),
        &mut s.param,
        &mut s.accum,
    );
    for (item, sign) in [(i, -1.0), (j, 1.0)] {
        for d in 0..k {
            s.grad[d] = sign * weight * s.user[d];
        }
        s.grad[k] = sign * weight;
        items.step(
            input.item_features.row(item as usize),
            &s.grad,
            (p.learning_rate, p.item_alpha),
            &mut s.param,
            &mut s.accum,
        );
    }
    match p.loss {
        Loss::Warp => weight,
        Loss::Bpr => (1.0 + (-diff).exp()).ln(),
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of users each like one half of the items; items carry their
    /// half as a feature. A held-out item of a half (no interactions, feature
    /// only) must score higher for that half's users.
    fn planted() -> (Csr, Csr, Csr, Vec<u32>) {
        let (n_users, n_items) = (40, 21); // item 20 is new: feature only
        let (mut r, mut c) = (Vec::new(), Vec::new());
        for u in 0..n_users as u32 {
            for i in 0..20u32 {
                if (u % 2 == i % 2) && (u + i) % 3 != 0 {
                    r.push(u);
                    c.push(i);
                }
            }
        }
        let ones = vec![1f32; r.len()];
        let positives = Csr::from_triplets(n_users, n_items, &r, &c, &ones);
        let users = Csr::from_triplets(
            n_users,
            n_users,
            &(0..n_users as u32).collect::<Vec<_>>(),
            &(0..n_users as u32).collect::<Vec<_>>(),
            &vec![1.0; n_users],
        );
        // identity (0..20) for the warm items, then the half feature (20, 21), L1-normalised
        let (mut ir, mut ic, mut iv) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n_items as u32 {
            let half = 20 + i % 2;
            if i < 20 {
                ir.extend([i, i]);
                ic.extend([i, half]);
                iv.extend([0.5, 0.5]);
            } else {
                ir.push(i);
                ic.push(half);
                iv.push(1.0);
            }
        }
        let items = Csr::from_triplets(n_items, 22, &ir, &ic, &iv);
        (positives, users, items, (0..20).collect())
    }

    fn input<'a>(
        positives: &'a Csr,
        users: &'a Csr,
        items: &'a Csr,
        negatives: &'a [u32],
    ) -> FmInput<'a> {
        FmInput {
            positives,
            user_features: users,
            item_features: items,
            negatives,
        }
    }

    fn params(loss: Loss) -> FmParams {
        FmParams {
            factors: 8,
            epochs: 30,
            learning_rate: 0.05,
            loss,
            max_sampled: 10,
            user_alpha: 0.0,
            item_alpha: 0.0,
            seed: 7,
        }
    }

    #[test]
    fn a_new_item_reaches_the_users_of_its_features_and_losses_fall() {
        let (positives, users, items, negatives) = planted();
        let input = input(&positives, &users, &items, &negatives);
        for loss in [Loss::Warp, Loss::Bpr] {
            let (model, report) = fit(&input, &params(loss), &StopFlag::default()).unwrap();
            assert!(model.is_finite());
            let first = report.losses[..3].iter().sum::<f32>();
            let last = report.losses[report.losses.len() - 3..].iter().sum::<f32>();
            assert!(
                last < 0.7 * first,
                "{loss:?} losses did not fall: {:?}",
                report.losses
            );
            // item 20 is in half 0: even users should score it above odd users do
            let mut scores = vec![0f32; 40];
            model.score_block(&(0..40).collect::<Vec<_>>(), 20..21, &mut scores);
            let even: f32 = scores.iter().step_by(2).sum();
            let odd: f32 = scores.iter().skip(1).step_by(2).sum();
            assert!(even > odd, "{loss:?}: even users {even}, odd {odd}");
        }
    }

    #[test]
    fn one_thread_and_one_seed_give_one_model() {
        let (positives, users, items, negatives) = planted();
        let input = input(&positives, &users, &items, &negatives);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let fit_once = || {
            pool.install(|| {
                fit(&input, &params(Loss::Warp), &StopFlag::default())
                    .unwrap()
                    .0
            })
        };
        assert_eq!(fit_once(), fit_once());
    }

    #[test]
    fn a_stop_ends_the_fit() {
        let (positives, users, items, negatives) = planted();
        let input = input(&positives, &users, &items, &negatives);
        let stop = StopFlag::default();
        stop.stop();
        assert_eq!(fit(&input, &params(Loss::Bpr), &stop).unwrap_err(), Stopped);
    }
}

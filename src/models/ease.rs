//! EASE (Steck 2019): the closed-form item-item model. With `G = XᵀX + λI` and
//! `P = G⁻¹`, the weights are `B_ij = −P_ij / P_jj` and `B_ii = 0`: the best
//! least-squares reconstruction of each item's column from the other items'.
//! With `dropout` p > 0 it is EDLAE (Steck 2020): each item's penalty grows
//! with its popularity, `λ + p/(1−p) · G_jj`, as training under dropout of
//! the input would give.
//! A user's score for `j` is `Σ_i x_ui · B_ij`, item-item's scoring.
//!
//! The inverse is dense (items × items), in float32 or float64 through faer's
//! blocked, parallel Cholesky: callers bound the item count. A stop takes
//! effect between blocks of 512 columns.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::traits::RealField;
use faer::{Accum, Mat, MatMut};
use rayon::prelude::*;

use super::{Csr, StopFlag, Stopped};

/// The float types the inverse runs in: float32 is twice as fast, float64
/// as exact as numpy.
pub trait Float: RealField + Copy + Send + Sync {
    fn of(x: f64) -> Self;
    fn f32(self) -> f32;
}

impl Float for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f32(self) -> f32 {
        self
    }
}

impl Float for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f32(self) -> f32 {
        self as f32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EaseError {
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// Only when λ is not positive or the data is not finite: `G` is then
    /// not positive definite.
    #[error(
        "the Gram matrix plus lambda is not positive definite (item {0}): check lambda and the values"
    )]
    NotPositiveDefinite(usize),
}

/// Bytes the fit holds at its peak for `n` items keeping `kept` weights per
/// item: the Gram matrix (becoming the inverse) with the factor's inverse
/// beside it (`float_bytes` each), then the inverse with the rows.
pub fn memory(n: usize, kept: usize, float_bytes: u64) -> u64 {
    let n = n as u64;
    let rows = n * kept.min(n as usize) as u64 * 8;
    (2 * n * n * float_bytes).max(n * n * float_bytes + rows)
}

/// The weights `B` (items × items, diagonal and exact zeros left out), each row
/// cut to its `keep` largest when given, computed in `T`.
pub fn weights<T: Float>(
    user_items: &Csr,
    lambda: f64,
    dropout: f64,
    keep: Option<usize>,
    stop: &StopFlag,
) -> Result<Csr, EaseError> {
    let n = user_items.n_cols;
    let mut g = gram::<T>(user_items, lambda, dropout / (1.0 - dropout), stop)?;
    inverse(&mut g, n, stop)?;
    // `g` holds P's lower triangle column-major: P_ij (i ≥ j) at g[j·n + i].
    let p = |i: usize, j: usize| if i >= j { g[j * n + i] } else { g[i * n + j] };
    let weight = |i: usize, j: usize| (-(p(i, j) / p(j, j))).f32();
    let nonzero = |i: usize| {
        (0..n)
            .filter(move |&j| j != i)
            .map(move |j| (j, weight(i, j)))
            .filter(|e| e.1 != 0.0)
    };
    // The rows' lengths first, so the rows are written in place: the result is
    // the fit's largest allocation after the inverse.
    let lens: Vec<usize> = (0..n)
        .into_par_iter()
        .map(|i| {
            stop.check()?;
            let len = nonzero(i).count();
            Ok(keep.map_or(len, |k| len.min(k)))
        })
        .collect::<Result<_, Stopped>>()?;
    Ok(Csr::from_row_lists(
        n,
        &lens,
        || (),
        |_, i, row| {
            stop.check()?;
            row.extend(nonzero(i).map(|(j, w)| (j as u32, w)));
            Ok::<_, Stopped>(())
        },
    )?)
}

/// Columns per block of the inverse's phases: a stop is seen between blocks,
/// within about two seconds at the ceiling of 20,000 items.
const BLOCK: usize = 512;

/// Replaces the lower triangle (column-major) of a positive definite `a` with
/// that of its inverse: `L Lᵀ = a` in place, `M = L⁻¹` beside it, then
/// `a⁻¹ = Mᵀ M` over `L`. Two n × n buffers instead of faer's `Llt::inverse`'s
/// four: each is page-faulted in on first touch, which costs as much as the
/// arithmetic at MovieLens size. Each phase runs by blocks of columns (as
/// faer does inside one call), so that a stop ends it between blocks.
fn inverse<T: Float>(a: &mut [T], n: usize, stop: &StopFlag) -> Result<(), EaseError> {
    use faer::linalg::cholesky::llt::factor::{self, LltError};
    use faer::linalg::matmul::triangular::{BlockStructure, matmul};
    use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
    let par = faer::get_global_parallelism();
    let mut a = MatMut::from_column_major_slice_mut(a, n, n);
    let blocks = || (0..n).step_by(BLOCK).map(|k| (k, (k + BLOCK).min(n)));
    // L Lᵀ = a, right-looking: factor a diagonal block, solve the panel under
    // it, take the panel's product from the rest.
    let scratch = factor::cholesky_in_place_scratch::<T>(BLOCK.min(n), par, Default::default());
    let mut mem = MemBuffer::new(scratch);
    for (k0, k1) in blocks() {
        stop.check()?;
        let rest = a.rb_mut().submatrix_mut(k0, k0, n - k0, n - k0);
        let (mut a11, _, mut a21, a22) = rest.split_at_mut(k1 - k0, k1 - k0);
        factor::cholesky_in_place(
            a11.rb_mut(),
            Default::default(),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|e| match e {
            LltError::NonPositivePivot { index } => EaseError::NotPositiveDefinite(k0 + index),
        })?;
        solve_lower_triangular_in_place(a11.rb(), a21.rb_mut().transpose_mut(), par);
        matmul(
            a22,
            BlockStructure::TriangularLower,
            Accum::Add,
            a21.rb(),
            BlockStructure::Rectangular,
            a21.rb().transpose(),
            BlockStructure::Rectangular,
            T::of(-1.0),
            par,
        );
    }
    // M = L⁻¹, a block of columns at a time: L M_·J = I_·J below row k0.
    let mut m = Mat::<T>::zeros(n, n);
    for (k0, k1) in blocks() {
        stop.check()?;
        for d in k0..k1 {
            m[(d, d)] = T::of(1.0);
        }
        solve_lower_triangular_in_place(
            a.rb().submatrix(k0, k0, n - k0, n - k0),
            m.as_mut().submatrix_mut(k0, k0, n - k0, k1 - k0),
            par,
        );
    }
    // a⁻¹ = Mᵀ M, a block of columns J at a time: the triangle on the
    // diagonal, then the rows under it, where Mᵀ is upper triangular.
    for (j0, j1) in blocks() {
        stop.check()?;
        let w = j1 - j0;
        let m_j = m.as_ref().submatrix(j0, j0, n - j0, w);
        matmul(
            a.rb_mut().submatrix_mut(j0, j0, w, w),
            BlockStructure::TriangularLower,
            Accum::Replace,
            m_j.transpose(),
            BlockStructure::Rectangular,
            m_j,
            BlockStructure::Rectangular,
            T::of(1.0),
            par,
        );
        matmul(
            a.rb_mut().submatrix_mut(j1, j0, n - j1, w),
            BlockStructure::Rectangular,
            Accum::Replace,
            m.as_ref().submatrix(j1, j1, n - j1, n - j1).transpose(),
            BlockStructure::TriangularUpper,
            m.as_ref().submatrix(j1, j0, n - j1, w),
            BlockStructure::Rectangular,
            T::of(1.0),
            par,
        );
    }
    Ok(())
}

/// The lower triangle of `XᵀX + diag(λ + emphasis · G_jj)` read column-major (row i holds columns
/// j ≥ i), all the Cholesky factor reads; one row per item built in parallel
/// from the users of that item.
fn gram<T: Float>(
    user_items: &Csr,
    lambda: f64,
    emphasis: f64,
    stop: &StopFlag,
) -> Result<Vec<T>, Stopped> {
    let n = user_items.n_cols;
    let item_users = user_items.transpose();
    let mut g = vec![T::of(0.0); n * n];
    g.par_chunks_mut(n.max(1))
        .enumerate()
        .try_for_each(|(i, row)| {
            stop.check()?;
            let (users, x_ui) = item_users.row(i);
            for (&u, &a) in users.iter().zip(x_ui) {
                let (items, x_uj) = user_items.row(u as usize);
                let from = items.partition_point(|&j| (j as usize) < i);
                let a = T::of(f64::from(a));
                for (&j, &b) in items[from..].iter().zip(&x_uj[from..]) {
                    row[j as usize] += a * T::of(f64::from(b));
                }
            }
            row[i] = row[i] * T::of(1.0 + emphasis) + T::of(lambda);
            Ok(())
        })?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{evaluate, planted_split};
    use crate::models::item_item::ItemItemModel;
    use crate::models::popular::Popular;

    /// The weights against a direct dense solve: each item's column regressed
    /// on the others by the normal equations with λ, i.e. `B_·j` minimising
    /// `‖X_·j − X B_·j‖² + λ‖B_·j‖²` with `B_jj = 0`, solved by nalgebra.
    #[test]
    fn weights_equal_a_direct_solve() {
        let (users, items, lambda) = (9usize, 6usize, 2.5f64);
        let (mut rows, mut cols, mut vals) = (Vec::new(), Vec::new(), Vec::new());
        for u in 0..users {
            for i in 0..items {
                if (u * 5 + i * 3) % 7 < 3 {
                    rows.push(u as u32);
                    cols.push(i as u32);
                    vals.push(1.0 + ((u + i) % 3) as f32);
                }
            }
        }
        let m = Csr::from_triplets(users, items, &rows, &cols, &vals);
        let x = nalgebra::DMatrix::from_fn(users, items, |u, i| {
            let (js, vs) = m.row(u);
            js.iter()
                .position(|&j| j as usize == i)
                .map_or(0.0, |p| f64::from(vs[p]))
        });
        let b = weights::<f64>(&m, lambda, 0.0, None, &StopFlag::default()).unwrap();
        for j in 0..items {
            let others: Vec<usize> = (0..items).filter(|&i| i != j).collect();
            let xo = x.select_columns(&others);
            let lhs = xo.transpose() * &xo
                + nalgebra::DMatrix::identity(others.len(), others.len()) * lambda;
            let rhs = xo.transpose() * x.column(j);
            let solved = lhs.cholesky().unwrap().solve(&rhs);
            for (k, &i) in others.iter().enumerate() {
                let (js, ws) = b.row(i);
                let ours = js
                    .iter()
                    .position(|&c| c as usize == j)
                    .map_or(0.0, |p| ws[p]);
                assert!(
                    (f64::from(ours) - solved[k]).abs() < 1e-5,
                    "B[{i}, {j}] = {ours}, direct {}",
                    solved[k]
                );
            }
            assert!(!b.row(j).0.contains(&(j as u32)), "no self weight");
        }
        // Keeping two weights per item keeps the two largest.
        let cut = weights::<f64>(&m, lambda, 0.0, Some(2), &StopFlag::default()).unwrap();
        for i in 0..items {
            let (_, full) = b.row(i);
            let mut best: Vec<f32> = full.to_vec();
            best.sort_by(|a, b| b.total_cmp(a));
            let mut kept = cut.row(i).1.to_vec();
            kept.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(kept, best[..2]);
        }
    }

    #[test]
    fn ease_beats_popularity_on_held_out_data() {
        let (train, test) = planted_split();
        let stop = StopFlag::default();
        let pop = evaluate(&Popular::fit(&train, false), &train, &test, 10, &stop).unwrap();
        let model = ItemItemModel {
            neighbors: weights::<f32>(&train, 50.0, 0.0, None, &stop).unwrap(),
            user_items: train.clone(),
        };
        let ease = evaluate(&model, &train, &test, 10, &stop).unwrap();
        assert!(
            ease.precision > 1.3 * pop.precision && ease.ndcg > 1.3 * pop.ndcg,
            "ease {ease:?} vs popularity {pop:?}"
        );
    }

    #[test]
    fn a_stopped_fit_stops() {
        let (train, _) = planted_split();
        let stop = StopFlag::default();
        stop.stop();
        assert!(matches!(
            weights::<f32>(&train, 10.0, 0.0, None, &stop),
            Err(EaseError::Stopped(_))
        ));
    }

    /// A stop reaches the inverse between its blocks, not after it: the
    /// inverse of 4,000 items takes far longer than the 20 ms before the stop.
    #[test]
    #[allow(clippy::disallowed_methods)] // the stop comes from a timer thread
    fn a_stop_ends_the_inverse_midway() {
        let n = 4000;
        let mut a = vec![0f32; n * n];
        for j in 0..n {
            a[j * n + j] = 2.0;
            if j + 1 < n {
                a[j * n + j + 1] = 0.5;
            }
        }
        let stop = StopFlag::default();
        let stopper = stop.clone();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            stopper.stop();
        });
        let result = inverse(&mut a, n, &stop);
        timer.join().unwrap();
        assert!(matches!(result, Err(EaseError::Stopped(_))), "{result:?}");
    }
}

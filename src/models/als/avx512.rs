//! The conjugate-gradient row solve of [`super::cg_row`] for CPUs with AVX-512 and
//! `k = 16·N` factors (N ≤ 8): the row's four CG vectors (`x`, `r`, `p`, `Ap`)
//! live in registers for the whole solve, and each gathered factor row is loaded
//! once per pass and used for both its dot product and its update. The portable
//! kernel loads every row twice and keeps the vectors in memory, which made the
//! solve bound by loads and store-forwarding rather than arithmetic.

use std::arch::x86_64::*;

use super::RowSystem;

/// Lanes of one register.
const L: usize = 16;

/// Whether [`cg_row`] can serve `k` factors on this CPU.
pub fn supports(k: usize) -> bool {
    k.is_multiple_of(L)
        && (L..=8 * L).contains(&k)
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("fma")
}

/// Same contract as [`super::cg_row`], dispatched on `k / 16`.
///
/// # Safety
/// [`supports`] must have returned true for `x.len()`.
pub unsafe fn cg_row(sys: &RowSystem, x: &mut [f32], steps: usize) {
    // SAFETY: the caller checked AVX-512 and that k = 16·N with N in 1..=8.
    unsafe {
        match x.len() / L {
            1 => solve::<1>(sys, x, steps),
            2 => solve::<2>(sys, x, steps),
            3 => solve::<3>(sys, x, steps),
            4 => solve::<4>(sys, x, steps),
            5 => solve::<5>(sys, x, steps),
            6 => solve::<6>(sys, x, steps),
            7 => solve::<7>(sys, x, steps),
            8 => solve::<8>(sys, x, steps),
            _ => unreachable!("supports() admits k = 16..=128 in steps of 16"),
        }
    }
}

type V<const N: usize> = [__m512; N];

/// A register's worth of floats at any address. `_mm512_loadu_ps` reads through
/// `ptr::read_unaligned`, whose debug-build precondition checks cost more than
/// the arithmetic here; a packed struct has alignment 1, so reading it needs none.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Unaligned(__m512);

/// # Safety
/// `p` must point to 16 readable floats.
#[inline(always)]
unsafe fn loadu(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 64 readable bytes; alignment 1 always holds.
    unsafe { (*p.cast::<Unaligned>()).0 }
}

/// # Safety
/// `p` must point to 16 writable floats.
#[inline(always)]
unsafe fn storeu(p: *mut f32, v: __m512) {
    // SAFETY: as for `loadu`.
    unsafe { *p.cast::<Unaligned>() = Unaligned(v) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load<const N: usize>(row: &[f32]) -> V<N> {
    assert_eq!(row.len(), N * L);
    let mut v = [_mm512_setzero_ps(); N];
    for (n, v) in v.iter_mut().enumerate() {
        // SAFETY: `row` holds N·16 floats (asserted).
        *v = unsafe { loadu(row.as_ptr().add(n * L)) };
    }
    v
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store<const N: usize>(v: &V<N>, out: &mut [f32]) {
    assert_eq!(out.len(), N * L);
    for (n, v) in v.iter().enumerate() {
        // SAFETY: out holds N·16 floats (asserted).
        unsafe { storeu(out.as_mut_ptr().add(n * L), *v) };
    }
}

#[inline]
#[target_feature(enable = "avx512f,fma")]
fn dot<const N: usize>(a: &V<N>, b: &V<N>) -> f32 {
    let mut acc = _mm512_mul_ps(a[0], b[0]);
    for n in 1..N {
        acc = _mm512_fmadd_ps(a[n], b[n], acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// `acc += t · v`
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn axpy<const N: usize>(t: f32, v: &V<N>, acc: &mut V<N>) {
    let t = _mm512_set1_ps(t);
    for n in 0..N {
        acc[n] = _mm512_fmadd_ps(t, v[n], acc[n]);
    }
}

/// `(YᵀY + extra·I) v`, summed over the rows of the symmetric `yty` in two
/// interleaved accumulators so consecutive FMAs do not wait on each other.
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn symv<const N: usize>(yty: &[f32], extra: f32, v: &V<N>) -> V<N> {
    let k = N * L;
    let mut s = [0f32; 8 * L];
    store(v, &mut s[..k]);
    let mut even = [_mm512_setzero_ps(); N];
    let mut odd = [_mm512_setzero_ps(); N];
    for j in (0..k).step_by(2) {
        let a = load::<N>(&yty[j * k..(j + 1) * k]);
        let b = load::<N>(&yty[(j + 1) * k..(j + 2) * k]);
        axpy(s[j], &a, &mut even);
        axpy(s[j + 1], &b, &mut odd);
    }
    let e = _mm512_set1_ps(extra);
    std::array::from_fn(|n| _mm512_fmadd_ps(e, v[n], _mm512_add_ps(even[n], odd[n])))
}

#[inline(always)]
fn row<const N: usize>(y: &[f32], i: u32) -> &[f32] {
    let k = N * L;
    &y[i as usize * k..(i as usize + 1) * k]
}

#[target_feature(enable = "avx512f,fma")]
fn solve<const N: usize>(sys: &RowSystem, x_out: &mut [f32], steps: usize) {
    let RowSystem {
        yty,
        extra,
        y,
        items,
        w,
        alpha,
    } = *sys;
    let mut x: V<N> = load(x_out);
    // r = b − A x
    let mut r = symv(yty, extra, &x);
    for v in &mut r {
        *v = _mm512_sub_ps(_mm512_setzero_ps(), *v);
    }
    for (n, (&i, &wi)) in items.iter().zip(w).enumerate() {
        if let Some(&ahead) = items.get(n + super::PREFETCH_AHEAD) {
            super::prefetch_row(row::<N>(y, ahead));
        }
        let yi = load::<N>(row::<N>(y, i));
        let t = 1.0 + alpha * wi * (1.0 - dot(&yi, &x));
        axpy(t, &yi, &mut r);
    }
    let mut p = r;
    let mut rsold = dot(&r, &r);
    if rsold >= 1e-20 {
        for _ in 0..steps {
            let mut ap = symv(yty, extra, &p);
            for (&i, &wi) in items.iter().zip(w) {
                let yi = load::<N>(row::<N>(y, i));
                axpy(alpha * wi * dot(&yi, &p), &yi, &mut ap);
            }
            let step = rsold / dot(&p, &ap);
            axpy(step, &p, &mut x);
            axpy(-step, &ap, &mut r);
            let rsnew = dot(&r, &r);
            if rsnew < 1e-20 {
                break;
            }
            let beta = _mm512_set1_ps(rsnew / rsold);
            for n in 0..N {
                p[n] = _mm512_fmadd_ps(beta, p[n], r[n]);
            }
            rsold = rsnew;
        }
    }
    store(&x, x_out);
}

//! The conjugate-gradient row solve of [`super::cg_row`] with explicit vector
//! registers, for `k` a multiple of the register width and at most eight
//! registers per vector: 16·N factors with AVX-512, 8·N with AVX2 (N ≤ 8). The
//! row's four CG vectors (`x`, `r`, `p`, `Ap`) are register arrays (with AVX-512
//! they all fit; with AVX2 the compiler keeps what it can), and each gathered
//! factor row is loaded once per pass and used for both its dot product and its
//! update. The portable kernel loads every row twice and keeps the vectors in
//! memory, which made the solve bound by loads and store-forwarding rather than
//! arithmetic.

use std::arch::x86_64::*;

use super::RowSystem;

/// Which build of the kernel serves `k` factors on this CPU, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Avx512,
    Avx2,
}

impl Kernel {
    /// Whether this build can serve `k` factors on this CPU.
    pub fn supports(self, k: usize) -> bool {
        let (lanes, cpu) = match self {
            Kernel::Avx512 => (Z::L, is_x86_feature_detected!("avx512f")),
            Kernel::Avx2 => (Y::L, is_x86_feature_detected!("avx2")),
        };
        cpu && is_x86_feature_detected!("fma")
            && k.is_multiple_of(lanes)
            && (lanes..=8 * lanes).contains(&k)
    }

    /// The widest build that serves `k` factors on this CPU.
    pub fn detect(k: usize) -> Option<Kernel> {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|kernel| kernel.supports(k))
    }

    /// Same contract as [`super::cg_row`].
    ///
    /// # Safety
    /// [`Kernel::supports`] must hold for `x.len()`.
    pub unsafe fn cg_row(self, sys: &RowSystem, x: &mut [f32], steps: usize) {
        // SAFETY: supports() checked the CPU features and that k = lanes·N, N ≤ 8.
        unsafe {
            match self {
                Kernel::Avx512 => solve_avx512(sys, x, steps),
                Kernel::Avx2 => solve_avx2(sys, x, steps),
            }
        }
    }
}

/// Dispatches on the number of registers per vector, `k / lanes`.
macro_rules! by_registers {
    ($lanes:ty, $sys:expr, $x:expr, $steps:expr) => {
        match $x.len() / <$lanes>::L {
            1 => solve::<$lanes, 1>($sys, $x, $steps),
            2 => solve::<$lanes, 2>($sys, $x, $steps),
            3 => solve::<$lanes, 3>($sys, $x, $steps),
            4 => solve::<$lanes, 4>($sys, $x, $steps),
            5 => solve::<$lanes, 5>($sys, $x, $steps),
            6 => solve::<$lanes, 6>($sys, $x, $steps),
            7 => solve::<$lanes, 7>($sys, $x, $steps),
            8 => solve::<$lanes, 8>($sys, $x, $steps),
            _ => unreachable!("supports() admits 1..=8 registers per vector"),
        }
    };
}

#[target_feature(enable = "avx512f,fma")]
unsafe fn solve_avx512(sys: &RowSystem, x: &mut [f32], steps: usize) {
    // SAFETY: this function runs only where AVX-512 is present.
    unsafe { by_registers!(Z, sys, x, steps) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn solve_avx2(sys: &RowSystem, x: &mut [f32], steps: usize) {
    // SAFETY: this function runs only where AVX2 and FMA are present.
    unsafe { by_registers!(Y, sys, x, steps) }
}

/// One vector register of f32 lanes. Every method must be called only where the
/// register's instruction set is enabled; they are inlined into the
/// `#[target_feature]` entry points above.
trait Lanes: Copy {
    const L: usize;
    /// # Safety
    /// `p` must point to `L` readable floats.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p` must point to `L` writable floats.
    unsafe fn store(p: *mut f32, v: Self);
    unsafe fn splat(x: f32) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// `a · b + c`
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    unsafe fn sum(a: Self) -> f32;
}

/// Registers' worth of floats at any address. The `loadu` intrinsics read through
/// `ptr::read_unaligned`, whose debug-build precondition checks cost more than
/// the arithmetic here; a packed struct has alignment 1, so reading it needs none.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Unaligned<T>(T);

#[derive(Clone, Copy)]
struct Z(__m512);

#[derive(Clone, Copy)]
struct Y(__m256);

impl Lanes for Z {
    const L: usize = 16;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 64 readable bytes; alignment 1 always holds.
        Z(unsafe { (*p.cast::<Unaligned<__m512>>()).0 })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: as for `load`.
        unsafe { *p.cast::<Unaligned<__m512>>() = Unaligned(v.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Z(unsafe { _mm512_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Z(unsafe { _mm512_add_ps(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Z(unsafe { _mm512_mul_ps(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        Z(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn sum(a: Self) -> f32 {
        unsafe { _mm512_reduce_add_ps(a.0) }
    }
}

impl Lanes for Y {
    const L: usize = 8;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 32 readable bytes; alignment 1 always holds.
        Y(unsafe { (*p.cast::<Unaligned<__m256>>()).0 })
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: as for `load`.
        unsafe { *p.cast::<Unaligned<__m256>>() = Unaligned(v.0) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Y(unsafe { _mm256_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Y(unsafe { _mm256_add_ps(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Y(unsafe { _mm256_mul_ps(a.0, b.0) })
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        Y(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn sum(a: Self) -> f32 {
        // SAFETY: AVX2 implies the SSE instructions used here.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(a.0), _mm256_extractf128_ps(a.0, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
}

/// A vector of `k = N · L` floats held in `N` registers.
type V<R, const N: usize> = [R; N];

#[inline(always)]
unsafe fn load<R: Lanes, const N: usize>(row: &[f32]) -> V<R, N> {
    assert_eq!(row.len(), N * R::L);
    // SAFETY: `row` holds N·L floats (asserted).
    std::array::from_fn(|n| unsafe { R::load(row.as_ptr().add(n * R::L)) })
}

#[inline(always)]
unsafe fn store<R: Lanes, const N: usize>(v: &V<R, N>, out: &mut [f32]) {
    assert_eq!(out.len(), N * R::L);
    for (n, v) in v.iter().enumerate() {
        // SAFETY: out holds N·L floats (asserted).
        unsafe { R::store(out.as_mut_ptr().add(n * R::L), *v) };
    }
}

#[inline(always)]
unsafe fn dot<R: Lanes, const N: usize>(a: &V<R, N>, b: &V<R, N>) -> f32 {
    unsafe {
        let mut acc = R::mul(a[0], b[0]);
        for n in 1..N {
            acc = R::fmadd(a[n], b[n], acc);
        }
        R::sum(acc)
    }
}

/// `acc += t · v`
#[inline(always)]
unsafe fn axpy<R: Lanes, const N: usize>(t: f32, v: &V<R, N>, acc: &mut V<R, N>) {
    unsafe {
        let t = R::splat(t);
        for (a, v) in acc.iter_mut().zip(v) {
            *a = R::fmadd(t, *v, *a);
        }
    }
}

/// `(YᵀY + extra·I) v`, summed over the rows of the symmetric `yty` in two
/// interleaved accumulators so consecutive FMAs do not wait on each other.
#[inline(always)]
unsafe fn symv<R: Lanes, const N: usize>(yty: &[f32], extra: f32, v: &V<R, N>) -> V<R, N> {
    unsafe {
        let k = N * R::L;
        let mut s = [0f32; 128];
        store(v, &mut s[..k]);
        let mut even = [R::splat(0.0); N];
        let mut odd = [R::splat(0.0); N];
        for j in (0..k).step_by(2) {
            let a = load::<R, N>(&yty[j * k..(j + 1) * k]);
            let b = load::<R, N>(&yty[(j + 1) * k..(j + 2) * k]);
            axpy(s[j], &a, &mut even);
            axpy(s[j + 1], &b, &mut odd);
        }
        let e = R::splat(extra);
        std::array::from_fn(|n| R::fmadd(e, v[n], R::add(even[n], odd[n])))
    }
}

#[inline(always)]
unsafe fn solve<R: Lanes, const N: usize>(sys: &RowSystem, x_out: &mut [f32], steps: usize) {
    let RowSystem {
        yty,
        extra,
        y,
        items,
        w,
        alpha,
        prior,
    } = *sys;
    let k = N * R::L;
    let row = |i: u32| &y[i as usize * k..(i as usize + 1) * k];
    unsafe {
        let mut x: V<R, N> = load(x_out);
        // r = b − A x
        let mut r = symv(yty, extra, &x);
        let minus = R::splat(-1.0);
        for v in &mut r {
            *v = R::mul(minus, *v);
        }
        if let Some((q, weight)) = prior {
            axpy(weight, &load::<R, N>(q), &mut r);
        }
        for (n, (&i, &wi)) in items.iter().zip(w).enumerate() {
            if let Some(&ahead) = items.get(n + super::PREFETCH_AHEAD) {
                super::prefetch_row(row(ahead));
            }
            let yi = load::<R, N>(row(i));
            let t = 1.0 + alpha * wi * (1.0 - dot(&yi, &x));
            axpy(t, &yi, &mut r);
        }
        let mut p = r;
        let mut rsold = dot(&r, &r);
        if rsold >= 1e-20 {
            for _ in 0..steps {
                let mut ap = symv(yty, extra, &p);
                for (&i, &wi) in items.iter().zip(w) {
                    let yi = load::<R, N>(row(i));
                    axpy(alpha * wi * dot(&yi, &p), &yi, &mut ap);
                }
                let step = rsold / dot(&p, &ap);
                axpy(step, &p, &mut x);
                axpy(-step, &ap, &mut r);
                let rsnew = dot(&r, &r);
                if rsnew < 1e-20 {
                    break;
                }
                let beta = R::splat(rsnew / rsold);
                for (p, r) in p.iter_mut().zip(&r) {
                    *p = R::fmadd(beta, *p, *r);
                }
                rsold = rsnew;
            }
        }
        store(&x, x_out);
    }
}

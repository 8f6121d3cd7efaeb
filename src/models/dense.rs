//! Dense f32 kernels: `A·Bᵀ` through matrixmultiply's sgemm (which picks AVX2/FMA
//! kernels at run time), and the short dot/axpy loops of the ALS solver, written
//! with eight independent accumulators so the compiler vectorises them.

/// Items per GEMM tile for dense models: a tile of scores (rows × tile × 4 bytes)
/// stays in cache between the GEMM that writes it and the selection that reads it.
pub const DENSE_ITEM_TILE: usize = 1024;

/// `c = a · bᵀ` for row-major `a` (m×k), `b` (n×k), `c` (m×n).
///
/// # Panics
/// If a slice length does not match its shape.
pub fn gemm_nt(a: &[f32], b: &[f32], k: usize, c: &mut [f32]) {
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let m = a.len() / k;
    let n = b.len() / k;
    assert!(
        a.len() == m * k && b.len() == n * k && c.len() == m * n,
        "gemm_nt: shape mismatch"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above bound every index sgemm derives from these strides:
    // a is m×k (row stride k), bᵀ is k×n read from b with row stride 1 and column
    // stride k, c is m×n (row stride n); c does not alias a or b (&mut).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `aᵀ · a` for row-major `a` (n×k): the k×k Gram matrix.
pub fn gram(a: &[f32], k: usize) -> Vec<f32> {
    let n = a.len().checked_div(k).unwrap_or(0);
    let mut out = vec![0f32; k * k];
    if n == 0 {
        return out;
    }
    // SAFETY: aᵀ is k×n read from a (row stride 1, column stride k); a is n×k;
    // out is k×k with row stride k; all lengths match the shapes.
    unsafe {
        matrixmultiply::sgemm(
            k,
            n,
            k,
            1.0,
            a.as_ptr(),
            1,
            k as isize,
            a.as_ptr(),
            k as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            k as isize,
            1,
        );
    }
    out
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with::<false>(a, b)
}

/// `a · b`, with fused multiply-adds when `FMA` (only inside a function compiled
/// with the `fma` target feature; elsewhere `mul_add` is a slow library call).
#[inline(always)]
pub fn dot_with<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] = if FMA {
                x[l].mul_add(y[l], acc[l])
            } else {
                acc[l] + x[l] * y[l]
            };
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        sum += a[i] * b[i];
    }
    sum
}

/// `y += alpha · x`
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    axpy_with::<false>(alpha, x, y)
}

#[inline(always)]
pub fn axpy_with<const FMA: bool>(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = if FMA {
            alpha.mul_add(*xi, *yi)
        } else {
            *yi + alpha * xi
        };
    }
}

/// `out = m · v` for a symmetric k×k matrix, summed as `Σ_j v_j · m_j` over rows:
/// each step is one vectorised axpy, with no horizontal sum per output as a
/// row-by-row dot product would need.
#[inline(always)]
pub fn symv<const FMA: bool>(m: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    out.fill(0.0);
    for (row, &vj) in m.chunks_exact(k).zip(v) {
        axpy_with::<FMA>(vj, row, out);
    }
}

/// Scales each row of `a` (n×k) to unit length; zero rows stay zero.
pub fn normalize_rows(a: &mut [f32], k: usize) {
    if k == 0 {
        return;
    }
    for row in a.chunks_exact_mut(k) {
        let norm = dot(row, row).sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 1.0).collect();
        let mut c = vec![0f32; m * n];
        gemm_nt(&a, &b, k, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
        let g = gram(&b, k);
        for i in 0..k {
            for j in 0..k {
                let want: f32 = (0..n).map(|r| b[r * k + i] * b[r * k + j]).sum();
                assert!((g[i * k + j] - want).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }
}

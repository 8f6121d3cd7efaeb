//! Item→item lists for every item of a symmetric model (`score(i, j) = v_i · v_j`,
//! e.g. cosine over factors): each tile of products on or above the diagonal is
//! computed once and offered both to its rows and, read by column, to its
//! columns, so the GEMM work is halved.
//!
//! Each thread keeps candidates for every item over its share of the tiles; the
//! shares are merged at the end. [`TopK`] does not depend on the order of offers,
//! so the lists equal those of the row-by-row path.

use rayon::prelude::*;

use super::{Selection, TopK};
use crate::models::dense::gemm_nt;
use crate::models::{StopFlag, Stopped};

/// Rows per strip of a tile: the column side skips a column of the strip when its
/// maximum cannot enter that item's list. Fewer rows skip more often, but the
/// maxima cost a pass each (sim-all on 20k items: 8 rows 0.340 s, 4 rows 0.346 s).
const CHUNK: usize = 8;

/// The `pool` best candidates of every item (rows `0..n`), exclusions applied.
/// `vectors` are `n × dim`, row-major. Per-row pair exclusions (`seen`,
/// `denied_pairs`) are not supported: callers use the row-by-row path for them.
pub(super) fn candidates(
    vectors: &[f32],
    dim: usize,
    selection: &Selection<'_>,
    pool: usize,
    stop: &StopFlag,
) -> Result<Vec<TopK>, Stopped> {
    debug_assert!(selection.seen.is_none() && selection.denied_pairs.is_none());
    let n = vectors.len().checked_div(dim).unwrap_or(0);
    let threads = rayon::current_num_threads();
    // Enough tiles to share among the threads even for a few thousand items.
    let side = (n / (4 * threads)).clamp(64, crate::models::dense::DENSE_ITEM_TILE);
    let starts: Vec<usize> = (0..n).step_by(side).collect();
    let tiles: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .flat_map(|(a, &i)| starts[a..].iter().map(move |&j| (i, j)))
        .collect();
    let mut blocked = vec![false; n];
    for &i in selection.blocked_items {
        blocked[i as usize] = true;
    }
    let share = tiles.len().div_ceil(threads).max(1);
    let parts: Vec<Vec<TopK>> = tiles
        .par_chunks(share)
        .map(|tiles| {
            let mut tops: Vec<TopK> = (0..n).map(|_| TopK::new(pool)).collect();
            let mut scores = vec![0f32; side * side];
            for &(i, j) in tiles {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let (rows, cols) = (i..(i + side).min(n), j..(j + side).min(n));
                let scores = &mut scores[..rows.len() * cols.len()];
                gemm_nt(
                    &vectors[rows.start * dim..rows.end * dim],
                    &vectors[cols.start * dim..cols.end * dim],
                    dim,
                    scores,
                );
                // Strip by strip, so the rows read by column and then by row
                // stay in L1 between the two.
                let width = cols.len();
                for (start, strip) in rows
                    .clone()
                    .step_by(CHUNK)
                    .zip(scores.chunks_mut(CHUNK * width))
                {
                    let strip_rows = start..(start + CHUNK).min(rows.end);
                    if i != j {
                        // Read by column before the row side writes −∞ over the
                        // excluded columns, which may be eligible for these rows.
                        offer_columns(
                            strip,
                            strip_rows.clone(),
                            cols.start,
                            &blocked,
                            selection,
                            &mut tops,
                        );
                    }
                    for (r, s) in strip_rows.zip(strip.chunks_exact_mut(width)) {
                        selection.apply(r as u32, s, cols.start);
                        tops[r].offer(s, cols.start);
                    }
                }
            }
            Ok(tops)
        })
        .collect::<Result<_, _>>()?;
    let mut parts = parts.into_iter();
    let mut tops = parts.next().unwrap_or_default();
    for part in parts {
        tops.par_iter_mut().zip(part).for_each(|(top, other)| {
            for w in other.heap {
                top.offer_one(w.0.item, w.0.score);
            }
        });
    }
    Ok(tops)
}

/// Offers column `c` of a strip of the tile (the scores of items `rows` for item
/// `cols_start + c`) to that item's candidates, unless the column's maximum over
/// the strip cannot enter.
fn offer_columns(
    strip: &[f32],
    rows: std::ops::Range<usize>,
    cols_start: usize,
    blocked: &[bool],
    selection: &Selection<'_>,
    tops: &mut [TopK],
) {
    const LANES: usize = 8;
    let width = strip.len() / rows.len();
    let min = selection.min_score.unwrap_or(f32::NEG_INFINITY);
    let at = |r: usize| (r - rows.start) * width;
    for lo in (0..width).step_by(LANES) {
        let lanes = LANES.min(width - lo);
        // The maxima of LANES columns over the strip, kept in registers.
        let mut max = [f32::NEG_INFINITY; LANES];
        for r in rows.clone() {
            let row = &strip[at(r) + lo..at(r) + lo + lanes];
            for (m, &s) in max.iter_mut().zip(row) {
                *m = if s > *m { s } else { *m };
            }
        }
        for (c, &m) in (lo..lo + lanes).zip(&max) {
            let top = &mut tops[cols_start + c];
            if m < top.threshold || m < min {
                continue;
            }
            for r in rows.clone() {
                let s = strip[at(r) + c];
                if !blocked[r] && s >= min && s >= top.threshold {
                    top.offer_one(r as u32, s);
                }
            }
        }
    }
}

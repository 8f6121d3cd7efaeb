//! Top-N selection: score a block of query rows (users, or items for similar
//! items), remove what must never be shown, keep the best `k` per row.
//!
//! Invariant: exclusions are applied to the scores *before* selection (an excluded
//! item scores −∞ and is never selected), so no output path can skip a filter, and
//! a row with fewer than `k` eligible items simply gets a shorter list. Rows are
//! scored in small blocks (one GEMM each) on the current rayon pool, so memory is
//! bounded by `threads × block × items` scores, never rows × items.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::models::{Csr, Recommender, StopFlag, Stopped};

mod symmetric;

/// Query rows scored by one GEMM at most. sgemm packs its operands on every call,
/// so few rows pay that again and again, and scores of one tile of items
/// (rows × tile × 4 bytes) should stay in cache until selected. Rec-all on 100k
/// users × 20k items × 64 factors, 2 threads, tiles of 1024 items: 256 rows
/// 1.26–1.43 s, 512 rows 1.26 s, 1024 rows 1.24 s, 2048 rows 1.30 s; 1024 rows
/// with tiles of 512 items 1.37–1.47 s, of 2048 items 1.26–1.29 s. (Before the
/// dev profile dropped matrixmultiply's debug assertions, packing was dearer and
/// 2048 rows won.)
const ROWS_PER_GEMM: usize = 1024;

/// One recommended item with its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

/// At most `cap` items of the same group in one list (e.g. per company).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCaps {
    /// Group of each item; `u32::MAX` for an item in no group.
    pub group_of: Vec<u32>,
    pub cap: usize,
}

/// What to leave out of every list, and how to select.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    pub k: usize,
    /// Items each query row already interacted with (row × item).
    pub seen: Option<&'a Csr>,
    /// Items no row may get (dense item indices): denied, or outside the allow list.
    pub blocked_items: &'a [u32],
    /// Per-row denied items (row × item).
    pub denied_pairs: Option<&'a Csr>,
    /// Drop the query row's own index (item→item lists).
    pub exclude_self: bool,
    pub min_score: Option<f32>,
    pub groups: Option<&'a GroupCaps>,
}

impl Selection<'_> {
    /// Sets the excluded items of `row` within the tile of items `lo..lo + len` to −∞.
    fn apply(&self, row: u32, scores: &mut [f32], lo: usize) {
        let hi = lo + scores.len();
        let in_tile = |sorted: &[u32]| {
            let start = sorted.partition_point(|&i| (i as usize) < lo);
            let end = sorted.partition_point(|&i| (i as usize) < hi);
            start..end
        };
        let range = in_tile(self.blocked_items);
        for &i in &self.blocked_items[range] {
            scores[i as usize - lo] = f32::NEG_INFINITY;
        }
        for m in [self.seen, self.denied_pairs].into_iter().flatten() {
            if (row as usize) < m.n_rows {
                let items = m.row(row as usize).0;
                for &i in &items[in_tile(items)] {
                    scores[i as usize - lo] = f32::NEG_INFINITY;
                }
            }
        }
        if self.exclude_self && (lo..hi).contains(&(row as usize)) {
            scores[row as usize - lo] = f32::NEG_INFINITY;
        }
        if let Some(min) = self.min_score {
            scores
                .iter_mut()
                .filter(|s| **s < min)
                .for_each(|s| *s = f32::NEG_INFINITY);
        }
    }
}

/// A candidate in the selection heap, ordered so that the heap's top is the worst
/// kept candidate: lower score, then higher index, is worse.
#[derive(Clone, Copy)]
struct Worst(Scored);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.item.cmp(&other.0.item))
    }
}

/// The `k` best finite scores seen so far, in any order of items. Once `k` are
/// held, a chunk of scores whose maximum is below the worst held one is skipped
/// after one vectorised pass.
struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
    threshold: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Offers the scores of items `lo..lo + tile.len()`.
    fn offer(&mut self, tile: &[f32], lo: usize) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.offer_avx2(tile, lo) };
        }
        self.offer_portable(tile, lo);
    }

    /// [`Self::offer_portable`] compiled for AVX2: the chunk maxima and the
    /// comparisons against the bar take 8 lanes at a time instead of 4.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn offer_avx2(&mut self, tile: &[f32], lo: usize) {
        self.offer_portable(tile, lo);
    }

    #[inline(always)]
    fn offer_portable(&mut self, tile: &[f32], lo: usize) {
        const CHUNK: usize = 32;
        const GROUP: usize = 64;
        if self.k == 0 {
            return;
        }
        for (g, group) in tile.chunks(CHUNK * GROUP).enumerate() {
            // Until k are held the threshold is −∞ and nearly every score would
            // enter the heap; the k-th largest of the chunk maxima bounds the
            // result from below sooner, because k distinct items score at least
            // that much.
            let n = group.len().div_ceil(CHUNK);
            let floor = if self.heap.len() < self.k && n >= self.k {
                let mut maxima = [f32::NEG_INFINITY; GROUP];
                for (m, c) in maxima.iter_mut().zip(group.chunks(CHUNK)) {
                    *m = chunk_max(c);
                }
                *maxima[..n]
                    .select_nth_unstable_by(self.k - 1, |a, b| b.total_cmp(a))
                    .1
            } else {
                f32::NEG_INFINITY
            };
            let base = lo + g * CHUNK * GROUP;
            for (c, chunk) in group.chunks(CHUNK).enumerate() {
                let bar = self.threshold.max(floor);
                // One vectorised comparison for the chunk (no horizontal maximum),
                // then only its passing scores are visited.
                let mut passing = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |m, (j, &s)| m | (u32::from(s >= bar) << j));
                while passing != 0 {
                    let j = passing.trailing_zeros() as usize;
                    passing &= passing - 1;
                    self.offer_one((base + c * CHUNK + j) as u32, chunk[j]);
                }
            }
        }
    }

    /// Offers one item; a score equal to the worst held one wins if its item is
    /// lower, so the result does not depend on the order of offers.
    #[inline]
    fn offer_one(&mut self, item: u32, score: f32) {
        if !score.is_finite() || self.k == 0 {
            return;
        }
        let candidate = Worst(Scored { item, score });
        if self.heap.len() == self.k {
            // Replacing the top costs one sift down, where pop + push cost two.
            if let Some(mut worst) = self.heap.peek_mut()
                && candidate < *worst
            {
                *worst = candidate;
            } else {
                return;
            }
        } else {
            self.heap.push(candidate);
        }
        if self.heap.len() == self.k {
            self.threshold = self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
        }
    }

    /// Best first; equal scores go to the lower index.
    fn finish(self) -> Vec<Scored> {
        let mut out: Vec<Scored> = self.heap.into_iter().map(|w| w.0).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
        out
    }
}

/// The `k` best finite scores, best first; equal scores go to the lower index so the
/// result is deterministic.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Scored> {
    let mut top = TopK::new(k);
    top.offer(scores, 0);
    top.finish()
}

/// The largest non-NaN value of `chunk` (−∞ if none), in eight lanes so the
/// compiler emits packed max instructions.
#[inline(always)]
fn chunk_max(chunk: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut it = chunk.chunks_exact(8);
    for c in &mut it {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    for &v in it.remainder() {
        lanes[0] = if v > lanes[0] { v } else { lanes[0] };
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The first `k` of `candidates` (best first) with at most `caps.cap` per group;
/// `None` when they run out before `k` while more items might exist.
fn cap_walk(
    candidates: &[Scored],
    k: usize,
    caps: &GroupCaps,
    exhaustive: bool,
) -> Option<Vec<Scored>> {
    let mut taken = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(k);
    for c in candidates {
        let g = caps
            .group_of
            .get(c.item as usize)
            .copied()
            .unwrap_or(u32::MAX);
        if g != u32::MAX {
            let n = taken.entry(g).or_insert(0usize);
            if *n >= caps.cap {
                continue;
            }
            *n += 1;
        }
        out.push(*c);
        if out.len() == k {
            return Some(out);
        }
    }
    exhaustive.then_some(out)
}

/// Like [`top_k`] but with at most `caps.cap` items per group.
#[cfg(test)]
fn top_k_capped(scores: &[f32], k: usize, caps: &GroupCaps) -> Vec<Scored> {
    let pool = top_k(scores, k.saturating_mul(4));
    cap_walk(&pool, k, caps, pool.len() < k.saturating_mul(4)).unwrap_or_else(|| {
        cap_walk(&top_k(scores, scores.len()), k, caps, true).unwrap_or_default()
    })
}

/// Fewer items than this take the row-by-row path even for a symmetric model:
/// its tiles are then too small to pay for the column pass. Sim-all measured on
/// MovieLens 100K (1,682 items): 6.9 ms symmetric, 3.1 ms row by row; on 20k
/// items 0.255 s against 0.261 s; on 60k random items 1.78 s against 2.68 s, as
/// the half of the products it skips grows with the catalogue. (Tests compare
/// the two paths on small inputs.)
#[cfg(not(test))]
const SYMMETRIC_MIN_ITEMS: usize = 4096;
#[cfg(test)]
const SYMMETRIC_MIN_ITEMS: usize = 1;

/// Top-`k` lists for `rows`, in the same order, computed in parallel on the current
/// rayon pool. Checks `stop` between blocks of rows. A symmetric model asked for
/// every item's list (with no per-row exclusions) computes half the products.
pub fn select_block(
    model: &dyn Recommender,
    rows: &[u32],
    selection: &Selection<'_>,
    stop: &StopFlag,
) -> Result<Vec<Vec<Scored>>, Stopped> {
    let n_items = model.n_items();
    let tile = model.item_tile().clamp(1, n_items.max(1));
    // With group caps the best `4k` are kept and walked with the caps; a row whose
    // candidates run out is redone over all items below.
    let pool = match selection.groups {
        Some(_) => selection.k.saturating_mul(4),
        None => selection.k,
    };
    let finish = |row: u32, top: TopK| {
        let candidates = top.finish();
        match selection.groups {
            None => candidates,
            Some(caps) => cap_walk(&candidates, selection.k, caps, candidates.len() < pool)
                .unwrap_or_else(|| capped_full_row(model, row, selection, caps)),
        }
    };
    if let Some((vectors, dim)) = model.symmetric_vectors()
        && selection.seen.is_none()
        && selection.denied_pairs.is_none()
        && rows.len() == n_items
        && n_items >= SYMMETRIC_MIN_ITEMS
        && rows.iter().enumerate().all(|(i, &r)| r as usize == i)
    {
        let tops = symmetric::candidates(vectors, dim, selection, pool, stop)?;
        return Ok(tops
            .into_par_iter()
            .enumerate()
            .map(|(row, top)| finish(row as u32, top))
            .collect());
    }
    // Two blocks per thread keep every thread busy on small inputs too; each
    // block repacks the item tiles (matrixmultiply packs both operands per call),
    // so more blocks cost more packing: sim-all on MovieLens took 3.2 ms with
    // four per thread and with two, and varied 3.2–5 ms with one.
    let per_block = (rows.len() / (2 * rayon::current_num_threads())).clamp(64, ROWS_PER_GEMM);
    let blocks: Vec<Vec<Vec<Scored>>> = rows
        .par_chunks(per_block)
        .map_init(
            || vec![0f32; per_block * tile],
            |scores, block| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let mut tops: Vec<TopK> = block.iter().map(|_| TopK::new(pool)).collect();
                for lo in (0..n_items).step_by(tile) {
                    let hi = (lo + tile).min(n_items);
                    let scores = &mut scores[..block.len() * (hi - lo)];
                    model.score_block(block, lo..hi, scores);
                    for ((&row, s), top) in block
                        .iter()
                        .zip(scores.chunks_exact_mut(hi - lo))
                        .zip(&mut tops)
                    {
                        selection.apply(row, s, lo);
                        top.offer(s, lo);
                    }
                }
                Ok(block
                    .iter()
                    .zip(tops)
                    .map(|(&row, top)| finish(row, top))
                    .collect())
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(blocks.into_iter().flatten().collect())
}

/// The capped list of one row from all its eligible items (rare: when the best
/// `4k` hold fewer than `k` items that respect the caps).
fn capped_full_row(
    model: &dyn Recommender,
    row: u32,
    selection: &Selection<'_>,
    caps: &GroupCaps,
) -> Vec<Scored> {
    let n = model.n_items();
    let mut scores = vec![0f32; n];
    model.score_block(&[row], 0..n, &mut scores);
    selection.apply(row, &mut scores, 0);
    cap_walk(&top_k(&scores, n), selection.k, caps, true).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::popular::Popular;
    use proptest::prelude::*;

    fn full_sort(scores: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (0..scores.len() as u32)
            .filter(|&i| scores[i as usize].is_finite())
            .collect();
        all.sort_by(|a, b| {
            scores[*b as usize]
                .total_cmp(&scores[*a as usize])
                .then(a.cmp(b))
        });
        all.truncate(k);
        all
    }

    proptest! {
        #[test]
        fn top_k_equals_full_sort(
            scores in proptest::collection::vec(prop_oneof![
                (-5i8..5).prop_map(f32::from),
                (-300i16..300).prop_map(f32::from),
                Just(f32::NEG_INFINITY),
                Just(f32::NAN),
            ], 0..4500),
            // Long enough for many 32-score chunks and several groups of 64
            // chunks, so the chunk-maximum floor is used with ties, NaN and −∞
            // among the maxima, and a group can start with a full heap.
            k in 0usize..24,
        ) {
            let got: Vec<u32> = top_k(&scores, k).iter().map(|s| s.item).collect();
            prop_assert_eq!(got, full_sort(&scores, k));
        }

        #[test]
        fn excluded_items_never_appear(
            seen in proptest::collection::vec((0u32..6, 0u32..12), 0..40),
            pairs in proptest::collection::vec((0u32..6, 0u32..12), 0..20),
            blocked in proptest::collection::btree_set(0u32..12, 0..6),
            groups in proptest::collection::vec(prop_oneof![Just(u32::MAX), 0u32..3], 12),
            cap in 1usize..3,
            use_caps in any::<bool>(),
            k in 1usize..15,
        ) {
            let csr = |cells: &[(u32, u32)]| {
                let r: Vec<u32> = cells.iter().map(|c| c.0).collect();
                let c: Vec<u32> = cells.iter().map(|c| c.1).collect();
                Csr::from_triplets(6, 12, &r, &c, &vec![1.0; cells.len()])
            };
            let seen_m = csr(&seen);
            let pair_m = csr(&pairs);
            let blocked: Vec<u32> = blocked.into_iter().collect();
            let caps = GroupCaps { group_of: groups.clone(), cap };
            let model = Popular::fit(&seen_m, false);
            let selection = Selection {
                k,
                seen: Some(&seen_m),
                blocked_items: &blocked,
                denied_pairs: Some(&pair_m),
                groups: use_caps.then_some(&caps),
                ..Selection::default()
            };
            let users: Vec<u32> = (0..6).collect();
            let lists = select_block(&model, &users, &selection, &StopFlag::default()).unwrap();
            for (u, list) in lists.iter().enumerate() {
                let eligible: Vec<u32> = (0..12u32).filter(|i| {
                    !blocked.contains(i) && !seen.contains(&(u as u32, *i)) && !pairs.contains(&(u as u32, *i))
                }).collect();
                if !use_caps {
                    prop_assert_eq!(list.len(), eligible.len().min(k));
                }
                let mut per_group = std::collections::HashMap::new();
                for s in list {
                    prop_assert!(eligible.contains(&s.item));
                    let g = groups[s.item as usize];
                    if use_caps && g != u32::MAX {
                        let n = per_group.entry(g).or_insert(0);
                        *n += 1;
                        prop_assert!(*n <= cap);
                    }
                }
            }
        }
    }

    /// A dense score table scored in tiles of 3 items, to exercise tiling.
    struct Table {
        n_items: usize,
        scores: Vec<f32>,
    }

    impl Recommender for Table {
        fn n_items(&self) -> usize {
            self.n_items
        }
        fn score_block(&self, rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
            for (&r, o) in rows.iter().zip(out.chunks_exact_mut(items.len())) {
                let row = &self.scores[r as usize * self.n_items..(r as usize + 1) * self.n_items];
                o.copy_from_slice(&row[items.clone()]);
            }
        }
        fn item_tile(&self) -> usize {
            3
        }
    }

    proptest! {
        #[test]
        fn tiled_selection_equals_whole_rows(
            scores in proptest::collection::vec((-4i8..4).prop_map(f32::from), 4 * 11),
            seen in proptest::collection::vec((0u32..4, 0u32..11), 0..12),
            blocked in proptest::collection::btree_set(0u32..11, 0..3),
            groups in proptest::collection::vec(prop_oneof![Just(u32::MAX), 0u32..2], 11),
            use_caps in any::<bool>(),
            exclude_self in any::<bool>(),
            k in 1usize..8,
        ) {
            let table = Table { n_items: 11, scores: scores.clone() };
            let r: Vec<u32> = seen.iter().map(|c| c.0).collect();
            let c: Vec<u32> = seen.iter().map(|c| c.1).collect();
            let seen_m = Csr::from_triplets(4, 11, &r, &c, &vec![1.0; r.len()]);
            let blocked: Vec<u32> = blocked.into_iter().collect();
            let caps = GroupCaps { group_of: groups, cap: 1 };
            let selection = Selection {
                k,
                seen: Some(&seen_m),
                blocked_items: &blocked,
                exclude_self,
                groups: use_caps.then_some(&caps),
                ..Selection::default()
            };
            let got = select_block(&table, &[0, 1, 2, 3], &selection, &StopFlag::default()).unwrap();
            for row in 0..4u32 {
                let mut s = scores[row as usize * 11..(row as usize + 1) * 11].to_vec();
                selection.apply(row, &mut s, 0);
                let want = if use_caps { top_k_capped(&s, k, &caps) } else { top_k(&s, k) };
                prop_assert_eq!(&got[row as usize], &want);
            }
        }
    }

    /// Scores `v_i · v_j` over small integer vectors (exact, with many ties), with
    /// or without declaring the symmetry.
    struct Dot {
        v: Vec<f32>,
        dim: usize,
        symmetric: bool,
    }

    impl Recommender for Dot {
        fn n_items(&self) -> usize {
            self.v.len() / self.dim
        }
        fn score_block(&self, rows: &[u32], items: std::ops::Range<usize>, out: &mut [f32]) {
            let d = self.dim;
            let mut q = Vec::new();
            for &r in rows {
                q.extend_from_slice(&self.v[r as usize * d..(r as usize + 1) * d]);
            }
            crate::models::dense::gemm_nt(&q, &self.v[items.start * d..items.end * d], d, out);
        }
        fn item_tile(&self) -> usize {
            crate::models::dense::DENSE_ITEM_TILE
        }
        fn symmetric_vectors(&self) -> Option<(&[f32], usize)> {
            self.symmetric.then_some((&self.v, self.dim))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn symmetric_lists_equal_row_by_row(
            n in 1usize..700,
            dim in 1usize..4,
            seed in any::<u64>(),
            blocked in proptest::collection::btree_set(0u32..700, 0..20),
            min_score in proptest::option::of(-2i8..3),
            use_caps in any::<bool>(),
            exclude_self in any::<bool>(),
            k in 1usize..12,
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let v: Vec<f32> = (0..n * dim).map(|_| f32::from(rng.random_range(-2i8..3))).collect();
            let caps = GroupCaps {
                group_of: (0..n).map(|i| if i % 3 == 0 { u32::MAX } else { (i % 5) as u32 }).collect(),
                cap: 2,
            };
            let blocked: Vec<u32> = blocked.into_iter().filter(|&i| (i as usize) < n).collect();
            let selection = Selection {
                k,
                blocked_items: &blocked,
                exclude_self,
                min_score: min_score.map(f32::from),
                groups: use_caps.then_some(&caps),
                ..Selection::default()
            };
            let rows: Vec<u32> = (0..n as u32).collect();
            let stop = StopFlag::default();
            let fast = Dot { v: v.clone(), dim, symmetric: true };
            let plain = Dot { v, dim, symmetric: false };
            prop_assert_eq!(
                select_block(&fast, &rows, &selection, &stop).unwrap(),
                select_block(&plain, &rows, &selection, &stop).unwrap()
            );
        }
    }

    #[test]
    fn caps_fill_from_lower_ranks() {
        let scores = [9.0, 8.0, 7.0, 6.0, 5.0];
        let caps = GroupCaps {
            group_of: vec![0, 0, 0, 1, u32::MAX],
            cap: 1,
        };
        let got: Vec<u32> = top_k_capped(&scores, 3, &caps)
            .iter()
            .map(|s| s.item)
            .collect();
        assert_eq!(got, vec![0, 3, 4]);
    }

    #[test]
    fn stop_flag_stops() {
        let m = Csr::from_triplets(1, 2, &[0], &[1], &[1.0]);
        let model = Popular::fit(&m, false);
        let stop = StopFlag::default();
        stop.stop();
        let sel = Selection {
            k: 1,
            ..Selection::default()
        };
        assert_eq!(select_block(&model, &[0], &sel, &stop), Err(Stopped));
    }
}

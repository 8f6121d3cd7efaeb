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

/// Query rows scored by one GEMM. sgemm packs the whole item matrix on every call,
/// so small blocks pay that again and again: on 100k users × 20k items × 64 factors
/// rec-all took 12.6 s with 16 rows, 4.5 s with 64, 3.1 s with 256 and 3.8 s with
/// 512 (the scores buffer, rows × items × 4 bytes per thread, outgrows the cache).
const ROWS_PER_GEMM: usize = 256;

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
    fn apply(&self, row: u32, scores: &mut [f32]) {
        for &i in self.blocked_items {
            scores[i as usize] = f32::NEG_INFINITY;
        }
        for m in [self.seen, self.denied_pairs].into_iter().flatten() {
            if (row as usize) < m.n_rows {
                for &i in m.row(row as usize).0 {
                    scores[i as usize] = f32::NEG_INFINITY;
                }
            }
        }
        if self.exclude_self && (row as usize) < scores.len() {
            scores[row as usize] = f32::NEG_INFINITY;
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

/// The `k` best finite scores, best first; equal scores go to the lower index so the
/// result is deterministic. Once `k` are held, a chunk of scores whose maximum is
/// not above the worst held one is skipped after one vectorised pass.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Scored> {
    const CHUNK: usize = 32;
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    let mut threshold = f32::NEG_INFINITY;
    for (c, chunk) in scores.chunks(CHUNK).enumerate() {
        // Scanning in index order, a score equal to the threshold comes after the
        // held one and loses the tie, so `<=` may skip it.
        if heap.len() == k && chunk_max(chunk) <= threshold {
            continue;
        }
        for (j, &s) in chunk.iter().enumerate() {
            if !s.is_finite() || (heap.len() == k && s <= threshold) {
                continue;
            }
            let cand = Worst(Scored {
                item: (c * CHUNK + j) as u32,
                score: s,
            });
            if heap.len() == k {
                heap.pop();
            }
            heap.push(cand);
            if heap.len() == k {
                threshold = heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
            }
        }
    }
    let mut out: Vec<Scored> = heap.into_iter().map(|w| w.0).collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
    out
}

/// The largest non-NaN value of `chunk` (−∞ if none), in eight lanes so the
/// compiler emits packed max instructions.
#[inline]
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

/// Like [`top_k`] but with at most `caps.cap` items per group.
fn top_k_capped(scores: &[f32], k: usize, caps: &GroupCaps) -> Vec<Scored> {
    // Usually the best 4k candidates hold k that respect the caps; if not, look at all.
    for pool in [k.saturating_mul(4), scores.len()] {
        let mut taken = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(k);
        let candidates = top_k(scores, pool);
        let exhausted = candidates.len() < pool || pool == scores.len();
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
            out.push(c);
            if out.len() == k {
                return out;
            }
        }
        if exhausted {
            return out;
        }
    }
    Vec::new()
}

/// Top-`k` lists for `rows`, in the same order, computed in parallel on the current
/// rayon pool. Checks `stop` between GEMM blocks.
pub fn select_block(
    model: &dyn Recommender,
    rows: &[u32],
    selection: &Selection<'_>,
    stop: &StopFlag,
) -> Result<Vec<Vec<Scored>>, Stopped> {
    let n_items = model.n_items();
    let blocks: Vec<Vec<Vec<Scored>>> = rows
        .par_chunks(ROWS_PER_GEMM)
        .map_init(
            || vec![0f32; ROWS_PER_GEMM * n_items],
            |scores, block| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                let scores = &mut scores[..block.len() * n_items];
                model.score_block(block, scores);
                Ok(block
                    .iter()
                    .zip(scores.chunks_exact_mut(n_items.max(1)))
                    .map(|(&row, s)| {
                        selection.apply(row, s);
                        match selection.groups {
                            Some(caps) => top_k_capped(s, selection.k, caps),
                            None => top_k(s, selection.k),
                        }
                    })
                    .collect())
            },
        )
        .collect::<Result<_, _>>()?;
    Ok(blocks.into_iter().flatten().collect())
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
                Just(f32::NEG_INFINITY),
                Just(f32::NAN),
            ], 0..80),
            k in 0usize..20,
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

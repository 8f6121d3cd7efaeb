//! Top-N selection: score a block of users, remove what must never be shown, keep
//! the best `k` per user.
//!
//! Invariant: exclusions are applied to the scores *before* selection (an excluded
//! item scores −∞ and is never selected), so no output path can skip a filter, and
//! a user with fewer than `k` eligible items simply gets a shorter list.

use rayon::prelude::*;

use crate::models::{Csr, Recommender, StopFlag, Stopped};

/// One recommended item with its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

/// What to leave out of every user's list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exclusions<'a> {
    /// Items each user already interacted with (user × item).
    pub seen: Option<&'a Csr>,
    /// Items nobody may get (dense item indices).
    pub denied_items: &'a [u32],
    /// Per-user denied items (user × item).
    pub denied_pairs: Option<&'a Csr>,
}

impl Exclusions<'_> {
    fn apply(&self, user: u32, scores: &mut [f32]) {
        for &i in self.denied_items {
            scores[i as usize] = f32::NEG_INFINITY;
        }
        for m in [self.seen, self.denied_pairs].into_iter().flatten() {
            if (user as usize) < m.n_rows {
                for &i in m.row(user as usize).0 {
                    scores[i as usize] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The `k` best finite scores, best first; equal scores go to the lower index so the
/// result is deterministic. `order` is scratch space, reused across calls.
pub fn top_k(scores: &[f32], k: usize, order: &mut Vec<u32>) -> Vec<Scored> {
    order.clear();
    order.extend((0..scores.len() as u32).filter(|&i| scores[i as usize].is_finite()));
    let better = |a: &u32, b: &u32| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then(a.cmp(b))
    };
    if order.len() > k && k > 0 {
        order.select_nth_unstable_by(k - 1, better);
    }
    order.truncate(k);
    order.sort_unstable_by(better);
    order
        .iter()
        .map(|&i| Scored {
            item: i,
            score: scores[i as usize],
        })
        .collect()
}

/// Top-`k` lists for `users`, in the same order, computed in parallel on the current
/// rayon pool. Checks `stop` between users.
pub fn recommend_block(
    model: &dyn Recommender,
    users: &[u32],
    k: usize,
    exclusions: &Exclusions<'_>,
    stop: &StopFlag,
) -> Result<Vec<Vec<Scored>>, Stopped> {
    let n_items = model.n_items();
    users
        .par_iter()
        .map_init(
            || (vec![0f32; n_items], Vec::with_capacity(n_items)),
            |(scores, order), &user| {
                if stop.is_stopped() {
                    return Err(Stopped);
                }
                model.score_user(user, scores);
                exclusions.apply(user, scores);
                Ok(top_k(scores, k, order))
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::popular::Popular;
    use proptest::prelude::*;

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
            let mut all: Vec<u32> = (0..scores.len() as u32)
                .filter(|&i| scores[i as usize].is_finite())
                .collect();
            all.sort_by(|a, b| scores[*b as usize].total_cmp(&scores[*a as usize]).then(a.cmp(b)));
            all.truncate(k);
            let got: Vec<u32> = top_k(&scores, k, &mut Vec::new()).iter().map(|s| s.item).collect();
            prop_assert_eq!(got, all);
        }

        #[test]
        fn excluded_items_never_appear(
            seen in proptest::collection::vec((0u32..6, 0u32..12), 0..40),
            pairs in proptest::collection::vec((0u32..6, 0u32..12), 0..20),
            denied in proptest::collection::btree_set(0u32..12, 0..6),
            k in 1usize..15,
        ) {
            let csr = |cells: &[(u32, u32)]| {
                let r: Vec<u32> = cells.iter().map(|c| c.0).collect();
                let c: Vec<u32> = cells.iter().map(|c| c.1).collect();
                Csr::from_triplets(6, 12, &r, &c, &vec![1.0; cells.len()])
            };
            let seen_m = csr(&seen);
            let pair_m = csr(&pairs);
            let denied: Vec<u32> = denied.into_iter().collect();
            let model = Popular::fit(&seen_m, false);
            let excl = Exclusions { seen: Some(&seen_m), denied_items: &denied, denied_pairs: Some(&pair_m) };
            let users: Vec<u32> = (0..6).collect();
            let lists = recommend_block(&model, &users, k, &excl, &StopFlag::default()).unwrap();
            for (u, list) in lists.iter().enumerate() {
                let eligible = (0..12u32).filter(|i| {
                    !denied.contains(i) && !seen.contains(&(u as u32, *i)) && !pairs.contains(&(u as u32, *i))
                }).count();
                prop_assert_eq!(list.len(), eligible.min(k));
                for s in list {
                    prop_assert!(!denied.contains(&s.item));
                    prop_assert!(!seen.contains(&(u as u32, s.item)));
                    prop_assert!(!pairs.contains(&(u as u32, s.item)));
                }
            }
        }
    }

    #[test]
    fn stop_flag_stops() {
        let m = Csr::from_triplets(1, 2, &[0], &[1], &[1.0]);
        let model = Popular::fit(&m, false);
        let stop = StopFlag::default();
        stop.stop();
        let r = recommend_block(&model, &[0], 1, &Exclusions::default(), &stop);
        assert_eq!(r, Err(Stopped));
    }
}

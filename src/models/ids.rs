//! External ids (Int64 or Utf8 in the data) ↔ dense indices `0..n`.
//!
//! Ids get indices in sorted order, so the same set of ids always maps the same
//! way; the map is saved with the model and read back with it.

use std::collections::HashMap;

/// The external ids of one side (users or items), in dense-index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    Int(Vec<i64>),
    Str(Vec<String>),
}

/// A borrowed external id, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdRef<'a> {
    Int(i64),
    Str(&'a str),
}

#[derive(Debug, Clone)]
pub struct IdMap {
    ids: Ids,
    int_index: HashMap<i64, u32>,
    str_index: HashMap<String, u32>,
}

impl IdMap {
    /// Maps the distinct values of `ids`, sorted.
    pub fn from_ids(ids: Ids) -> Self {
        let ids = match ids {
            Ids::Int(mut v) => {
                v.sort_unstable();
                v.dedup();
                Ids::Int(v)
            }
            Ids::Str(mut v) => {
                v.sort_unstable();
                v.dedup();
                Ids::Str(v)
            }
        };
        Self::from_sorted(ids)
    }

    /// Rebuilds the lookup of an id list that is already in dense-index order.
    pub fn from_sorted(ids: Ids) -> Self {
        let (int_index, str_index) = match &ids {
            Ids::Int(v) => (
                v.iter()
                    .enumerate()
                    .map(|(i, &id)| (id, i as u32))
                    .collect(),
                HashMap::new(),
            ),
            Ids::Str(v) => (
                HashMap::new(),
                v.iter()
                    .enumerate()
                    .map(|(i, id)| (id.clone(), i as u32))
                    .collect(),
            ),
        };
        Self {
            ids,
            int_index,
            str_index,
        }
    }

    pub fn len(&self) -> usize {
        match &self.ids {
            Ids::Int(v) => v.len(),
            Ids::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// The id at dense index `i`.
    pub fn id(&self, i: usize) -> IdRef<'_> {
        match &self.ids {
            Ids::Int(v) => IdRef::Int(v[i]),
            Ids::Str(v) => IdRef::Str(&v[i]),
        }
    }

    /// The ids of both maps, as a new map (ids of the other type are left out).
    pub fn union(&self, other: &IdMap) -> IdMap {
        let ids = match (&self.ids, &other.ids) {
            (Ids::Int(a), Ids::Int(b)) => Ids::Int(a.iter().chain(b).copied().collect()),
            (Ids::Str(a), Ids::Str(b)) => Ids::Str(a.iter().chain(b).cloned().collect()),
            (a, _) => a.clone(),
        };
        IdMap::from_ids(ids)
    }

    /// The dense index of `id`, if the id is known; an id of the other type is unknown.
    pub fn index(&self, id: IdRef<'_>) -> Option<u32> {
        match id {
            IdRef::Int(i) => self.int_index.get(&i).copied(),
            IdRef::Str(s) => self.str_index.get(s).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn int_ids_round_trip(ids in proptest::collection::vec(any::<i64>(), 0..50)) {
            let map = IdMap::from_ids(Ids::Int(ids.clone()));
            let Ids::Int(sorted) = map.ids().clone() else { unreachable!() };
            prop_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
            for id in &ids {
                let i = map.index(IdRef::Int(*id)).unwrap();
                prop_assert_eq!(sorted[i as usize], *id);
            }
        }

        #[test]
        fn str_ids_round_trip(ids in proptest::collection::vec("[a-z0-9]{0,6}", 0..50)) {
            let map = IdMap::from_ids(Ids::Str(ids.clone()));
            let Ids::Str(sorted) = map.ids().clone() else { unreachable!() };
            for id in &ids {
                let i = map.index(IdRef::Str(id)).unwrap();
                prop_assert_eq!(&sorted[i as usize], id);
            }
            prop_assert_eq!(map.index(IdRef::Int(1)), None);
        }
    }
}

//! Compressed sparse rows: the user × item interaction matrix.

use rayon::prelude::*;

/// A sparse `n_rows × n_cols` matrix; within a row the column indices are sorted
/// and unique.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub n_rows: usize,
    pub n_cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl Csr {
    /// Builds from `(row, col, value)` triplets; duplicate cells are summed.
    ///
    /// # Panics
    /// If a row or column is out of range (callers map ids to dense indices first).
    pub fn from_triplets(
        n_rows: usize,
        n_cols: usize,
        rows: &[u32],
        cols: &[u32],
        vals: &[f32],
    ) -> Self {
        assert!(rows.len() == cols.len() && cols.len() == vals.len());
        let mut counts = vec![0usize; n_rows + 1];
        for &r in rows {
            counts[r as usize + 1] += 1;
        }
        for i in 0..n_rows {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; rows.len()];
        let mut data = vec![0f32; rows.len()];
        for ((&r, &c), &v) in rows.iter().zip(cols).zip(vals) {
            assert!((c as usize) < n_cols, "column {c} out of range {n_cols}");
            let slot = &mut next[r as usize];
            indices[*slot] = c;
            data[*slot] = v;
            *slot += 1;
        }
        // Sort each row by column and sum duplicates in place.
        let mut indptr = Vec::with_capacity(n_rows + 1);
        indptr.push(0);
        let mut out = 0usize;
        let mut pairs: Vec<(u32, f32)> = Vec::new();
        for r in 0..n_rows {
            pairs.clear();
            pairs.extend((counts[r]..counts[r + 1]).map(|k| (indices[k], data[k])));
            pairs.sort_unstable_by_key(|p| p.0);
            let mut last: Option<u32> = None;
            for &(c, v) in &pairs {
                if last == Some(c) {
                    data[out - 1] += v;
                } else {
                    indices[out] = c;
                    data[out] = v;
                    out += 1;
                    last = Some(c);
                }
            }
            indptr.push(out);
        }
        indices.truncate(out);
        data.truncate(out);
        Self {
            n_rows,
            n_cols,
            indptr,
            indices,
            data,
        }
    }

    /// A matrix of `n_cols` columns whose row `r` holds `lens[r]` entries:
    /// `row(scratch, r, list)` lists the row's entries in column order into an
    /// empty `list`, cut here to its `lens[r]` largest when longer. Rows run in
    /// parallel, each written in place: the result is allocated once at its
    /// size and never copied, as fresh pages cost as much as the arithmetic of
    /// the models that build this way.
    pub fn from_row_lists<S, E: Send>(
        n_cols: usize,
        lens: &[usize],
        scratch: impl Fn() -> S + Send + Sync,
        row: impl Fn(&mut S, usize, &mut Vec<(u32, f32)>) -> Result<(), E> + Send + Sync,
    ) -> Result<Self, E> {
        let mut indptr = Vec::with_capacity(lens.len() + 1);
        indptr.push(0);
        for len in lens {
            indptr.push(indptr[indptr.len() - 1] + len);
        }
        let nnz = indptr[lens.len()];
        let (mut indices, mut data) = (vec![0u32; nnz], vec![0f32; nnz]);
        let mut slots = Vec::with_capacity(lens.len());
        let (mut is, mut ds) = (indices.as_mut_slice(), data.as_mut_slice());
        for &len in lens {
            let (i, i_rest) = is.split_at_mut(len);
            let (d, d_rest) = ds.split_at_mut(len);
            slots.push((i, d));
            (is, ds) = (i_rest, d_rest);
        }
        slots
            .into_par_iter()
            .enumerate()
            .map_init(
                || (scratch(), Vec::new()),
                |(s, list), (r, (columns, values))| {
                    list.clear();
                    row(s, r, list)?;
                    let k = columns.len();
                    if list.len() > k {
                        list.select_nth_unstable_by(k, |a, b| {
                            b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
                        });
                        list.truncate(k);
                        list.sort_unstable_by_key(|e| e.0);
                    }
                    for ((c, v), &(col, value)) in
                        columns.iter_mut().zip(values.iter_mut()).zip(list.iter())
                    {
                        (*c, *v) = (col, value);
                    }
                    Ok(())
                },
            )
            .collect::<Result<(), E>>()?;
        Ok(Csr {
            n_rows: lens.len(),
            n_cols,
            indptr,
            indices,
            data,
        })
    }

    /// The `n_cols × n_rows` transpose (rows stay sorted).
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0usize; self.n_cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for i in 0..self.n_cols {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0f32; self.nnz()];
        for r in 0..self.n_rows {
            let (idx, val) = self.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                let slot = &mut next[c as usize];
                indices[*slot] = r as u32;
                data[*slot] = v;
                *slot += 1;
            }
        }
        Csr {
            n_rows: self.n_cols,
            n_cols: self.n_rows,
            indptr: counts,
            indices,
            data,
        }
    }

    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Column indices and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let range = self.indptr[r]..self.indptr[r + 1];
        (&self.indices[range.clone()], &self.data[range])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_are_summed_and_rows_sorted() {
        let m = Csr::from_triplets(2, 3, &[1, 0, 1, 1], &[2, 1, 0, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.indptr, vec![0, 1, 3]);
        assert_eq!(m.row(0), (&[1u32][..], &[2.0f32][..]));
        assert_eq!(m.row(1), (&[0u32, 2][..], &[3.0f32, 5.0][..]));
    }

    #[test]
    fn rows_listed_longer_than_their_length_keep_their_largest() {
        let lists = [
            vec![(0, 1.0), (2, 3.0), (3, 3.0), (4, 3.0)],
            vec![],
            vec![(1, 5.0)],
        ];
        let m = Csr::from_row_lists(
            5,
            &[2, 0, 1],
            || (),
            |_, r, list| {
                list.extend_from_slice(&lists[r]);
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert_eq!(m.indptr, [0, 2, 2, 3]);
        // Ties go to the lower columns.
        assert_eq!(m.row(0), (&[2, 3][..], &[3.0, 3.0][..]));
        assert_eq!(m.row(2), (&[1][..], &[5.0][..]));
        let failed = Csr::from_row_lists(5, &[1], || (), |_, _, _| Err("no"));
        assert_eq!(failed, Err("no"));
    }

    #[test]
    fn transpose_twice_is_identity() {
        let m = Csr::from_triplets(3, 4, &[0, 2, 2, 1], &[3, 0, 3, 1], &[1.0, 2.0, 3.0, 4.0]);
        let t = m.transpose();
        assert_eq!(t.row(3), (&[0u32, 2][..], &[1.0f32, 3.0][..]));
        assert_eq!(t.transpose(), m);
    }

    proptest! {
        #[test]
        fn matches_dense_sum(cells in proptest::collection::vec((0u32..5, 0u32..7, 0u8..10), 0..60)) {
            let rows: Vec<u32> = cells.iter().map(|c| c.0).collect();
            let cols: Vec<u32> = cells.iter().map(|c| c.1).collect();
            let vals: Vec<f32> = cells.iter().map(|c| f32::from(c.2)).collect();
            let m = Csr::from_triplets(5, 7, &rows, &cols, &vals);
            let mut dense = [[0f32; 7]; 5];
            let mut present = [[false; 7]; 5];
            for c in &cells {
                dense[c.0 as usize][c.1 as usize] += f32::from(c.2);
                present[c.0 as usize][c.1 as usize] = true;
            }
            for r in 0..5 {
                let (idx, val) = m.row(r);
                prop_assert!(idx.windows(2).all(|w| w[0] < w[1]));
                let expect: Vec<u32> = (0..7u32).filter(|&c| present[r][c as usize]).collect();
                prop_assert_eq!(idx, &expect[..]);
                for (&c, &v) in idx.iter().zip(val) {
                    prop_assert_eq!(v, dense[r][c as usize]);
                }
            }
        }
    }
}

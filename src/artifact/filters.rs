//! Filter artifacts: [`load`] reads them (merged by `merge_filters`, or a plain
//! `filter` extract) into the model's indices for `recommend` and
//! `similar_items`, which apply them in one place (`topn::Selection`).
//!
//! A merged artifact is a folder with `filters.json` (group cap and provenance),
//! `deny_items.parquet` (`item_id, source`), `deny_pairs.parquet`
//! (`user_id, item_id, source`), `allow_items.parquet` (`item_id, source`) and
//! `groups.parquet` (`item_id, group`), each present when it has rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::interactions::{self, IdColumn};
use super::{ArtifactError, DATA_FILE};
use crate::artifact::{self, read_parquet};
use crate::models::{Csr, IdMap};
use crate::topn::GroupCaps;

pub const MERGED_FILE: &str = "filters.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergedMeta {
    pub group_cap: Option<usize>,
    /// Whether allow lists were merged: then only their items may be shown, even
    /// when they were empty and no `allow_items.parquet` was written.
    pub allow: bool,
    /// The part files written, so readers never guess from what is on disk.
    pub parts: Vec<String>,
    /// Per input: what it contributed.
    pub sources: Vec<serde_json::Value>,
}

pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Invalid(format!("{}: {e}", path.display()))
}

/// Per source list: the items it denies to everyone and the (user, item) pairs.
#[derive(Default)]
struct Denied {
    items: Vec<u32>,
    pairs: Vec<(u32, u32)>,
}

type BySource = BTreeMap<String, Denied>;

/// Filter artifacts mapped to a model's indices.
pub struct Filters {
    pub blocked_items: Vec<u32>,
    pub pairs: Csr,
    pub groups: Option<GroupCaps>,
    /// Per source: how many of the model's items or pairs it removed.
    pub provenance: Vec<serde_json::Value>,
}

/// Reads filter artifacts (folders, merged or plain, or a plain filter file).
pub fn load(paths: &[PathBuf], users: &IdMap, items: &IdMap) -> Result<Filters, ArtifactError> {
    let mut denied: BySource = BTreeMap::new();
    let mut allowed: Option<Vec<bool>> = None;
    let mut groups: Option<GroupCaps> = None;
    for path in paths {
        let merged = path.join(MERGED_FILE);
        if std::fs::metadata(&merged).is_ok() {
            let meta: MergedMeta = artifact::read_json(&merged)?;
            let part = |name: &str| {
                meta.parts
                    .iter()
                    .any(|p| p == name)
                    .then(|| path.join(name))
            };
            if meta.allow {
                allowed.get_or_insert_with(|| vec![false; items.len()]);
            }
            if let Some(p) = part("deny_items.parquet") {
                read_rows(&p, users, items, &mut denied)?;
            }
            if let Some(p) = part("deny_pairs.parquet") {
                read_rows(&p, users, items, &mut denied)?;
            }
            if let Some(p) = part("allow_items.parquet") {
                let mut found: BySource = BTreeMap::new();
                read_rows(&p, users, items, &mut found)?;
                let mask = allowed.get_or_insert_with(|| vec![false; items.len()]);
                for d in found.values() {
                    for &i in &d.items {
                        mask[i as usize] = true;
                    }
                }
            }
            if let (Some(p), Some(cap)) = (part("groups.parquet"), meta.group_cap) {
                groups = Some(read_groups(&p, items, cap)?);
            }
        } else {
            let file = if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
                path.join(DATA_FILE)
            } else {
                path.clone()
            };
            read_rows(&file, users, items, &mut denied)?;
        }
    }
    let mut blocked: Vec<u32> = denied
        .values()
        .flat_map(|d| d.items.iter().copied())
        .collect();
    if let Some(mask) = &allowed {
        blocked.extend((0..items.len() as u32).filter(|&i| !mask[i as usize]));
    }
    blocked.sort_unstable();
    blocked.dedup();
    let pair_list: Vec<(u32, u32)> = denied
        .values()
        .flat_map(|d| d.pairs.iter().copied())
        .collect();
    let rows: Vec<u32> = pair_list.iter().map(|p| p.0).collect();
    let cols: Vec<u32> = pair_list.iter().map(|p| p.1).collect();
    let pairs = Csr::from_triplets(
        users.len(),
        items.len(),
        &rows,
        &cols,
        &vec![1.0; rows.len()],
    );
    let mut provenance: Vec<serde_json::Value> = denied
        .iter()
        .map(|(source, d)| json!({ "source": source, "items": d.items.len(), "pairs": d.pairs.len() }))
        .collect();
    if let Some(mask) = &allowed {
        provenance.push(json!({ "source": "allow lists", "items_outside": mask.iter().filter(|a| !**a).count() }));
    }
    Ok(Filters {
        blocked_items: blocked,
        pairs,
        groups,
        provenance,
    })
}

/// Adds a filter file's rows, per `source` column (or the file name): rows without
/// a `user_id` (or with a null one) deny the item for everyone, rows with one deny
/// the pair. Ids the model does not know are skipped: they could not be shown anyway.
fn read_rows(
    path: &Path,
    users: &IdMap,
    items: &IdMap,
    out: &mut BySource,
) -> Result<(), ArtifactError> {
    let (_, batches) = read_parquet(path)?;
    let default_source = path.display().to_string();
    for b in &batches {
        let item_col = IdColumn::of(b, "item_id", path)?;
        interactions::check_type(&item_col, items, "item_id", path)?;
        let user_col = match b.column_by_name("user_id") {
            Some(raw) => {
                let c = IdColumn::of(b, "user_id", path)?;
                interactions::check_type(&c, users, "user_id", path)?;
                Some((c, raw.clone()))
            }
            None => None,
        };
        let source = b
            .column_by_name("source")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        for row in 0..b.num_rows() {
            let Some(item) = items.index(item_col.get(row)) else {
                continue;
            };
            let name = source
                .as_ref()
                .map_or(default_source.as_str(), |s| s.value(row));
            let entry = out.entry(name.to_string()).or_default();
            match &user_col {
                Some((c, raw)) if raw.is_valid(row) => {
                    if let Some(user) = users.index(c.get(row)) {
                        entry.pairs.push((user, item));
                    }
                }
                _ => entry.items.push(item),
            }
        }
    }
    Ok(())
}

fn read_groups(path: &Path, items: &IdMap, cap: usize) -> Result<GroupCaps, ArtifactError> {
    let (_, batches) = read_parquet(path)?;
    let mut group_of = vec![u32::MAX; items.len()];
    let mut names: HashMap<String, u32> = HashMap::new();
    for b in &batches {
        let item_col = IdColumn::of(b, "item_id", path)?;
        interactions::check_type(&item_col, items, "item_id", path)?;
        let group = b
            .column_by_name("group")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| err(path, "no Utf8 column `group`"))?;
        for row in 0..b.num_rows() {
            if let Some(item) = items.index(item_col.get(row)) {
                let next = names.len() as u32;
                group_of[item as usize] =
                    *names.entry(group.value(row).to_string()).or_insert(next);
            }
        }
    }
    Ok(GroupCaps { group_of, cap })
}

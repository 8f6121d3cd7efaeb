//! `vectorize`: the text, categorical and numeric columns of an `items` extract →
//! an item-features artifact (`item_id, feature, weight`, plus the vocabulary;
//! format in [`crate::artifact::features`]). Every feature is named
//! `prefix:term`, the prefix being the column's name unless set, so features of
//! different columns never collide and a reader sees where each came from.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow::array::{Array, Float64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kind::{
    CheckContext, Inputs, Problem, StepKind, create_output, parse_key_value, refuse,
};
use super::{StepContext, StepError, StepOutput, StepResult};
use crate::artifact::features::{self, ItemFeatures, Vectorizer, Vocabulary};
use crate::artifact::interactions::IdColumn;
use crate::artifact::{ArtifactKind, read_parquet};
use crate::models::text::{self, Corpus, Norm, Pruning, Tokenizer, Weighting};
use crate::models::{Csr, IdMap, StopFlag, Stopped};

/// The most features a column may keep, and the longest `min_length`: far above
/// any useful value, they keep out settings that exhaust memory.
pub const MAX_FEATURES: usize = 10_000_000;
const MAX_MIN_LENGTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VectorizeSpec {
    /// The item columns to use, each with how it becomes features.
    pub columns: BTreeMap<String, ColumnSpec>,
    #[serde(default)]
    pub weighting: Weighting,
    #[serde(default)]
    pub normalize: Norm,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// The features' name prefix (default: the column's name).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Drop features in fewer items than this.
    #[serde(default = "one")]
    pub min_df: usize,
    /// Drop features in more than this share of items.
    #[serde(default = "all")]
    pub max_df: f64,
    /// Keep at most this many features of the column, the most frequent first.
    #[serde(default)]
    pub max_features: Option<usize>,
    /// Text: words to drop.
    #[serde(default)]
    pub stop_words: Vec<String>,
    /// Text: drop words shorter than this (characters; CJK bigrams stay).
    #[serde(default)]
    pub min_length: Option<usize>,
    /// Categorical: splits a value holding a list (`"Action|Comedy"`).
    #[serde(default)]
    pub separator: Option<String>,
    /// Numeric: the width of a bucket (10 turns years into decades).
    #[serde(default)]
    pub bucket: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Categorical,
    Numeric,
}

fn one() -> usize {
    1
}

fn all() -> f64 {
    1.0
}

/// Words of one character carry little (as scikit-learn's default pattern).
const DEFAULT_MIN_LENGTH: usize = 2;

impl ColumnSpec {
    fn prefix<'a>(&'a self, column: &'a str) -> &'a str {
        self.prefix.as_deref().unwrap_or(column)
    }

    fn pruning(&self) -> Pruning {
        Pruning {
            min_df: self.min_df,
            max_df: self.max_df,
            max_features: self.max_features,
        }
    }

    fn problems(&self, column: &str) -> Vec<Problem> {
        let key = |k: &str| format!("columns.{column}.{k}");
        let mut problems = Vec::new();
        let mut refuse = |k: &str, m: String| problems.push(Problem::new(key(k), m));
        if self.prefix.as_deref().is_some_and(|p| p.trim().is_empty()) {
            refuse("prefix", "must not be empty".into());
        }
        if !(self.max_df > 0.0 && self.max_df <= 1.0) {
            refuse(
                "max_df",
                format!("must be above 0 and at most 1, not {}", self.max_df),
            );
        }
        if self
            .max_features
            .is_some_and(|m| !(1..=MAX_FEATURES).contains(&m))
        {
            refuse(
                "max_features",
                format!("must be between 1 and {MAX_FEATURES}"),
            );
        }
        if self
            .min_length
            .is_some_and(|m| !(1..=MAX_MIN_LENGTH).contains(&m))
        {
            refuse(
                "min_length",
                format!("must be between 1 and {MAX_MIN_LENGTH}"),
            );
        }
        if self.bucket.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            refuse("bucket", "must be a finite number above 0".into());
        }
        let only = |k: &str, set: bool, kind: ColumnType| {
            (set && self.kind != kind).then(|| k.to_string())
        };
        let misplaced = [
            only("stop_words", !self.stop_words.is_empty(), ColumnType::Text),
            only("min_length", self.min_length.is_some(), ColumnType::Text),
            only(
                "separator",
                self.separator.is_some(),
                ColumnType::Categorical,
            ),
            only("bucket", self.bucket.is_some(), ColumnType::Numeric),
        ];
        for k in misplaced.into_iter().flatten() {
            refuse(
                &k,
                format!("does not apply to a {:?} column", self.kind).to_lowercase(),
            );
        }
        if self.kind == ColumnType::Numeric && self.bucket.is_none() {
            refuse(
                "bucket",
                "a numeric column needs a bucket width (e.g. `bucket = 10`)".into(),
            );
        }
        if self.separator.as_deref() == Some("") {
            refuse("separator", "must not be empty".into());
        }
        problems
    }

    /// The terms of every row of `values`, prefixed; tokenised in parallel.
    fn terms(
        &self,
        column: &str,
        values: &ColumnValues,
        stop: &StopFlag,
    ) -> Result<Vec<Vec<String>>, Stopped> {
        let prefix = self.prefix(column);
        let tokenizer = (self.kind == ColumnType::Text).then(|| {
            Tokenizer::new(
                self.min_length.unwrap_or(DEFAULT_MIN_LENGTH),
                &self.stop_words,
            )
        });
        let rows: Vec<usize> = (0..values.len()).collect();
        let chunks: Result<Vec<Vec<Vec<String>>>, Stopped> = rows
            .par_chunks(4096)
            .map(|chunk| match stop.is_stopped() {
                true => Err(Stopped),
                false => Ok(chunk
                    .iter()
                    .map(|&r| self.row_terms(prefix, tokenizer.as_ref(), values, r))
                    .collect()),
            })
            .collect();
        Ok(chunks?.into_iter().flatten().collect())
    }

    fn row_terms(
        &self,
        prefix: &str,
        tokenizer: Option<&Tokenizer>,
        values: &ColumnValues,
        row: usize,
    ) -> Vec<String> {
        let named = |t: &str| format!("{prefix}:{t}");
        match (values, tokenizer) {
            (ColumnValues::Numbers(numbers), _) => {
                vec![named(&bucket_label(
                    numbers[row],
                    self.bucket.unwrap_or(1.0),
                ))]
            }
            (ColumnValues::Text(strings), _) if strings[row].is_none() => Vec::new(),
            (ColumnValues::Text(strings), Some(t)) => {
                let text = strings[row].as_deref().unwrap_or_default();
                t.tokens(text).iter().map(|t| named(t)).collect()
            }
            (ColumnValues::Text(strings), None) => {
                let value = strings[row].as_deref().unwrap_or_default();
                let parts: Vec<&str> = match &self.separator {
                    Some(sep) => value.split(sep.as_str()).collect(),
                    None => vec![value],
                };
                parts
                    .into_iter()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(named)
                    .collect()
            }
        }
    }
}

/// `1990s` for 1994 in buckets of 10 (or 100 …), `0.5-1` for 0.7 in buckets of
/// 0.5; `unknown` for a missing or non-finite value.
fn bucket_label(value: Option<f64>, width: f64) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return "unknown".into();
    };
    let lo = (v / width).floor() * width;
    let decimal = width >= 10.0 && (width.log10().fract() == 0.0);
    if decimal {
        format!("{lo}s")
    } else {
        format!("{lo}-{}", lo + width)
    }
}

/// A column's values, one per row.
enum ColumnValues {
    Text(Vec<Option<String>>),
    Numbers(Vec<Option<f64>>),
}

impl ColumnValues {
    fn len(&self) -> usize {
        match self {
            ColumnValues::Text(v) => v.len(),
            ColumnValues::Numbers(v) => v.len(),
        }
    }
}

#[derive(clap::Args)]
pub struct VectorizeArgs {
    /// An items Parquet file (`item_id` plus the columns to use).
    #[arg(long)]
    input: PathBuf,
    /// Settings as `key=value` in TOML syntax, as in a pipeline file, e.g.
    /// `columns.title={type="text"}`.
    #[arg(long = "set", value_parser = parse_key_value)]
    set: Vec<(String, String)>,
    /// A previous vectorize output: keep its features and weigh as it did.
    #[arg(long)]
    vocabulary: Option<PathBuf>,
    /// Folder for the item-features artifact.
    #[arg(long)]
    output: PathBuf,
}

impl StepKind for VectorizeSpec {
    const NAME: &'static str = "vectorize";
    const INPUTS: Inputs = Some(&[(ArtifactKind::Items, 1, 1)]);
    type Args = VectorizeArgs;

    fn output(&self) -> ArtifactKind {
        ArtifactKind::ItemFeatures
    }

    fn check(&self, _: &CheckContext) -> Vec<Problem> {
        self.problems()
    }

    fn describe(&self) -> String {
        let columns: Vec<&str> = self.columns.keys().map(String::as_str).collect();
        format!("features of {}", columns.join(", "))
    }

    async fn run(&self, step: &super::StepRun<'_>) -> StepResult {
        let input = step.data_of(ArtifactKind::Items)?;
        let (spec, out) = (self.clone(), step.out_dir.to_path_buf());
        step.cx
            .compute(move |stop| run(&spec, &input, None, &out, stop))
            .await
    }

    async fn run_alone(a: VectorizeArgs, _project_dir: &Path, cx: &StepContext) -> StepResult {
        let text: String = a.set.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let spec: VectorizeSpec = toml::from_str(&text)
            .map_err(|e| StepError::Data(format!("vectorize settings: {}", e.message())))?;
        refuse(spec.problems(), |k| format!("--set {k}"))?;
        create_output(&a.output)?;
        cx.compute(move |stop| run(&spec, &a.input, a.vocabulary.as_deref(), &a.output, stop))
            .await
    }
}

impl VectorizeSpec {
    fn problems(&self) -> Vec<Problem> {
        if self.columns.is_empty() {
            let example = "e.g. `columns.title = { type = \"text\" }`";
            return vec![Problem::new(
                "columns",
                format!("name at least one column, {example}"),
            )];
        }
        self.columns
            .iter()
            .flat_map(|(c, s)| s.problems(c))
            .collect()
    }
}

/// Reads the configured columns of `input` and writes the item features into
/// `out_dir`; with `vocabulary` (a previous output folder) its features and
/// corpus are kept. Blocking.
pub fn run(
    spec: &VectorizeSpec,
    input: &Path,
    vocabulary: Option<&Path>,
    out_dir: &Path,
    stop: &StopFlag,
) -> Result<StepOutput, StepError> {
    let (_, batches) = read_parquet(input)?;
    let mut ids = None;
    for b in &batches {
        IdColumn::of(b, "item_id", input)?.collect_into(&mut ids);
    }
    let Some(ids) = ids else {
        return Err(StepError::Data(format!("{}: no items", input.display())));
    };
    let items = IdMap::from_ids(ids);
    // The dense item of every row; an item on several rows is one document.
    let mut rows: Vec<u32> = Vec::new();
    for b in &batches {
        let col = IdColumn::of(b, "item_id", input)?;
        rows.extend((0..b.num_rows()).map(|r| items.index(col.get(r)).expect("collected above")));
    }
    let n = items.len();
    let saved = vocabulary.map(features::read_vocabulary).transpose()?;
    // Per item: the count of each kept feature; per column: its kept features.
    let mut counts: Vec<HashMap<String, f32>> = vec![HashMap::new(); n];
    let mut per_column = serde_json::Map::new();
    for (column, col_spec) in &spec.columns {
        let values = column_values(&batches, column, col_spec.kind, input)?;
        let mut docs: Vec<Vec<String>> = vec![Vec::new(); n];
        for (row, terms) in col_spec
            .terms(column, &values, stop)?
            .into_iter()
            .enumerate()
        {
            docs[rows[row] as usize].extend(terms);
        }
        if docs.iter().all(Vec::is_empty) {
            return Err(StepError::Data(format!(
                "{}: column `{column}` has no {} in any of its {n} items",
                input.display(),
                if col_spec.kind == ColumnType::Text {
                    "text"
                } else {
                    "value"
                }
            )));
        }
        let kept: BTreeMap<String, usize> = match &saved {
            Some((vocab, _)) => {
                let prefix = format!("{}:", col_spec.prefix(column));
                vocab
                    .iter()
                    .filter(|v| v.0.starts_with(&prefix))
                    .cloned()
                    .collect()
            }
            None => text::prune(
                text::document_frequencies(docs.iter().map(Vec::as_slice)),
                n,
                &col_spec.pruning(),
            ),
        };
        per_column.insert(column.clone(), json!(kept.len()));
        for (item, doc) in docs.into_iter().enumerate() {
            for term in doc {
                if kept.contains_key(&term) {
                    *counts[item].entry(term).or_default() += 1.0;
                }
            }
        }
    }
    let vocab: Vocabulary = match &saved {
        Some((vocab, _)) => vocab.clone(),
        None => {
            let mut df: BTreeMap<String, usize> = BTreeMap::new();
            for c in &counts {
                for f in c.keys() {
                    *df.entry(f.clone()).or_default() += 1;
                }
            }
            df.into_iter().collect()
        }
    };
    if counts.iter().all(HashMap::is_empty) {
        return Err(StepError::Data(format!(
            "{}: no item has a feature left: every feature of the columns {:?} was pruned (`min_df`, \
             `max_df`, stop words) or is outside the vocabulary",
            input.display(),
            spec.columns.keys().collect::<Vec<_>>()
        )));
    }
    let corpus = match &saved {
        Some((_, v)) => v.corpus,
        None => Corpus {
            n_docs: n,
            avg_length: counts
                .iter()
                .map(|c| c.values().sum::<f32>() as f64)
                .sum::<f64>()
                / n as f64,
        },
    };
    let index: HashMap<&str, (u32, usize)> = vocab
        .iter()
        .enumerate()
        .map(|(i, (f, df))| (f.as_str(), (i as u32, *df)))
        .collect();
    let (mut r, mut c, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for (item, feats) in counts.iter().enumerate() {
        let row: Vec<(u32, f32, usize)> = feats
            .iter()
            .filter_map(|(f, &tf)| index.get(f.as_str()).map(|&(i, df)| (i, tf, df)))
            .collect();
        for (f, weight) in text::weigh(&row, &corpus, spec.weighting, spec.normalize) {
            r.push(item as u32);
            c.push(f);
            w.push(weight);
        }
    }
    let without = counts.iter().filter(|c| c.is_empty()).count();
    let matrix = Csr::from_triplets(n, vocab.len(), &r, &c, &w);
    let item_features = ItemFeatures {
        items,
        features: vocab.iter().map(|v| v.0.clone()).collect(),
        matrix,
    };
    let vectorizer = Vectorizer {
        corpus,
        settings: serde_json::to_value(spec).unwrap_or_default(),
    };
    let files = features::write(out_dir, &item_features, &vocab, &vectorizer)?;
    Ok(StepOutput {
        rows: item_features.matrix.nnz() as u64,
        details: json!({
            "items": n,
            "items_without_features": without,
            "features": vocab.len(),
            "features_per_column": per_column,
            "vocabulary_from": vocabulary,
        }),
        files,
    })
}

/// A column of every batch, as text (text and categorical columns; numbers and
/// booleans are cast) or as numbers.
fn column_values(
    batches: &[RecordBatch],
    column: &str,
    kind: ColumnType,
    path: &Path,
) -> Result<ColumnValues, StepError> {
    let to = match kind {
        ColumnType::Numeric => DataType::Float64,
        _ => DataType::Utf8,
    };
    let mut text = Vec::new();
    let mut numbers = Vec::new();
    for b in batches {
        let col = b.column_by_name(column).ok_or_else(|| {
            let names: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            StepError::Data(format!(
                "{}: no column `{column}` (the items have {})",
                path.display(),
                names.join(", ")
            ))
        })?;
        let cast = cast(col, &to).map_err(|e| {
            StepError::Data(format!(
                "{}: column `{column}` ({}) cannot be read as {to}: {e}",
                path.display(),
                col.data_type()
            ))
        })?;
        if let Some(a) = cast.as_any().downcast_ref::<StringArray>() {
            text.extend(a.iter().map(|s| s.map(str::to_string)));
        } else if let Some(a) = cast.as_any().downcast_ref::<Float64Array>() {
            numbers.extend(a.iter());
        }
    }
    Ok(match kind {
        ColumnType::Numeric => ColumnValues::Numbers(numbers),
        _ => ColumnValues::Text(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_column() -> ColumnSpec {
        toml::from_str("type = \"text\"").unwrap()
    }

    #[test]
    fn a_stop_ends_tokenising() {
        let values = ColumnValues::Text(vec![Some("rust engineer".into()); 10_000]);
        let stop = StopFlag::default();
        let terms = text_column().terms("title", &values, &stop).unwrap();
        assert_eq!(terms[9_999], ["title:rust", "title:engineer"]);
        stop.stop();
        assert!(text_column().terms("title", &values, &stop).is_err());
    }

    #[test]
    fn buckets_read_as_decades_or_ranges() {
        assert_eq!(bucket_label(Some(1994.0), 10.0), "1990s");
        assert_eq!(bucket_label(Some(0.7), 0.5), "0.5-1");
        assert_eq!(bucket_label(Some(f64::NAN), 10.0), "unknown");
        assert_eq!(bucket_label(None, 10.0), "unknown");
    }
}

//! Text to bag-of-words: the tokenizer, the vocabulary (document frequencies and
//! pruning) and the term weights of the `vectorize` step. Pure compute on strings.
//!
//! Tokens need no dictionary: text is NFKC-normalised (full-width letters and
//! digits and half-width katakana become their usual forms) and lowercased;
//! spaced scripts are split at Unicode word boundaries (UAX #29) into runs of
//! letters and digits; runs of CJK letters (Han, Hiragana, Katakana, Hangul),
//! which have no spaces between words, become overlapping character bigrams, the
//! usual dictionary-free choice for Japanese search.

use std::collections::{BTreeMap, HashMap, HashSet};

use unicode_normalization::UnicodeNormalization;
use unicode_script::{Script, UnicodeScript};
use unicode_segmentation::UnicodeSegmentation;

/// How one text column is cut into tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokenizer {
    /// Words of a spaced script shorter than this (in characters) are dropped.
    /// CJK bigrams and single CJK characters are always kept.
    pub min_length: usize,
    /// Tokens dropped after normalisation (compare lowercased, NFKC).
    pub stop_words: HashSet<String>,
}

impl Tokenizer {
    pub fn new(min_length: usize, stop_words: &[String]) -> Self {
        Self {
            min_length,
            stop_words: stop_words.iter().map(|w| normalize(w)).collect(),
        }
    }

    /// The tokens of `text`, in order, repeats kept (they are term counts).
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let text = normalize(text);
        let mut out = Vec::new();
        let mut cjk: Vec<char> = Vec::new();
        for segment in text.split_word_bounds() {
            let mut word = String::new();
            for c in segment.chars() {
                if is_cjk(c) {
                    self.push_word(&mut word, &mut out);
                    cjk.push(c);
                    continue;
                }
                // A CJK run may span segments (UAX #29 splits between ideographs)
                // but ends at anything else.
                self.push_bigrams(&mut cjk, &mut out);
                if c.is_alphanumeric() {
                    word.push(c);
                } else {
                    self.push_word(&mut word, &mut out);
                }
            }
            self.push_word(&mut word, &mut out);
        }
        self.push_bigrams(&mut cjk, &mut out);
        out
    }

    fn push_word(&self, word: &mut String, out: &mut Vec<String>) {
        if word.chars().count() >= self.min_length.max(1) && !self.stop_words.contains(word) {
            out.push(word.clone());
        }
        word.clear();
    }

    fn push_bigrams(&self, run: &mut Vec<char>, out: &mut Vec<String>) {
        let grams: Vec<String> = match run.len() {
            0 => Vec::new(),
            1 => vec![run[0].to_string()],
            _ => run.windows(2).map(|w| w.iter().collect()).collect(),
        };
        out.extend(grams.into_iter().filter(|g| !self.stop_words.contains(g)));
        run.clear();
    }
}

/// NFKC, then lowercase.
fn normalize(text: &str) -> String {
    text.nfkc().collect::<String>().to_lowercase()
}

/// A letter of a script written without spaces between words. The script
/// extension counts, so the prolonged sound mark ー (Hiragana and Katakana) and
/// the iteration mark 々 (Han) stay inside their runs, while CJK punctuation
/// (not a letter) ends them.
fn is_cjk(c: char) -> bool {
    if !c.is_alphanumeric() || c.is_ascii() {
        return false;
    }
    let ext = c.script_extension();
    [
        Script::Han,
        Script::Hiragana,
        Script::Katakana,
        Script::Hangul,
    ]
    .into_iter()
    .any(|s| ext.contains_script(s))
}

/// How a term count becomes a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// 1 for every feature present.
    Binary,
    /// The term count.
    Tf,
    /// Term count × smooth idf, `ln((1 + N) / (1 + df)) + 1` (as scikit-learn).
    #[default]
    Tfidf,
    /// Okapi BM25 (k1 1.2, b 0.75) with its idf `ln(1 + (N − df + 0.5) / (df + 0.5))`.
    Bm25,
}

/// How each item's row of weights is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Unit Euclidean length (cosine similarity is then a dot product).
    #[default]
    L2,
    /// Weights sum to 1 (as LightFM's feature rows).
    L1,
    None,
}

/// Which features of a group to keep, by document frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pruning {
    /// Features in fewer documents are dropped.
    pub min_df: usize,
    /// Features in more than this share of documents are dropped.
    pub max_df: f64,
    /// Keep at most this many, the most frequent first (ties by name).
    pub max_features: Option<usize>,
}

/// Document frequencies of the features of a group of documents.
pub fn document_frequencies<'a>(
    docs: impl IntoIterator<Item = &'a [String]>,
) -> HashMap<&'a str, usize> {
    let mut df: HashMap<&str, usize> = HashMap::new();
    for doc in docs {
        let distinct: HashSet<&str> = doc.iter().map(String::as_str).collect();
        for f in distinct {
            *df.entry(f).or_default() += 1;
        }
    }
    df
}

/// The features that survive `pruning` among `n_docs` documents, with their df.
pub fn prune(
    df: HashMap<&str, usize>,
    n_docs: usize,
    pruning: &Pruning,
) -> BTreeMap<String, usize> {
    let max = pruning.max_df * n_docs as f64;
    let mut kept: Vec<(&str, usize)> = df
        .into_iter()
        .filter(|&(_, d)| d >= pruning.min_df && d as f64 <= max)
        .collect();
    if let Some(limit) = pruning.max_features {
        kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kept.truncate(limit);
    }
    kept.into_iter().map(|(f, d)| (f.to_string(), d)).collect()
}

/// The corpus facts weights depend on, saved with the vocabulary so a later run
/// weighs new items exactly as this one did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Corpus {
    pub n_docs: usize,
    /// Mean number of feature occurrences per document (BM25's length norm).
    pub avg_length: f64,
}

/// The weights of one document's features: `counts` are `(feature, count, df)`.
pub fn weigh(
    counts: &[(u32, f32, usize)],
    corpus: &Corpus,
    weighting: Weighting,
    norm: Norm,
) -> Vec<(u32, f32)> {
    let n = corpus.n_docs as f64;
    let length: f64 = counts.iter().map(|c| c.1 as f64).sum();
    let mut row: Vec<(u32, f32)> = counts
        .iter()
        .map(|&(f, tf, df)| {
            let (tf, df) = (tf as f64, df as f64);
            let w = match weighting {
                Weighting::Binary => 1.0,
                Weighting::Tf => tf,
                Weighting::Tfidf => tf * (((1.0 + n) / (1.0 + df)).ln() + 1.0),
                Weighting::Bm25 => {
                    let (k1, b) = (1.2, 0.75);
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    let len = length / corpus.avg_length.max(f64::MIN_POSITIVE);
                    idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * len))
                }
            };
            (f, w as f32)
        })
        .collect();
    let scale = match norm {
        Norm::L2 => row.iter().map(|r| (r.1 as f64).powi(2)).sum::<f64>().sqrt(),
        Norm::L1 => row.iter().map(|r| r.1.abs() as f64).sum::<f64>(),
        Norm::None => 1.0,
    };
    if scale > 0.0 {
        for r in &mut row {
            r.1 = (r.1 as f64 / scale) as f32;
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<String> {
        Tokenizer::new(2, &[]).tokens(text)
    }

    #[test]
    fn tokenizer_snapshots() {
        let cases = [
            "Senior Rust Engineer (Remote), Tokyo!",
            "Ｒｕｓｔエンジニア　東京都渋谷区",
            "ｶﾀｶﾅのｻｰﾋﾞｽ開発",
            "データサイエンティスト／機械学習",
            "看護師・正社員 月給３０万円〜",
            "Schindler's List (1993)",
            "Café crème, naïve façade",
            "🍣 sushi chef 🍣 寿司職人",
            "서울 백엔드 개발자",
            "i",
            "",
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| format!("{c:?} -> {}", tokens(c).join(" | ")))
            .collect();
        insta::assert_snapshot!(out.join("\n"));
    }

    #[test]
    fn stop_words_match_after_normalisation() {
        let t = Tokenizer::new(1, &["THE".into(), "ｏｆ".into()]);
        assert_eq!(t.tokens("The Lord of the Rings"), ["lord", "rings"]);
    }

    #[test]
    fn pruning_keeps_the_frequent_within_bounds() {
        let docs: Vec<Vec<String>> = [
            vec!["a", "b"],
            vec!["a", "c"],
            vec!["a", "b", "b"],
            vec!["d"],
        ]
        .into_iter()
        .map(|d| d.into_iter().map(String::from).collect())
        .collect();
        let df = || document_frequencies(docs.iter().map(Vec::as_slice));
        let all = Pruning {
            min_df: 1,
            max_df: 1.0,
            max_features: None,
        };
        assert_eq!(prune(df(), 4, &all).len(), 4);
        // b counts once per document, so its df is 2
        let kept = prune(df(), 4, &Pruning { min_df: 2, ..all });
        assert_eq!(
            kept.into_iter().collect::<Vec<_>>(),
            [("a".into(), 3), ("b".into(), 2)]
        );
        let kept = prune(df(), 4, &Pruning { max_df: 0.5, ..all });
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["b", "c", "d"]);
        let kept = prune(
            df(),
            4,
            &Pruning {
                max_features: Some(2),
                ..all
            },
        );
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn weights_follow_their_formulas() {
        let corpus = Corpus {
            n_docs: 3,
            avg_length: 2.0,
        };
        let counts = [(0, 2.0, 1), (1, 1.0, 3)];
        let w = weigh(&counts, &corpus, Weighting::Tfidf, Norm::None);
        assert!((w[0].1 - 2.0 * (2f32.ln() + 1.0)).abs() < 1e-6);
        assert!((w[1].1 - 1.0).abs() < 1e-6);
        let w = weigh(&counts, &corpus, Weighting::Tf, Norm::L1);
        assert_eq!(w, [(0, 2.0 / 3.0), (1, 1.0 / 3.0)]);
        let w = weigh(&counts, &corpus, Weighting::Binary, Norm::L2);
        assert!((w[0].1 - 0.5f32.sqrt()).abs() < 1e-6);
        // BM25: a feature in every document still weighs a little; more counts weigh more
        let w = weigh(&counts, &corpus, Weighting::Bm25, Norm::None);
        assert!(w[0].1 > w[1].1 && w[1].1 > 0.0);
    }
}

//! A seeded generator of example data: interactions with power-law item popularity
//! and user activity plus planted topic structure (so a learned model can beat
//! popularity), and items with a title (English and Japanese), a category, a
//! prefecture and an open/closed status. A share of the items is new: no one
//! has interacted with them yet, and only their content says whom they suit.
//!
//! Used by `recpipe gen-data`, by the example data in `data/example/` and by tests;
//! the same seed always gives the same data.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub users: usize,
    pub items: usize,
    /// Events drawn; repeated (user, item) pairs collapse into one row whose
    /// `value` is the count, so the output has somewhat fewer rows.
    pub events: usize,
    pub topics: usize,
    /// Probability that an event follows the user's topic rather than global taste.
    pub affinity: f64,
    /// Items added after the events: listed with content, never interacted with.
    pub new_items: usize,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            users: 2_000,
            items: 500,
            events: 40_000,
            topics: 12,
            affinity: 0.7,
            new_items: 50,
            seed: 42,
        }
    }
}

pub struct SynthData {
    /// `user_id, item_id` (Int64), `value` (Float32), `ts` (Timestamp µs UTC).
    pub interactions: RecordBatch,
    /// `item_id` (Int64), `title`, `category`, `status` (`open` | `closed`),
    /// `title_ja`, `prefecture`; the new items come last.
    pub items: RecordBatch,
    /// The planted topic (an index into the categories) of each user (id − 1)
    /// and item (id − 1): the truth a model's lists are checked against.
    pub user_topics: Vec<usize>,
    pub item_topics: Vec<usize>,
    /// Per-item outcome counts for `estimate`: `item_id`, `category`, `trials`,
    /// `successes`, and the `planted_rate` they were drawn with. Each category
    /// has its own mean rate (0.5% to 6%); items vary around it as Beta draws of
    /// concentration 300; trials follow popularity.
    pub item_counts: RecordBatch,
    /// One row per impression (as many as events) for a logistic regression: `item_id`, `ts`,
    /// `converted`, `position` (1–3), `device` (`pc`, `sp`, `app`), `salary`
    /// (monthly, in 10,000 yen) and `remote` (0/1), drawn from the model in
    /// [`PLANTED_EFFECTS`].
    pub impressions: RecordBatch,
    /// The apply-button experiment's assignment log, one row per user:
    /// `unit`, `arm_id`, `probability` (the share the arm had when the user
    /// was assigned, as the assignment API answers it), `converted` and
    /// `assigned_at`, drawn from [`AB_ARMS`] over [`AB_DAYS`].
    pub ab_log: RecordBatch,
}

/// The apply-button experiment's arms and their planted conversion rates.
pub const AB_ARMS: &[(&str, f64)] = &[("blue", 0.028), ("green", 0.034), ("orange", 0.025)];

/// Each day of the experiment: its users and the arms' shares (orange joins
/// on the second day).
pub const AB_DAYS: &[(usize, [f64; 3])] = &[
    (3_000, [0.5, 0.5, 0.0]),
    (3_500, [0.3, 0.4, 0.3]),
    (3_500, [0.15, 0.75, 0.1]),
];

/// The logistic model `impressions` is drawn from: each term's coefficient,
/// named as `estimate` names it (`position` 1 and `device` `pc` are the
/// reference levels).
pub const PLANTED_EFFECTS: &[(&str, f64)] = &[
    ("const", -4.2),
    ("salary", 0.025),
    ("remote", 0.5),
    ("position_2", -0.3),
    ("position_3", -0.6),
    ("device_app", 0.4),
    ("device_sp", -0.2),
];

/// Japanese job titles per topic, in the order of `TOPICS`.
const TOPICS_JA: &[&[&str]] = &[
    &[
        "バックエンドエンジニア",
        "サーバーサイド開発",
        "インフラエンジニア",
    ],
    &[
        "フロントエンドエンジニア",
        "ウェブデザイナー",
        "ＵＩエンジニア",
    ],
    &["データエンジニア", "機械学習エンジニア", "データ分析担当"],
    &["法人営業", "営業マネージャー", "インサイドセールス"],
    &["カスタマーサポート", "ヘルプデスク", "コールセンター"],
    &[
        "プロダクトデザイナー",
        "イラストレーター",
        "グラフィックデザイナー",
    ],
    &["倉庫スタッフ", "配送ドライバー", "フォークリフト作業"],
    &["看護師", "介護スタッフ", "薬剤師"],
    &["調理スタッフ", "バリスタ", "キッチン補助"],
    &["経理事務", "一般事務", "人事担当"],
    &["販売スタッフ", "レジ担当", "店長候補"],
    &["塾講師", "家庭教師", "研修講師"],
];
const PREFECTURES: &[&str] = &["東京都", "大阪府", "愛知県", "福岡県", "北海道", "神奈川県"];
/// Perks in the notations real postings mix: half-width katakana, full-width digits.
const PERKS: &[&str] = &[
    "未経験歓迎",
    "週３日から",
    "ﾘﾓｰﾄ可",
    "年収500万円〜",
    "正社員",
];

const TOPICS: &[(&str, &[&str])] = &[
    (
        "backend",
        &[
            "rust engineer",
            "go developer",
            "api developer",
            "platform engineer",
        ],
    ),
    (
        "frontend",
        &[
            "react developer",
            "web designer",
            "ui engineer",
            "typescript developer",
        ],
    ),
    (
        "data",
        &["data engineer", "ml engineer", "analyst", "data scientist"],
    ),
    (
        "sales",
        &[
            "account executive",
            "sales manager",
            "business developer",
            "inside sales",
        ],
    ),
    (
        "support",
        &[
            "support agent",
            "customer success",
            "help desk",
            "call center",
        ],
    ),
    (
        "design",
        &[
            "product designer",
            "illustrator",
            "ux researcher",
            "graphic designer",
        ],
    ),
    (
        "logistics",
        &[
            "warehouse staff",
            "driver",
            "forklift operator",
            "dispatcher",
        ],
    ),
    (
        "care",
        &["nurse", "caregiver", "pharmacist", "dental hygienist"],
    ),
    (
        "food",
        &["cook", "barista", "kitchen staff", "restaurant manager"],
    ),
    (
        "office",
        &[
            "accountant",
            "office assistant",
            "hr specialist",
            "legal clerk",
        ],
    ),
    (
        "retail",
        &["store clerk", "cashier", "store manager", "merchandiser"],
    ),
    (
        "education",
        &["teacher", "tutor", "school counselor", "trainer"],
    ),
];
const PLACES: &[&str] = &["tokyo", "osaka", "remote", "nagoya", "fukuoka", "sapporo"];

pub fn generate(spec: &SynthSpec) -> SynthData {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let topics = spec.topics.clamp(1, TOPICS.len());
    // Item popularity ∝ rank^-0.9 over a random ranking; a topic per item.
    let mut ranks: Vec<usize> = (1..=spec.items).collect();
    shuffle(&mut ranks, &mut rng);
    let item_weight: Vec<f64> = ranks.iter().map(|&r| (r as f64).powf(-0.9)).collect();
    let item_topic: Vec<usize> = (0..spec.items)
        .map(|_| rng.random_range(0..topics))
        .collect();
    let global = WeightedIndex::new(&item_weight).ok();
    let by_topic: Vec<(Vec<usize>, Option<WeightedIndex<f64>>)> = (0..topics)
        .map(|t| {
            let members: Vec<usize> = (0..spec.items).filter(|&i| item_topic[i] == t).collect();
            let weights: Vec<f64> = members.iter().map(|&i| item_weight[i]).collect();
            let dist = WeightedIndex::new(&weights).ok();
            (members, dist)
        })
        .collect();
    // User activity ∝ rank^-0.6, at least 3 events each.
    let activity: Vec<f64> = (1..=spec.users).map(|r| (r as f64).powf(-0.6)).collect();
    let total: f64 = activity.iter().sum();
    let start = 1_785_000_000_000_000i64; // 2026-07-25T17:20:00Z in µs
    let span = 90 * 24 * 3600 * 1_000_000i64;
    let mut counts: BTreeMap<(i64, i64), (f32, i64)> = BTreeMap::new();
    let mut user_topics = Vec::with_capacity(spec.users);
    for (u, act) in activity.iter().enumerate() {
        let n = ((act / total) * spec.events as f64).round().max(3.0) as usize;
        let topic = rng.random_range(0..topics);
        user_topics.push(topic);
        for _ in 0..n {
            let item = match (&by_topic[topic], &global) {
                ((members, Some(dist)), _) if rng.random_bool(spec.affinity) => {
                    members[dist.sample(&mut rng)]
                }
                (_, Some(dist)) => dist.sample(&mut rng),
                _ => continue,
            };
            let ts = start + rng.random_range(0..span);
            let e = counts
                .entry((u as i64 + 1, item as i64 + 1))
                .or_insert((0.0, ts));
            e.0 += 1.0;
            e.1 = e.1.min(ts);
        }
    }
    let interactions = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int64Array::from_iter_values(counts.keys().map(|k| k.0))) as ArrayRef,
        ),
        (
            "item_id",
            Arc::new(Int64Array::from_iter_values(counts.keys().map(|k| k.1))) as ArrayRef,
        ),
        (
            "value",
            Arc::new(Float32Array::from_iter_values(counts.values().map(|v| v.0))) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(counts.values().map(|v| v.1))
                    .with_timezone("UTC"),
            ) as ArrayRef,
        ),
    ])
    .expect("columns have equal length");
    let titles: Vec<String> = (0..spec.items)
        .map(|i| {
            let (_, roles) = TOPICS[item_topic[i]];
            format!(
                "{} in {}",
                roles[rng.random_range(0..roles.len())],
                PLACES[rng.random_range(0..PLACES.len())]
            )
        })
        .collect();
    let status: Vec<&str> = (0..spec.items)
        .map(|_| {
            if rng.random_bool(0.1) {
                "closed"
            } else {
                "open"
            }
        })
        .collect();
    // The new items and the Japanese columns come from a second generator, so
    // the interactions and the columns above stay what they were.
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x6a61);
    let mut item_topic = item_topic;
    let (mut titles, mut status) = (titles, status);
    for _ in 0..spec.new_items {
        let t = rng.random_range(0..topics);
        item_topic.push(t);
        let roles = TOPICS[t].1;
        titles.push(format!(
            "{} in {}",
            roles[rng.random_range(0..roles.len())],
            PLACES[rng.random_range(0..PLACES.len())]
        ));
        status.push("open");
    }
    let pick = |rng: &mut StdRng, from: &[&'static str]| from[rng.random_range(0..from.len())];
    let (titles_ja, prefectures): (Vec<String>, Vec<&str>) = item_topic
        .iter()
        .map(|&t| {
            let role = pick(&mut rng, TOPICS_JA[t]);
            let place = pick(&mut rng, PREFECTURES);
            let perk = pick(&mut rng, PERKS);
            (format!("{role}【{place}】{perk}"), place)
        })
        .unzip();
    let n_items = item_topic.len() as i64;
    let items = RecordBatch::try_from_iter([
        (
            "item_id",
            Arc::new(Int64Array::from_iter_values(1..=n_items)) as ArrayRef,
        ),
        ("title", Arc::new(StringArray::from(titles)) as ArrayRef),
        (
            "category",
            Arc::new(StringArray::from_iter_values(
                item_topic.iter().map(|&t| TOPICS[t].0),
            )) as ArrayRef,
        ),
        ("status", Arc::new(StringArray::from(status)) as ArrayRef),
        (
            "title_ja",
            Arc::new(StringArray::from(titles_ja)) as ArrayRef,
        ),
        (
            "prefecture",
            Arc::new(StringArray::from(prefectures)) as ArrayRef,
        ),
    ])
    .expect("columns have equal length");
    let item_counts = item_counts(spec, &item_weight, &item_topic[..spec.items]);
    let impressions = impressions(spec, &item_weight);
    let ab_log = ab_log(spec.seed);
    SynthData {
        interactions,
        items,
        user_topics,
        item_topics: item_topic,
        item_counts,
        impressions,
        ab_log,
    }
}

/// The experiment's log (see [`SynthData::ab_log`]), from a generator of its
/// own: its size does not follow the spec.
fn ab_log(seed: u64) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xab);
    let start = 1_793_491_200_000_000i64; // 2026-11-01T00:00:00Z
    let mut rows = (vec![], vec![], vec![], vec![], vec![]);
    for (day, (users, shares)) in AB_DAYS.iter().enumerate() {
        let pick = WeightedIndex::new(shares).expect("shares are positive");
        for _ in 0..*users {
            let arm = pick.sample(&mut rng);
            rows.0.push(format!("u{}", rows.0.len() + 1));
            rows.1.push(AB_ARMS[arm].0);
            rows.2.push(shares[arm]);
            rows.3.push(rng.random_bool(AB_ARMS[arm].1) as i64);
            rows.4
                .push(start + day as i64 * 86_400_000_000 + rng.random_range(0..86_400_000_000));
        }
    }
    RecordBatch::try_from_iter([
        ("unit", Arc::new(StringArray::from(rows.0)) as ArrayRef),
        ("arm_id", Arc::new(StringArray::from(rows.1)) as ArrayRef),
        (
            "probability",
            Arc::new(arrow::array::Float64Array::from(rows.2)) as ArrayRef,
        ),
        ("converted", Arc::new(Int64Array::from(rows.3)) as ArrayRef),
        (
            "assigned_at",
            Arc::new(TimestampMicrosecondArray::from(rows.4).with_timezone("UTC")) as ArrayRef,
        ),
    ])
    .expect("columns have equal length")
}

/// Impressions drawn from [`PLANTED_EFFECTS`] (see [`SynthData::impressions`]);
/// each item has a fixed salary and remote flag, each impression a position
/// and a device. A generator of its own, like `item_counts`.
fn impressions(spec: &SynthSpec, weight: &[f64]) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x1a7e);
    let effect = |name: &str| {
        PLANTED_EFFECTS
            .iter()
            .find(|e| e.0 == name)
            .map_or(0.0, |e| e.1)
    };
    let salary: Vec<f64> = weight
        .iter()
        .map(|_| rng.random_range(18..60) as f64)
        .collect();
    let remote: Vec<f64> = weight
        .iter()
        .map(|_| rng.random_bool(0.3) as u8 as f64)
        .collect();
    let pick = WeightedIndex::new(weight).expect("weights are positive");
    let devices = ["pc", "sp", "app"];
    let n = spec.events;
    let start = 1_764_547_200_000_000i64; // 2025-12-01T00:00:00Z
    let mut rows = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for k in 0..n {
        let item = pick.sample(&mut rng);
        let position = rng.random_range(1..=3i64);
        let device = devices[rng.random_range(0..3)];
        let eta = effect("const")
            + effect("salary") * salary[item]
            + effect("remote") * remote[item]
            + effect(&format!("position_{position}"))
            + effect(&format!("device_{device}"));
        let p = 1.0 / (1.0 + (-eta).exp());
        rows.0.push(item as i64 + 1);
        rows.1.push(start + k as i64 * 30_000_000);
        rows.2.push(rng.random_bool(p) as i64);
        rows.3.push(position);
        rows.4.push(device);
        rows.5.push(salary[item]);
        rows.6.push(remote[item] as i64);
    }
    RecordBatch::try_from_iter([
        ("item_id", Arc::new(Int64Array::from(rows.0)) as ArrayRef),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(rows.1).with_timezone("UTC")) as ArrayRef,
        ),
        ("converted", Arc::new(Int64Array::from(rows.2)) as ArrayRef),
        ("position", Arc::new(Int64Array::from(rows.3)) as ArrayRef),
        ("device", Arc::new(StringArray::from(rows.4)) as ArrayRef),
        (
            "salary",
            Arc::new(arrow::array::Float64Array::from(rows.5)) as ArrayRef,
        ),
        ("remote", Arc::new(Int64Array::from(rows.6)) as ArrayRef),
    ])
    .expect("columns have equal length")
}

/// Outcome counts with planted rates (see [`SynthData::item_counts`]), from a
/// generator of their own so the other outputs stay what they were.
fn item_counts(spec: &SynthSpec, weight: &[f64], topic: &[usize]) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x6376);
    let total: f64 = weight.iter().sum();
    let impressions = 5.0 * spec.events as f64;
    let mut rows = (vec![], vec![], vec![], vec![]);
    for (i, (&w, &t)) in weight.iter().zip(topic).enumerate() {
        let mean = 0.005 + 0.055 * t as f64 / (TOPICS.len() - 1) as f64;
        let rate = beta_sample(&mut rng, 300.0 * mean, 300.0 * (1.0 - mean));
        let trials = ((w / total) * impressions).round().max(20.0) as i64;
        let successes = (0..trials).filter(|_| rng.random_bool(rate)).count() as i64;
        rows.0.push(i as i64 + 1);
        rows.1.push(trials);
        rows.2.push(successes);
        rows.3.push(rate);
    }
    RecordBatch::try_from_iter([
        ("item_id", Arc::new(Int64Array::from(rows.0)) as ArrayRef),
        (
            "category",
            Arc::new(StringArray::from_iter_values(
                topic.iter().map(|&t| TOPICS[t].0),
            )) as ArrayRef,
        ),
        ("trials", Arc::new(Int64Array::from(rows.1)) as ArrayRef),
        ("successes", Arc::new(Int64Array::from(rows.2)) as ArrayRef),
        (
            "planted_rate",
            Arc::new(arrow::array::Float64Array::from(rows.3)) as ArrayRef,
        ),
    ])
    .expect("columns have equal length")
}

/// A Beta(a, b) draw: the ratio of two Gamma draws (Marsaglia and Tsang).
pub fn beta_sample(rng: &mut StdRng, a: f64, b: f64) -> f64 {
    fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
        if shape < 1.0 {
            return gamma(rng, shape + 1.0) * rng.random::<f64>().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let (u1, u2): (f64, f64) = (rng.random(), rng.random());
            let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let v = (1.0 + c * z).powi(3);
            if v > 0.0 && rng.random::<f64>().ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
    let (x, y) = (gamma(rng, a), gamma(rng, b));
    x / (x + y)
}

fn shuffle<T>(v: &mut [T], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let spec = SynthSpec {
            users: 50,
            items: 30,
            events: 500,
            ..SynthSpec::default()
        };
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.interactions, b.interactions);
        assert_eq!(a.items, b.items);
        assert!(a.interactions.num_rows() > 100);
    }
}

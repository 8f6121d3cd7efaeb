#!/usr/bin/env bash
# Item cold start on MovieLens 100K: recpipe's factorization model with item features
# (`--model fm`, its `als` and `warp` losses) against LightFM on the kit's splits, in the
# same run, on this machine. Not part of CI.
#
#   bench/coldstart.sh
#   RECPIPE_BENCH_OUT=/tmp/cs bench/coldstart.sh     keep the outputs there (or OUT=...)
#
# What it measures, following the protocol in ../shared/bench/coldstart.py (docstring):
#   1. features: the items table made by an SQL extract (title without "(YYYY)", an
#      "unknown" title empty, year = release_year else the year in the title) and
#      `recpipe step vectorize` with the kit's settings (binary, no normalisation,
#      genre/decade/title groups, title min_df 2, min_length 2, the kit's stop words)
#      must give exactly the kit's items_features.parquet; the differences are printed.
#   2. cold (split seed 42) and the same split drawn with seeds 43-46, with item
#      features id+G+D and id+G+D+T; `recommend --candidates no-interactions` ranks only
#      the cold items; seen = every training row. Three fm runs each:
#      - WARP as LightFM: 64 factors, lr 0.05, 30 epochs, max_sampled 10, on the
#        training positives (rating >= 4, binary);
#      - WARP at fm's defaults for it (10 epochs), same positives;
#      - fm's defaults (`loss = "als"`), on the positives with their rating as value,
#        as the `als` model trains.
#   3. warm (the anchors' random 80/20 split): the same fm runs with id only, id+G+D and
#      id+G+D+T, and ALS (defaults), over all items, seen removed.
#   4. LightFM with the same settings on the same splits (coldstart.py --out, suites
#      configs and seeds, negatives = train items, one seed) and popularity (train
#      positives, ties by the kit's tiebreak order).
# Every recpipe list is scored by the kit's independent scorer (coldstart.py --score).
# The table: P@10 / nDCG@10 on cold and warm, the mean cold nDCG@10 over the five item
# draws, fit times and recpipe fm fit / LightFM fit at equal features, factors, epochs.
#
# Needs the anchors' venv (see ../shared/bench/README.md) at ~/.cache/recpipe-anchors.
# RECPIPE_FM_SET="key=value ..." adds `--set`s to every fm fit that has item features
# (e.g. a key that switches identity features on, if the model needs one).
# Times on a shared 2-core machine are noisy: keep the machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=$(cd "${RECPIPE_BENCH_KIT:-../shared/bench}" && pwd)
VENV=${RECPIPE_ANCHORS_VENV:-$HOME/.cache/recpipe-anchors}
OUT=${RECPIPE_BENCH_OUT:-${OUT:-$(mktemp -d)}}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DATA_DIR=$HOME/.cache/recpipe-data/ml-100k
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
BIN="$CARGO_TARGET_DIR/debug/recpipe"
. "$VENV/bin/activate"
bash "$KIT/fetch_ml100k.sh" >/dev/null
COLDSTART=(python "$KIT/coldstart.py" --data "$DATA_DIR/ratings.parquet" --items "$DATA_DIR/ml-100k.item")

SPLIT=$OUT/split                       # the kit's splits: cold, cold@43..46, warm, items
COLD_SPLITS=(cold cold@43 cold@44 cold@45 cold@46)
FM=(--model fm --set 'loss="warp"' --set factors=64 --set epochs=30 --set learning_rate=0.05
    --set max_sampled=10 --set seed=42)
FM_EXTRA=()
for kv in ${RECPIPE_FM_SET:-}; do FM_EXTRA+=(--set "$kv"); done
# the same model in LightFM: loss/identity/components/lr/epochs/groups/negatives
LFM_CONFIGS="warp/1/64/0.05/30/G+D/train,warp/1/64/0.05/30/G+D+T/train"
LFM_ID_ONLY="warp/1/64/0.05/30/"       # identity only (warm)
mkdir -p "$OUT"/{sql,log,recs,scores,models,work}
rm -f "$OUT/lightfm.jsonl"

# `step NAME ARGS...`: one `recpipe step`, its JSON summary kept as log/NAME.json and
# its wall time (s) as log/NAME.wall.
step() {
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  "$BIN" step "$@" > "$OUT/log/$name.json"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' > "$OUT/log/$name.wall"
}

# `score NAME SPLIT`: the kit's scorer on recs/NAME.parquet (it prints one JSON object).
score() {
  python "$KIT/coldstart.py" --score "$OUT/recs/$1.parquet" --split-dir "$SPLIT/$2" \
    > "$OUT/scores/$1.json"
}

# recpipe trains on items renamed to their place in the kit's `tiebreak` order, so
# that its ties (new items with equal features score exactly alike) break in that
# order, as the protocol asks, not by item id (ml-100k's ids follow popularity).
# `unrelabel NAME` maps a list's ids back before scoring.
unrelabel() {
  python - "$SPLIT/items.parquet" "$OUT/recs/$1.parquet" <<'PY'
import sys
import pandas as pd
items, path = sys.argv[1:]
it = pd.read_parquet(items)
back = dict(zip(it["tiebreak"], it["item_id"]))
r = pd.read_parquet(path)
r["item_id"] = r["item_id"].map(back).astype("int64")
r.to_parquet(path, index=False)
PY
}

echo "# splits and the kit's features -> $SPLIT"
"${COLDSTART[@]}" --write-split "$SPLIT" --write-cold-seeds 43,44,45,46 > "$OUT/log/split.txt"

# ---------------------------------------------------------------- 1. item features
cat > "$OUT/sql/items.sql" <<'SQL'
-- The kit's item table (coldstart.py build_feature_table): an "unknown" title is empty,
-- "(YYYY)" is cut out of titles, year = release_year when it is 4 digits, else "(YYYY)"
-- in the title, else null (decade:unknown). No backslashes: character classes only.
SELECT
  item_id,
  arrow_cast(
    CASE WHEN lower(trim(title)) IN ('unknown', 'unkonwn') THEN ''
         ELSE regexp_replace(title, '[(][[:space:]]*(18|19|20)[0-9]{2}[[:space:]]*[)]', ' ', 'g')
    END, 'Utf8') AS title,
  COALESCE(
    TRY_CAST(regexp_match(trim(release_year), '^([0-9]{4})$')[1] AS BIGINT),
    TRY_CAST(regexp_match(title, '[(]([0-9]{4})[)]')[1] AS BIGINT)
  ) AS year,
  arrow_cast(genres, 'Utf8') AS genres
FROM items
SQL
step extract_items extract --table "items=$SPLIT/items.parquet" --sql "$OUT/sql/items.sql" \
  --role items --output "$OUT/work/items.parquet"

# The kit's stop words, read from coldstart.py itself, as a TOML array.
STOP=$(cd "$KIT" && python -c 'import json, coldstart; print(json.dumps(sorted(coldstart.STOP)))')
GENRE='columns.genres={type="categorical",separator=" ",prefix="genre"}'
DECADE='columns.year={type="numeric",bucket=10,prefix="decade"}'
TITLE="columns.title={type=\"text\",prefix=\"title\",min_df=2,min_length=2,stop_words=$STOP}"
VEC=(--input "$OUT/work/items.parquet" --set 'weighting="binary"' --set 'normalize="none"')
step vectorize_gd vectorize "${VEC[@]}" --set "$GENRE" --set "$DECADE" --output "$OUT/work/features_gd"
step vectorize_gdt vectorize "${VEC[@]}" --set "$GENRE" --set "$DECADE" --set "$TITLE" \
  --output "$OUT/work/features_gdt"

python - "$SPLIT/items_features.parquet" "$OUT/work" "$OUT/log/features_check.json" <<'PY'
import json, sys
import pandas as pd
kit_path, work, out = sys.argv[1:]
kit = pd.read_parquet(kit_path)
report = {}
for name, groups in (("gd", ("genre", "decade")), ("gdt", ("genre", "decade", "title"))):
    want = kit[kit["feature"].str.split(":").str[0].isin(groups)]
    got = pd.read_parquet(f"{work}/features_{name}/data.parquet")
    w = set(zip(want["item_id"].tolist(), want["feature"].tolist()))
    g = set(zip(got["item_id"].tolist(), got["feature"].tolist()))
    missing, extra = sorted(w - g), sorted(g - w, key=str)
    r = dict(kit_rows=len(w), recpipe_rows=len(got), common=len(w & g), missing=len(missing),
             extra=len(extra), duplicate_rows=int(len(got) - len(g)),
             item_id_type=str(got["item_id"].dtype),
             weights=sorted(set(got["weight"].round(6).tolist()))[:5],
             exact=(w == g and len(got) == len(g)
                    and bool((got["weight"] == 1.0).all())),
             missing_examples=[f"{i} {f}" for i, f in missing[:8]],
             extra_examples=[f"{i} {f}" for i, f in extra[:8]])
    report[name] = r
    verdict = "EXACT" if r["exact"] else "DIFFERENT"
    print(f"# features {'+'.join(g[0].upper() for g in groups)}: {verdict}: {r['common']} of "
          f"{r['kit_rows']} kit (item, feature) pairs, {r['missing']} missing, {r['extra']} "
          f"extra, {r['duplicate_rows']} duplicate rows, weights {r['weights']}, "
          f"item_id {r['item_id_type']}")
    for e in r["missing_examples"]:
        print(f"    missing {e}")
    for e in r["extra_examples"]:
        print(f"    extra   {e}")
json.dump(report, open(out, "w"), indent=1)
PY

# ---------------------------------------------------------------- 2-3. recpipe
# positives: rating >= 4, binary as LightFM trains (value 1); ALS keeps the rating
# (confidence 1 + r, as anchors.py). `train` is the split's train.parquet.
cat > "$OUT/sql/positives.sql" <<'SQL'
SELECT t.user_id, i.tiebreak AS item_id, CAST(1.0 AS FLOAT) AS value
FROM train t JOIN items i ON t.item_id = i.item_id WHERE t.value >= 4
SQL
cat > "$OUT/sql/positives_rated.sql" <<'SQL'
SELECT t.user_id, i.tiebreak AS item_id, t.value
FROM train t JOIN items i ON t.item_id = i.item_id WHERE t.value >= 4
SQL
cat > "$OUT/sql/seen.sql" <<'SQL'
SELECT t.user_id, i.tiebreak AS item_id, t.value
FROM train t JOIN items i ON t.item_id = i.item_id
SQL
# the items table in tiebreak ids, for the features fm trains on
cat > "$OUT/sql/items_tb.sql" <<'SQL'
SELECT i.tiebreak AS item_id, f.title, f.year, f.genres
FROM features f JOIN items i ON f.item_id = i.item_id
SQL
step extract_items_tb extract --table "items=$SPLIT/items.parquet" \
  --table "features=$OUT/work/items.parquet" --sql "$OUT/sql/items_tb.sql" --role items \
  --output "$OUT/work/items_tb.parquet"
VEC_TB=(--input "$OUT/work/items_tb.parquet" --set 'weighting="binary"' --set 'normalize="none"')
step vectorize_gd_tb vectorize "${VEC_TB[@]}" --set "$GENRE" --set "$DECADE" \
  --output "$OUT/work/features_gd_tb"
step vectorize_gdt_tb vectorize "${VEC_TB[@]}" --set "$GENRE" --set "$DECADE" --set "$TITLE" \
  --output "$OUT/work/features_gdt_tb"

# `fm SPLIT CONFIG [--candidates no-interactions]`: fit, recommend, score one fm run
# of $VARIANT (its settings FM_RUN, its positives POSITIVES).
fm() {
  local s=$1 cfg=$2 name="$1_${VARIANT}_$2"
  shift 2
  local feats=()
  case $cfg in
    id) ;;
    id+G+D) feats=(--item-features "$OUT/work/features_gd_tb" "${FM_EXTRA[@]}") ;;
    id+G+D+T) feats=(--item-features "$OUT/work/features_gdt_tb" "${FM_EXTRA[@]}") ;;
  esac
  step "train_$name" train --input "$OUT/work/$s/$POSITIVES.parquet" "${feats[@]}" "${FM_RUN[@]}" \
    --output "$OUT/models/$name"
  step "recommend_$name" recommend --model "$OUT/models/$name" \
    --interactions "$OUT/work/$s/seen.parquet" "$@" --top-n 10 --output "$OUT/recs/$name.parquet"
  unrelabel "$name"
  score "$name" "$s"
}

for s in "${COLD_SPLITS[@]}" warm; do
  mkdir -p "$OUT/work/$s"
  step "extract_$s" extract --table "train=$SPLIT/$s/train.parquet" --table "items=$SPLIT/items.parquet" \
    --sql "$OUT/sql/positives.sql" --role interactions --output "$OUT/work/$s/positives.parquet"
  step "extract_rated_$s" extract --table "train=$SPLIT/$s/train.parquet" \
    --table "items=$SPLIT/items.parquet" --sql "$OUT/sql/positives_rated.sql" --role interactions \
    --output "$OUT/work/$s/positives_rated.parquet"
  step "extract_seen_$s" extract --table "train=$SPLIT/$s/train.parquet" --table "items=$SPLIT/items.parquet" \
    --sql "$OUT/sql/seen.sql" --role interactions --output "$OUT/work/$s/seen.parquet"
done

# fm WARP at LightFM's settings (equal epochs, for the fit-time ratio), WARP at its
# defaults, and fm's defaults
for VARIANT in fm fmwarp fmdef; do
  case $VARIANT in
    fm) FM_RUN=("${FM[@]}") POSITIVES=positives ;;
    fmwarp) FM_RUN=(--model fm --set 'loss="warp"' --set seed=42) POSITIVES=positives ;;
    fmdef) FM_RUN=(--model fm --set seed=42) POSITIVES=positives_rated ;;
  esac
  for s in "${COLD_SPLITS[@]}"; do
    echo "# recpipe $VARIANT on $s"
    fm "$s" id+G+D --candidates no-interactions
    fm "$s" id+G+D+T --candidates no-interactions
  done
  echo "# recpipe $VARIANT on warm"
  fm warm id
  fm warm id+G+D
  fm warm id+G+D+T
done
echo "# recpipe ALS on warm"
step train_warm_als train --input "$OUT/work/warm/positives_rated.parquet" --model als \
  --output "$OUT/models/warm_als"
step recommend_warm_als recommend --model "$OUT/models/warm_als" \
  --interactions "$OUT/work/warm/seen.parquet" --top-n 10 --output "$OUT/recs/warm_als.parquet"
unrelabel warm_als
score warm_als warm

# ---------------------------------------------------------------- 4. anchors
echo "# popularity (ties by the kit's tiebreak order)"
python - "$SPLIT" "$OUT/recs" "${COLD_SPLITS[@]}" warm <<'PY'
import sys
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
root, out, splits = sys.argv[1], sys.argv[2], sys.argv[3:]
items = pd.read_parquet(f"{root}/items.parquet")
tiebreak = items.set_index("item_id")["tiebreak"]
for s in splits:
    tr = pd.read_parquet(f"{root}/{s}/train.parquet")
    cand = pd.read_parquet(f"{root}/{s}/candidates.parquet")["item_id"].to_numpy()
    pop = tr[tr["value"] >= 4].groupby("item_id").size().reindex(cand, fill_value=0).to_numpy()
    order = cand[np.lexsort((tiebreak.loc[cand].to_numpy(), -pop))]   # most popular first
    rows = []
    for u, seen in tr.groupby("user_id")["item_id"]:
        seen = set(seen.tolist())
        top = [i for i in order[:10 + len(seen)] if i not in seen][:10]
        rows += [(u, i, r + 1) for r, i in enumerate(top)]
    a = np.array(rows, dtype=np.int64).reshape(-1, 3)
    pq.write_table(pa.table({"user_id": a[:, 0], "item_id": a[:, 1],
                             "rank": a[:, 2].astype(np.int32)}), f"{out}/{s}_pop.parquet")
PY
for s in "${COLD_SPLITS[@]}" warm; do score "${s}_pop" "$s"; done

echo "# LightFM (coldstart.py; its rows are in $OUT/lightfm.log)"
"${COLDSTART[@]}" --out "$OUT/lightfm.jsonl" --suites configs,seeds --settings cold,warm \
  --repeats 1 --configs "$LFM_CONFIGS" --split-seeds 43,44,45,46 --no-default-configs \
  > "$OUT/lightfm.log"
"${COLDSTART[@]}" --out "$OUT/lightfm.jsonl" --suites configs --settings warm --repeats 1 \
  --configs "$LFM_ID_ONLY" >> "$OUT/lightfm.log"

# ---------------------------------------------------------------- table
python - "$OUT" "${COLD_SPLITS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, statistics, sys
out, colds = sys.argv[1], sys.argv[2:]


def load(path):
    """A JSON file; the kit's --score prints one object, possibly after other lines."""
    text = open(path).read()
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def fit_s(name):
    """`train` reports the fit alone (details.fit_seconds), without reading and writing."""
    return load(f"{out}/log/train_{name}.json")["details"]["fit_seconds"]


def fits(variant, feats):
    """Fit seconds of one fm variant per split it ran on."""
    return {s: fit_s(f"{s}_{variant}_{feats}") for s in colds + ["warm"]
            if os.path.exists(f"{out}/log/train_{s}_{variant}_{feats}.json")}


lfm = {}
for line in open(f"{out}/lightfm.jsonl"):
    r = json.loads(line)
    if r.get("model") == "lightfm":
        lfm[(r["split"], r["features"])] = r

scores, problems = {}, []
for f in sorted(os.listdir(f"{out}/scores")):
    name = f[:-len(".json")]
    sc = scores[name] = load(f"{out}/scores/{f}")
    bad = {k: v for k, v in sc["invalid_entries_in_top10"].items() if v}
    if bad:
        problems.append(f"{name}: invalid entries in the top 10 {bad}")
    split = name.split("_")[0]
    ref = lfm.get((split, "id+G+D"))
    if ref and ref["n_eval_users"] != sc["n_eval_users"]:
        problems.append(f"{name}: {sc['n_eval_users']} evaluated users, LightFM "
                        f"{ref['n_eval_users']}")


def cell(x, fmt="{:.4f}"):
    return "—" if x is None else fmt.format(x)


def mean_sd(xs):
    if len(xs) < len(colds):
        return "—"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "—"


print("| model | cold P@10 | cold nDCG@10 | warm P@10 | warm nDCG@10 | cold nDCG@10, 5 draws "
      "(mean ± sd) | fit s cold / warm | fit vs LightFM cold (median of 5) / warm |")
print("|---|---|---|---|---|---|---|---|")


def row(label, get, fit=None, vs=""):
    c, w = get("cold"), get("warm")
    draws = [get(s)["ndcg_at_10"] for s in colds if get(s)]
    fc, fw = fit if fit else (None, None)
    print(f"| {label} | {cell(c and c['p_at_10'])} | {cell(c and c['ndcg_at_10'])} | "
          f"{cell(w and w['p_at_10'])} | {cell(w and w['ndcg_at_10'])} | {mean_sd(draws)} | "
          f"{cell(fc, '{:.2f}')} / {cell(fw, '{:.2f}')} | {vs} |")


row("popularity", lambda s: scores.get(f"{s}_pop"))
for feats in ("id", "id+G+D", "id+G+D+T"):
    ours = lambda s, f=feats: scores.get(f"{s}_fm_{f}")
    theirs = lambda s, f=feats: lfm.get((s, f))
    fo = fits("fm", feats)
    fl = {s: theirs(s)["fit_s"] for s in colds + ["warm"] if theirs(s)}
    cold_ratios = [fo[s] / fl[s] for s in colds if s in fo and s in fl]
    vs = (f"{statistics.median(cold_ratios):.2f}×" if cold_ratios else "—") + " / " + \
        ratio(fo.get("warm"), fl.get("warm"))
    row(f"recpipe fm warp {feats}", ours, (fo.get("cold"), fo.get("warm")), vs)
    row(f"LightFM warp {feats}", theirs, (fl.get("cold"), fl.get("warm")))
for variant, label in (("fmwarp", "warp, 10 epochs"), ("fmdef", "defaults (als)")):
    for feats in ("id", "id+G+D", "id+G+D+T"):
        fo = fits(variant, feats)
        row(f"recpipe fm {label} {feats}",
            lambda s, f=feats, v=variant: scores.get(f"{s}_{v}_{f}"), (fo.get("cold"), fo.get("warm")))
row("recpipe ALS (defaults)", lambda s: scores.get(f"{s}_als"), (None, fit_s("warm_als")))
print()
print("fm warp and LightFM: WARP, 64 factors, lr 0.05, 30 epochs, max_sampled 10, seed 42, "
      "2 threads, binary positives; LightFM negatives = train items. fm defaults: loss als, "
      "15 epochs, positives with their rating as value (as ALS). Cold = split seed 42; the "
      "five draws are seeds 42-46. id = identity features, G/D/T = genre/decade/title.")
feat = json.load(open(f"{out}/log/features_check.json"))
for groups, v in feat.items():
    verdict = "exact" if v["exact"] else f"DIFFERENT: {v['missing']} missing, {v['extra']} extra"
    print(f"features {groups.upper()} vs the kit's items_features.parquet: {verdict}")
for p in problems:
    print(f"WARNING {p}")
print(f"load1 at the end: {os.getloadavg()[0]:.2f}")
PY
echo "results in $OUT"

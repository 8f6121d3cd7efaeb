#!/usr/bin/env bash
# Benchmark recpipe's ALS against the anchors (implicit, LightFM) on the same split,
# in the same run, on this machine, and print ratios. Not part of CI.
#
#   bench/run.sh ml100k      MovieLens 100K (fetched by ../shared/bench/fetch_ml100k.sh)
#   bench/run.sh synth       synthetic 100k users × 20k items × 5M (../shared/bench/synth.py)
#
# Needs the anchors' venv (see ../shared/bench/README.md) at ~/.cache/recpipe-anchors.
# Times on a shared 2-core machine are noisy: keep the machine otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${RECPIPE_BENCH_KIT:-../shared/bench}
VENV=${RECPIPE_ANCHORS_VENV:-$HOME/.cache/recpipe-anchors}
OUT=${RECPIPE_BENCH_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
BIN="$CARGO_TARGET_DIR/debug/recpipe"
. "$VENV/bin/activate"
case "${1:-ml100k}" in
  ml100k)
    bash "$KIT/fetch_ml100k.sh" >/dev/null
    DATA=$HOME/.cache/recpipe-data/ml-100k/ratings.parquet
    python "$KIT/anchors.py" --data "$DATA" --name ml-100k --models pop,als,bpr,lightfm \
      --blas-threads 1 --repeats 3 --write-split "$OUT/split.parquet" --out "$OUT/anchors.jsonl"
    "$BIN" bench --split "$OUT/split.parquet" --positive-min 4 --repeats 3 > "$OUT/recpipe.json"
    ;;
  synth)
    DATA=$OUT/synth.parquet
    python "$KIT/synth.py" --users 100000 --items 20000 --interactions 5000000 --seed 42 --out "$DATA" >/dev/null
    python "$KIT/anchors.py" --data "$DATA" --name synth-5m --models pop,als --positive all \
      --blas-threads 1 --repeats 3 --write-split "$OUT/split.parquet" --out "$OUT/anchors.jsonl"
    "$BIN" bench --split "$OUT/split.parquet" --repeats 3 > "$OUT/recpipe.json"
    ;;
  *) echo "usage: $0 ml100k|synth" >&2; exit 2 ;;
esac
python - "$OUT/anchors.jsonl" "$OUT/recpipe.json" <<'PY'
import json, sys
anchors = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = json.load(open(sys.argv[2]))
als = next(a for a in anchors if a.get("model") == "als")
m = ours["metrics"]
print(f"recpipe ALS: fit {ours['fit_s']:.3f}s  rec-all {ours['rec_all_s']:.3f}s  sim-all {ours['sim_all_s']:.3f}s  "
      f"P@10 {m['precision']:.4f}  nDCG@10 {m['ndcg']:.4f}  peak RSS {ours['peak_rss_mb']:.0f} MB, "
      f"fit+scoring {ours['model_peak_rss_mb']:.0f} MB "
      f"(CSR+factors {ours['csr_and_factors_mb']:.0f} MB)")
print(f"scoring {ours['rec_all_gflops']:.1f} GFLOP/s vs GEMM peak {ours['gemm_gflops_peak']:.1f} GFLOP/s")
print(f"ratios vs implicit ALS: fit {ours['fit_s']/als['fit_s']:.2f}x  rec-all {ours['rec_all_s']/als['rec_all_s']:.2f}x  "
      f"sim-all {ours['sim_all_s']/als['sim_all_s']:.2f}x")
for a in anchors:
    print(f"  anchor {a['model']}: fit {a['fit_s']}s  rec-all {a['rec_all_s']}s  P@10 {a['precision_at_10']:.4f}  nDCG@10 {a['ndcg_at_10']:.4f}")
PY
echo "results in $OUT"

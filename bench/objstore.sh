#!/usr/bin/env bash
# Wall time of the example-als pipeline run step by step as Argo pods run it
# (`recpipe step run`, one process per step, in dependency order), with its run
# directories and published lists on local disk and then on S3 (moto's server on
# 127.0.0.1, from the Argo venv .ci/test makes), over the same generated data.
# Not part of CI.
#
#   bench/objstore.sh                        200k users, 20k items, 5M events
#   USERS=.. ITEMS=.. EVENTS=.. bench/objstore.sh
#
# Prints each step's wall seconds on both stores, the bytes it moved, and the
# totals' ratio. moto keeps objects in memory in one Python process: a real
# bucket is further away but much faster per request.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
B="$CARGO_TARGET_DIR/debug/recpipe"
ARGO=${RECPIPE_ARGO_DIR:-$HOME/.cache/recpipe-argo}
P=$(mktemp -d)
PORT=${S3PORT:-59170}
"$ARGO/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" > "$P/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$P"' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
for _ in $(seq 1 60); do
  "$ARGO/venv/bin/python" -c 'import boto3; boto3.client("s3").create_bucket(Bucket="bench")' \
    2>/dev/null && break
  sleep 0.5
done
cp -r config pipelines sql "$P/"
"$B" gen-data --out "$P/data/example" --users "${USERS:-200000}" --items "${ITEMS:-20000}" \
  --events "${EVENTS:-5000000}" >/dev/null
STEPS="interactions items closed_items filters als user_recs similar publish_user_recs publish_similar quality"
# Wall seconds of one step; stderr kept for a failure.
timed() {
  local start end
  start=$(date +%s.%N)
  "$B" --project-dir "$P" step run --pipeline example-als --run-id bench --step "$@" \
    --logical-date 2026-12-01T00:00:00Z >/dev/null 2>"$P/err" || { cat "$P/err" >&2; exit 1; }
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}
declare -A LOCAL S3
for s in $STEPS; do LOCAL[$s]=$(timed "$s" --store "$P/store"); done
export RECPIPE__SINKS__LOCAL_LISTS__PATH=s3://bench/published
for s in $STEPS; do S3[$s]=$(timed "$s" --store s3://bench/state); done
printf "%-18s %8s %8s %10s\n" step local s3 "MB moved"
tl=0; ts=0
for s in $STEPS; do
  # What the step reads and writes: its needs' files and its own.
  mb=$(du -sm "$P/store/runs/example-als/bench/$s" | cut -f1)
  printf "%-18s %8s %8s %10s\n" "$s" "${LOCAL[$s]}" "${S3[$s]}" "$mb out"
  tl=$(awk -v a="$tl" -v b="${LOCAL[$s]}" 'BEGIN { print a + b }')
  ts=$(awk -v a="$ts" -v b="${S3[$s]}" 'BEGIN { print a + b }')
done
awk -v l="$tl" -v s="$ts" 'BEGIN { printf "total: local %.1f s, s3 %.1f s, s3 / local = %.2fx\n", l, s, s / l }'

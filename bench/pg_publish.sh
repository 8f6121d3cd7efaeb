#!/usr/bin/env bash
# PostgreSQL publish benchmark: a 5M-row user→item list published through the
# postgres sink (binary COPY, index, analyze, swap), against `psql \copy` of the
# same rows as CSV into a plain table (the anchor), on one throwaway server with
# default (durable) settings, in the same run. Not part of CI.
#
#   bench/pg_publish.sh [users]     500000 users × top 10 = 5M rows by default
#
# Needs pyarrow (the anchors' venv, ~/.cache/recpipe-anchors) to write the CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-500000}
VENV=${RECPIPE_ANCHORS_VENV:-$HOME/.cache/recpipe-anchors}
OUT=${RECPIPE_BENCH_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
BIN="$CARGO_TARGET_DIR/debug/recpipe"

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDIR=$(mktemp -d /tmp/recpipe-pgbench.XXXXXX)
PORT=55433
if [ "$(id -u)" = 0 ]; then chown postgres "$PGDIR"; as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PGDIR" start >/dev/null
trap 'as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null; rm -rf "$PGDIR"' EXIT
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)

# The list: popularity top 10 for every user of seeded synthetic data.
"$BIN" gen-data --out "$OUT/data" --users "$USERS" --items 20000 --events $((USERS * 4)) --seed 7 >/dev/null
"$BIN" step train --input "$OUT/data/interactions.parquet" --model popular --output "$OUT/model" >/dev/null
"$BIN" step recommend --model "$OUT/model" --keep-seen --top-n 10 --run-id bench --output "$OUT/list.parquet" >/dev/null
LIST="$OUT/list.parquet"
"$VENV/bin/python" - "$LIST" "$OUT/list.csv" <<'PY'
import sys, pyarrow.parquet as pq, pyarrow.csv as pc
pc.write_csv(pq.read_table(sys.argv[1]), sys.argv[2])
PY
ROWS=$("$VENV/bin/python" -c "import sys, pyarrow.parquet as pq; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)" "$LIST")

mkdir -p "$OUT/project/config"
cat > "$OUT/project/config/default.toml" <<EOF
[sinks.bench]
kind = "postgres"
dsn = "$DSN"
EOF

now() { date +%s.%N; }
best_ours=999999; best_anchor=999999
for i in 1 2 3; do
  # Anchor: a fresh table and \copy of the CSV (parsed by the server).
  "${PSQL[@]}" -c "DROP TABLE IF EXISTS anchor; CREATE TABLE anchor (user_id bigint NOT NULL, item_id bigint NOT NULL, rank integer NOT NULL, score real NOT NULL, run_id text NOT NULL, generated_at timestamptz NOT NULL)"
  t0=$(now)
  "${PSQL[@]}" -c "\\copy anchor FROM '$OUT/list.csv' WITH (FORMAT csv, HEADER)"
  t1=$(now)
  # Ours: the whole write command, process start to swapped-in table.
  "$BIN" --project-dir "$OUT/project" step write --input "$LIST" --sink bench --table recs --version "v$i" >/dev/null
  t2=$(now)
  best_anchor=$(python3 -c "print(min($best_anchor, $t1 - $t0))")
  best_ours=$(python3 -c "print(min($best_ours, $t2 - $t1))")
  echo "round $i: psql \\copy $(python3 -c "print(f'{$t1 - $t0:.2f}')") s, recpipe write $(python3 -c "print(f'{$t2 - $t1:.2f}')") s"
done
check=$("${PSQL[@]}" -At -c "SELECT count(*) FROM recs")
[ "$check" = "$ROWS" ] || { echo "recs has $check rows, expected $ROWS" >&2; exit 1; }
python3 - "$ROWS" "$best_anchor" "$best_ours" <<'PY'
import sys
rows, anchor, ours = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"{rows} rows, best of 3")
print(f"psql \\copy (CSV, no index):            {anchor:.2f} s  {rows / anchor / 1e6:.2f} M rows/s")
print(f"recpipe write (COPY binary, index, swap): {ours:.2f} s  {rows / ours / 1e6:.2f} M rows/s")
print(f"ratio (rows/s, recpipe / psql): {anchor / ours:.2f}x")
PY
echo "results in $OUT"

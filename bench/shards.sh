#!/usr/bin/env bash
# CPU time of a `recommend` step split into 4 parts (`shards = 4`, each part run by
# its own `recpipe step run --shard k/4`, as Argo pods) against the same step unsplit,
# on example-als over generated data. Not part of CI.
#
#   bench/shards.sh                          200k users, 20k items, 5M events
#   USERS=.. ITEMS=.. EVENTS=.. bench/shards.sh
#
# Prints user, system and wall seconds of the unsplit step and of each part, and
# the parts' total CPU over the unsplit step's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
B="$CARGO_TARGET_DIR/debug/recpipe"
P=$(mktemp -d)
trap 'rm -rf "$P"' EXIT
cp -r config pipelines sql "$P/"
"$B" gen-data --out "$P/data/example" --users "${USERS:-200000}" --items "${ITEMS:-20000}" \
  --events "${EVENTS:-5000000}" >/dev/null
step() { "$B" --project-dir "$P" step run --pipeline example-als --run-id "$@" --store "$P/store" >/dev/null 2>&1; }
# `/usr/bin/time`'s user, system and wall seconds of one step.
timed() { /usr/bin/time -f "%U %S %e" "$B" --project-dir "$P" step run --pipeline example-als \
  --store "$P/store" "$@" 2>&1 >/dev/null | tail -1; }
for run in whole split; do
  [ "$run" = split ] && sed -i 's/^\[steps.user_recs\]$/[steps.user_recs]\nshards = 4/' "$P/pipelines/example_als.toml"
  for s in interactions items closed_items filters als; do step "$run" --step "$s"; done
done
whole=$(timed --run-id whole --step user_recs)
echo "unsplit: user sys wall = $whole"
total=0
for k in 0 1 2 3; do
  part=$(timed --run-id split --step user_recs --shard "$k/4")
  echo "part $k/4: user sys wall = $part"
  total=$(awk -v t="$total" -v p="$part" 'BEGIN { split(p, a, " "); print t + a[1] + a[2] }')
done
awk -v t="$total" -v w="$whole" 'BEGIN { split(w, a, " "); printf "parts CPU / unsplit CPU = %.1f / %.1f = %.2fx\n", t, a[1] + a[2], t / (a[1] + a[2]) }'

#!/usr/bin/env bash
# Probe latency while the daemon trains: /livez, /metrics and the assignment API
# timed while the example-als pipeline runs on 5M synthetic interactions (100k
# users × 20k items), and 10 s of assignments at 1,000 requests a second on one
# keep-alive connection, timed from when each request was due (so a stall counts
# for every request it delays). Heavy compute runs on the rayon pool, so the
# probes should stay fast.
#
#   bench/daemon_latency.sh            prints p50 / p99 / max per endpoint
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recpipe-target}"
cargo build --quiet
BIN="$CARGO_TARGET_DIR/debug/recpipe"
PROJECT=$(mktemp -d)
cp -r config pipelines sql "$PROJECT/"
"$BIN" gen-data --out "$PROJECT/data/example" --users 100000 --items 20000 --events 5000000 >/dev/null
PORT=${PORT:-18181}
RECPIPE__SERVER__LISTEN=127.0.0.1:$PORT RECPIPE__API__TOKEN=bench \
  "$BIN" --project-dir "$PROJECT" daemon 2>"$PROJECT/daemon.log" &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null || true' EXIT
python3 - "$PORT" <<'PY'
import http.client, json, sys, time, urllib.request
port = int(sys.argv[1])
base = f"http://127.0.0.1:{port}"
def get(path):
    start = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=10) as r:
        body = r.read()
    return (time.perf_counter() - start) * 1000, body
for _ in range(300):
    try:
        if get("/readyz")[1] == b"ready":
            break
    except OSError:
        pass
    time.sleep(0.1)
def trigger(pipeline):
    req = urllib.request.Request(f"{base}/api/v1/pipelines/{pipeline}/runs", method="POST",
                                 headers={"Authorization": "Bearer bench"})
    return json.load(urllib.request.urlopen(req))["run_id"]
def wait(run_id):
    while (status := json.loads(get(f"/api/v1/runs/{run_id}")[1])["run"]["status"]) == "running":
        time.sleep(0.2)
    return status
# An allocation to serve.
assert wait(trigger("example-ab")) == "succeeded"
ASSIGN = "/api/v1/experiments/apply_button/assign?unit="
run_id, started = trigger("example-als"), time.time()
time.sleep(5)  # training under way
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
paced, start = [], time.perf_counter()
for i in range(10_000):
    due = start + i / 1000
    while time.perf_counter() < due:
        pass
    conn.request("GET", f"{ASSIGN}u{i}")
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    paced.append((time.perf_counter() - due) * 1000)
rate = len(paced) / (time.perf_counter() - start)
lat = {"/livez": [], "/metrics": [], ASSIGN + "…": [], "assign at 1,000/s": paced}
status, last_check = "running", 0.0
while status == "running":
    for path in ("/livez", "/metrics"):
        lat[path].append(get(path)[0])
    lat[ASSIGN + "…"].append(get(f"{ASSIGN}p{len(lat['/livez'])}")[0])
    time.sleep(0.02)
    if time.time() - last_check > 1:
        last_check = time.time()
        status = json.loads(get(f"/api/v1/runs/{run_id}")[1])["run"]["status"]
print(f"run {run_id}: {status} in {time.time() - started:.1f} s; paced assignments at {rate:.0f}/s")
for path, xs in lat.items():
    xs.sort()
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    print(f"{path:40} n={len(xs):5}  p50 {q(0.5):6.2f} ms  p99 {q(0.99):6.2f} ms  max {xs[-1]:6.2f} ms")
PY

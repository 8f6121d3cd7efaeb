#!/usr/bin/env python3
"""Grid search of ALS defaults on a validation split carved from the TRAINING part
of an anchors split (`anchors.py --write-split`), never from its test part.

    python bench/tune.py --split /tmp/ml100k-split.parquet --positive-min 4

The training rows are split again, seeded, 80/20 into fit/validation; each grid
point runs `recpipe bench` on that split and the best nDCG@10 wins. Needs pyarrow
and numpy (the anchors' venv has both) and a built recpipe (debug profile).
"""
import argparse
import itertools
import json
import os
import subprocess
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ap = argparse.ArgumentParser()
ap.add_argument("--split", required=True)
ap.add_argument("--positive-min", type=float, default=None)
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--scale-regularization", action="store_true",
                help="ALS-WR: regularization per row scaled by its interaction count")
ap.add_argument("--bin", default=os.path.expanduser("~/.cache/recpipe-target/debug/recpipe"))
a = ap.parse_args()

t = pq.read_table(a.split)
train = t.filter(pa.compute.invert(t["is_test"]))
n = train.num_rows
rng = np.random.default_rng(a.seed)
is_val = np.zeros(n, dtype=bool)
is_val[rng.permutation(n)[: round(0.2 * n)]] = True
val = train.set_column(train.schema.get_field_index("is_test"), "is_test", pa.array(is_val))
path = os.path.join(tempfile.mkdtemp(), "validation.parquet")
pq.write_table(val, path)

grid = {
    "factors": [32, 64, 128],
    "regularization": [0.05, 2.0, 10.0, 20.0, 50.0, 100.0, 200.0]
    if not a.scale_regularization else [0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
    "alpha": [0.1, 0.25, 0.5, 1.0],
    "iterations": [15],
}
results = []
for values in itertools.product(*grid.values()):
    params = dict(zip(grid.keys(), values))
    cmd = [a.bin, "bench", "--split", path, "--repeats", "1"]
    if a.positive_min is not None:
        cmd += ["--positive-min", str(a.positive_min)]
    if a.scale_regularization:
        cmd.append("--scale-regularization")
    for k, v in params.items():
        cmd += [f"--{k}", str(v)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    m = out["metrics"]
    results.append((m["ndcg"], m["precision"], params))
    print(f"{params}  p@10 {m['precision']:.4f}  nDCG@10 {m['ndcg']:.4f}", flush=True)
results.sort(key=lambda r: -r[0])
print("best on validation:", results[0])

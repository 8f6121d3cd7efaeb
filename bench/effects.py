#!/usr/bin/env python3
"""Empirical Bayes (`estimate`, method = "beta_binomial") against the anchor of
../shared/bench/effects/anchors_effects.py, in the same run on the same data:

- OBD random/all and bts/men (the two logs whose prior is well determined) and the
  four where it is not (flat);
- synthetic 1M impressions x 10k items (synth_effects.py --mode eb, seed 42), with
  the planted rates: prior recovery and credible-interval coverage.

For each: the prior's a and b and their relative difference from the anchor's,
and the time of aggregation + fit + posteriors (the anchor's bincount, L-BFGS and
scipy's beta.ppf; recpipe's count, fit and posteriors, from the step's manifest;
both without reading the file), median of 5. Not part of CI.

    ~/.cache/recpipe-anchors/bin/python bench/effects.py
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.environ.get("RECPIPE_BENCH_KIT", os.path.join(HERE, "..", "..", "shared", "bench"))
EFFECTS = os.path.join(KIT, "effects")
sys.path.insert(0, EFFECTS)
import anchors_effects as anchor  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/recpipe-target"))
BIN = os.path.join(TARGET, "debug", "recpipe")
REPEATS = 5


def recpipe(events, out):
    """`recpipe step estimate` on `events` REPEATS times: its last summary and the
    median count + fit + posteriors seconds."""
    times = []
    for _ in range(REPEATS):
        done = subprocess.run([BIN, "step", "estimate", "--input", events, "--output", out],
                              check=True, capture_output=True, text=True)
        d = json.loads(done.stdout)["details"]
        times.append(d["seconds"]["count"] + d["seconds"]["fit_and_posteriors"])
    return d, float(np.median(times))


def python_side(item, click, items):
    """The anchor on the same rows: aggregation + fit + posteriors."""
    def work():
        n = np.bincount(item, minlength=items).astype(float)
        c = np.bincount(item, weights=click, minlength=items)
        fit = anchor.fit_beta_binomial(c, n)
        seen = n > 0
        post = anchor.posterior(fit["a"], fit["b"], c[seen], n[seen])
        return fit, c, n, post
    (fit, c, n, post), wall, _, _ = anchor.timeit(work, REPEATS)
    return fit, c, n, post, wall


def row(name, item, click, tmp, truth=None):
    items = int(item.max()) + 1
    events = os.path.join(tmp, f"{name.replace('/', '_')}.parquet")
    import pyarrow as pa
    pq.write_table(pa.table({"item_id": item.astype(np.int64), "converted": click.astype(np.int64)}), events)
    fit, c, n, post, t_py = python_side(item, click, items)
    d, t_rs = recpipe(events, os.path.join(tmp, "out"))
    p = d["prior"]
    out = dict(data=name, rows=len(item), items=int((n > 0).sum()), anchor_a=fit["a"], anchor_b=fit["b"],
               recpipe_a=p["a"], recpipe_b=p["b"], flat=p["flat"], lr=p["lr"], pooled=float(c.sum() / n.sum()),
               recpipe_mean=p["mean"], anchor_s=t_py, recpipe_s=t_rs, speedup=t_py / t_rs)
    if p["a"] is not None:
        out["rel_a"] = p["a"] / fit["a"] - 1
        out["rel_b"] = p["b"] / fit["b"] - 1
    if truth is not None:
        est = pq.read_table(os.path.join(tmp, "out", "data.parquet")).to_pandas().set_index("item_id")
        t = truth.loc[est.index]
        out["coverage"] = float(((est["lower"] <= t) & (t <= est["upper"])).mean())
        lo, hi = post[1], post[2]
        seen = n > 0
        tt = truth.reindex(np.arange(items)).to_numpy()[seen]
        out["anchor_coverage"] = float(((lo <= tt) & (tt <= hi)).mean())
    return out


def main():
    threadpool_limits(1)
    tmp = tempfile.mkdtemp(prefix="recpipe-effects-")
    rows = []
    for pol, camp in [("random", "all"), ("bts", "men"), ("random", "men"), ("random", "women"),
                      ("bts", "all"), ("bts", "women")]:
        t = pq.read_table(os.path.join(EFFECTS, "obd", pol, camp, "events.parquet"), columns=["item_id", "click"])
        rows.append(row(f"obd {pol}/{camp}", t["item_id"].to_numpy(), t["click"].to_numpy(), tmp))
    synth = os.path.join(tmp, "synth_eb_1m.parquet")
    subprocess.run([sys.executable, os.path.join(EFFECTS, "synth_effects.py"), "--mode", "eb", "--out", synth],
                   check=True, capture_output=True)
    t = pq.read_table(synth, columns=["item_id", "click"])
    truth = pq.read_table(synth.replace(".parquet", ".items.parquet")).to_pandas().set_index("item_id")["true_ctr"]
    rows.append(row("synth 1M x 10k", t["item_id"].to_numpy(), t["click"].to_numpy(), tmp, truth))
    for r in rows:
        print(json.dumps(r))
    print()
    print("| data | anchor a, b | recpipe a, b | rel. diff a, b | anchor s | recpipe s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["flat"]:
            ours = f"flat: pooled {r['recpipe_mean']:.6f} (data {r['pooled']:.6f})"
            diff = f"mean {abs(r['recpipe_mean'] - r['pooled']):.1e} abs"
        else:
            ours = f"{r['recpipe_a']:.6g}, {r['recpipe_b']:.6g}"
            diff = f"{r['rel_a']:.1e}, {r['rel_b']:.1e}"
        print(f"| {r['data']} | {r['anchor_a']:.6g}, {r['anchor_b']:.6g} | {ours} | {diff} | "
              f"{r['anchor_s'] * 1e3:.1f} ms | {r['recpipe_s'] * 1e3:.1f} ms | {r['speedup']:.1f}x |")
    s = rows[-1]
    print(f"\nsynthetic 95% interval coverage of the planted rates: recpipe {s['coverage']:.4f}, "
          f"anchor {s['anchor_coverage']:.4f}")


if __name__ == "__main__":
    main()

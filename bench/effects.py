#!/usr/bin/env python3
"""`estimate` against the anchors of ../shared/bench/effects/anchors_effects.py, in
the same run on the same data.

Empirical Bayes (method = "beta_binomial", `--part eb`):

- OBD random/all and bts/men (the two logs whose prior is well determined) and the
  four where it is not (flat);
- synthetic 1M impressions x 10k items (synth_effects.py --mode eb, seed 42), with
  the planted rates: prior recovery and credible-interval coverage.

For each: the prior's a and b and their relative difference from the anchor's,
and the time of aggregation + fit + posteriors (the anchor's bincount, L-BFGS and
scipy's beta.ppf; recpipe's count, fit and posteriors, from the step's manifest;
both without reading the file, on one thread), median of 5.

Logistic regression (method = "logistic", `--part logit`), on the anchor's specs
and train/test rows:

- OBD pooled "small" (20 columns) and random/all "tiny" (4): coefficients and
  standard errors against the numpy Newton reference and statsmodels;
- OBD pooled "full" (187 columns, separated): recpipe must refuse it unpenalised,
  and with l2 = 1 match the Newton-L2 reference;
- synthetic 1M x 61 (synth_effects.py --mode logit, seed 42): coefficients, SEs,
  held-out figures, and the time of the whole step (reading the file and building
  the one-hot columns included; one rayon thread, and both cores) against
  statsmodels' fit alone and the anchor's pandas design building.

Not part of CI.

    ~/.cache/recpipe-anchors/bin/python bench/effects.py [--part eb|logit]
"""
import argparse
import time
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
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
                              check=True, capture_output=True, text=True,
                              env=dict(os.environ, RAYON_NUM_THREADS="1"))
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


def part_eb(tmp):
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


def coef_diffs(ours, ref, names):
    """max relative and absolute differences over the terms, and whether every
    term is within 1e-4 relative or 1e-6 absolute (the target)."""
    o = ours.loc[names].to_numpy()
    ref = np.asarray(ref, float)
    rel = np.abs(o - ref) / np.maximum(np.abs(ref), 1e-12)
    ab = np.abs(o - ref)
    return dict(rel=float(rel.max()), abs=float(ab.max()), ok=bool(np.all((rel <= 1e-4) | (ab <= 1e-6))))


def run_logit(tmp, name, train, test, numeric, categorical, extra=(), threads=None):
    """Writes train then test (ts in that order, so recpipe's holdout = the anchor's
    test rows) and runs `recpipe step estimate --method logistic`: (exit code,
    stdout/stderr, wall seconds, coefficients table)."""
    import pyarrow as pa
    ev = pd.concat([train, test], ignore_index=True)
    ids = ev["item_id"]
    cols = {"item_id": ids.to_numpy(np.int64) if pd.api.types.is_integer_dtype(ids) else ids.astype(str).to_numpy(),
            "converted": ev["click"].to_numpy(np.int64),
            "ts": np.arange(len(ev), dtype=np.int64)}
    for c in numeric:
        cols[c] = ev[c].to_numpy(float)
    for c in categorical:
        cols[c] = ev[c].astype(str).to_numpy()
    path = os.path.join(tmp, f"{name}.parquet")
    pq.write_table(pa.table(cols), path)
    out = os.path.join(tmp, f"{name}-out")
    holdout = len(test) / len(ev)
    cmd = [BIN, "step", "estimate", "--method", "logistic", "--input", path, "--output", out,
           "--holdout", repr(holdout), *extra]
    if numeric:
        cmd += ["--numeric", ",".join(numeric)]
    if categorical:
        cmd += ["--categorical", ",".join(categorical)]
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    table = None
    if done.returncode == 0:
        table = pq.read_table(os.path.join(out, "data.parquet")).to_pandas().set_index("term")
    return done, wall, table


def logit_case(tmp, name, tr, te, numeric, categorical, min_share=0.0, l2=None, separated=False):
    Xtr, Xte, names = anchor.design(tr, te, numeric, categorical, min_share)
    ytr = tr["click"].to_numpy(float)
    extra = ["--min-level-share", repr(min_share)] if min_share else []
    rec = dict(data=name, rows_train=len(tr), columns=len(names))
    if separated:
        done, _, _ = run_logit(tmp, name, tr, te, numeric, categorical, extra)
        rec["unpenalised_refused"] = done.returncode != 0
        rec["unpenalised_message"] = done.stderr.strip().splitlines()[-1] if done.stderr else done.stdout[:200]
        return rec
    if l2:
        w, it, conv, _ = anchor.newton_logistic(Xtr, ytr, l2)
        done, _, t = run_logit(tmp, name + "-l2", tr, te, numeric, categorical, extra + ["--l2", repr(l2)])
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        rec["l2"] = l2
        rec["vs_newton_l2"] = coef_diffs(t["estimate"], w, names)
        # The solver used beyond 500 columns, on the same problem.
        done, _, t = run_logit(tmp, name + "-l2", tr, te, numeric, categorical,
                               extra + ["--l2", repr(l2), "--solver", "lbfgs"])
        rec["lbfgs_vs_newton_l2"] = coef_diffs(t["estimate"], w, names)
        return rec
    w, it, conv, cov = anchor.newton_logistic(Xtr, ytr)
    se = np.sqrt(np.diag(cov))
    sm, bse, err, _ = anchor.sm_fit(Xtr, ytr, names)
    done, _, t = run_logit(tmp, name, tr, te, numeric, categorical, extra)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    rec["vs_newton"] = coef_diffs(t["estimate"], w, names)
    rec["vs_statsmodels"] = coef_diffs(t["estimate"], sm.params.to_numpy(), names)
    rec["se_vs_newton"] = coef_diffs(t["std_error"], se, names)
    rec["se_vs_statsmodels"] = coef_diffs(t["std_error"], bse, names)
    return rec


def part_logit(tmp):
    rows = []
    tr, te = anchor.obd_pooled()
    tr["item_id"], te["item_id"] = tr["campaign_item"], te["campaign_item"]
    ucat = [f"user_feature_{k}" for k in range(4)]
    rows.append(logit_case(tmp, "obd-small", tr, te, ["item_feature_0", "affinity_shown"],
                           ["campaign", "policy", "position"] + ucat, min_share=0.02))
    full = (["affinity_shown"], ["campaign_item", "policy", "position"] + ucat)
    r = logit_case(tmp, "obd-full", tr, te, *full, separated=True)
    r.update(logit_case(tmp, "obd-full", tr, te, *full, l2=1.0))
    rows.append(r)
    ev, items = anchor.load_log("random", "all")
    ev = ev.merge(items[["item_id", "item_feature_0"]], on="item_id", how="left")
    ev["position"] = ev["position"].astype(str)
    a, b = anchor.temporal_split(ev)
    rows.append(logit_case(tmp, "obd-tiny", a, b, ["item_feature_0"], ["position"]))
    # Synthetic 1M x 61, timed.
    synth = os.path.join(tmp, "synth_logit_1m.parquet")
    subprocess.run([sys.executable, os.path.join(EFFECTS, "synth_effects.py"), "--mode", "logit", "--out", synth],
                   check=True, capture_output=True)
    ev = pd.read_parquet(synth)
    ev["position"] = ev["position"].astype(str)
    tr, te = anchor.temporal_split(ev)
    cats = ["position"] + ucat + [f"item_feature_{k}" for k in (1, 2, 3)]
    t0 = time.perf_counter()
    Xtr, Xte, names = anchor.design(tr, te, ["item_feature_0"], cats)
    t_design = time.perf_counter() - t0
    ytr = tr["click"].to_numpy(float)
    w, it, conv, cov = anchor.newton_logistic(Xtr, ytr)
    t0 = time.perf_counter()
    sm, bse, err, _ = anchor.sm_fit(Xtr, ytr, names)
    t_sm = time.perf_counter() - t0
    heldout_sm = anchor.eval_probs(te["click"].to_numpy(float), sm.predict(Xte))
    del Xtr, Xte
    rec = dict(data="synth 1M x 61", rows_train=len(tr), columns=len(names), statsmodels_fit_s=t_sm,
               pandas_design_s=t_design, statsmodels_heldout=heldout_sm)
    for threads in (1, 2):
        walls = []
        for _ in range(3):
            done, wall, t = run_logit(tmp, "synth", tr, te, ["item_feature_0"], cats, threads=threads)
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            walls.append(wall)
        rec[f"recpipe_step_s_{threads}_thread"] = float(np.median(walls))
        rec[f"recpipe_seconds_{threads}_thread"] = json.loads(done.stdout)["details"]["seconds"]
    rec["recpipe_heldout"] = json.loads(done.stdout)["details"]["heldout"]
    rec["vs_newton"] = coef_diffs(t["estimate"], w, names)
    rec["vs_statsmodels"] = coef_diffs(t["estimate"], sm.params.to_numpy(), names)
    rec["se_vs_newton"] = coef_diffs(t["std_error"], np.sqrt(np.diag(cov)), names)
    rec["se_vs_statsmodels"] = coef_diffs(t["std_error"], bse, names)
    rec["speedup_vs_statsmodels_fit_1_thread"] = t_sm / rec["recpipe_step_s_1_thread"]
    rows.append(rec)
    for r in rows:
        print(json.dumps(r))
    print()
    print("| data | columns | coefficients vs Newton / statsmodels (max rel, max abs) | SEs vs Newton / statsmodels | within target |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "vs_newton" in r:
            f = lambda d: f"{d['rel']:.1e}, {d['abs']:.1e}"
            ok = all(r[k]["ok"] for k in ("vs_newton", "vs_statsmodels", "se_vs_newton", "se_vs_statsmodels"))
            print(f"| {r['data']} | {r['columns']} | {f(r['vs_newton'])} / {f(r['vs_statsmodels'])} | "
                  f"{f(r['se_vs_newton'])} / {f(r['se_vs_statsmodels'])} | {ok} |")
        if "vs_newton_l2" in r:
            d = r["vs_newton_l2"]
            print(f"| {r['data']}, l2 = {r['l2']} | {r['columns']} | vs Newton-L2: {d['rel']:.1e}, {d['abs']:.1e} | – | {d['ok']} |")
            d = r["lbfgs_vs_newton_l2"]
            print(f"| {r['data']}, l2 = {r['l2']}, `solver = lbfgs` | {r['columns']} | vs Newton-L2: {d['rel']:.1e}, {d['abs']:.1e} | – | {d['ok']} |")
        if "unpenalised_refused" in r:
            print(f"| {r['data']}, unpenalised | {r['columns']} | refused: {r['unpenalised_refused']} "
                  f"({r['unpenalised_message'][:160]}) | – | {r['unpenalised_refused']} |")
    s = rows[-1]
    print(f"\nsynthetic 1M: statsmodels fit {s['statsmodels_fit_s']:.2f} s (pandas design {s['pandas_design_s']:.2f} s); "
          f"recpipe whole step {s['recpipe_step_s_1_thread']:.3f} s on 1 thread "
          f"({s['speedup_vs_statsmodels_fit_1_thread']:.1f}x), {s['recpipe_step_s_2_thread']:.3f} s on 2; "
          f"held-out log-loss / AUC recpipe {s['recpipe_heldout']['logloss']:.5f} / {s['recpipe_heldout']['auc']:.4f}, "
          f"statsmodels {s['statsmodels_heldout']['logloss']:.5f} / {s['statsmodels_heldout']['auc']:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["eb", "logit", "all"], default="all")
    args = ap.parse_args()
    threadpool_limits(1)
    tmp = tempfile.mkdtemp(prefix="recpipe-effects-")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if args.part in ("eb", "all"):
        part_eb(tmp)
    if args.part in ("logit", "all"):
        part_logit(tmp)


if __name__ == "__main__":
    main()

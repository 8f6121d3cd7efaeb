#!/usr/bin/env python3
"""`allocate` (P(best) of Beta posteriors) against the anchors of
../shared/bench/effects/anchors_effects.py, in the same run on the same data:

- 2 and 3 arms from OBD random/men (4/279, 4/272, 3/345, Beta(1, 1)): recpipe's
  exact integration against scipy's adaptive quadrature and Evan Miller's closed
  form (target 1e-9);
- every item of the three OBD random logs as arms (80/34/46, Beta(1, 1)):
  recpipe's Monte Carlo at 1e5 draws and its exact integration against the
  quadrature (target 0.005 for Monte Carlo);
- 10k arms x 1e4 draws (synth_effects.py --mode eb, the anchor's EB prior):
  recpipe's Monte Carlo against numpy's (target >= 10x), one thread each, and
  recpipe on two;
- off-policy evaluation, the kit's six OBD evaluations: BernoulliTS with the
  ZOZOTOWN prior (its exact top-3 slate probabilities, from the anchor's grid)
  on the random logs, and uniform random on the bts logs. `recpipe step
  off-policy` against the anchor's IPW / SNIPW / ESS, unclipped and clipped at
  100 (target 1e-12).

Times are of the whole `recpipe step allocate` process (reading the file and
writing the allocation included) against the anchor's function alone. Not part
of CI.

    ~/.cache/recpipe-anchors/bin/python bench/bandit.py
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.environ.get("RECPIPE_BENCH_KIT", os.path.join(HERE, "..", "..", "shared", "bench"))
EFFECTS = os.path.join(KIT, "effects")
sys.path.insert(0, EFFECTS)
import anchors_effects as anchor  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/recpipe-target"))
BIN = os.path.join(TARGET, "debug", "recpipe")


def allocate(tmp, name, trials, successes, prior=(1.0, 1.0), exact_max_arms=100, draws=100_000, threads=None):
    """`recpipe step allocate` on arms 0..K-1: (P(best), its SE, wall seconds)."""
    k = len(trials)
    data = os.path.join(tmp, f"{name}.parquet")
    pq.write_table(pa.table({"arm_id": [f"arm{i}" for i in range(k)],
                             "trials": np.asarray(trials, np.int64), "successes": np.asarray(successes, np.int64)}), data)
    exp = os.path.join(tmp, f"{name}.toml")
    with open(exp, "w") as f:
        f.write(f'experiment = "{name}"\nprior = [{float(prior[0])!r}, {float(prior[1])!r}]\n')
        f.write(f"exact_max_arms = {exact_max_arms}\ndraws = {draws}\nseed = 7\n")
        for i in range(k):
            f.write(f'[[arms]]\nid = "arm{i}"\n')
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run([BIN, "step", "allocate", "--input", data, "--experiment", exp,
                           "--output", os.path.join(tmp, name + "-out")], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    t = pq.read_table(os.path.join(tmp, name + "-out", "data.parquet")).to_pandas()
    return t["p_best"].to_numpy(), t["p_best_se"].to_numpy(), wall


def off_policy(tmp, name, arm, position, reward, pscore, policy):
    """`recpipe step off-policy` of `policy` (items x positions) on the logged
    rows: its rows (unclipped, clip 100) and the wall seconds."""
    logs, pol = os.path.join(tmp, f"{name}-logs.parquet"), os.path.join(tmp, f"{name}-policy.parquet")
    pq.write_table(pa.table({"arm_id": [str(a) for a in arm], "position": position.astype(np.int64),
                             "converted": reward.astype(np.int64), "propensity": pscore}), logs)
    items, slots = policy.shape
    pq.write_table(pa.table({"arm_id": [str(i) for i in range(items) for _ in range(slots)],
                             "position": np.tile(np.arange(slots, dtype=np.int64), items),
                             "probability": policy.reshape(-1)}), pol)
    out = os.path.join(tmp, name + "-ope")
    t0 = time.perf_counter()
    done = subprocess.run([BIN, "step", "off-policy", "--logs", logs, "--policy", pol, "--clips", "100",
                           "--output", out], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return pq.read_table(os.path.join(out, "data.parquet")).to_pandas(), wall


def ope_rows(tmp):
    prior = anchor.load_prior()
    rows = []
    for camp in ("all", "men", "women"):
        rnd, items = anchor.load_log("random", camp)
        bts, _ = anchor.load_log("bts", camp)
        k = len(items)
        pi_bts = anchor.slate_probs_grid(np.array(prior[camp]["alpha"]), np.array(prior[camp]["beta"]),
                                         G=8001, L=3)[0]
        for label, log, policy in ((f"BTS(prior) <- random, {camp}", rnd, pi_bts),
                                   (f"random <- bts, {camp}", bts, np.full((k, 3), 1.0 / k))):
            a, pos = log["item_id"].to_numpy(), log["position"].to_numpy() - 1
            r, ps = log["click"].to_numpy(float), log["propensity_score"].to_numpy()
            t0 = time.perf_counter()
            est = anchor.ipw_estimates(r, policy[a, pos] / ps, lambdas=(np.inf, 100.0))
            t_np = time.perf_counter() - t0
            ours, wall = off_policy(tmp, f"ope-{camp}-{len(rows)}", a, pos, r, ps, policy)
            diffs = {}
            for i, key in enumerate(("no_clip", "clip_100")):
                e = est[key]
                for ours_col, theirs in (("ipw", "ipw"), ("ipw_se", "ipw_se"), ("snipw", "snipw"),
                                         ("snipw_se", "snipw_se"), ("max_weight", "max_w"),
                                         ("effective_sample_size", "ess")):
                    d = abs(ours[ours_col][i] - e[theirs]) / max(abs(e[theirs]), 1e-300)
                    diffs[f"{key}.{ours_col}"] = float(d)
            rows.append(dict(case=f"off-policy {label}", rows=len(r), ipw=float(ours["ipw"][0]),
                             snipw=float(ours["snipw"][0]), ess=float(ours["effective_sample_size"][0]),
                             max_rel_diff=max(diffs.values()), worst=max(diffs, key=diffs.get),
                             recpipe_process_s=wall, numpy_s=t_np))
    return rows


def main():
    threadpool_limits(1)
    tmp = tempfile.mkdtemp(prefix="recpipe-bandit-")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows = []
    # 2 and 3 arms: exact.
    n, c = [279, 272, 345], [4, 4, 3]
    for k in (2, 3):
        a, b = 1 + np.array(c[:k], float), 1 + np.array(n[:k], float) - np.array(c[:k], float)
        quad = anchor.p_best_quad(a, b)
        ours, _, _ = allocate(tmp, f"arms{k}", n[:k], c[:k])
        rec = dict(case=f"{k} arms, exact", anchor=quad.tolist(), recpipe=ours.tolist(),
                   max_abs_diff=float(np.max(np.abs(ours - quad))), sum=float(ours.sum()))
        if k == 2:
            rec["closed_form_B"] = anchor.p_best_2arm_closed(a[0], b[0], a[1], b[1])
        rows.append(rec)
    # Every item of the random logs as an arm.
    for camp in ("all", "men", "women"):
        ev, items = anchor.load_log("random", camp)
        k = len(items)
        trials = np.bincount(ev["item_id"], minlength=k)
        succ = np.bincount(ev["item_id"], weights=ev["click"], minlength=k).astype(int)
        a, b = 1.0 + succ, 1.0 + trials - succ
        t0 = time.perf_counter()
        quad = anchor.p_best_quad(a, b)
        t_quad = time.perf_counter() - t0
        mc, se, t_mc = allocate(tmp, f"obd-{camp}-mc", trials, succ, exact_max_arms=0)
        ex, _, t_ex = allocate(tmp, f"obd-{camp}-exact", trials, succ, exact_max_arms=100)
        t0 = time.perf_counter()
        anchor.p_best_mc(a, b, 100_000, seed=7)
        t_np = time.perf_counter() - t0
        rows.append(dict(case=f"OBD random/{camp}, {k} arms", mc_max_abs_diff=float(np.max(np.abs(mc - quad))),
                         mc_max_z=float(np.max(np.abs(mc - quad) / np.maximum(se, 1e-12))),
                         exact_max_abs_diff=float(np.max(np.abs(ex - quad))), exact_sum=float(ex.sum()),
                         quad_s=t_quad, recpipe_exact_s=t_ex, recpipe_mc_1e5_s=t_mc, numpy_mc_1e5_s=t_np,
                         mc_speedup=t_np / t_mc))
    # 10k arms x 1e4 draws.
    synth = os.path.join(tmp, "synth_eb_1m.parquet")
    subprocess.run([sys.executable, os.path.join(EFFECTS, "synth_effects.py"), "--mode", "eb", "--out", synth],
                   check=True, capture_output=True)
    t = pq.read_table(synth, columns=["item_id", "click"])
    item, click = t["item_id"].to_numpy(), t["click"].to_numpy()
    k = int(item.max()) + 1
    trials = np.bincount(item, minlength=k)
    succ = np.bincount(item, weights=click, minlength=k).astype(int)
    fit = anchor.fit_beta_binomial(succ.astype(float), trials.astype(float))
    a, b = fit["a"] + succ, fit["b"] + trials - succ
    t0 = time.perf_counter()
    p_np = anchor.p_best_mc(a, b, 10_000, seed=7)
    t_np = time.perf_counter() - t0
    rec = dict(case="synthetic 10k arms x 1e4 draws", numpy_s=t_np)
    for threads in (1, 2):
        ours, se, wall = allocate(tmp, "synth10k", trials, succ, prior=(fit["a"], fit["b"]), exact_max_arms=0,
                                  draws=10_000, threads=threads)
        rec[f"recpipe_s_{threads}_thread"] = wall
    rec["speedup_1_thread"] = t_np / rec["recpipe_s_1_thread"]
    rec["max_abs_diff_vs_numpy"] = float(np.max(np.abs(ours - p_np)))
    rec["top5"] = [dict(arm=int(i), recpipe=float(ours[i]), numpy=float(p_np[i])) for i in np.argsort(-p_np)[:5]]
    rows.append(rec)
    rows.extend(ope_rows(tmp))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Held-out check of `llmeval arena ratings` against FastChat's rating code.

    pip install --no-deps fschat==0.2.36
    pip install pandas scikit-learn pytz plotly tqdm psutil torch transformers accelerate
    (the second line is what importing fastchat's elo_analysis needs)
    cargo build --release
    python3 scripts/check-arena.py [--seeds 1,2,3] [--per-seed 20]

Each seed writes fresh battle logs no test has seen: 2 to 40 models with random strengths, 1 to
20,000 battles, ties and "tie (bothbad)" at random rates, pairs drawn uniformly or with a few
models in most battles, names with spaces and non-ASCII letters, and extra FastChat fields. Then:

- Elo (`--method elo --k K`, K random) against FastChat's `compute_elo(df, K=K)`, at 1e-9;
- Bradley-Terry (`--method bt`) where the maximum likelihood exists (every model met the rest and
  took a point from them by some chain; otherwise llmeval must say so in its notes, which is
  checked too): the log-likelihood's gradient at llmeval's ratings, computed here from the
  battles, must vanish (|∂/∂θ| ≤ 1e-9 per battle) with Σθ = 0, which makes them the maximum
  (it is unique); and they are compared with FastChat's recipe (`tests/goldens/
  arena_reference.py`): at 1e-3 rating points against its lbfgs run to tol=1e-12. FastChat's own
  tol=1e-6 stops short of the optimum; the largest gap from it is printed, not held to a bound;
- `--anchor MODEL=R` shifts every rating by what puts MODEL at R.

A mismatch prints the seed, the log's shape and the model that differs most, and keeps the log
in the working directory. Exits 1 on any mismatch.
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings

import pandas as pd
from fastchat.serve.monitor.elo_analysis import compute_elo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "goldens"))
from arena_reference import mle  # noqa: E402

BIN = os.path.join(ROOT, "target", "release", "llmeval")
warnings.filterwarnings("ignore")  # sklearn's deprecation and convergence chatter


def battles(r):
    """One random battle log and a line describing its shape."""
    n_models = r.choice([2, 3, 5, 8, 13, 20, 40])
    n = r.choice([1, 5, 30, 200, 2000, 20000])
    names = [r.choice(["model", "Modèl", "gpt 4", "llama-2-13b", "模型", "x"]) + f"-{i}" for i in range(n_models)]
    strength = {m: r.gauss(0, r.choice([0.1, 0.5, 1.5])) for m in names}
    weights = [1.0] * n_models if r.random() < 0.5 else [r.paretovariate(1.0) for _ in names]
    tie, bothbad = r.choice([0.0, 0.05, 0.3]), r.choice([0.0, 0.05])
    rows = []
    for _ in range(n):
        a, b = r.choices(names, weights)[0], r.choices(names, weights)[0]
        while b == a:
            b = r.choice(names)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        u = r.random()
        w = "tie" if u < tie else "tie (bothbad)" if u < tie + bothbad else ("model_a" if r.random() < p else "model_b")
        rows.append({"model_a": a, "model_b": b, "winner": w, "judge": "gpt-4", "turn": r.choice([1, 2]), "anony": True})
    shape = f"{n_models} models, {n} battles, ties {tie}, bothbad {bothbad}, {'uniform' if len(set(weights)) == 1 else 'skewed'} pairs"
    return rows, shape


def identifiable(rows):
    """Whether the Bradley-Terry maximum likelihood is finite: every model reaches every other
    along "took a point from" edges (a win or a tie)."""
    took = {}
    for b in rows:
        a, c, w = b["model_a"], b["model_b"], b["winner"]
        if w != "model_b":
            took.setdefault(a, set()).add(c)
        if w != "model_a":
            took.setdefault(c, set()).add(a)
    models = {b["model_a"] for b in rows} | {b["model_b"] for b in rows}

    def reach(start, edges):
        seen, stack = {start}, [start]
        while stack:
            for y in edges.get(stack.pop(), ()):
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        return seen

    back = {}
    for x, ys in took.items():
        for y in ys:
            back.setdefault(y, set()).add(x)
    m = next(iter(models))
    return reach(m, took) == models and reach(m, back) == models


def optimality(rows, ratings):
    """The largest |∂ log-likelihood / ∂θ| at `ratings` (θ = (rating - 1000) / 400, a tie half a
    win, as FastChat's duplicated rows make it), and Σθ."""
    theta = {m: (v - 1000) / 400 for m, v in ratings.items()}
    grad = dict.fromkeys(theta, 0.0)
    for b in rows:
        a, c = b["model_a"], b["model_b"]
        s = 1 / (1 + 10 ** (theta[c] - theta[a]))
        y = {"model_a": 1.0, "model_b": 0.0}.get(b["winner"], 0.5)
        grad[a] += math.log(10) * (y - s)
        grad[c] -= math.log(10) * (y - s)
    return max(abs(v) for v in grad.values()), sum(theta.values())


def ours(path, *args):
    out = subprocess.run([BIN, "arena", "ratings", "--battles", path, "--json", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llmeval arena ratings {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--per-seed", type=int, default=20)
    args = ap.parse_args()
    checked = mismatches = 0
    widest = [0.0, ""]  # the largest gap from FastChat's lbfgs at its own tol=1e-6, and where
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            r = random.Random(seed)
            for case in range(args.per_seed):
                rows, shape = battles(r)
                path = os.path.join(tmp, "battles.jsonl")
                with open(path, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(b, ensure_ascii=r.random() < 0.5) + "\n" for b in rows)
                df = pd.DataFrame(rows)
                where = f"seed {seed} case {case} ({shape})"

                def keep():
                    kept = os.path.abspath(f"check-arena-{seed}-{case}.jsonl")
                    shutil.copyfile(path, kept)
                    return kept

                def compare(what, got, want, tol):
                    nonlocal checked, mismatches
                    checked += 1
                    if set(got) != set(want):
                        mismatches += 1
                        print(f"MISMATCH {what}, {where}: models {sorted(got)} vs {sorted(want)}")
                        return
                    worst = max(want, key=lambda m: abs(got[m] - want[m]))
                    if abs(got[worst] - want[worst]) > tol:
                        mismatches += 1
                        print(f"MISMATCH {what}, {where}: {worst}: llmeval {got[worst]!r}, reference {want[worst]!r}; log kept as {keep()}")

                k = r.choice([1, 4, 16, 32])
                compare(f"elo K={k}", ours(path, "--method", "elo", "--k", str(k))["ratings"], compute_elo(df, K=k), 1e-9)
                bt = ours(path, "--method", "bt")
                if identifiable(rows):
                    checked += 1
                    g, centre = optimality(rows, bt["ratings"])
                    if g > 1e-9 * len(rows) or abs(centre) > 1e-9:
                        mismatches += 1
                        print(f"MISMATCH bt, {where}: not the maximum: gradient {g:.3g}, sum of θ {centre:.3g}; log kept as {keep()}")
                    compare("bt (lbfgs tol=1e-12)", bt["ratings"], mle(df, tol=1e-12), 1e-3)
                    fc = mle(df)
                    gap = max(abs(bt["ratings"][m] - fc[m]) for m in fc)
                    if gap > widest[0]:
                        widest[:] = [gap, where]
                    anchor = r.choice(sorted(bt["ratings"]))
                    shifted = ours(path, "--method", "bt", "--anchor", f"{anchor}=800")["ratings"]
                    compare(f"bt anchored {anchor}=800", shifted, {m: v - bt["ratings"][anchor] + 800 for m, v in bt["ratings"].items()}, 1e-9)
                else:
                    checked += 1
                    if not bt["notes"]:
                        mismatches += 1
                        print(f"MISMATCH bt, {where}: the maximum likelihood is not finite and llmeval gave no note")
    print(f"{checked} comparisons, {mismatches} mismatches")
    print(f"Bradley-Terry: largest gap from FastChat's lbfgs at tol=1e-6 (which stops short of the optimum): {widest[0]:.3g} rating points ({widest[1] or 'no identifiable log'})")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()

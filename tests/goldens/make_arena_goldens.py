#!/usr/bin/env python3
"""Battles and FastChat's ratings of them, for the arena tests.

    pip install fschat==0.2.36 pandas scikit-learn && python3 tests/goldens/make_arena_goldens.py

Elo is FastChat's own `compute_elo`. Bradley-Terry is FastChat's maximum-likelihood recipe
(battles duplicated, a tie = one A win + one B win, `LogisticRegression(fit_intercept=False,
penalty=None, tol=1e-6)` as in its later `compute_mle_elo`, ratings `400·coef + 1000`).
"""
import json, math, os, random
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from fastchat.serve.monitor.elo_analysis import compute_elo

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(606)
strength = {"alpha": 1.2, "bravo": 0.7, "charlie": 0.3, "delta": 0.0, "echo": -0.4, "foxtrot": -0.9}
names = list(strength)
rows = []
for _ in range(3000):
    a, b = rng.sample(names, 2)
    p = 1 / (1 + 10 ** (strength[b] - strength[a]))
    u = rng.random()
    w = "tie" if u < 0.08 else "tie (bothbad)" if u < 0.12 else ("model_a" if rng.random() < p else "model_b")
    rows.append({"model_a": a, "model_b": b, "winner": w, "judge": "golden", "turn": 1})
with open(os.path.join(HERE, "battles.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
df = pd.DataFrame(rows)
elo = compute_elo(df)

def mle(df, SCALE=400, BASE=10, INIT=1000):
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n, p = df.shape[0], len(models)
    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0
    tie = ((df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")).to_numpy().copy()
    tie[len(tie) // 2:] = False
    Y[tie] = 1.0
    lr = LogisticRegression(fit_intercept=False, penalty=None, tol=1e-6)
    lr.fit(X, Y)
    return {m: float(SCALE * c + INIT) for m, c in zip(models.index, lr.coef_[0])}

bt = mle(df)
with open(os.path.join(HERE, "arena_ratings.json"), "w") as f:
    json.dump({"elo": elo, "bt": bt, "bt_coef_sum": sum((v - 1000) / 400 for v in bt.values())}, f, indent=1)
print(json.dumps({"elo": elo, "bt": bt}, indent=1))

#!/usr/bin/env python3
"""Battles and FastChat's ratings of them, for the arena tests.

    pip install fschat==0.2.36 pandas scikit-learn && python3 tests/goldens/make_arena_goldens.py

Elo is FastChat's own `compute_elo`. Bradley-Terry is FastChat's maximum-likelihood recipe, in
`arena_reference.py`.
"""
import json, os, random, sys
import pandas as pd
from fastchat.serve.monitor.elo_analysis import compute_elo

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from arena_reference import mle  # noqa: E402
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

bt = mle(df)
with open(os.path.join(HERE, "arena_ratings.json"), "w") as f:
    json.dump({"elo": elo, "bt": bt, "bt_coef_sum": sum((v - 1000) / 400 for v in bt.values())}, f, indent=1)
print(json.dumps({"elo": elo, "bt": bt}, indent=1))

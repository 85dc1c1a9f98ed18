#!/usr/bin/env bash
# Bradley-Terry with 1,000 bootstrap resamples on 100,000 battles among 20 models: `llmeval arena
# ratings` against FastChat's Python approach (pandas resampling + scikit-learn logistic
# regression per round, as its elo_analysis does), side by side.
#
#   pip install pandas scikit-learn && bash benches/arena.sh [ROUNDS_FOR_PYTHON]
#
# FastChat's side is timed on ROUNDS_FOR_PYTHON rounds (default 1000: the same work; a smaller
# number is scaled to 1,000 and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_ROUNDS=${1:-1000}
cargo build --release --quiet
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/battles.jsonl" <<'PY'
import json, random, sys
r = random.Random(100000)
models = [f"model-{i:02d}" for i in range(20)]
strength = {m: r.gauss(0, 0.5) for m in models}
with open(sys.argv[1], "w") as f:
    for _ in range(100000):
        a, b = r.sample(models, 2)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        u = r.random()
        w = "tie" if u < 0.1 else ("model_a" if r.random() < p else "model_b")
        f.write(json.dumps({"model_a": a, "model_b": b, "winner": w}) + "\n")
PY
t0=$(date +%s.%N)
target/release/llmeval arena ratings --battles "$WORK/battles.jsonl" --method bt --bootstrap 1000 --seed 1 --json > "$WORK/ours.json"
t1=$(date +%s.%N)
python3 - "$WORK/battles.jsonl" "$PY_ROUNDS" <<'PY' > "$WORK/ref.txt"
import sys, time
import pandas as pd
sys.path.insert(0, "tests/goldens")
from arena_reference import mle
df = pd.read_json(sys.argv[1], lines=True)
rounds = int(sys.argv[2])
t = time.perf_counter()
rows = [mle(df.sample(frac=1.0, replace=True)) for _ in range(rounds)]
b = pd.DataFrame(rows)
elapsed = time.perf_counter() - t
print(f"{elapsed * 1000 / rounds:.6f}")
PY
python3 - "$t0" "$t1" "$(cat "$WORK/ref.txt")" "$PY_ROUNDS" <<'PY'
import sys
t0, t1, per_round_ms, rounds = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ours = t1 - t0
ref = per_round_ms * 1000 / 1000
note = "" if rounds == 1000 else f" (measured on {rounds} rounds, scaled to 1,000)"
print(f"FastChat approach {ref:.1f} s{note}, llmeval {ours:.2f} s (whole process), speed-up {ref / ours:.0f}x")
PY

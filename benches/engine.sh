#!/usr/bin/env bash
# The built-in engine vs llama.cpp (llama-cpp-python) on this machine, same model, same threads:
# prefill tokens/s (512-token prompt), decode tokens/s (128 tokens), the same after a long prompt
# (LONG tokens, where attention dominates), and multiple-choice scoring (4 choices after ~100-token
# contexts) in items/s.
#
#   bash benches/engine.sh [THREADS] [LONG] [TYPE]   # defaults: 2 threads, 4096-token long prompt
#
# TYPE (Q4_0, Q5_0, Q5_1, Q8_0, F16, ...) runs on the default model requantized to it by llama.cpp.
# llama-cpp-python is built from source into target/llbench-venv the first time (several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
LONG=${2:-4096}
TYPE=${3:-}
bash scripts/fetch-model.sh
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release --quiet
VENV=target/llbench-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -n "$TYPE" ]; then
  "$VENV/bin/python" - "$MODEL" "$WORK/model.$TYPE.gguf" "$TYPE" 2>"$WORK/quantize.log" <<'PY' || { cat "$WORK/quantize.log" >&2; exit 1; }
import sys
sys.path.insert(0, "tests/goldens")
from llamacpp_reference import requantize
requantize(*sys.argv[1:])
PY
  MODEL=$WORK/model.$TYPE.gguf
fi
# Multiple-choice items: ~100-token contexts, 4 choices each.
python3 - "$WORK/mc.jsonl" <<'PY'
import json, random, sys
r = random.Random(4)
words = "the a of to and in is was for on that with as by at from this be are or an it not which have has had were but all they their one there been more when who will would can so if no out up about into than its then them some could only other time new these two may like".split()
with open(sys.argv[1], "w") as f:
    for i in range(40):
        ctx = " ".join(r.choice(words) for _ in range(95)).capitalize() + ". Question: which word comes next?\nAnswer:"
        f.write(json.dumps({"ctx": ctx, "choices": [" " + r.choice(words) + " " + r.choice(words) for _ in range(4)]}) + "\n")
PY
echo "== llama.cpp (llama-cpp-python 0.3.36, n_threads=$THREADS)"
"$VENV/bin/python" - "$MODEL" "$THREADS" "$WORK/mc.jsonl" "$LONG" <<'PY'
import json, sys, time
import numpy as np
from llama_cpp import Llama
model, threads, mc, long = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
text = b"The quick brown fox jumps over the lazy dog while the evaluation harness measures how fast a small language model reads and writes text. "
for n, runs in ((512, 3), (long, 1)):
    llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=n + 256, n_batch=512, logits_all=False, verbose=False)
    toks = (llm.tokenize(text, add_bos=False) * (n // 20 + 2))[:n]
    best_p = best_d = 0.0
    for _ in range(runs):
        llm.reset(); t = time.perf_counter(); llm.eval(toks); best_p = max(best_p, n / (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(128):
            llm.eval([1000 + i])  # the token fed does not change the cost of a step
        best_d = max(best_d, 128 / (time.perf_counter() - t))
    print(f"{n}-token prompt: prefill {best_p:.1f} tokens/s, decode {best_d:.1f} tokens/s")
    del llm
# Multiple choice the lm-eval way: one full forward per (context, choice), logits for the choice.
llm2 = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512, logits_all=True, verbose=False)
items = [json.loads(l) for l in open(mc)]
t = time.perf_counter()
for it in items:
    c = llm2.tokenize(it["ctx"].encode(), add_bos=False)
    for ch in it["choices"]:
        d = llm2.tokenize(ch.encode(), add_bos=False)
        llm2.reset(); llm2.eval(c + d[:-1])
print(f"multiple choice {len(items) / (time.perf_counter() - t):.2f} items/s")
PY
echo "== llmeval (threads=$THREADS)"
target/release/llmeval engine bench --model "$MODEL" --threads "$THREADS"
target/release/llmeval engine bench --model "$MODEL" --threads "$THREADS" --prompt-tokens "$LONG"
cat > "$WORK/mc.toml" <<EOF2
name = "mc-bench"
[[model]]
name = "smollm2"
engine = "builtin"
path = "$(realpath "$MODEL")"
threads = $THREADS
[[task]]
name = "mc"
kind = "multiple-choice"
data = "mc.jsonl"
prompt = "{{ ctx }}"
choices = "choices"
gold = "0"
target-delimiter = ""
EOF2
t0=$(date +%s.%N)
target/release/llmeval run "$WORK/mc.toml" --db "$WORK/mc.db" --no-cache --json > /dev/null
t1=$(date +%s.%N)
python3 -c "print(f'multiple choice {40 / ($t1 - $t0):.2f} items/s (whole llmeval run process)')"

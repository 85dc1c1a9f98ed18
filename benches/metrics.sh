#!/usr/bin/env bash
# `llmeval metrics` vs sacrebleu + rouge-score doing the same work, as whole processes, on a
# 12,000-line English corpus: BLEU (13a) + chrF + ROUGE-1/2/L with Porter stemming.
#
#   bash benches/metrics.sh            # needs: pip install sacrebleu==2.6.0 rouge-score==0.1.2
#
# Prints both wall times (best of 3) and the speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/llmeval
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK" <<'PY'
import random, sys, os
out = sys.argv[1]
rng = random.Random(12000)
words = open("tests/goldens/make_goldens.py").read().split('WORDS = """')[1].split('"""')[0].split()
def sent():
    return " ".join(rng.choice(words) for _ in range(rng.randint(8, 40))) + rng.choice([".", "!", "?", ""])
refs = [sent() for _ in range(12000)]
hyps = [" ".join(w if rng.random() > 0.3 else rng.choice(words) for w in r.split()) for r in refs]
open(os.path.join(out, "hyp.txt"), "w").write("\n".join(hyps) + "\n")
open(os.path.join(out, "ref.txt"), "w").write("\n".join(refs) + "\n")
PY
cat > "$WORK/ref.py" <<'PY'
import sys, sacrebleu
from rouge_score import rouge_scorer
hyp = open(sys.argv[1]).read().split("\n")[:-1]
ref = open(sys.argv[2]).read().split("\n")[:-1]
b = sacrebleu.corpus_bleu(hyp, [ref])
c = sacrebleu.corpus_chrf(hyp, [ref])
sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
f = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL")}
for h, r in zip(hyp, ref):
    s = sc.score(r, h)
    for k in f:
        f[k] += s[k].fmeasure
print(f"BLEU {b.score:.4f} chrF {c.score:.4f} " + " ".join(f"{k} {v / len(hyp):.6f}" for k, v in f.items()))
PY
ours() {
  $BIN metrics bleu --hyp "$WORK/hyp.txt" --ref "$WORK/ref.txt" --json
  $BIN metrics chrf --hyp "$WORK/hyp.txt" --ref "$WORK/ref.txt" --json
  $BIN metrics rouge --hyp "$WORK/hyp.txt" --ref "$WORK/ref.txt" --stem --types rouge1,rouge2,rougeL --json
}
best() { # best wall time of 3 runs of "$@", in seconds
  local b=999999
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N); "$@" > "$WORK/out.txt"; e=$(date +%s.%N)
    b=$(python3 -c "print(min($b, $e - $s))")
  done
  echo "$b"
}
t_ref=$(best python3 "$WORK/ref.py" "$WORK/hyp.txt" "$WORK/ref.txt"); cp "$WORK/out.txt" "$WORK/ref.out"
t_ours=$(best ours); cp "$WORK/out.txt" "$WORK/ours.out"
echo "reference (sacrebleu + rouge-score): $(cat "$WORK/ref.out")"
echo "llmeval:"; cat "$WORK/ours.out"
python3 -c "print(f'reference {float(\"$t_ref\"):.3f} s, llmeval {float(\"$t_ours\"):.3f} s, speed-up {float(\"$t_ref\") / float(\"$t_ours\"):.1f}x')"

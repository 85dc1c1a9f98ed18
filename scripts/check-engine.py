#!/usr/bin/env python3
"""Held-out check of the built-in engine against llama.cpp on the default model.

    python3 -m venv /tmp/llavx2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF" \
      /tmp/llavx2/bin/pip install llama-cpp-python==0.3.36 numpy
    cargo build --release && bash scripts/fetch-model.sh
    /tmp/llavx2/bin/python scripts/check-engine.py [--seeds 1,2] [--per-seed 40]

llama.cpp is built for AVX2 as the shared reference was (ggml's arithmetic differs between SIMD
families; see tests/goldens/make_llamacpp_goldens.py). Each seed writes fresh texts no test has
seen: paragraphs of Python's standard-library sources and docstrings (prose, code, numbers),
mixed with odd tokens (mixed Latin/digit runs, CJK, emoji, combining marks, odd spaces). For
each text it compares, through the `llmeval` CLI:

- tokenization (`engine tokenize`) with llama.cpp's (`special=True`, no BOS): identical ids;
- scoring (`engine score`): a context and a continuation of 1-6 words, each tokenized on its own,
  evaluated by llama.cpp in one batch: identical continuation tokens, and each token's
  log-probability within 1e-9 nats of llama.cpp's (the logits are the same bits; what is left is
  the f64 log-softmax's summation order), the same greedy flag;
- greedy generation (`engine generate`, 24 tokens): identical tokens, llama.cpp evaluating the
  prompt in one batch and then one token at a time.

A mismatch prints the seed, the case and what differs. Exits 1 on any.

Other weight types: `--model FILE` checks another GGUF file, and `--quantize TYPE` first has
llama.cpp requantize the default model (TYPE one of Q4_0, Q5_0, Q5_1, Q8_0, Q4_K_S, Q4_K_M,
Q5_K_M, Q6_K, F16, BF16, F32) into a temporary file. Only some types are exact (see the README);
`--tolerance 1` then reports the largest difference instead of failing on it.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile

from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "goldens"))
from llamacpp_reference import FTYPES, greedy, logprobs, paragraphs, requantize  # noqa: E402
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.path.join(ROOT, "target", "release", "llmeval")
ODD = ["ChatGLM-6B", "2-4", "v1.2.3", "3.14", "C++", "E=mc^2", "１２３", "GPT-4o", "10%", "don't", "naïve", "straße",
       "😀", "👍🏽", "e\u0301", "\u00a0", "\u3000", "\t", "—", "“quoted”", "Привет", "日本語", "한국어", "العربية", "<tag>",
       "&amp;", "@user", "http://x.org/a?b=c", "1,000", "-3", "0x1F", "   ", "\n\n", "<|im_start|>", "<|im_end|>"]


def stdlib_paragraphs():
    out = []
    for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        try:
            out += paragraphs(open(f, encoding="utf-8").read(), 1200)
        except (UnicodeDecodeError, OSError):
            continue
    return out


def llmeval(*args):
    out = subprocess.run([BIN, *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llmeval {args[:2]} failed: {out.stderr}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--per-seed", type=int, default=40)
    ap.add_argument("--model", default=MODEL, help="another GGUF file (the default model unless given)")
    ap.add_argument("--quantize", choices=sorted(FTYPES), help="check the default model requantized by llama.cpp to this type")
    ap.add_argument("--tolerance", type=float, default=1e-9, help="largest per-token log-probability difference (nats)")
    args = ap.parse_args()
    model = args.model
    if args.quantize:
        model = os.path.join(tempfile.mkdtemp(prefix="llmeval-requant-"), f"model.{args.quantize}.gguf")
        requantize(args.model, model, args.quantize, os.cpu_count())
    llm = Llama(model, n_ctx=2048, n_threads=os.cpu_count(), logits_all=True, verbose=False)
    tok = lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)  # noqa: E731
    pool = stdlib_paragraphs()
    checked = mismatches = 0
    worst = 0.0

    def fail(what):
        nonlocal mismatches
        mismatches += 1
        print(f"MISMATCH {what}")

    for seed in [int(s) for s in args.seeds.split(",")]:
        r = random.Random(seed)
        for case in range(args.per_seed):
            words = r.choice(pool).split(" ")
            for _ in range(r.choice([0, 0, 1, 3])):
                words.insert(r.randrange(len(words) + 1), r.choice(ODD))
            where = f"seed {seed} case {case}"
            text = " ".join(words)
            checked += 1
            ids = llmeval("engine", "tokenize", "--model", model, f"--text={text}")["ids"]
            if ids != tok(text):
                fail(f"tokens, {where}: {text!r}: llmeval {ids}, llama.cpp {tok(text)}")
                continue
            if len(words) >= 4:
                cut = r.randint(1, len(words) - 1)
                ctx, cont = " ".join(words[:cut]), " " + " ".join(words[cut:cut + r.randint(1, 6)])
                ci, ki = tok(ctx), tok(cont)
                if 0 < len(ci) and 0 < len(ki) and len(ci) + len(ki) <= 1024:
                    checked += 1
                    got = llmeval("engine", "score", "--model", model, "--device", "cpu", f"--context={ctx}", f"--continuation={cont}")
                    want, is_greedy = logprobs(llm, ci, ki)
                    if got["tokens"] != ki:
                        fail(f"score tokens, {where}: llmeval {got['tokens']}, llama.cpp {ki}")
                    else:
                        d = max(abs(a - b) for a, b in zip(got["token_logprobs"], want))
                        worst = max(worst, d)
                        if d > args.tolerance or got["is_greedy"] != is_greedy:
                            fail(f"score, {where}: context {ctx!r}, continuation {cont!r}: largest difference {d:.2e} nats, greedy {got['is_greedy']} vs {is_greedy}")
            if case % 4 == 0:
                prompt = " ".join(words[: r.randint(2, min(40, len(words)))])
                pi = tok(prompt)
                if 0 < len(pi) <= 1024:
                    checked += 1
                    got = llmeval("engine", "generate", "--model", model, "--device", "cpu", f"--prompt={prompt}", "--max-tokens", "24")["tokens"]
                    want = greedy(llm, pi, 24)
                    if got != want:
                        fail(f"generate, {where}: prompt {prompt!r}: llmeval {got}, llama.cpp {want}")
    print(f"{checked} comparisons, {mismatches} mismatches; largest per-token log-probability difference {worst:.2e} nats")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()

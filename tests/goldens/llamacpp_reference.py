"""llama.cpp's side of the engine comparisons, shared by make_llamacpp_goldens.py,
make_requant_goldens.py, scripts/check-engine.py and benches/engine.sh: how the references score,
generate and requantize with llama-cpp-python, and how texts are cut into paragraphs."""
import ctypes
import re

import numpy as np

# llama.cpp's `llama_ftype` numbers of the types llmeval reads
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def requantize(src, dst, name, threads=1):
    """`src` requantized by llama.cpp (`llama_model_quantize`, no importance matrix) to `name`."""
    import llama_cpp
    if name not in FTYPES:
        raise SystemExit(f"unknown type {name}; one of {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = FTYPES[name], True, threads
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not requantize {src} to {name}")


def paragraphs(text, longest):
    """The blank-line-separated paragraphs of `text` of 41 to `longest - 1` characters, stripped of
    newlines at their ends."""
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if 40 < len(p.strip()) < longest]


def logprobs(llm, ctx_ids, cont_ids):
    """Per-token log-probabilities of `cont_ids` after `ctx_ids` (one batch, as lm-eval's
    llama.cpp callers evaluate context and continuation), float64 log-softmax of llama.cpp's
    float32 logits, and whether every continuation token is the argmax."""
    ids = ctx_ids + cont_ids
    llm.reset()
    llm.eval(ids)
    sc = np.array(llm.scores[: len(ids)], dtype=np.float64)
    out, greedy = [], True
    for j, t in enumerate(cont_ids):
        row = sc[len(ctx_ids) + j - 1]
        m = row.max()
        out.append(float(row[t] - m - np.log(np.exp(row - m).sum())))
        greedy &= int(row.argmax()) == t
    return out, greedy


def greedy(llm, prompt_ids, n):
    """Up to `n` argmax tokens after `prompt_ids` (the prompt in one batch, then one token at a
    time), stopping at EOS."""
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t == llm.token_eos():
            break
        out.append(t)
        llm.eval([t])
    return out

"""llama.cpp's side of the engine comparisons, shared by make_llamacpp_goldens.py and
scripts/check-engine.py: how the references score and generate with llama-cpp-python."""
import numpy as np


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

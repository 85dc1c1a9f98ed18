"""The PyTorch side of benches/gpu-check.sh (run on the GPU machine, no network).

    python3 benches/gpu_check.py write-model DIR      # a ~1.1B-parameter LLaMA with random bf16 weights
    python3 benches/gpu_check.py baseline DIR JSON    # transformers bf16 on the GPU: the same figures as gpu_check
    python3 benches/gpu_check.py selftest DIR         # here, on the CPU (cargo build --release first)

`selftest` runs this script's two parts on a small model of the same kind (2 layers, dim 256) on
the CPU, so that a change in transformers' API shows before a GPU session is spent on it, and
compares llmeval's CPU log-probabilities on that model with transformers' in float32 (≤ 1e-4 nats
per token, on the whole continuation): the safetensors (bf16), config.json and tokenizer.json that the GPU check loads,
checked against the reference implementation.

The model has TinyLlama-1.1B's shape (dim 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632,
vocabulary 32000, untied LM head) and a word-level tokenizer.json ("t0" … "t31999"); the checks
feed token ids, so the tokenizer only has to load. The multiple-choice requests are built by the
same formula as `mc_requests` in benches/gpu_check.rs.
"""
import json
import os
import sys
import time

VOCAB = 32000
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
    "_name_or_path": "llmeval-random-1.1b",
}


def synth(a, b):
    return (a * 7919 + b * 104729 + 13) % (VOCAB - 256) + 256


def mc_requests(groups):
    out = []
    for g in range(groups):
        ctx = [synth(g, i) for i in range(192)]
        for c in range(4):
            n = 1 + (c * 3 + g) % 8
            out.append((ctx, [synth(100000 + g * 4 + c, j) for j in range(n)]))
    return out


# the selftest's model: the same kind, small enough for a CPU
SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32, "_name_or_path": "llmeval-random-small"}


def write_model(d, small=False):
    import torch
    from safetensors.torch import save_file

    os.makedirs(d, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(1234)
    c = {**CONFIG, **SMALL} if small else CONFIG
    dim, ffn, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * std).to(torch.bfloat16).cpu()

    t = {"model.embed_tokens.weight": rnd(VOCAB, dim, std=1.0), "lm_head.weight": rnd(VOCAB, dim), "model.norm.weight": torch.ones(dim, dtype=torch.bfloat16)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
        t[p + "self_attn.q_proj.weight"] = rnd(q, dim)
        t[p + "self_attn.k_proj.weight"] = rnd(kv, dim)
        t[p + "self_attn.v_proj.weight"] = rnd(kv, dim)
        t[p + "self_attn.o_proj.weight"] = rnd(dim, q)
        t[p + "mlp.gate_proj.weight"] = rnd(ffn, dim)
        t[p + "mlp.up_proj.weight"] = rnd(ffn, dim)
        t[p + "mlp.down_proj.weight"] = rnd(dim, ffn)
    save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    vocab["t0"] = 0
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "t1", "eos_token": "t2", "add_bos_token": False}, f)
    n = sum(v.numel() for v in t.values())
    print(f"wrote {d}: {n / 1e9:.3f}B parameters, bf16, random weights")


def load(d, dtype, dev):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=dtype)
    return model.to(dev).eval()


def baseline(d, out, dev="cuda"):
    """transformers' figures on `dev`; on the CPU (the selftest) with small sizes, for the code
    paths only."""
    import torch

    model = load(d, torch.bfloat16, dev)
    cpu = dev == "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    plen, new_tokens, groups, copy_floats = (32, 4, 4, 1 << 20) if cpu else (512, 128, 512, 1 << 30)
    prompt = torch.tensor([[synth(42, i) for i in range(plen)]], device=dev)
    res = {"device": "cpu" if cpu else torch.cuda.get_device_name(0), "torch": torch.__version__}
    import transformers

    res["transformers"] = transformers.__version__
    with torch.inference_mode():
        # the card's achievable memory bandwidth: a 4 GiB device-to-device copy (bytes read + written)
        src = torch.empty(copy_floats, dtype=torch.float32, device=dev).uniform_()
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        sync()
        t = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        sync()
        res["copy_bandwidth_tb_s"] = 10 * 2 * src.numel() * 4 / (time.perf_counter() - t) / 1e12
        del src, dst
        for _ in range(2):
            model(prompt)
        sync()
        reps = 5
        t = time.perf_counter()
        for _ in range(reps):
            model(prompt)
        sync()
        res["prefill_tokens_per_s"] = plen * reps / (time.perf_counter() - t)
        for batch in (1, 32):
            ids = prompt.expand(batch, -1).contiguous()
            kw = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
            sync()
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            sync()
            first = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
            sync()
            total = time.perf_counter() - t
            res[f"decode_b{batch}_tokens_per_s"] = batch * (new_tokens - 1) / max(total - first, 1e-9)
        # log-likelihood: padded batches of 32 requests, sorted by length, logits only where needed
        reqs = mc_requests(groups)
        order = sorted(range(len(reqs)), key=lambda i: len(reqs[i][0]) + len(reqs[i][1]))
        lps = [None] * len(reqs)

        def run(idx):
            seqs = [reqs[i][0] + reqs[i][1] for i in idx]
            n = max(len(s) for s in seqs) - 1
            x = torch.zeros(len(seqs), n, dtype=torch.long)
            mask = torch.zeros(len(seqs), n, dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, : len(s) - 1] = torch.tensor(s[:-1])
                mask[r, : len(s) - 1] = 1
            hidden = model.model(input_ids=x.to(dev), attention_mask=mask.to(dev)).last_hidden_state
            for r, i in enumerate(idx):
                ctx, cont = reqs[i]
                first = len(ctx) - 1
                logits = model.lm_head(hidden[r, first : first + len(cont)]).float()
                lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=dev)[:, None])
                lps[i] = lp.squeeze(1).tolist()

        run(order[:32])
        sync()
        t = time.perf_counter()
        for b in range(0, len(order), 32):
            run(order[b : b + 32])
        sync()
        secs = time.perf_counter() - t
        tokens = sum(len(c) + len(k) for c, k in reqs)
        res["loglik_requests_per_s"] = len(reqs) / secs
        res["loglik_tokens_per_s"] = tokens / secs
        res["loglik_first_requests"] = lps[:16]
    with open(out, "w") as f:
        json.dump(res, f)
    print(f"{res['device']}: device-to-device copy {res['copy_bandwidth_tb_s']:.2f} TB/s (read + written)")
    print(f"transformers {res['transformers']} (torch {res['torch']}, bf16, {res['device']}): prefill {res['prefill_tokens_per_s']:.0f} tokens/s; "
          f"decode batch 1 {res['decode_b1_tokens_per_s']:.1f}, batch 32 {res['decode_b32_tokens_per_s']:.1f} tokens/s; "
          f"log-likelihood {res['loglik_requests_per_s']:.0f} requests/s, {res['loglik_tokens_per_s']:.0f} tokens/s")


def selftest(d):
    """The small model through both parts on the CPU, then llmeval's CPU log-probabilities against
    transformers' float32 ones on a few of the check's multiple-choice requests."""
    import subprocess
    import torch

    write_model(d, small=True)
    baseline(d, os.path.join(d, "baseline.json"), dev="cpu")
    model = load(d, torch.float32, "cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    worst = 0.0
    for ctx, cont in mc_requests(3):
        with torch.inference_mode():
            logits = model(torch.tensor([ctx + cont[:-1]])).logits[0].float()
        want = torch.log_softmax(logits, -1)[len(ctx) - 1 :].gather(1, torch.tensor(cont)[:, None]).squeeze(1).tolist()
        text = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731 (the word-level tokenizer's words)
        out = subprocess.run([os.path.join(root, "target", "release", "llmeval"), "engine", "score", "--model", d, "--device", "cpu",
                              "--context", text(ctx), "--continuation", " " + text(cont), "--json"], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"selftest: llmeval engine score failed: {out.stderr}")
        got = json.loads(out.stdout)
        if got["tokens"] != cont:
            sys.exit(f"selftest: llmeval's continuation tokens {got['tokens']} are not the request's {cont}")
        worst = max(worst, abs(got["logprob"] - sum(want)) / len(cont))
    print(f"selftest: llmeval (CPU) vs transformers (float32) on the small model: largest difference {worst:.2e} nats per token")
    if worst > 1e-4:
        sys.exit("selftest: FAILED (more than 1e-4 nats per token)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "write-model":
        write_model(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "baseline":
        baseline(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "selftest":
        selftest(sys.argv[2])
    else:
        sys.exit(__doc__)

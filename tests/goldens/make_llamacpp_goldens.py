"""More llama.cpp results for the default model, beyond ../shared/reference: `llamacpp_extra.json`.

The shared reference was made by llama-cpp-python 0.3.36 built for AVX2 (no AVX-512). ggml's
results depend on the SIMD family it was built for (its f16 dot products and exp differ between
AVX2 and AVX-512), and this 8-bit model is chaotic enough that those last-bit differences move
log-probabilities by tenths of a nat, so build the same way to reproduce it:

    python3 -m venv /tmp/llavx2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF" \
      /tmp/llavx2/bin/pip install llama-cpp-python==0.3.36 numpy
    /tmp/llavx2/bin/python tests/goldens/make_llamacpp_goldens.py

That build reproduces every figure of ../shared/reference exactly. Inputs: paragraphs of this
repository's own prose and data (seeded sample), cut at a random word: the first part is the
context, the next 1-4 words the continuation; generation prompts are 4-40 word openings, greedy, 24
tokens, stopping at EOS. Scoring evaluates context + continuation in one batch, generation evaluates
the prompt in one batch and then one token at a time, as llama-cpp-python's callers do.
"""
import glob, json, os, random, sys

from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_reference import greedy, logprobs, paragraphs  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp_extra.json")

llm = Llama(MODEL, n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
rng = random.Random(11)
sources = sorted(glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "suites", "data", "*"))
                 + glob.glob(os.path.join(ROOT, "judges", "*")) + glob.glob(os.path.join(ROOT, "tests", "goldens", "corpus", "*")))
texts = []
for f in sources:
    try:
        t = open(f, encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError):
        continue
    texts += [p.strip() for p in paragraphs(t, 1500)]
rng.shuffle(texts)


score = []
for para in texts[:-30]:
    words = para.split(" ")
    if len(words) < 6 or len(score) >= 100:
        continue
    cut = rng.randint(3, len(words) - 2)
    ctx, cont = " ".join(words[:cut]), " " + " ".join(words[cut:cut + rng.randint(1, 4)])
    ci = llm.tokenize(ctx.encode(), add_bos=False, special=True)
    ki = llm.tokenize(cont.encode(), add_bos=False, special=True)
    if len(ci) + len(ki) > 400:
        continue
    lps, is_greedy = logprobs(llm, ci, ki)
    score.append(dict(context=ctx, continuation=cont, context_ids=ci, continuation_ids=ki,
                      token_logprobs=lps, logprob=sum(lps), is_greedy=is_greedy))

generate = []
for para in texts[-30:]:
    prompt = " ".join(para.split(" ")[: rng.randint(4, 40)])
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    generate.append(dict(prompt=prompt, chat=False, prompt_ids=ids, tokens=greedy(llm, ids, 24)))

json.dump(dict(llama_cpp_python="0.3.36 (AVX2 build)", score=score, generate=generate), open(OUT, "w"), ensure_ascii=False)
print(f"{len(score)} scoring items, {len(generate)} generations -> {OUT}", file=sys.stderr)

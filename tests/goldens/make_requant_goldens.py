"""llama.cpp's results for the default model requantized to Q4_0, Q5_0 and Q5_1: `llamacpp_requant.json`.

llama.cpp (`llama_model_quantize`, no importance matrix) dequantizes each Q4_1 layer matrix to f32
and quantizes it again with ggml's reference quantizer; the Q8_0 embedding stays. The test
(`tests/engine_ref.rs`) does the same in memory with its own copy of that quantizer, so no model
file but the default one is needed, and compares llmeval's scores and greedy tokens on the result
with these. Cases: the first 16 scoring cases and 6 generation prompts of `llamacpp_extra.json`.
Build llama-cpp-python as `make_llamacpp_goldens.py` says (AVX2), then:

    /tmp/llavx2/bin/python tests/goldens/make_requant_goldens.py
"""
import json, os, sys, tempfile

import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp_reference import greedy, logprobs, requantize  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TYPES = ["Q4_0", "Q5_0", "Q5_1"]


def main():
    extra = json.load(open(os.path.join(HERE, "llamacpp_extra.json")))
    out = {"llama_cpp_python": llama_cpp.__version__}
    for name in TYPES:
        path = os.path.join(tempfile.mkdtemp(), f"model.{name}.gguf")
        requantize(MODEL, path, name)
        llm = Llama(path, n_ctx=2048, n_threads=os.cpu_count(), logits_all=True, verbose=False)
        score = []
        for c in extra["score"][:16]:
            lp, is_greedy = logprobs(llm, c["context_ids"], c["continuation_ids"])
            score.append({"context_ids": c["context_ids"], "continuation_ids": c["continuation_ids"], "token_logprobs": lp, "is_greedy": is_greedy})
        gen = [{"prompt_ids": g["prompt_ids"], "tokens": greedy(llm, g["prompt_ids"], 24)} for g in extra["generate"][:6]]
        out[name] = {"score": score, "generate": gen}
        del llm
    with open(os.path.join(HERE, "llamacpp_requant.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

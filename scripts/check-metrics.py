#!/usr/bin/env python3
"""Held-out check of `llmeval metrics` against the reference packages.

    pip install sacrebleu==2.6.0 rouge-score==0.1.2 nltk==3.10.4 jieba==0.42.1 rouge_chinese==1.0.3
    cargo build --release
    python3 scripts/check-metrics.py [--seeds 1,2,3] [--n 400]

Each seed writes fresh corpora no test has seen: English lines from Python's standard library
sources with odd tokens mixed in (mixed Latin/digit runs, Unicode punctuation and scripts,
combining marks, emoji, odd spaces), Chinese from jieba's dictionary with the same, random
characters from many Unicode blocks (control characters and newlines included, so samples travel
as JSON lines), and hypotheses made by dropping, replacing and upper-casing their parts. Then it
compares every BLEU tokenizer with and without lower-casing (and every smoothing method on single
segments, where orders without a match are common), chrF/chrF+/chrF++ (also lower-cased),
ROUGE with and without stemming (one and two references), and the ChatGLM evaluation, at 1e-9
relative. A mismatch prints the first sample that differs. Exits 1 on any mismatch.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile

import jieba
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "goldens"))
from chatglm_reference import chatglm_scores  # noqa: E402
BIN = os.path.join(ROOT, "target", "release", "llmeval")
ODD = ["ChatGLM-6B", "2-4", "PipeDream-2BW", "v1.2.3", "3.14", "x_y", "C++", "E=mc^2", "a@b.com", "１２３", "ＡＢＣ",
       "GPT-4o", "10%", "$5", "U.S.A.", "don't", "naïve", "Ünïcödé", "straße", "İstanbul", "ǅ", "ﬁ", "½", "²", "٣", "Ⅻ",
       "😀", "👍🏽", "e\u0301", "\u200b", "\u00a0", "\u3000", "\t", "—", "–", "“quoted”", "«fr»", "…", "¿Qué?", "Привет",
       "Ελλάδα", "עברית", "العربية", "हिन्दी", "ไทย", "日本語", "カタカナ", "한국어", "--", "[x]", "{y}", "<tag>", "&amp;",
       "@user", "http://x.org/a?b=c", "1,000", "1.000,5", "-3", "+7", "0x1F", "3rd", "THE", "running", "generously",
       "caresses", "ponies", "happiness", "relational", "hopping", "skies", "dying"]
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
          (0xE00, 0xE7F), (0x2000, 0x206F), (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2190, 0x22FF), (0x3000, 0x303F),
          (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAC80), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1D400, 0x1D4FF),
          (0x9, 0xD)]


def corpora(seed, n):
    """(English hypotheses, two English reference sets, Chinese hypotheses, Chinese references)."""
    rng = random.Random(seed)
    lines = []
    for f in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:150]:
        with open(f, encoding="utf-8", errors="replace") as fh:
            lines += [l.strip() for l in fh if len(l.strip()) > 20]
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as fh:
        zh_words = [l.split(" ")[0] for l in fh.read().split("\n")[::50] if l]
    en_words = [w for t in lines[:2000] for w in t.split(" ")] + ODD

    def english():
        ws = rng.choice(lines).split(" ")
        for _ in range(rng.randint(0, 4)):
            ws.insert(rng.randint(0, len(ws)), rng.choice(ODD))
        return " ".join(ws) if rng.random() < 0.8 else "".join(ws)

    def chinese():
        parts = []
        for _ in range(rng.randint(3, 25)):
            r = rng.random()
            parts.append(rng.choice(zh_words) if r < 0.75 else rng.choice("，。！？、；：“”（）《》") if r < 0.85
                         else rng.choice(ODD[:30]) + (" " if rng.random() < 0.3 else ""))
        return "".join(parts)

    def mutate(s, words):
        chars = rng.random() < 0.3
        out = []
        for w in (list(s) if chars else s.split(" ")):
            r = rng.random()
            if r >= 0.15:
                out.append(rng.choice(words) if r < 0.3 else w.upper() if r < 0.35 else w)
        return ("" if chars else " ").join(out)

    def noise(rows):
        out = []
        for s in rows:
            cs = list(s)
            if rng.random() < 0.5:
                for _ in range(rng.randint(1, 6)):
                    a, b = rng.choice(BLOCKS)
                    cs.insert(rng.randint(0, len(cs)), chr(rng.randint(a, b)))
            out.append("".join(cs))
        return out

    refs = [english() for _ in range(n)]
    hyps = [mutate(r, en_words) for r in refs]
    hyps[0], refs[1], hyps[2], hyps[3], refs[4] = "", "", refs[2], "   ", "\t"  # empty, blank, identical
    ref2 = [mutate(r, en_words) for r in refs]
    zr = [chinese() for _ in range(n)]
    zh = [mutate(r, zh_words + ODD) for r in zr]
    zh[0], zh[5] = "", zr[5]
    return noise(hyps), [noise(refs), noise(ref2)], noise(zh), noise(zr)


class Checker:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="llmeval-check-")
        self.bad = 0
        self.checked = 0

    def ours(self, metric, hyp, refs, *extra):
        def write(name, rows):
            path = os.path.join(self.dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            return path
        args = [BIN, "metrics", metric, "--jsonl", "--json", "--hyp", write("hyp", hyp)]
        for i, r in enumerate(refs):
            args += ["--ref", write(f"ref{i}", r)]
        p = subprocess.run(args + list(extra), capture_output=True, text=True)
        return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr.strip()}

    def compare(self, what, metric, hyp, refs, extra, reference, keys):
        """`reference(hyp, refs)` gives the wanted values; `keys(values)` the numbers to compare."""
        self.checked += 1
        close = lambda a, b: a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
        same = lambda got, want: "error" not in got and all(close(a, b) for a, b in zip(keys(got), keys(want)))
        if same(self.ours(metric, hyp, refs, *extra), reference(hyp, refs)):
            return
        self.bad += 1
        for i in range(len(hyp)):
            h, r = hyp[i:i + 1], [x[i:i + 1] for x in refs]
            got, want = self.ours(metric, h, r, *extra), reference(h, r)
            if not same(got, want):
                print(f"MISMATCH {what}: sample {i} hyp={h[0]!r} refs={[x[0] for x in r]!r}\n  llmeval   {got}\n  reference {want}")
                return
        print(f"MISMATCH {what} on the corpus, though every sample alone agrees")


def bleu_ref(tok, lc, smooth_method="exp", smooth_value=None):
    def f(hyp, refs):
        s = BLEU(tokenize=tok, lowercase=lc, smooth_method=smooth_method, smooth_value=smooth_value).corpus_score(hyp, refs)
        return {"score": s.score, "bp": s.bp, "sys_len": s.sys_len, "ref_len": s.ref_len, "precisions": s.precisions}
    return f


def rouge_ref(stem):
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)

    def f(hyp, refs):
        acc = {t: {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0} for t in types}
        for i, h in enumerate(hyp):
            s = scorer.score_multi([r[i] for r in refs], h) if len(refs) > 1 else scorer.score(refs[0][i], h)
            for t in types:
                for k in acc[t]:
                    acc[t][k] += getattr(s[t], k)
        return {t: {k: v / len(hyp) for k, v in d.items()} for t, d in acc.items()}
    return f


def chatglm_ref(hyp, refs):
    return {k: sum(v) / len(v) for k, v in chatglm_scores(hyp, refs[0]).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit(f"{BIN} is missing: run `cargo build --release` first")
    c = Checker()
    bleu_keys = lambda v: [v["score"], v["bp"], v["sys_len"], v["ref_len"], *v["precisions"]]
    rouge_keys = lambda v: [v[t][k] for t in sorted(v) for k in ("precision", "recall", "fmeasure")]
    for seed in (int(s) for s in a.seeds.split(",")):
        en, en_refs, zh, zh_refs = corpora(seed, a.n)
        for name, hyp, refs in (("en", en, en_refs[:1]), ("en 2 refs", en, en_refs), ("zh", zh, [zh_refs])):
            for tok in ("13a", "intl", "zh", "char", "none"):
                for lc in (False, True):
                    c.compare(f"seed {seed} {name} bleu tok={tok} lc={lc}", "bleu", hyp, refs, ["--tokenize", tok] + ["--lowercase"] * lc, bleu_ref(tok, lc), bleu_keys)
            for wo in (0, 1, 2):
                for lc in (False, True):
                    ref = lambda h, r, wo=wo, lc=lc: {"score": CHRF(word_order=wo, lowercase=lc).corpus_score(h, r).score}
                    c.compare(f"seed {seed} {name} chrf wo={wo} lc={lc}", "chrf", hyp, refs, ["--word-order", str(wo)] + ["--lowercase"] * lc, ref, lambda v: [v["score"]])
            for stem in (False, True):
                c.compare(f"seed {seed} {name} rouge stem={stem}", "rouge", hyp, refs, ["--stem"] * stem, rouge_ref(stem), rouge_keys)
            # smoothing matters where an order has no match: single segments as corpora
            for method, value in (("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 0.5), ("none", None)):
                extra = ["--smooth-method", method] + ([f"--smooth-value={value}"] if value is not None else [])
                ref = lambda h, r, m=method, v=value: bleu_ref("13a", False, m, v)(h, r)
                for i in range(20):
                    c.compare(f"seed {seed} {name} bleu smooth={method}[{value}] segment {i}", "bleu", hyp[i:i + 1], [x[i:i + 1] for x in refs], extra, ref, bleu_keys)
        for name, hyp, refs in (("zh", zh, [zh_refs]), ("en", en, en_refs[:1])):
            c.compare(f"seed {seed} {name} chatglm", "chatglm", hyp, refs, [], chatglm_ref, lambda v: [v[k] for k in sorted(v)])
    print(f"{c.checked} comparisons on {a.n} samples per corpus, seeds {a.seeds}: {c.bad} mismatch(es)")
    sys.exit(1 if c.bad else 0)


if __name__ == "__main__":
    main()

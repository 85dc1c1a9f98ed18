#!/usr/bin/env python3
"""Writes the metric test corpora and the reference packages' scores on them.

    pip install sacrebleu==2.6.0 rouge-score==0.1.2 nltk==3.10.4 jieba==0.42.1 rouge_chinese==1.0.3
    python3 tests/goldens/make_goldens.py

Corpora are generated from a fixed seed; outputs go to tests/goldens/ (corpus/*.txt|jsonl and
goldens.json). The Rust tests read them; Python is needed only to regenerate.
"""
import json
import os
import random

import jieba
import sacrebleu
from rouge_score import rouge_scorer

from chatglm_reference import chatglm_scores

jieba.setLogLevel(60)
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
os.makedirs(CORPUS, exist_ok=True)
rng = random.Random(20261127)

WORDS = """the a an of to in and is was were be been being have has had do does did say said
make made go went gone take took taken come came see saw seen know knew get got give gave find
think thought tell told become became show showed leave left feel felt put bring brought begin
began keep kept hold held write wrote stand stood hear heard let mean meant set meet met run ran
running runs pay paid sit sat speak spoke lie lay lead led read grow grew lose lost fall fell send
sent build built understand draw break spend cut rise drive buy wear choose model models modeling
modelled evaluation evaluations evaluate evaluated evaluating generalization generalize
generalizes relational conditional rational operational happiness happily happy studies studied
studying agreed agreement feed needed sky skies dying lying tying cats ponies caresses caress
ties hopping hopped filing failing controlling rolling digitizer conformabli radically
differently vietnamization predication operator feudalism decisiveness hopefulness callousness
formality sensitivity sensibility triplicate formative formalize electriciti electrical hopeful
goodness revival allowance inference airliner gyroscopic adjustable defensible irritant
replacement adjustment dependent adoption homologou communism activate angulariti homologous
effective bowdlerize probate rate cease controll roll generously language transformer attention
benchmark accuracy score scores dataset datasets token tokens tokenizer training trained
inference latency throughput GPU GPUs CPU""".split()
PUNCT = [",", ".", "!", "?", ";", ":", "(", ")", "\"", "'s", "-", "--", "...", "&amp;", "&quot;", "<skipped>", "%", "$", "/", "#"]
NUMBERS = ["3.5", "1,000", "2-4", "2024", "10%", "0.75", "42", "-7", "1.5B", "7B"]


def en_sentence(min_len=3, max_len=25):
    n = rng.randint(min_len, max_len)
    toks = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            toks.append(rng.choice(PUNCT))
        elif r < 0.17:
            toks.append(rng.choice(NUMBERS))
        else:
            w = rng.choice(WORDS)
            if rng.random() < 0.1:
                w = w.capitalize()
            toks.append(w)
    s = " ".join(toks)
    if rng.random() < 0.3:
        s = s.replace(" ,", ",").replace(" .", ".")
    return s + rng.choice([".", "", "!", " ?"])


def perturb_words(s, p=0.25):
    toks = s.split(" ")
    out = []
    for t in toks:
        r = rng.random()
        if r < p / 3:
            continue
        if r < 2 * p / 3:
            out.append(rng.choice(WORDS))
        elif r < p:
            out.extend([t, rng.choice(WORDS)])
        else:
            out.append(t)
    return " ".join(out)


# English: 400 segments, 3 references; some empty lines, long lines, odd whitespace.
en_refs = [[en_sentence() for _ in range(400)] for _ in range(3)]
en_hyp = [perturb_words(r) for r in en_refs[0]]
for i in (5, 77, 300):
    en_hyp[i] = ""
en_refs[1][10] = ""
en_hyp[20] = " ".join(en_sentence(30, 40) for _ in range(30))  # a very long line
en_refs[0][20] = " ".join(en_sentence(30, 40) for _ in range(25))
en_hyp[30] = "  leading\tand trailing\u00a0 spaces  "
en_hyp[31] = "UPPER lower MiXeD Case ÉTÉ Straße ΣΟΦΟΣ"
en_refs[0][31] = "upper lower mixed case été strasse σοφος"

# Chinese: jieba dictionary words, punctuation and mixed Latin/digits.
zh_words = []
with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as f:
    for line in f:
        w, freq = line.split()[:2]
        if int(freq) > 2000 and all("\u4e00" <= c <= "\u9fa5" for c in w):
            zh_words.append(w)
MIXED = ["ChatGLM-6B", "ChatGLM2-6B", "2-4", "PipeDream-2BW", "GPT-4", "3.5%", "LLaMA", "P-Tuning v2", "100", "A100", "fp16", "INT4", "8-bit"]
ZH_PUNCT = ["，", "。", "！", "？", "、", "；", "：", "（", "）", "“", "”", "《", "》", " "]


def zh_sentence():
    n = rng.randint(3, 20)
    out = []
    for _ in range(n):
        r = rng.random()
        out.append(rng.choice(ZH_PUNCT) if r < 0.15 else rng.choice(MIXED) if r < 0.25 else rng.choice(zh_words))
    return "".join(out) + "。"


def perturb_zh(s):
    chars = list(s)
    out = []
    for c in chars:
        r = rng.random()
        if r < 0.08:
            continue
        if r < 0.14:
            out.append(rng.choice(rng.choice(zh_words)))
        else:
            out.append(c)
    return "".join(out)


zh_refs = [[zh_sentence() for _ in range(200)] for _ in range(2)]
zh_hyp = [perturb_zh(r) for r in zh_refs[0]]
zh_hyp[3] = ""
zh_hyp[4] = "，。"
zh_hyp[5] = zh_refs[0][5]


def write_lines(name, lines):
    with open(os.path.join(CORPUS, name), "w", encoding="utf-8", newline="") as f:
        for l in lines:
            f.write(l + "\n")


write_lines("en.hyp", en_hyp)
for k in range(3):
    write_lines(f"en.ref{k}", en_refs[k])
write_lines("zh.hyp", zh_hyp)
for k in range(2):
    write_lines(f"zh.ref{k}", zh_refs[k])
# The same English hypotheses with CRLF line ends.
with open(os.path.join(CORPUS, "en-crlf.hyp"), "w", encoding="utf-8", newline="") as f:
    for l in en_hyp:
        f.write(l + "\r\n")

# Multi-sentence summaries (for rougeLsum) as JSONL strings.
sum_hyp = ["\n".join(en_sentence(4, 15) for _ in range(rng.randint(1, 4))) for _ in range(150)]
sum_ref = ["\n".join(perturb_words(s) for s in h.split("\n")) if rng.random() < 0.8 else "\n".join(en_sentence() for _ in range(3)) for h in sum_hyp]
sum_hyp[7] = ""
for name, lines in (("sum.hyp.jsonl", sum_hyp), ("sum.ref.jsonl", sum_ref)):
    with open(os.path.join(CORPUS, name), "w", encoding="utf-8") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")

goldens = {"bleu": [], "chrf": [], "rouge": [], "chatglm": [], "sentence_bleu": [], "bleu_smooth": []}

# BLEU: every tokenizer, lowercase on/off, 1 and 3 references (English) and 1–2 (Chinese).
for corpus, hyp, refs in (("en", en_hyp, en_refs), ("zh", zh_hyp, zh_refs)):
    for nref in sorted({1, len(refs)}):
        for tok in ("13a", "intl", "zh", "char", "none"):
            for lc in (False, True):
                b = sacrebleu.corpus_bleu(hyp, refs[:nref], tokenize=tok, lowercase=lc)
                goldens["bleu"].append({"corpus": corpus, "refs": nref, "tokenize": tok, "lowercase": lc,
                                        "score": b.score, "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len,
                                        "precisions": b.precisions})
        for wo in (0, 2):
            for lc in (False, True):
                c = sacrebleu.metrics.CHRF(word_order=wo, lowercase=lc).corpus_score(hyp, refs[:nref])
                goldens["chrf"].append({"corpus": corpus, "refs": nref, "word_order": wo, "lowercase": lc, "score": c.score})
    # Sentence BLEU (effective order) for every segment, 13a and the first reference set.
    goldens["sentence_bleu"].append({"corpus": corpus, "tokenize": "13a" if corpus == "en" else "zh",
                                     "scores": [sacrebleu.sentence_bleu(h, [r], tokenize="13a" if corpus == "en" else "zh").score
                                                for h, r in zip(hyp, refs[0])]})

# Corpus BLEU of each of the first 60 segments alone (where orders without a match are common), for
# every smoothing method, default and other values.
for corpus, hyp, refs in (("en", en_hyp, en_refs), ("zh", zh_hyp, zh_refs)):
    for method, value in (("exp", None), ("floor", None), ("floor", 0.3), ("add-k", None), ("add-k", 0.5), ("none", None)):
        tok = "13a" if corpus == "en" else "zh"
        bleu = sacrebleu.metrics.BLEU(smooth_method=method, smooth_value=value, tokenize=tok)
        goldens["bleu_smooth"].append({"corpus": corpus, "tokenize": tok, "smooth_method": method, "smooth_value": value, "signature": None,
                                       "scores": [bleu.corpus_score([h], [[r]]).score for h, r in zip(hyp[:60], refs[0][:60])]})
        goldens["bleu_smooth"][-1]["signature"] = bleu.get_signature().format()

# ROUGE: mean precision/recall/F over samples, with and without stemming.
types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
for corpus, hyp, ref in (("en", en_hyp, en_refs[0]), ("sum", sum_hyp, sum_ref)):
    for stem in (False, True):
        sc = rouge_scorer.RougeScorer(types, use_stemmer=stem)
        acc = {t: [0.0, 0.0, 0.0] for t in types}
        per = []
        for h, r in zip(hyp, ref):
            s = sc.score(r, h)
            per.append({t: s[t].fmeasure for t in types})
            for t in types:
                acc[t][0] += s[t].precision
                acc[t][1] += s[t].recall
                acc[t][2] += s[t].fmeasure
        n = len(hyp)
        goldens["rouge"].append({"corpus": corpus, "stem": stem,
                                 "mean": {t: {"precision": v[0] / n, "recall": v[1] / n, "fmeasure": v[2] / n} for t, v in acc.items()},
                                 "per_sample": per})

# ChatGLM2-6B evaluation (ptuning/main.py's compute_metrics).
for corpus, hyp, ref in (("zh", zh_hyp, zh_refs[0]), ("en", en_hyp[:100], en_refs[0][:100])):
    score = chatglm_scores(hyp, ref)
    goldens["chatglm"].append({"corpus": corpus, "mean": {k: sum(v) / len(v) for k, v in score.items()}, "per_sample": score})

with open(os.path.join(HERE, "goldens.json"), "w", encoding="utf-8") as f:
    json.dump(goldens, f, ensure_ascii=False, indent=1)
print("wrote", os.path.join(HERE, "goldens.json"))

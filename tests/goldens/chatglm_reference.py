"""The ChatGLM2-6B fine-tuning evaluation (ptuning/main.py's compute_metrics), per sample: the
reference that `make_goldens.py` and `scripts/check-metrics.py` score with."""
import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(60)


def chatglm_scores(hyp, ref):
    """{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}: each a list, one score (x100, 4 decimals) a sample.
    An empty answer or label scores ROUGE 0 (the original script raises there)."""
    score = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in zip(hyp, ref):
        h = list(jieba.cut(pred))
        r = list(jieba.cut(label))
        if len(" ".join(h).split()) == 0 or len(" ".join(r).split()) == 0:
            result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            result = Rouge().get_scores(" ".join(h), " ".join(r))[0]
        for k, v in result.items():
            score[k].append(round(v["f"] * 100, 4))
        b = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
        score["bleu-4"].append(round(b * 100, 4))
    return score

"""Regenerates src/metric/data/jieba_hmm.model.zst from Python jieba 0.42.1's finalseg tables.

    pip install jieba==0.42.1 && python3 scripts/gen-jieba-hmm.py && zstd -19 --ultra -22 hmm.model \
        -o src/metric/data/jieba_hmm.model.zst

The tables keep Python's exact float values (jieba-rs's built-in copy rounds them to 6 decimals,
which changes a few segmentations).
"""
from jieba.finalseg.prob_emit import P as E
from jieba.finalseg.prob_start import P as S
from jieba.finalseg.prob_trans import P as T
MIN=-3.14e100
st='BEMS'
out=['# jieba 0.42.1 finalseg HMM (prob_start/prob_trans/prob_emit), states B E M S;',
     '# emission keys limited to U+4E00..U+9FD5, the only characters finalseg scores.']
out.append(' '.join(repr(S[s]) for s in st))
for a in st:
    out.append(' '.join(repr(T[a].get(b,MIN)) for b in st))
for a in st:
    items=sorted(((k,v) for k,v in E[a].items() if "\u4e00"<=k<="\u9fd5"), key=lambda kv:(-kv[1],kv[0]))
    out.append(','.join(f'{k}:{v!r}' for k,v in items))
open('hmm.model','w',encoding='utf-8').write('\n'.join(out)+'\n')
# verify roundtrip
for a in st:
    for k,v in E[a].items():
        if '\u4e00'<=k<='\u9fd5': assert float(repr(v))==v

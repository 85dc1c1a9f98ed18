#!/usr/bin/env python3
"""The exact (float64) forward pass of the default model in numpy, as an independent reference
for llmeval's engine: per-token log-probabilities of the score cases in ../shared/reference.

    pip install numpy gguf && python3 tests/goldens/make_engine_goldens.py

Weights are dequantized by gguf-py; RoPE pairs are interleaved (GGUF llama layout).
"""
import json, os
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
r = GGUFReader(os.path.join(ROOT, 'models/SmolLM2-135M-Instruct.Q4_1.gguf'))
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type)
    return a.reshape([int(x) for x in reversed(t.shape.tolist())]).astype(np.float64)
D=576; H=9; KV=3; HD=64; L=30; eps=1e-5; theta=100000.0
emb = W('token_embd.weight')
layers=[]
for l in range(L):
    g=lambda s: W(f'blk.{l}.{s}.weight')
    layers.append([g(x) for x in ['attn_norm','attn_q','attn_k','attn_v','attn_output','ffn_norm','ffn_gate','ffn_up','ffn_down']])
onorm = W('output_norm.weight')
def rms(x,w): return x/np.sqrt((x*x).mean(-1,keepdims=True)+eps)*w
inv = theta ** (-np.arange(0,HD,2)/HD)
def rope(x,pos):  # x [T, nh, HD] interleaved pairs
    ang = pos[:,None]*inv[None,:]  # T, HD/2
    c=np.cos(ang)[:,None,:]; s=np.sin(ang)[:,None,:]
    x0=x[...,0::2]; x1=x[...,1::2]
    out=np.empty_like(x); out[...,0::2]=x0*c-x1*s; out[...,1::2]=x0*s+x1*c
    return out
def forward(ids):
    x = emb[ids]; Tn=len(ids); pos=np.arange(Tn, dtype=np.float64)
    for (an,wq,wk,wv,wo,fn,wg,wu,wd) in layers:
        h=rms(x,an)
        q=(h@wq.T).reshape(Tn,H,HD); k=(h@wk.T).reshape(Tn,KV,HD); v=(h@wv.T).reshape(Tn,KV,HD)
        q=rope(q,pos); k=rope(k,pos)
        k=np.repeat(k,H//KV,axis=1); v=np.repeat(v,H//KV,axis=1)
        att=np.einsum('thd,shd->hts',q,k)/np.sqrt(HD)
        att=att+np.triu(np.full((Tn,Tn),-np.inf),1)[None]
        att=np.exp(att-att.max(-1,keepdims=True)); att/=att.sum(-1,keepdims=True)
        o=np.einsum('hts,shd->thd',att,v).reshape(Tn,H*HD)
        x=x+o@wo.T
        h=rms(x,fn); g=h@wg.T; u=h@wu.T
        x=x+((g/(1+np.exp(-g)))*u)@wd.T
    x=rms(x,onorm)
    return x@emb.T
ref=json.load(open(os.path.join(ROOT, '../shared/reference/llamacpp.json')))
out = []
for c in ref['score']:
    ids = c['context_ids'] + c['continuation_ids']
    lg = forward(np.array(ids[:-1]))
    n = len(c['context_ids'])
    lps = []
    for j, t in enumerate(c['continuation_ids']):
        row = lg[n - 1 + j]
        m = row.max()
        lps.append(float(row[t] - m - np.log(np.exp(row - m).sum())))
    out.append({"context": c["context"], "continuation": c["continuation"], "token_logprobs": lps})
with open(os.path.join(HERE, "engine_exact.json"), "w") as f:
    json.dump({"model_sha256": ref["model_sha256"], "score": out}, f, indent=1, ensure_ascii=False)
print("wrote", len(out), "cases")

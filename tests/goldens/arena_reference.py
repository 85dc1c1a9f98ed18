"""FastChat's Bradley-Terry recipe, shared by the arena goldens, the held-out check and the bench.

Battles duplicated, a tie counted as one A win and one B win, `LogisticRegression(fit_intercept=
False, penalty=None, tol=1e-6)` as in FastChat's `compute_mle_elo`, ratings `400·coef + 1000`.
"""
import math

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression


def mle(df, SCALE=400, BASE=10, INIT=1000, tol=1e-6):
    """{model: rating} for a DataFrame with model_a, model_b and winner."""
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n, p = df.shape[0], len(models)
    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0
    tie = ((df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")).to_numpy().copy()
    tie[len(tie) // 2:] = False
    Y[tie] = 1.0
    # FastChat's settings; a smaller tol (with room for the iterations) gets closer to the optimum
    lr = LogisticRegression(fit_intercept=False, penalty=None, tol=tol, max_iter=100 if tol >= 1e-6 else 100000)
    lr.fit(X, Y)
    return {m: float(SCALE * c + INIT) for m, c in zip(models.index, lr.coef_[0])}

"""Statistics shared by the sampling-frequency tests."""
from __future__ import annotations

import math

import torch


def chi2(counts, p, n):
    """counts / p [G, V] over n draws per position -> (Pearson chi-square, degrees of freedom)
    with tokens of expected count < 5 pooled per position; inf if a draw has p == 0."""
    if bool(((p == 0) & (counts > 0)).any()):
        return math.inf, 1
    stat, df = 0.0, 0
    for c, q in zip(counts, p):
        big = q * n >= 5
        obs = torch.cat([c[big], c[~big].sum()[None]])
        exp = torch.cat([q[big] * n, (q[~big] * n).sum()[None]])
        keep = exp > 0
        stat += float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
        df += int(keep.sum()) - 1
    return stat, df

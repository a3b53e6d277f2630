"""Concordance correlation coefficient: the challenge metric (numpy) and the training losses (torch)."""
from __future__ import annotations

import numpy as np
import torch


def ccc(pred: np.ndarray, label: np.ndarray) -> float:
    """CCC over all frames given, as the challenge computes it over a whole partition."""
    pred, label = np.asarray(pred, np.float64).ravel(), np.asarray(label, np.float64).ravel()
    mean_p, mean_l = pred.mean(), label.mean()
    cov = np.mean((pred - mean_p) * (label - mean_l))
    return float(2 * cov / (pred.var() + label.var() + (mean_p - mean_l) ** 2))


def masked_ccc(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CCC of each sequence over its valid frames: (B, L) inputs, (B,) output."""
    m = mask.to(pred.dtype)
    n = m.sum(dim=1)
    mean_p, mean_l = (pred * m).sum(1) / n, (label * m).sum(1) / n
    dp, dl = (pred - mean_p[:, None]) * m, (label - mean_l[:, None]) * m
    var_p, var_l, cov = (dp * dp).sum(1) / n, (dl * dl).sum(1) / n, (dp * dl).sum(1) / n
    # eps: a one-frame window has zero variances and would give 0 / 0.
    return 2 * cov / (var_p + var_l + (mean_p - mean_l) ** 2 + 1e-8)


def loss_sum(kind: str, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The entry's losses, summed: 1 - CCC over windows for "ccc", squared or absolute error over valid
    frames for "mse" and "l1". Divided by loss_count of the whole batch this is the entry's batch loss;
    being a sum, a batch can be computed in pieces with the very same gradient."""
    if kind == "ccc":
        return (1 - masked_ccc(pred, label, mask)).sum()
    error = (pred - label) ** 2 if kind == "mse" else (pred - label).abs()
    return (error * mask).sum()


def loss_count(kind: str, lengths: np.ndarray) -> int:
    return len(lengths) if kind == "ccc" else int(np.sum(lengths))

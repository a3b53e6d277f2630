"""Greedy ensemble selection (Caruana et al., ICML 2004) over out-of-fold predictions.

Start from the empty ensemble and, for a fixed number of rounds, add (with replacement) the model whose
addition gives the equal-weight mean of the chosen models the best CCC; keep the best prefix of that
sequence. A model chosen k times in a prefix of r rounds weighs k / r. Each step is one discrete choice,
which overfits the predictions it is chosen on less than freely fitted weights do.

Every candidate of a round is scored without forming its mean: the CCC of a weighted mean follows from
the models' means, their covariances with each other and with the labels, computed once.

    ensemble = select_ensemble([oof_a, oof_b, oof_c], labels)
    fused = ensemble.predict([test_a, test_b, test_c])
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError, DataError

ROUNDS = 25
SINGLE = "a library of one model: the single is delivered"


@dataclass
class Ensemble:
    weights: np.ndarray  # (models,) in the library's order: counts / rounds of the best prefix, summing to 1
    score: float  # mean CCC over targets of the weighted mean, on the predictions it was chosen on
    model_scores: np.ndarray  # (models,) each model's own score there
    round_scores: list[float]  # the score after each round; the best prefix ends at the first maximum
    note: str | None = None  # for the caller to show (a library of one model)

    def predict(self, preds: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted mean of the library's predictions (same models, same order), shaped as each one."""
        stacked = _stack(preds, "preds")
        if len(stacked) != len(self.weights):
            raise DataError(f"ensemble: {len(stacked)} predictions for a library of {len(self.weights)} models")
        return np.tensordot(self.weights, stacked, axes=1).reshape(np.shape(preds[0]))


def select_ensemble(preds: Sequence[np.ndarray], labels: np.ndarray, rounds: int = ROUNDS) -> Ensemble:
    """Greedy selection with replacement over a library of models' (out-of-fold) predictions.

    preds: one array per model, (frames,) or (frames, targets), all over the same frames as labels;
    the score is the mean over targets of the CCC over all frames.
    """
    if rounds < 1:
        raise ConfigError(f"rounds: ensemble selection needs at least 1 round (got {rounds})", field="rounds")
    library, y = _stack(preds, "preds"), _stack([labels], "labels")[0]
    if library.shape[1:] != y.shape:
        raise DataError(f"ensemble: predictions of shape {library.shape[1:]} for labels of shape {y.shape}")
    moments = _Moments(library, y)
    model_scores = moments.scores(np.zeros(len(library)))
    if len(library) == 1:
        return Ensemble(np.ones(1), float(model_scores[0]), model_scores, [float(model_scores[0])], SINGLE)
    counts, chosen, round_scores = np.zeros(len(library)), [], []
    for _ in range(rounds):
        candidates = moments.scores(counts)
        best = int(np.argmax(candidates))  # the first of equals: the earlier model in the library
        counts[best] += 1
        chosen.append(best)
        round_scores.append(float(candidates[best]))
    prefix = int(np.argmax(round_scores)) + 1
    weights = np.bincount(chosen[:prefix], minlength=len(library)) / prefix
    return Ensemble(weights, round_scores[prefix - 1], model_scores, round_scores)


class _Moments:
    """Per target: the models' means, their covariance matrix and their covariances with the labels (over
    the frames, divided by n as a CCC does), from which the CCC of any weighted mean follows."""

    def __init__(self, library: np.ndarray, labels: np.ndarray):
        self.mean = library.mean(axis=1)  # (models, targets)
        self.label_mean, self.label_var = labels.mean(axis=0), labels.var(axis=0)
        centred, centred_labels = library - self.mean[:, None], labels - self.label_mean
        frames = library.shape[1]
        self.gram = np.einsum("ift,jft->tij", centred, centred) / frames  # (targets, models, models)
        self.cov = np.einsum("ift,ft->it", centred, centred_labels) / frames  # (models, targets)

    def scores(self, counts: np.ndarray) -> np.ndarray:
        """(models,) the mean CCC over targets of the equal-weight mean of the models counted so far plus
        one more of each model in turn."""
        total = counts.sum() + 1
        gram_counts = self.gram @ counts  # (targets, models): covariance of each model with the current sum
        diagonal = np.diagonal(self.gram, axis1=1, axis2=2)
        var = ((counts @ gram_counts.T)[:, None] + 2 * gram_counts + diagonal).T / total ** 2  # (models, targets)
        mean = (counts @ self.mean + self.mean) / total
        cov = (counts @ self.cov + self.cov) / total
        ccc = 2 * cov / (var + self.label_var + (mean - self.label_mean) ** 2)
        return ccc.mean(axis=1)


def _stack(arrays: Sequence[np.ndarray], name: str) -> np.ndarray:
    """(models, frames, targets) float64 from arrays of one shape, (frames,) or (frames, targets)."""
    shapes = {np.shape(a) for a in arrays}
    if not arrays or len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2) or next(iter(shapes))[0] == 0:
        raise DataError(f"ensemble: {name} must be (frames,) or (frames, targets) arrays of one shape "
                        f"(got {sorted(shapes) or 'none'})")
    stacked = np.stack([np.asarray(a, np.float64) for a in arrays])
    if not np.isfinite(stacked).all():
        raise DataError(f"ensemble: {name} hold NaN or inf")
    return stacked.reshape(len(arrays), stacked.shape[1], -1)

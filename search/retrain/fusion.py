"""Late fusion of several configs' predictions, every method scored under one protocol.

The inputs are out-of-split predictions of the pooled videos (devel, or train + devel with K folds),
so a method that fits nothing is scored on them directly, and a method that fits something is
cross-validated over the same folds of videos: fit on the other folds' predictions, predict the
held-out fold. No fusion is ever scored on what it was fit on. Methods:

- chosen: the chosen config's seed ensemble (the mean of its seeds);
- mean: the equal mean of the top configs' seed ensembles;
- weighted_ccc: a weighted mean, weights from each input's CCC;
- weighted_fitted: a weighted mean, non-negative weights summing to 1 fitted to maximise CCC;
- lstm: the entry's fusion model, a small biLSTM over all inputs (other targets' too).

On test, weighted means use weights fit on all pooled videos; the LSTM is the mean of its fold models.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from core.metrics import ccc


@dataclass
class Stream:
    """One fusion input: a config's seed-averaged predictions of one target, on pooled and test frames."""
    study: str
    trial: int | None
    config_key: str
    target: str
    oof: np.ndarray
    test: np.ndarray
    extra: bool = False  # only an input to the fusion model (e.g. arousal models for a valence fusion)

    def describe(self) -> dict:
        return {"study": self.study, "trial": self.trial, "config_key": self.config_key, "target": self.target,
                "extra": self.extra}


@dataclass
class Fused:
    method: str
    protocol: str  # how its score was obtained
    oof: np.ndarray  # (pooled frames, targets), out of fold
    test: np.ndarray
    cv_ccc: dict[str, float]
    weights: dict[str, list[float]] | None = None
    inputs: list[Stream] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(np.mean(list(self.cv_ccc.values())))


@dataclass
class Pool:
    """The pooled videos' frames and labels, and the folds of videos fusions are cross-validated over."""
    labels: np.ndarray  # (pooled frames, targets)
    bounds: np.ndarray  # n + 1 offsets of the pooled videos' frames
    test_bounds: np.ndarray
    folds: list[np.ndarray]  # positions of pooled videos, held out together
    targets: tuple[str, ...]

    def rows(self, videos: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(self.bounds[v], self.bounds[v + 1]) for v in videos])

    def scores(self, preds: np.ndarray) -> dict[str, float]:
        return {t: ccc(preds[:, j], self.labels[:, j]) for j, t in enumerate(self.targets)}


NOTHING_FIT = "nothing fit: CCC of the out-of-split predictions of the pooled videos"


def mean_of(method: str, streams: list[Stream], pool: Pool) -> Fused:
    """The equal mean of the streams of each target: nothing is fit."""
    oof, test = _columns(streams, pool.targets, "oof"), _columns(streams, pool.targets, "test")
    oof = np.stack([x.mean(axis=1) for x in oof], axis=1)
    test = np.stack([x.mean(axis=1) for x in test], axis=1)
    return Fused(method, NOTHING_FIT, oof, test, pool.scores(oof), None, streams)


def weighted(method: str, streams: list[Stream], pool: Pool, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fused:
    """A weighted mean per target, weights from fit(x, y) on the other folds; on test, fit on all."""
    oof_cols, test_cols = _columns(streams, pool.targets, "oof"), _columns(streams, pool.targets, "test")
    oof = np.empty_like(pool.labels, dtype=np.float32)
    test, weights = [], {}
    for j, target in enumerate(pool.targets):
        x, y = oof_cols[j], pool.labels[:, j]
        for held_out in pool.folds:
            rows = pool.rows(held_out)
            train = np.ones(len(y), bool)
            train[rows] = False
            oof[rows, j] = x[rows] @ fit(x[train], y[train])
        w = fit(x, y)
        weights[target] = w.tolist()
        test.append(test_cols[j] @ w)
    return Fused(method, f"{len(pool.folds)}-fold cross-validation over the pooled videos", oof,
                 np.stack(test, axis=1).astype(np.float32), pool.scores(oof), weights, streams)


def ccc_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each input's CCC (negative ones count 0), normalised to sum to 1."""
    scores = np.array([max(ccc(x[:, i], y), 0.0) for i in range(x.shape[1])])
    return scores / scores.sum() if scores.sum() > 0 else np.full(x.shape[1], 1 / x.shape[1])


def fitted_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the CCC of x @ w against y."""
    n = x.shape[1]
    result = minimize(lambda w: -ccc(x @ w, y), np.full(n, 1 / n), method="SLSQP", bounds=[(0, 1)] * n,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
    w = np.clip(result.x, 0, None)
    return w / w.sum()


def lstm(streams: list[Stream], pool: Pool, run_folds: Callable[[np.ndarray, np.ndarray], list]) -> Fused:
    """The entry's fusion model over every stream (other targets' too), one fit per fold of the pool.
    run_folds(x, x_test) -> [(held-out predictions, test predictions)] runs fit_fold for each fold (in parallel)."""
    x = np.stack([s.oof for s in streams], axis=1).astype(np.float32)
    x_test = np.stack([s.test for s in streams], axis=1).astype(np.float32)
    oof = np.empty_like(pool.labels, dtype=np.float32)
    tests = []
    for held_out, (held_out_preds, test_preds) in zip(pool.folds, run_folds(x, x_test)):
        oof[pool.rows(held_out)] = held_out_preds
        tests.append(test_preds)
    return Fused("lstm", f"{len(pool.folds)}-fold cross-validation over the pooled videos; on test the mean of "
                         "the fold models", oof, np.mean(tests, axis=0), pool.scores(oof), None, streams)


def fit_fold(x: np.ndarray, x_test: np.ndarray, pool: Pool, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM fusion fit on the pooled videos but those of pool.folds[fold]; its predictions of those
    and of test. A Ray task of one CPU thread in retrain-best, so the folds are fit in parallel."""
    from core.fusion import fit_fusion_model, predict_fusion
    from core.threads import use_threads

    use_threads(1)
    held_out = pool.folds[fold]
    keep = np.setdiff1d(np.arange(len(pool.bounds) - 1), held_out)
    model = fit_fusion_model(x, pool.labels, pool.bounds, keep, seed=fold)
    return (predict_fusion(model, x, pool.bounds, held_out),
            predict_fusion(model, x_test, pool.test_bounds, np.arange(len(pool.test_bounds) - 1)))


def _columns(streams: list[Stream], targets: tuple[str, ...], part: str) -> list[np.ndarray]:
    """Per target, its own (not extra) streams side by side: (frames, streams)."""
    return [np.stack([getattr(s, part) for s in streams if s.target == t and not s.extra], axis=1) for t in targets]

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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from core.metrics import ccc
from search.retrain.experiment import Experiment
from search.retrain.runs import SeedRun
from search.retrain.select import Candidate


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
class FusionData:
    """What fusions are fit and scored on: the pooled videos' labels and frame bounds, the test videos'
    bounds, and the folds of pooled videos fusions are cross-validated over."""
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


def mean_of(method: str, streams: list[Stream], data: FusionData) -> Fused:
    """The equal mean of the streams of each target: nothing is fit."""
    oof, test = _columns(streams, data.targets, "oof"), _columns(streams, data.targets, "test")
    oof = np.stack([x.mean(axis=1) for x in oof], axis=1)
    test = np.stack([x.mean(axis=1) for x in test], axis=1)
    return Fused(method, NOTHING_FIT, oof, test, data.scores(oof), None, streams)


def weighted(method: str, streams: list[Stream], data: FusionData, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fused:
    """A weighted mean per target, weights from fit(x, y) on the other folds; on test, fit on all."""
    oof_cols, test_cols = _columns(streams, data.targets, "oof"), _columns(streams, data.targets, "test")
    oof = np.empty_like(data.labels, dtype=np.float32)
    test, weights = [], {}
    for j, target in enumerate(data.targets):
        x, y = oof_cols[j], data.labels[:, j]
        for held_out in data.folds:
            rows = data.rows(held_out)
            train = np.ones(len(y), bool)
            train[rows] = False
            oof[rows, j] = x[rows] @ fit(x[train], y[train])
        w = fit(x, y)
        weights[target] = w.tolist()
        test.append(test_cols[j] @ w)
    return Fused(method, f"{len(data.folds)}-fold cross-validation over the pooled videos", oof,
                 np.stack(test, axis=1).astype(np.float32), data.scores(oof), weights, streams)


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


def lstm(streams: list[Stream], data: FusionData, run_folds: Callable[[np.ndarray, np.ndarray], list]) -> Fused:
    """The entry's fusion model over every stream (other targets' too), one fit per fold of the data.
    run_folds(x, x_test) -> [(held-out predictions, test predictions)] runs fit_fold for each fold (in parallel)."""
    x = np.stack([s.oof for s in streams], axis=1).astype(np.float32)
    x_test = np.stack([s.test for s in streams], axis=1).astype(np.float32)
    oof = np.empty_like(data.labels, dtype=np.float32)
    tests = []
    for held_out, (held_out_preds, test_preds) in zip(data.folds, run_folds(x, x_test)):
        oof[data.rows(held_out)] = held_out_preds
        tests.append(test_preds)
    return Fused("lstm", f"{len(data.folds)}-fold cross-validation over the pooled videos; on test the mean of "
                         "the fold models", oof, np.mean(tests, axis=0), data.scores(oof), None, streams)


def fit_fold(x: np.ndarray, x_test: np.ndarray, data: FusionData, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM fusion fit on the pooled videos but those of data.folds[fold]; its predictions of those
    and of test. A Ray task of one CPU thread in retrain-best, so the folds are fit in parallel."""
    from core.fusion import fit_fusion_model, predict_fusion
    from core.threads import use_threads

    use_threads(1)
    held_out = data.folds[fold]
    keep = np.setdiff1d(np.arange(len(data.bounds) - 1), held_out)
    model = fit_fusion_model(x, data.labels, data.bounds, keep, seed=fold)
    return (predict_fusion(model, x, data.bounds, held_out),
            predict_fusion(model, x_test, data.test_bounds, np.arange(len(data.test_bounds) - 1)))


def _columns(streams: list[Stream], targets: tuple[str, ...], part: str) -> list[np.ndarray]:
    """Per target, its own (not extra) streams side by side: (frames, streams)."""
    return [np.stack([getattr(s, part) for s in streams if s.target == t and not s.extra], axis=1) for t in targets]


def fuse(exp: Experiment, candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]],
         chosen: Candidate) -> list[Fused]:
    """The chosen config's seed ensemble, then every fusion method, each scored on out-of-fold predictions
    of the pooled videos."""
    import ray

    plan = exp.plan
    data = FusionData(exp.pooled_labels(), np.concatenate([[0], np.cumsum(plan.corpus.lengths(plan.pooled))]),
                      plan.corpus.bounds("test"), _folds(exp), exp.targets)
    extra = set(exp.request.inputs_from) - {exp.request.study, *exp.request.fuse}
    streams = [s for name, cs in candidates.items() for c in cs if runs[c.key]
               for s in seed_ensemble_streams(c, runs[c.key], extra=name in extra)]
    own = [s for s in streams if not s.extra]
    fusions = [mean_of("chosen", [s for s in own if s.config_key == chosen.key], data)]
    if len({s.config_key for s in own}) < 2:
        exp.log("fusion: one config only, so only its seed ensemble is formed")
        return fusions
    fusions += [mean_of("mean", own, data), weighted("weighted_ccc", own, data, ccc_weights),
                weighted("weighted_fitted", own, data, fitted_weights)]
    task = ray.remote(fit_fold).options(num_cpus=1)

    def run_folds(x: np.ndarray, x_test: np.ndarray) -> list:
        start, refs = time.time(), [ray.put(a) for a in (x, x_test, data)]
        pending = {task.remote(*refs, k): k for k in range(len(data.folds))}
        done = {}
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready)] = ray.get(ready)
            exp.log(f"  lstm fusion: fold {len(done)}/{len(data.folds)} fit ({time.time() - start:.0f}s)")
        return [done[k] for k in range(len(data.folds))]

    exp.log(f"fusion: {len(own)} input(s) ({len(streams) - len(own)} extra for the LSTM), "
            f"{len(data.folds)} folds over {len(plan.pooled)} pooled videos")
    fusions.append(lstm(streams, data, run_folds))
    for f in fusions:
        exp.log(f"  {f.method:16s} out-of-fold CCC {f.score:.4f}")
    return fusions


def seed_ensemble_streams(c: Candidate, runs: list[SeedRun], extra: bool) -> list[Stream]:
    """A config's seed ensemble (the mean over its seeds), one stream per target."""
    oof, test = np.mean([r.oof for r in runs], axis=0), np.mean([r.test for r in runs], axis=0)
    return [Stream(c.study, c.trial, c.key, t, oof[:, j], test[:, j], extra)
            for j, t in enumerate(c.config.emo_dim_set)]


def _folds(exp: Experiment) -> list[np.ndarray]:
    """Positions (in pooled order) of the videos each split scores; with one split, 5 random folds of them."""
    plan = exp.plan
    if len(plan.splits) > 1:
        position = {v: i for i, v in enumerate(plan.pooled.tolist())}
        return [np.array([position[v] for v in s.score.tolist()]) for s in plan.splits]
    order = np.random.default_rng(0).permutation(len(plan.pooled))
    return [np.sort(f) for f in np.array_split(order, min(5, len(plan.pooled))) if len(f)]

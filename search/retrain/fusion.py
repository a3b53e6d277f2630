"""Late fusion over the library of retrained models, every method fit and scored under one protocol.

The library holds every retrained (config, seed): its out-of-split predictions of the pooled videos
(devel, or train + devel with K folds) and its test predictions; ensemble selection also draws on the
models the search trained on every split (kept.py). A method is fit on some folds of
pooled videos and predicts others, so it is cross-validated over the same folds of videos as every
other method, and no method is ever scored on what it was fit on. Methods, simplest first:

- chosen: the seed ensemble (mean over seeds) of the config ranked best on the folds it is fit on;
- mean: the equal mean of every config's seed ensemble;
- ensemble: greedy ensemble selection with replacement over the library's models and the search's
  (Caruana et al., 2004);
- weighted_ccc: a weighted mean of the seed ensembles, weights from each one's CCC;
- weighted_fitted: the same with non-negative weights summing to 1 fitted to maximise CCC;
- lstm: the entry's fusion model, a small biLSTM over all seed ensembles (other targets' too).

Every method but the LSTM is a weighted mean of the library's models: on test, its weights are fit on
all pooled videos; the LSTM's test predictions are the mean of its fold models.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from core.ensemble import SINGLE, select_ensemble
from core.metrics import ccc
from search.retrain.experiment import Experiment
from search.retrain.runs import REFIT_SCHEDULES, SeedRun
from search.retrain.select import Candidate

Job = tuple[list[np.ndarray], np.ndarray]  # folds of pooled videos (positions) to fit on, and videos to predict


@dataclass
class Stream:
    """One LSTM input: a config's seed-averaged predictions of one target, on pooled and test frames."""
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
class FusionData:
    """What fusions are fit and scored on: the pooled videos' labels and frame bounds, the test videos'
    bounds, and the folds of pooled videos every method is cross-validated over."""
    labels: np.ndarray  # (pooled frames, targets)
    bounds: np.ndarray  # n + 1 offsets of the pooled videos' frames
    test_bounds: np.ndarray
    folds: list[np.ndarray]  # positions of pooled videos, held out together
    targets: tuple[str, ...]
    folds_are_splits: bool  # the folds are the splits' scoring videos (the objective averages over them)

    def rows(self, videos: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(self.bounds[v], self.bounds[v + 1]) for v in videos])

    def scores(self, preds: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
        labels = self.labels if rows is None else self.labels[rows]
        return {t: ccc(preds[:, j], labels[:, j]) for j, t in enumerate(self.targets)}


@dataclass
class Library:
    """Every retrained model of the fused studies' configs (own targets only), seed by seed; for ensemble
    selection also the models their searches kept (see kept.py), one config entry each, last."""
    primary: str  # the study whose best config is "chosen"
    configs: list[Candidate]
    config_of: np.ndarray  # (models,): each model's index into configs
    oof: np.ndarray  # (pooled frames, models, targets)
    test: np.ndarray  # (test frames, models, targets)
    searched: int = 0  # how many of the last configs are models the search trained

    def with_searched(self, kept: list[tuple[Candidate, SeedRun]]) -> Library:
        """This library and the search's kept models."""
        if not kept:
            return self
        n = len(self.configs)
        return Library(self.primary, self.configs + [c for c, _ in kept],
                       np.concatenate([self.config_of, np.arange(n, n + len(kept))]),
                       np.concatenate([self.oof, np.stack([r.oof for _, r in kept], axis=1)], axis=1),
                       np.concatenate([self.test, np.stack([r.test for _, r in kept], axis=1)], axis=1), len(kept))

    def seed_ensembles(self, part: str) -> np.ndarray:
        """(frames, configs, targets): each config's mean over its seeds."""
        x = getattr(self, part)
        return np.stack([x[:, self.config_of == c].mean(axis=1) for c in range(len(self.configs))], axis=1)

    def spread(self, per_config: np.ndarray) -> np.ndarray:
        """(configs, targets) weights of seed ensembles as (models, targets) weights of the models."""
        seeds = np.bincount(self.config_of, minlength=len(self.configs))
        return per_config[self.config_of] / seeds[self.config_of][:, None]

    def describe(self) -> list[dict]:
        seeds = np.bincount(self.config_of, minlength=len(self.configs))
        first_searched = len(self.configs) - self.searched
        return [{"study": c.study, "trial": c.trial, "config_key": c.key, "seeds": int(n)}
                | ({"trained_by": "search"} if i >= first_searched else {})
                for i, (c, n) in enumerate(zip(self.configs, seeds))]


@dataclass
class Fused:
    method: str
    protocol: str  # how its score was obtained
    oof: np.ndarray  # (pooled frames, targets), out of fold
    test: np.ndarray
    cv_ccc: dict[str, float]
    weights: dict[str, list[float]] | None = None  # per target, over the configs' seed ensembles
    inputs: list[dict] = field(default_factory=list)  # the configs (or, for the LSTM, streams) it fuses

    @property
    def score(self) -> float:
        return float(np.mean(list(self.cv_ccc.values())))


class Method:
    """A fusion method as a function from jobs to predictions: for each (fit folds, videos) job, its
    predictions of those pooled videos and of test. Weighted means fit their (models, targets) weights."""
    simple_first = ("chosen", "mean", "ensemble", "weighted_ccc", "weighted_fitted", "lstm")

    def __init__(self, name: str, library: Library, data: FusionData,
                 weights: Callable[[Library, FusionData, np.ndarray], np.ndarray] | None = None,
                 run_jobs: Callable[[list[Job]], list[tuple[np.ndarray, np.ndarray]]] | None = None,
                 inputs: list[dict] | None = None):
        self.name, self.library, self.data, self._weights, self._run_jobs = name, library, data, weights, run_jobs
        self.inputs = inputs or library.describe()

    def weights(self, folds: list[np.ndarray]) -> np.ndarray:
        return self._weights(self.library, self.data, np.concatenate(folds))

    def run(self, jobs: list[Job]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._run_jobs:
            return self._run_jobs(jobs)
        out = []
        for fit_folds, videos in jobs:
            w = self.weights(fit_folds)
            out.append((_apply(self.library.oof[self.data.rows(videos)], w), _apply(self.library.test, w)))
        return out


def chosen_weights(lib: Library, data: FusionData, videos: np.ndarray) -> np.ndarray:
    """The primary study's config with the best mean over its seeds of the studies' objective restricted to
    `videos` (the mean CCC over the splits' folds among them, or the CCC over them all with one split), as
    its seed ensemble: on every pooled video, the config retrain-best ranked first."""
    parts = [f for f in data.folds if np.isin(f, videos).all()] if data.folds_are_splits else [videos]

    def objective(m: int) -> float:
        return float(np.mean([np.mean(list(data.scores(lib.oof[data.rows(p), m], data.rows(p)).values()))
                              for p in parts]))

    per_model = np.array([objective(m) for m in range(len(lib.config_of))])
    per_config = np.array([per_model[lib.config_of == k].mean() if c.study == lib.primary else -np.inf
                           for k, c in enumerate(lib.configs)])
    one_hot = np.zeros((len(lib.configs), len(data.targets)))
    one_hot[int(np.argmax(per_config))] = 1.0
    return lib.spread(one_hot)


def mean_weights(lib: Library, data: FusionData, videos: np.ndarray) -> np.ndarray:
    return lib.spread(np.full((len(lib.configs), len(data.targets)), 1 / len(lib.configs)))


def ensemble_weights(lib: Library, data: FusionData, videos: np.ndarray) -> np.ndarray:
    rows = data.rows(videos)
    w = select_ensemble([lib.oof[rows, m] for m in range(len(lib.config_of))], data.labels[rows]).weights
    return np.repeat(w[:, None], len(data.targets), axis=1)


def per_target_weights(fit: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """Weights of the seed ensembles fit per target by fit(x, y) on these videos."""
    def weights(lib: Library, data: FusionData, videos: np.ndarray) -> np.ndarray:
        rows = data.rows(videos)
        x = lib.seed_ensembles("oof")[rows]
        return lib.spread(np.stack([fit(x[:, :, j], data.labels[rows, j]) for j in range(len(data.targets))], axis=1))
    return weights


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


def cross_fit_jobs(data: FusionData) -> list[Job]:
    """Fold k predicted by a fit on the other folds, for each k."""
    return [([f for i, f in enumerate(data.folds) if i != k], held_out) for k, held_out in enumerate(data.folds)]


def cross_fit(method: Method, results: list[tuple[np.ndarray, np.ndarray]]) -> Fused:
    """The method's out-of-fold predictions of every pooled video and its test predictions, from the
    results of its cross_fit_jobs."""
    data, folds = method.data, method.data.folds
    oof = np.empty_like(data.labels, dtype=np.float32)
    for held_out, (preds, _) in zip(folds, results):
        oof[data.rows(held_out)] = preds
    protocol = f"{len(folds)}-fold cross-validation over the pooled videos"
    if method.name == "lstm":
        return Fused("lstm", protocol + "; on test the mean of the fold models", oof,
                     np.mean([test for _, test in results], axis=0), data.scores(oof), None, method.inputs)
    lib, w = method.library, method.weights(folds)
    per_config = np.stack([w[lib.config_of == c].sum(axis=0) for c in range(len(lib.configs))])
    return Fused(method.name, protocol, oof, _apply(lib.test, w), data.scores(oof),
                 {t: per_config[:, j].tolist() for j, t in enumerate(data.targets)}, lib.describe())


def fusion_methods(exp: Experiment, candidates: dict[str, list[Candidate]], runs: dict[str, list[SeedRun]],
                   kept: list[tuple[Candidate, SeedRun]]) -> list[Method]:
    """The chosen config's seed ensemble and every fusion method over the library of retrained models
    (ensemble selection also over the models the fused studies' searches kept)."""
    plan = exp.plan
    data = FusionData(exp.pooled_labels, np.concatenate([[0], np.cumsum(plan.corpus.lengths(plan.pooled))]),
                      plan.corpus.bounds("test"), _folds(exp), exp.targets, folds_are_splits=len(plan.splits) > 1)
    extra = set(exp.request.inputs_from) - {exp.request.study, *exp.request.fuse}
    own = [c for name, cs in candidates.items() if name not in extra for c in cs if runs[c.key]]
    library = Library(exp.request.study, own, np.array([i for i, c in enumerate(own) for _ in runs[c.key]]),
                      np.stack([r.oof for c in own for r in runs[c.key]], axis=1),
                      np.stack([r.test for c in own for r in runs[c.key]], axis=1))
    everything = library.with_searched(kept)
    methods = [Method("chosen", library, data, chosen_weights)]
    searched = f", and {everything.searched} model(s) the search kept" if everything.searched else ""
    if len(everything.config_of) == 1:
        exp.log(f"ensemble selection: {SINGLE}")
    elif len(own) < 2:
        exp.log(f"fusion: one config only, so only its seed ensemble and ensemble selection over its seeds{searched} "
                "are formed")
        methods.append(Method("ensemble", everything, data, ensemble_weights))
    else:
        streams = [s for name, cs in candidates.items() for c in cs if runs[c.key]
                   for s in seed_ensemble_streams(c, runs[c.key], extra=name in extra)]
        exp.log(f"fusion: a library of {len(library.config_of)} models of {len(own)} configs{searched} (ensemble "
                f"selection only), {len(streams) - len(own) * len(data.targets)} extra input(s) for the LSTM; "
                f"{len(data.folds)} folds over {len(plan.pooled)} pooled videos")
        methods += [Method("mean", library, data, mean_weights), Method("ensemble", everything, data, ensemble_weights),
                    Method("weighted_ccc", library, data, per_target_weights(ccc_weights)),
                    Method("weighted_fitted", library, data, per_target_weights(fitted_weights)),
                    Method("lstm", library, data, run_jobs=lstm_jobs(exp, streams, data),
                           inputs=[s.describe() for s in streams])]
    return methods


def lstm_jobs(exp: Experiment, streams: list[Stream], data: FusionData):
    """The LSTM method's jobs, fit in parallel as Ray tasks of one CPU thread each."""
    import ray

    x = np.stack([s.oof for s in streams], axis=1).astype(np.float32)
    x_test = np.stack([s.test for s in streams], axis=1).astype(np.float32)
    task = ray.remote(fit_lstm).options(num_cpus=1)

    def run(jobs: list[Job]) -> list[tuple[np.ndarray, np.ndarray]]:
        start, refs = time.time(), [ray.put(a) for a in (x, x_test, data)]
        pending = {task.remote(*refs, np.concatenate(fit_folds), videos): k
                   for k, (fit_folds, videos) in enumerate(jobs)}
        done = {}
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready)] = ray.get(ready)
            exp.log(f"  lstm fusion: fit {len(done)}/{len(jobs)} ({time.time() - start:.0f}s)")
        return [done[k] for k in range(len(jobs))]
    return run


def fit_lstm(x: np.ndarray, x_test: np.ndarray, data: FusionData, fit_on: np.ndarray,
             videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM fusion fit on the pooled videos `fit_on`; its predictions of `videos` and of test. A Ray
    task of one CPU thread in retrain-best, so the fits run in parallel."""
    from core.fusion import fit_fusion_model, predict_fusion
    from core.threads import use_threads

    use_threads(1)
    model = fit_fusion_model(x, data.labels, data.bounds, np.sort(fit_on), seed=int(videos[0]))
    return (predict_fusion(model, x, data.bounds, videos),
            predict_fusion(model, x_test, data.test_bounds, np.arange(len(data.test_bounds) - 1)))


def refitted(method: str, c: Candidate, runs: list[SeedRun], epochs: int, data: FusionData) -> Fused:
    """The chosen config refit on every train and devel video (runs.REFIT_SCHEDULES): test predictions only
    (no video is left to score it out of fold), so it is shown beside the methods and never delivered."""
    return Fused(method, f"trained on every train and devel video for {epochs} epochs ({REFIT_SCHEDULES[method]}); "
                         "not cross-validated", np.full_like(data.labels, np.nan, dtype=np.float32),
                 np.mean([r.test for r in runs], axis=0), dict.fromkeys(data.targets),
                 inputs=[{"study": c.study, "trial": c.trial, "config_key": c.key, "seeds": len(runs)}])


def seed_ensemble_streams(c: Candidate, runs: list[SeedRun], extra: bool) -> list[Stream]:
    """A config's seed ensemble (the mean over its seeds), one stream per target."""
    oof, test = np.mean([r.oof for r in runs], axis=0), np.mean([r.test for r in runs], axis=0)
    return [Stream(c.study, c.trial, c.key, t, oof[:, j], test[:, j], extra)
            for j, t in enumerate(c.config.emo_dim_set)]


def _apply(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(frames, models, targets) predictions weighted by (models, targets) weights: (frames, targets)."""
    return np.einsum("fmt,mt->ft", x, w).astype(np.float32)


def _folds(exp: Experiment) -> list[np.ndarray]:
    """Positions (in pooled order) of the videos each split scores; with one split, 5 random folds of them."""
    plan = exp.plan
    if len(plan.splits) > 1:
        position = {v: i for i, v in enumerate(plan.pooled.tolist())}
        return [np.array([position[v] for v in s.score.tolist()]) for s in plan.splits]
    order = np.random.default_rng(0).permutation(len(plan.pooled))
    return [np.sort(f) for f in np.array_split(order, min(5, len(plan.pooled))) if len(f)]

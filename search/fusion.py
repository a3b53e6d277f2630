"""Late fusion of several models' per-frame predictions, fit on devel predictions only.

- weighted mean, weights from each input's devel CCC;
- weighted mean, weights fitted to maximise devel CCC (non-negative, summing to 1), scored by
  cross-validation over devel videos so the score is not a self-fit;
- the entry's fusion model, a small biLSTM over the stacked predictions, trained and scored with
  the same cross-validation; on test it is the mean of the fold models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

from core.batching import window_frames
from core.metrics import ccc, masked_ccc
from core.model import FusionConfig, FusionModel
from core.windows import spans


@dataclass
class Stream:
    """One fusion input: a config's seed-averaged predictions of one target, on devel and test frames."""
    study: str
    trial: int | None
    config_key: str
    target: str
    run_ids: list[int]
    devel: np.ndarray
    test: np.ndarray
    extra: bool = False  # only an input to the fusion model (e.g. arousal models for a valence fusion)

    @property
    def label(self) -> str:
        return f"{self.study}#{self.trial} {self.target}"

    def describe(self) -> dict:
        return {"study": self.study, "trial": self.trial, "config_key": self.config_key, "target": self.target,
                "run_ids": self.run_ids, "extra": self.extra}


@dataclass
class Fused:
    method: str
    protocol: str  # how its devel score was obtained
    devel: np.ndarray  # (devel frames, targets)
    test: np.ndarray
    devel_ccc: dict[str, float]
    weights: dict[str, list[float]] | None = None
    inputs: list[Stream] = field(default_factory=list)


@dataclass
class Videos:
    """Where each video of devel and test starts, in partition frame order (n + 1 offsets each)."""
    devel: np.ndarray
    test: np.ndarray


def folds(n_videos: int, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_videos)
    return [np.sort(f) for f in np.array_split(order, min(k, n_videos)) if len(f)]


def weighted_by_ccc(streams: list[Stream], labels: np.ndarray, targets: tuple[str, ...]) -> Fused:
    weights, devel, test = {}, [], []
    for j, target in enumerate(targets):
        own = [s for s in streams if s.target == target and not s.extra]
        scores = np.array([max(ccc(s.devel, labels[:, j]), 0.0) for s in own])
        w = scores / scores.sum() if scores.sum() > 0 else np.full(len(own), 1 / len(own))
        weights[target] = w.tolist()
        devel.append(sum(wi * s.devel for wi, s in zip(w, own)))
        test.append(sum(wi * s.test for wi, s in zip(w, own)))
    return _fused("weighted_mean_ccc", "weights from each input's devel CCC", devel, test, labels, targets,
                  weights, streams)


def weighted_fitted(streams: list[Stream], labels: np.ndarray, targets: tuple[str, ...], videos: Videos,
                    k: int = 5, seed: int = 0) -> Fused:
    weights, devel, cv, test = {}, [], [], []
    bounds = videos.devel
    for j, target in enumerate(targets):
        own = [s for s in streams if s.target == target and not s.extra]
        x, y = np.stack([s.devel for s in own], axis=1), labels[:, j]
        out_of_fold = np.empty_like(y)
        for held_out in folds(len(bounds) - 1, k, seed):
            rows = _rows(bounds, held_out)
            train = np.ones(len(y), bool)
            train[rows] = False
            out_of_fold[rows] = x[rows] @ _fit_weights(x[train], y[train])
        w = _fit_weights(x, y)
        weights[target] = w.tolist()
        devel.append(x @ w)
        cv.append(out_of_fold)
        test.append(np.stack([s.test for s in own], axis=1) @ w)
    fused = _fused("weighted_mean_fitted", f"{k}-fold cross-validation over devel videos", cv, test, labels,
                   targets, weights, streams)
    fused.devel = np.stack(devel, axis=1)  # the deployed (all-devel) weights' predictions, for the CSVs
    return fused


def lstm_fusion(streams: list[Stream], labels: np.ndarray, targets: tuple[str, ...], videos: Videos,
                k: int = 5, seed: int = 0, epochs: int = 20) -> Fused:
    x_devel = np.stack([s.devel for s in streams], axis=1).astype(np.float32)
    x_test = np.stack([s.test for s in streams], axis=1).astype(np.float32)
    out_of_fold = np.empty_like(labels, dtype=np.float32)
    test = np.zeros((len(x_test), len(targets)), np.float32)
    parts = folds(len(videos.devel) - 1, k, seed)
    for i, held_out in enumerate(parts):
        keep = np.setdiff1d(np.arange(len(videos.devel) - 1), held_out)
        model = _fit_fusion_model(x_devel, labels, videos.devel, keep, seed + i, epochs)
        rows = _rows(videos.devel, held_out)
        out_of_fold[rows] = _predict(model, x_devel, videos.devel, held_out)
        test += _predict(model, x_test, videos.test, np.arange(len(videos.test) - 1)) / len(parts)
    return _fused("lstm", f"{len(parts)}-fold cross-validation over devel videos", list(out_of_fold.T),
                  list(test.T), labels, targets, None, streams)


def _fused(method, protocol, devel, test, labels, targets, weights, streams) -> Fused:
    devel, test = np.stack(devel, axis=1).astype(np.float32), np.stack(test, axis=1).astype(np.float32)
    scores = {t: ccc(devel[:, j], labels[:, j]) for j, t in enumerate(targets)}
    return Fused(method, protocol, devel, test, scores, weights, list(streams))


def _fit_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that maximise the CCC of x @ w against y."""
    n = x.shape[1]
    result = minimize(lambda w: -ccc(x @ w, y), np.full(n, 1 / n), method="SLSQP", bounds=[(0, 1)] * n,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
    w = np.clip(result.x, 0, None)
    return w / w.sum()


def _rows(bounds: np.ndarray, videos: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(bounds[v], bounds[v + 1]) for v in videos])


def _fit_fusion_model(x: np.ndarray, y: np.ndarray, bounds: np.ndarray, videos: np.ndarray, seed: int,
                      epochs: int, win_len: int = 200, batch_size: int = 32) -> FusionModel:
    """Train on 200-frame windows of the given videos with the CCC loss (the entry's fusion settings)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = FusionModel(FusionConfig(d_in=x.shape[1], n_targets=y.shape[1], d_model=32, n_layers=1, rnn_bi=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    starts, lengths = spans(bounds[videos], bounds[videos + 1] - bounds[videos], win_len, win_len // 2)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(starts))
        for i in range(0, len(order), batch_size):
            pick = order[i:i + batch_size]
            frames, mask, packed = window_frames(starts[pick], lengths[pick])
            pred = model(x_t[frames], packed)
            loss = sum(1 - masked_ccc(pred[..., j], y_t[frames][..., j], mask).mean() for j in range(y.shape[1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _predict(model: FusionModel, x: np.ndarray, bounds: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Whole videos, in order, concatenated."""
    frames, mask, packed = window_frames(bounds[videos], bounds[videos + 1] - bounds[videos])
    with torch.no_grad():
        pred = model(torch.from_numpy(x)[frames], packed)
    return pred[mask].numpy()

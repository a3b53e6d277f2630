"""What is delivered, and an honest estimate of that choice.

The rule (the one-standard-error rule of Breiman et al., 1984): among the methods, simplest first,
deliver the first whose out-of-fold score is within one standard error of the best one's, the
standard error being that of their difference under a paired bootstrap over videos. A fitted fusion
is so delivered only when it beats the chosen config's seed ensemble by more than that noise.

The best of several noisy scores is biased upward, so the delivered method's own out-of-fold score
overstates it. Nested cross-validation repeats the whole choice (which config is chosen, which method
is delivered) inside each outer fold from the other folds' videos alone, every method refit inside
them, and scores the choice on the outer fold; the outer folds' predictions together are the estimate.
The search itself is not rerun: the retrained models' out-of-split predictions are its inputs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.bootstrap import Interval, interval, resampled_ccc
from search.retrain.fusion import FusionData, Fused, Job, Method, cross_fit, cross_fit_jobs

DRAWS = 500  # bootstrap draws for a standard error: enough for its first digit, cheap from per-video sums


@dataclass
class Choice:
    delivered: str
    scores: dict[str, float]  # out-of-fold score per method, on the videos the choice was made on
    standard_errors: dict[str, float]  # of the best method's score minus each method's


@dataclass
class Nested:
    estimate: Interval  # the delivered choice's score, made and scored fold by fold, with a bootstrap interval
    choices: list[str]  # the method each outer fold's choice delivered
    scored: list[np.ndarray]  # per outer fold, the pooled videos its choice was scored on (the others fit it)


def one_se_rule(preds: dict[str, np.ndarray], data: FusionData, videos: np.ndarray) -> Choice:
    """The simplest method within one standard error of the best, by their predictions of these pooled
    videos (rows in the order of `videos`)."""
    rows = data.rows(videos)
    labels = data.labels[rows]
    video_of_frame = np.repeat(np.arange(len(videos)), data.bounds[videos + 1] - data.bounds[videos])
    scores = {m: float(np.mean(list(data.scores(p, rows).values()))) for m, p in preds.items()}
    best = max(scores, key=scores.get)
    draws = {m: resampled_ccc(p, labels, video_of_frame, n=DRAWS, seed=0) for m, p in preds.items()}
    errors = {m: float(np.std(draws[best] - draws[m], ddof=1)) for m in preds}
    order = [m for m in Method.simple_first if m in preds]
    delivered = next(m for m in order if scores[best] - scores[m] <= errors[m])
    return Choice(delivered, scores, errors)


def choose(methods: list[Method], log: Callable[[str], None]) -> tuple[list[Fused], Choice, Nested]:
    """Every method cross-fit over the pooled videos' folds, the delivered choice among them, and its
    nested estimate. Each method's fits for both run in one batch (the LSTM's in parallel)."""
    data = methods[0].data
    outer = cross_fit_jobs(data)
    inner = _inner_jobs(data)
    results = {}
    for m in methods:
        out = m.run(outer + [job for jobs in inner for job in jobs])
        results[m.name] = (out[:len(outer)], out[len(outer):])
    fusions = [cross_fit(m, results[m.name][0]) for m in methods]
    everything = np.arange(len(data.bounds) - 1)
    choice = one_se_rule({f.method: f.oof[data.rows(everything)] for f in fusions}, data, everything)
    nested = _nested(data, outer, inner, results)
    for f in fusions:
        log(f"  {f.method:16s} out-of-fold CCC {f.score:.4f}  (best minus it: ±{choice.standard_errors[f.method]:.4f} SE)")
    log(f"delivered: {choice.delivered}, the simplest within one standard error of the best; the choice made "
        f"inside each outer fold ({', '.join(nested.choices)}) scores {nested.estimate.estimate:.4f} "
        f"[{nested.estimate.low:.4f}, {nested.estimate.high:.4f}] (nested cross-validation, 95 % over videos)")
    return fusions, choice, nested


def _inner_jobs(data: FusionData) -> list[list[Job]]:
    """Per outer fold k: each other fold j predicted by a fit on the folds that are neither k nor j."""
    folds, out = data.folds, []
    for k in range(len(folds)):
        others = [j for j in range(len(folds)) if j != k]
        out.append([([folds[i] for i in others if i != j], folds[j]) for j in others])
    return out


def _nested(data: FusionData, outer: list[Job], inner: list[list[Job]],
            results: dict[str, tuple[list, list]]) -> Nested:
    preds = np.empty_like(data.labels, dtype=np.float32)
    choices = []
    position = 0
    for k, (_, held_out) in enumerate(outer):
        jobs = inner[k]
        inner_videos = np.concatenate([videos for _, videos in jobs])
        inner_preds = {m: np.concatenate([p for p, _ in out[position:position + len(jobs)]])
                       for m, (_, out) in results.items()}
        choice = one_se_rule(inner_preds, data, inner_videos)
        choices.append(choice.delivered)
        preds[data.rows(held_out)] = results[choice.delivered][0][k][0]
        position += len(jobs)
    video_of_frame = np.repeat(np.arange(len(data.bounds) - 1), np.diff(data.bounds))
    return Nested(interval(preds, data.labels, video_of_frame), choices, [held_out for _, held_out in outer])

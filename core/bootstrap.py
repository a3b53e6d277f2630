"""Bootstrap intervals for a CCC, resampling whole videos.

Frames of one video are strongly autocorrelated, so the unit of resampling is the video, never the
frame: each draw takes as many videos as there are, with replacement, and computes the CCC over the
concatenated frames of the drawn videos (a video drawn twice counts twice). A CCC needs only the frame
count and the sums of x, y, x², y² and xy, so each video is reduced to those once and a draw's CCC
follows from their sums: all draws at once are one matrix product. A paired interval for the difference
of two predictions draws the same videos for both sides, so what they share (hard videos, errors of a
whole video) cancels out of the difference.

    estimate, low, high = interval(pred, labels, corpus.bounds("devel"))
    difference, low, high = paired_interval(pred_a, pred_b, labels, corpus.bounds("devel"))
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from core.errors import ConfigError, DataError
from core.metrics import ccc


class Interval(NamedTuple):
    estimate: float  # on every video once: the CCC (or difference) as reported
    low: float
    high: float


def interval(pred: np.ndarray, labels: np.ndarray, videos: np.ndarray, *, n: int = 1000, seed: int = 0,
             level: float = 0.95) -> Interval:
    """The CCC of pred against labels, with a percentile bootstrap interval over videos.

    pred, labels: (frames,) or (frames, targets); with several targets the CCC is their mean, as a
    study scores. videos: where each video's frames are, either as bounds (V + 1,) from 0 to frames,
    as Corpus.bounds(partition) gives, or as one video id per frame (frames,); an array as long as the
    frames is read as ids.
    """
    return _percentiles(_ccc_on_all(pred, labels), resampled_ccc(pred, labels, videos, n=n, seed=seed), level)


def paired_interval(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, videos: np.ndarray, *,
                    n: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """CCC(pred_a) - CCC(pred_b), with a percentile bootstrap interval in which every draw takes the same
    videos for both predictions. Arguments as for interval()."""
    draws_a = resampled_ccc(pred_a, labels, videos, n=n, seed=seed)
    draws_b = resampled_ccc(pred_b, labels, videos, n=n, seed=seed)  # one seed: the same videos in each draw
    return _percentiles(_ccc_on_all(pred_a, labels) - _ccc_on_all(pred_b, labels), draws_a - draws_b, level)


def resampled_ccc(pred: np.ndarray, labels: np.ndarray, videos: np.ndarray, *, n: int = 1000,
                  seed: int = 0) -> np.ndarray:
    """(n,) the CCC (mean over targets) of each of n draws of videos with replacement. The draws depend
    only on seed and the number of videos: two predictions of the same videos with the same seed are
    drawn alike, which is what pairs them."""
    if n < 1:
        raise ConfigError(f"n: the number of bootstrap draws must be at least 1 (got {n})", field="n")
    pred, labels = _columns(pred, labels)
    counts, moments = _video_moments(pred, labels, _bounds_and_order(videos, len(pred)))
    drawn = np.random.default_rng(seed).multinomial(len(counts), np.full(len(counts), 1 / len(counts)), size=n)
    sums = (drawn @ moments.reshape(len(counts), -1)).reshape(n, *moments.shape[1:])
    return _ccc_from_sums(drawn @ counts, sums).mean(axis=1)


def _percentiles(estimate: float, draws: np.ndarray, level: float) -> Interval:
    if not 0 < level < 1:
        raise ConfigError(f"level: an interval's coverage must be in (0, 1), e.g. 0.95 (got {level})", field="level")
    low, high = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(low), float(high))


def _ccc_on_all(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = _columns(pred, labels)
    return float(np.mean([ccc(pred[:, j], labels[:, j]) for j in range(pred.shape[1])]))


def _columns(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as (frames, targets) float64, after checking they match and hold numbers."""
    pred, labels = np.asarray(pred, np.float64), np.asarray(labels, np.float64)
    if pred.shape != labels.shape or pred.ndim not in (1, 2) or len(pred) == 0:
        raise DataError(f"bootstrap: pred and labels must be (frames,) or (frames, targets) arrays of one shape "
                        f"(got pred {pred.shape}, labels {labels.shape})")
    if not (np.isfinite(pred).all() and np.isfinite(labels).all()):
        raise DataError("bootstrap: pred and labels must be finite numbers (found NaN or inf)")
    return pred.reshape(len(pred), -1), labels.reshape(len(labels), -1)


def _bounds_and_order(videos: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Each video's first row in frame order `order`, whichever way the videos were given."""
    videos = np.asarray(videos)
    if len(videos) == frames:  # one video id per frame, in any order
        order = np.argsort(videos, kind="stable")
        starts = np.flatnonzero(np.r_[True, videos[order][1:] != videos[order][:-1]])
    elif len(videos) >= 2 and videos[0] == 0 and videos[-1] == frames and (np.diff(videos) >= 0).all():
        order = np.arange(frames)
        starts = np.unique(videos[:-1])  # a video without frames adds nothing to any draw
    else:
        raise DataError(f"bootstrap: videos must be bounds rising from 0 to {frames} (V + 1 values) or one video "
                        f"id per frame ({frames} values); got {len(videos)} values")
    if len(starts) < 2:
        raise DataError("bootstrap: resampling videos needs at least 2 videos with frames (got "
                        f"{len(starts)})")
    return starts, order


def _video_moments(pred: np.ndarray, labels: np.ndarray,
                   starts_and_order: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(V,) frames per video and (V, targets, 5) its sums of x, y, x², y², xy. Both sides are first
    shifted by the labels' mean (a CCC does not change when both are shifted alike), so the sums of
    squares do not swamp the variances in float64."""
    starts, order = starts_and_order
    shift = labels.mean(axis=0)
    x, y = pred[order] - shift, labels[order] - shift
    per_frame = np.stack([x, y, x * x, y * y, x * y], axis=-1)
    counts = np.diff(np.r_[starts, len(order)]).astype(np.float64)
    return counts, np.add.reduceat(per_frame, starts, axis=0)


def _ccc_from_sums(count: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """(..., targets) CCC from frame counts (...,) and sums (..., targets, 5), as core.metrics.ccc
    computes it over the frames themselves (variances over n, not n - 1)."""
    mean_x, mean_y, xx, yy, xy = np.moveaxis(sums / count[..., None, None], -1, 0)
    cov = xy - mean_x * mean_y
    return 2 * cov / (xx - mean_x ** 2 + yy - mean_y ** 2 + (mean_x - mean_y) ** 2)

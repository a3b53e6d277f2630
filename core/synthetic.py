"""A synthetic data set in the exact MuSe-Wild 2020 layout, whose labels need temporal context.

    python -m core.synthetic data/synthetic --videos 150 --seed 0

How the labels are made, and why each part is there:
- Latent arousal and valence are smooth (Gaussian-filtered noise, seconds long), plus a level per
  topic segment and per video: the label of a frame is predictable from its neighbourhood.
- Labels lag the latent by `lag` frames (annotators react late; 8 = 2 s by default): a model must look back.
- Each frame's features carry the latent under heavy noise, so one frame alone predicts little
  (a per-frame linear model reaches about 0.1-0.3 devel CCC); averaging over context recovers it.
- Acoustic features (eGeMAPS-like) carry mostly arousal, in columns of wildly different scales and
  offsets, plus a per-video channel offset: train-set normalization matters.
- Text features (FastText-like) carry valence, constant over each word and silent (zero) between
  words, on top of a topic vector that changes per segment.
- Embedding features (VGGish-like, and any other name) carry both, more weakly.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from core.errors import ConfigError, DataError, run_command
from core.muse_files import FEATURE_DIR, FRAME_MS, PARTITION_FILE, TARGETS, feature_file, label_file

DEFAULT_FEATURES = {"egemaps": 88, "vggish": 128, "fasttext": 300}
LAG = 8  # frames (2 s) by which labels trail the features, by default
MANIFEST = "synthetic.json"  # the settings a root was written with
PARTITION_SHARES = {"train": 0.57, "devel": 0.21, "test": 0.22}  # as in MuSe-Wild: 166 / 62 / 63 videos


def kind_of(feature_set: str) -> str:
    return {"egemaps": "acoustic", "fasttext": "text"}.get(feature_set, "embedding")


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(x, radius, mode="reflect")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-8)


class DataSetParams:
    """What all videos share: feature loadings, column scales, topic vectors. Drawn from the seed alone."""

    def __init__(self, seed: int, feature_dims: dict[str, int]):
        rng = np.random.default_rng([seed, 1 << 30])
        self.sets = {}
        for name, dim in feature_dims.items():
            kind = kind_of(name)
            arousal_weight, valence_weight = {"acoustic": (1.0, 0.25), "text": (0.0, 1.0),
                                              "embedding": (0.6, 0.6)}[kind]
            loadings = np.stack([arousal_weight * rng.standard_normal(dim),
                                 valence_weight * rng.standard_normal(dim)]) / np.sqrt(dim)
            if kind == "acoustic":  # eGeMAPS columns range from tiny ratios to Hz and dB
                scale = 10.0 ** rng.uniform(-2, 2, dim)
                centre = scale * rng.normal(0, 2, dim)
            else:
                scale, centre = np.full(dim, 0.1 if kind == "text" else 1.0), np.zeros(dim)
            self.sets[name] = dict(kind=kind, loadings=loadings.astype(np.float32),
                                   scale=scale.astype(np.float32), centre=centre.astype(np.float32),
                                   topics=rng.standard_normal((64, dim)).astype(np.float32),
                                   decimals=np.clip(3 - np.floor(np.log10(scale)), 0, 8))


# Per-frame noise of each column, against loadings of unit norm: the best per-frame linear read-out
# of the latent then has a signal-to-noise ratio of var(latent) / NOISE**2, whatever the dimension.
NOISE = {"acoustic": 1.4, "embedding": 2.0, "text": 1.3}


def make_video(video_id: int, seed: int, params: DataSetParams, n_frames: int, nan_rate: float, lag: int = LAG,
               noise: float = 1.0) -> dict:
    rng = np.random.default_rng([seed, video_id])
    n = n_frames
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(100, 500)))
    segment_ids = np.repeat(np.arange(1, len(lengths) + 1), lengths)[:n]
    n_segments = int(segment_ids[-1])

    # Latent emotion: video level + topic-segment level (softened: annotators glide) + smooth drift.
    seg_arousal, seg_valence = rng.normal(0, 0.2, n_segments), rng.normal(0, 0.35, n_segments)
    arousal = (rng.normal(0, 0.2) + smooth(seg_arousal[segment_ids - 1], 6)
               + 0.45 * standardized(smooth(rng.standard_normal(n), 10)))
    valence = (rng.normal(0, 0.2) + smooth(seg_valence[segment_ids - 1], 6)
               + 0.3 * standardized(smooth(rng.standard_normal(n), 16)))
    latent = np.stack([arousal, valence], axis=1).astype(np.float32)

    delayed = latent[np.maximum(np.arange(n) - lag, 0)]
    labels = np.round(np.clip(np.tanh(1.3 * delayed) + rng.normal(0, 0.02, delayed.shape), -1, 1), 4)

    features = {}
    for name, p in params.sets.items():
        signal = latent @ p["loadings"]
        dim = signal.shape[1]
        noise_scale = np.float32(noise * NOISE[p["kind"]])
        if p["kind"] == "text":  # one vector per word (2-6 frames), zeros for the ~20 % silent words
            word_lengths = rng.integers(2, 7, n // 2 + 1)
            word_of_frame = np.repeat(np.arange(word_lengths.size), word_lengths)[:n]
            starts = np.concatenate([[0], np.cumsum(word_lengths)[:-1]])[: word_of_frame[-1] + 1]
            topic = p["topics"][rng.integers(0, 64, n_segments)] * np.float32(0.3)
            words = (signal[starts] + topic[segment_ids[starts] - 1]
                     + noise_scale * rng.standard_normal((starts.size, dim), dtype=np.float32))
            words[rng.random(starts.size) < 0.2] = 0
            x = words[word_of_frame]
        else:
            channel = rng.normal(0, 0.2, dim).astype(np.float32)
            x = signal + channel + noise_scale * rng.standard_normal((n, dim), dtype=np.float32)
        x = x * p["scale"] + p["centre"]
        factor = 10.0 ** p["decimals"]
        x = (np.rint(x * factor) / factor).astype(np.float32)
        if nan_rate > 0:
            x[rng.random(x.shape) < nan_rate] = np.nan
        features[name] = x
    return {"segment_ids": segment_ids, "labels": labels.astype(np.float32), "features": features}


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(pa.table(columns), path, pacsv.WriteOptions(quoting_style="none", quoting_header="none", batch_size=4096))


def write_video(root: Path, video_id: int, video: dict, write_labels: bool) -> None:
    n = video["segment_ids"].size
    index = {"timestamp": np.arange(n, dtype=np.int64) * FRAME_MS, "segment_id": video["segment_ids"]}
    for name, x in video["features"].items():
        by_column = np.ascontiguousarray(x.T)
        _write_csv(feature_file(root, name, video_id),
                   index | {f"{name}_{j}": by_column[j] for j in range(x.shape[1])})
    if write_labels:
        for j, target in enumerate(TARGETS):
            _write_csv(label_file(root, target, video_id), {"timestamp": index["timestamp"],
                                                            "value": video["labels"][:, j],
                                                            "segment_id": index["segment_id"]})


def _make_and_write(job: tuple) -> int:
    root, video_id, seed, feature_dims, n_frames, nan_rate, write_labels, lag, noise = job
    video = make_video(video_id, seed, DataSetParams(seed, feature_dims), n_frames, nan_rate, lag, noise)
    write_video(root, video_id, video, write_labels)
    return n_frames


def generate(root: str | Path, videos: int = 150, seed: int = 0, feature_dims: dict[str, int] | None = None,
             min_frames: int = 800, max_frames: int = 3000, nan_rate: float = 0.0,
             test_labels: bool = True, lag: int = LAG, noise: float = 1.0,
             workers: int | None = None) -> dict[str, list[int]]:
    """Write the data set under `root` (and its settings, in synthetic.json); returns the video ids of each
    partition. `noise` scales every feature set's per-frame noise."""
    settings = settings_of(videos, seed, feature_dims, min_frames, max_frames, nan_rate, test_labels, lag, noise)
    if videos < 3:
        raise ConfigError("videos: need at least 3 (one per partition)")
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        if written_with(root) is None:
            raise DataError(f"{root} exists and was not written by this generator; choose a new or empty folder")
        for part in (FEATURE_DIR.parts[0], PARTITION_FILE.parts[0], MANIFEST):  # an earlier synthetic set: replace it
            shutil.rmtree(root / part, ignore_errors=True) if part != MANIFEST else (root / part).unlink()
    feature_dims = feature_dims or DEFAULT_FEATURES
    rng = np.random.default_rng([seed, 1 << 31])
    ids = np.sort(rng.choice(np.arange(1, 3 * videos + 1), videos, replace=False))
    shuffled = rng.permutation(ids)
    n_train = max(1, round(videos * PARTITION_SHARES["train"]))
    n_devel = max(1, round(videos * PARTITION_SHARES["devel"]))
    split = {"train": sorted(shuffled[:n_train].tolist()), "devel": sorted(shuffled[n_train:n_train + n_devel].tolist()),
             "test": sorted(shuffled[n_train + n_devel:].tolist())}
    frames = rng.integers(min_frames, max_frames + 1, videos)
    partition_of = {v: p for p, vs in split.items() for v in vs}
    jobs = [(root, int(v), seed, feature_dims, int(n), nan_rate, test_labels or partition_of[int(v)] != "test",
             lag, noise) for v, n in zip(ids, frames)]
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        list(pool.map(_make_and_write, jobs, chunksize=4))
    rows = [(v, partition_of[int(v)]) for v in ids] + [(ids[0], partition_of[int(ids[0])])]  # MuSe repeats some
    _write_csv(root / PARTITION_FILE, {"Id": np.array([r[0] for r in rows]), "Proportion": [r[1] for r in rows]})
    (root / MANIFEST).write_text(json.dumps(settings | {"split": split}))
    return split


def settings_of(videos: int = 150, seed: int = 0, feature_dims: dict[str, int] | None = None, min_frames: int = 800,
                max_frames: int = 3000, nan_rate: float = 0.0, test_labels: bool = True, lag: int = LAG,
                noise: float = 1.0) -> dict:
    """What a root written with these arguments holds; equal settings write equal files."""
    return {"videos": videos, "seed": seed, "feature_dims": feature_dims or DEFAULT_FEATURES, "min_frames": min_frames,
            "max_frames": max_frames, "nan_rate": nan_rate, "test_labels": test_labels, "lag": lag, "noise": noise}


def written_with(root: str | Path) -> dict | None:
    """The settings a root was generated with (None if it was not, or not completely)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "split"}


def parse_dims(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, _, dim = item.partition(":")
        dims[name] = int(dim) if dim else DEFAULT_FEATURES.get(name, 64)
    return dims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="data root to write (the MuSe layout goes under it)")
    parser.add_argument("--videos", type=int, default=150, help="videos in all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--features", nargs="+", default=[f"{k}:{v}" for k, v in DEFAULT_FEATURES.items()],
                        metavar="NAME[:DIM]", help="feature sets and their dimensions (default: %(default)s)")
    parser.add_argument("--min-frames", type=int, default=800, help="shortest video, frames (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=3000, help="longest video, frames (default: %(default)s)")
    parser.add_argument("--lag", type=int, default=LAG, help="frames labels trail the features (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=1.0, help="scale of the per-frame feature noise "
                                                                 "(default: %(default)s)")
    parser.add_argument("--nan-rate", type=float, default=0.0,
                        help="fraction of feature cells written as NaN (default: %(default)s)")
    parser.add_argument("--withhold-test-labels", action="store_true",
                        help="write no test label files, as in the real challenge")
    args = parser.parse_args(argv)

    def body() -> None:
        start = time.perf_counter()
        split = generate(args.out, args.videos, args.seed, parse_dims(args.features), args.min_frames,
                         args.max_frames, args.nan_rate, not args.withhold_test_labels, args.lag, args.noise)
        counts = ", ".join(f"{p} {len(v)}" for p, v in split.items())
        print(f"wrote {args.videos} videos ({counts}) to {args.out} in {time.perf_counter() - start:.1f} s")
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

"""A MuSe data set in memory: one contiguous float32 matrix per feature set, labels, train statistics.

Videos are ordered train, devel, test, so each partition is one contiguous range of frames and a
window is just a (start, length) pair into these arrays. Test labels are read only when asked for:
a corpus loaded without them (as every search loads it) does not hold them and refuses to give them.
Gaps in the features (empty, NaN or inf cells) stay NaN here: each run fills them with its columns'
means over the videos it trains on (core.batching), so no statistic of other videos reaches it.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from core.cache import EntryWriter, default_cache_dir, derived, entry_dir, parse_in_order, read_entry
from core.errors import ConfigError, DataError, TestLabelsLocked
from core.muse_files import (FEATURE_DIR, LABEL_DIR, PARTITIONS, TARGETS, FeatureFile, check_files, feature_file,
                             feature_sets_in, label_file, read_feature_file, read_label_file, read_partition)

NONFINITE_MODES = ("mean", "error")


@dataclass
class Corpus:
    root: str
    feature_sets: tuple[str, ...]
    targets: tuple[str, ...]
    video_ids: np.ndarray  # (V,) int64
    offsets: np.ndarray  # (V + 1,) int64: video i holds frames offsets[i]:offsets[i + 1]
    partition_videos: dict[str, tuple[int, int]]  # [first, last + 1) video index of each partition
    timestamps: np.ndarray  # (N,) int64 milliseconds
    segment_ids: np.ndarray  # (N,) int32
    features: dict[str, np.ndarray]  # name -> (N, D) float32, NaN in the gaps
    video_sums: dict[str, np.ndarray]  # name or "seg_id" -> (V, 2, D) float64: per video, sum and sum of squares
                                       # of the cells that are not gaps
    labels: np.ndarray  # (frames with labels, T): train and devel, plus test only if loaded with test labels
    has_test_labels: bool
    fingerprint: str  # content of the loaded sets, labels (not test's) and partition: provenance
    content_hashes: dict[str, str] = field(default_factory=dict)  # "features:<set>" / "labels:<target>"
    nonfinite: dict[str, int] = field(default_factory=dict)  # feature set -> cells that were NaN or inf
    video_gaps: dict[str, np.ndarray] = field(default_factory=dict)  # set with gaps -> (V, D) int64 gaps per video
    parsed: tuple[str, ...] = ()  # cache entries this load built from CSV (empty: all from the cache)

    def videos(self, partition: str) -> range:
        return range(*self.partition_videos[partition])

    def lengths(self, videos) -> np.ndarray:
        return (self.offsets[np.asarray(videos) + 1] - self.offsets[np.asarray(videos)]).astype(np.int64)

    def frame_index(self, videos) -> np.ndarray:
        """Corpus frame indices of the given videos, concatenated in the order given."""
        videos = np.asarray(videos, dtype=np.int64)
        lengths = self.lengths(videos)
        starts = np.repeat(self.offsets[videos] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return starts + np.arange(int(lengths.sum()))

    def stats_for(self, videos) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Mean and std per column over the frames of these videos (a split's training videos), for
        every feature set and the segment id. The mean is over the cells that are not gaps, and it is what
        a run trained on these videos fills its gaps with; the std is that of the frames so filled. A column
        constant there is only centred."""
        videos = np.asarray(videos, dtype=np.int64)
        n = int(self.lengths(videos).sum())
        stats = {}
        for name, sums in self.video_sums.items():
            total, squares = sums[videos].sum(axis=0)
            gaps = self.video_gaps[name][videos].sum(axis=0) if name in self.video_gaps else 0
            mean = total / np.maximum(n - gaps, 1)
            std = np.sqrt(np.maximum((squares + gaps * mean ** 2) / n - mean ** 2, 0.0))
            stats[name] = mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)
        return stats

    def labels_for(self, videos) -> np.ndarray:
        """(frames, targets) labels of these videos, concatenated; test videos need a corpus loaded with test labels."""
        videos = np.asarray(videos, dtype=np.int64)
        if not self.has_test_labels and np.any(videos >= self.partition_videos["test"][0]):
            self.labels_of("test")  # raises TestLabelsLocked
        return self.labels[self.frame_index(videos)]

    def frames(self, partition: str) -> slice:
        first, stop = self.partition_videos[partition]
        return slice(int(self.offsets[first]), int(self.offsets[stop]))

    def bounds(self, partition: str) -> np.ndarray:
        """Where each video of the partition starts (and the last ends), counted from the partition's first frame."""
        videos = self.videos(partition)
        return self.offsets[videos.start:videos.stop + 1] - self.offsets[videos.start]

    def fingerprint_of(self, feature_sets, targets) -> str:
        """The fingerprint a corpus of just these feature sets and targets would have."""
        split = {p: self.video_ids[slice(*self.partition_videos[p])].tolist() for p in PARTITIONS}
        return _fingerprint(split, self.content_hashes, tuple(feature_sets), tuple(targets))

    def labels_of(self, partition: str) -> np.ndarray:
        if partition == "test" and not self.has_test_labels:
            raise TestLabelsLocked("this corpus was loaded without test labels (as every search is); "
                                   "load it with test_labels=True to evaluate on test, once, at the end")
        return self.labels[self.frames(partition)]

    def __getstate__(self) -> dict:
        """Pickled (as Ray ships it), a memory-mapped feature set travels as its cache file's name: every
        process on the machine maps that one file. A corpus from in_memory() travels by value."""
        return self.__dict__ | {"features": {n: ("map", a.filename, a.shape) if isinstance(a, np.memmap) else a
                                             for n, a in self.features.items()}}

    def __setstate__(self, state: dict) -> None:
        state["features"] = {n: np.memmap(a[1], dtype=np.float32, mode="r", shape=a[2]) if isinstance(a, tuple) else a
                             for n, a in state["features"].items()}
        self.__dict__.update(state)

    def in_memory(self) -> Corpus:
        """The same corpus with its features read into memory: for machines that cannot see the cache files."""
        return dataclasses.replace(self, features={n: np.array(a) for n, a in self.features.items()})

    @property
    def data_bytes(self) -> int:
        return sum(a.nbytes for a in self.features.values())

    @property
    def dims(self) -> dict[str, int]:
        return {name: values.shape[1] for name, values in self.features.items()}

    def describe(self) -> str:
        counts = ", ".join(f"{p} {len(self.videos(p))}" for p in PARTITIONS)
        sets = ", ".join(f"{n} ({d})" for n, d in self.dims.items())
        gaps = "".join(f"; {n}: {c} NaN/inf cells, each run fills them with its training videos' mean"
                       for n, c in self.nonfinite.items() if c)
        return f"{len(self.video_ids)} videos ({counts}), {len(self.timestamps)} frames, features {sets}{gaps}"


def load_corpus(root: str | Path, feature_sets: list[str] | tuple[str, ...],
                targets: list[str] | tuple[str, ...] = TARGETS, *, test_labels: bool = False,
                nonfinite: str = "mean", cache_dir: Path | None = None,
                log: Callable[[str], None] | None = None) -> Corpus:
    """Read (or take from the cache) the given feature sets and targets of the MuSe data set at `root`;
    log, if given, hears how far a first parse got every 10 s. nonfinite="error" refuses feature sets
    with gaps instead of leaving them to each run to fill."""
    root = Path(root)
    feature_sets, targets = tuple(feature_sets), tuple(targets)
    _check_names(root, feature_sets, targets, nonfinite)
    split = read_partition(root)
    videos = [v for p in PARTITIONS for v in split[p]]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    parsed: list[str] = []

    entries, rows, reference = _load_features(root, feature_sets, videos, cache_dir, parsed, log)
    labels, label_hashes = _load_labels(root, targets, split, test_labels, reference, cache_dir, parsed, log)
    offsets = np.concatenate([[0], np.cumsum(rows["lengths"])]).astype(np.int64)
    if nonfinite == "error":
        _refuse_gaps(root, entries)
    gaps = {name: sum(manifest["nonfinite"].values()) for name, (_, manifest, _) in entries.items()}
    sums, video_gaps = {}, {}
    for name, (folder, _, values) in entries.items():
        sums[name] = _derived_array(folder, "sums-raw.npy", partial(_video_sums, values, offsets))
        if gaps[name]:
            video_gaps[name] = _derived_array(folder, "gaps.npy", partial(_video_gaps, values, offsets))
    sums["seg_id"] = _video_sums(rows["segment_ids"][:, None].astype(np.float32), offsets)

    bounds = np.cumsum([0] + [len(split[p]) for p in PARTITIONS])
    hashes = {f"features:{n}": entries[n][1]["content_hash"] for n in feature_sets}
    hashes |= {f"labels:{t}": h for t, h in zip(targets, label_hashes)}
    return Corpus(
        root=str(root), feature_sets=feature_sets, targets=targets,
        video_ids=np.asarray(videos, dtype=np.int64), offsets=offsets,
        partition_videos={p: (int(bounds[i]), int(bounds[i + 1])) for i, p in enumerate(PARTITIONS)},
        timestamps=rows["timestamps"], segment_ids=rows["segment_ids"],
        features={name: values for name, (_, _, values) in entries.items()}, video_sums=sums, labels=labels,
        has_test_labels=test_labels, fingerprint=_fingerprint(split, hashes, feature_sets, targets),
        content_hashes=hashes, nonfinite=gaps, video_gaps=video_gaps, parsed=tuple(parsed))


def _load_features(root: Path, feature_sets: tuple[str, ...], videos: list[int], cache_dir: Path, parsed: list[str],
                   log) -> tuple[dict[str, tuple], dict[str, np.ndarray], dict[int, tuple[Path, np.ndarray]]]:
    """Each feature set's cache entry (folder, manifest, values); the first set's rows (lengths per video,
    timestamps, segment ids), which every other set and the labels must match; and each video's file and
    timestamps in it, to name the file a mismatch is checked against."""
    entries, rows, reference = {}, {}, {}
    for name in feature_sets:
        check_files(root / FEATURE_DIR / name, videos, f"'{name}' feature")
        folder, (manifest, values, arrays) = _feature_entry(root, name, videos, cache_dir, parsed, log)
        files = [feature_file(root, name, v) for v in videos]
        if not reference:
            rows = arrays
            reference = dict(zip(videos, zip(files, _per_video(arrays["timestamps"], arrays["lengths"]))))
        _check_aligned(files, videos, arrays, reference)
        entries[name] = (folder, manifest, values)
    return entries, rows, reference


def _load_labels(root: Path, targets: tuple[str, ...], split: dict[str, list[int]], test_labels: bool,
                 reference: dict[int, tuple[Path, np.ndarray]], cache_dir: Path, parsed: list[str],
                 log) -> tuple[np.ndarray, list[str]]:
    """(frames with labels, targets) labels of train and devel (and test, if asked for), and each
    target's content hash over train and devel."""
    videos = [v for p in PARTITIONS for v in split[p]]
    labelled = split["train"] + split["devel"]
    parts = [("labelled", labelled)] + ([("test", split["test"])] if test_labels else [])
    label_columns, label_hashes = [], []
    for target in targets:
        check_files(root / LABEL_DIR / target, labelled + (split["test"] if test_labels else []),
                    f"'{target}' label", videos)
        columns = []
        for part, ids in parts:
            manifest, values, arrays = _label_entry(root, target, part, ids, cache_dir, parsed, log)
            _check_aligned([label_file(root, target, v) for v in ids], ids, arrays, reference)
            columns.append(values)
            if part == "labelled":
                label_hashes.append(manifest["content_hash"])
        label_columns.append(np.concatenate(columns))
    return np.stack(label_columns, axis=1), label_hashes


def _refuse_gaps(root: Path, entries: dict[str, tuple]) -> None:
    for name, (_, manifest, _) in entries.items():
        gaps = sum(manifest["nonfinite"].values())
        if gaps:
            worst = sorted(manifest["nonfinite"].items(), key=lambda kv: -kv[1])[:10]
            files = ", ".join(f"{feature_file(root, name, v)} ({c})" for v, c in worst)
            raise DataError(f"feature set '{name}' has {gaps} NaN/inf cells: {files}; use nonfinite='mean' "
                            "(--nonfinite mean) to fill them with the mean of each run's training videos")


def _fingerprint(split: dict[str, list[int]], hashes: dict[str, str], feature_sets: tuple[str, ...],
                 targets: tuple[str, ...]) -> str:
    digest = hashlib.sha1(repr([(p, list(split[p])) for p in PARTITIONS]).encode())
    for name in feature_sets:
        digest.update(hashes[f"features:{name}"].encode())
    for target in targets:
        digest.update(f"{target}:{hashes[f'labels:{target}']}".encode())
    return digest.hexdigest()[:16]


def _check_names(root: Path, feature_sets: tuple[str, ...], targets: tuple[str, ...], nonfinite: str) -> None:
    if not feature_sets:
        raise ConfigError("feature_set: name at least one feature set")
    if len(set(feature_sets)) != len(feature_sets):
        raise ConfigError(f"feature_set: {', '.join(feature_sets)} names a set twice")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ConfigError(f"emo_dim_set: unknown target {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(TARGETS)}")
    if nonfinite not in NONFINITE_MODES:
        raise ConfigError(f"nonfinite: {nonfinite!r} is not one of {', '.join(NONFINITE_MODES)}")
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    available = feature_sets_in(root)
    for name in feature_sets:
        if name not in available:
            raise DataError(f"unknown feature set '{name}': no folder {root / FEATURE_DIR / name}; "
                            f"available: {', '.join(available) or 'none'}")


def _feature_entry(root: Path, name: str, videos: list[int], cache_dir: Path, parsed: list[str], log):
    files = [feature_file(root, name, v) for v in videos]
    folder = entry_dir(cache_dir, "features", name, files)
    if not (folder / "manifest.json").is_file():
        parsed.append(folder.name)
        writer = EntryWriter(folder)
        try:
            columns, lengths, timestamps, segment_ids, gaps, sums = None, [], [], [], {}, []
            for video, path, (f, video_sums) in zip(videos, files, parse_in_order(_read_with_sums, files,
                                                                                  f"'{name}'", log)):
                if columns is None:
                    columns = f.columns
                elif f.columns != columns:
                    raise DataError(f"{path}: {len(f.columns)} feature columns, but {files[0]} has "
                                    f"{len(columns)}; every '{name}' file needs the same columns")
                writer.append(f.values)
                lengths.append(len(f.timestamps))
                timestamps.append(f.timestamps)
                segment_ids.append(f.segment_ids)
                sums.append(video_sums)
                if f.nonfinite:
                    gaps[video] = f.nonfinite
            manifest = {"name": name, "videos": videos, "columns": columns, "nonfinite": gaps,
                        "shape": [int(sum(lengths)), len(columns)]}
            writer.publish(manifest, {"lengths": np.asarray(lengths, np.int64),
                                      "timestamps": np.concatenate(timestamps),
                                      "segment_ids": np.concatenate(segment_ids)})
        except BaseException:
            writer.discard()
            raise
        # the sums load_corpus needs, made while each file was at hand instead of in one more pass
        derived(folder, "sums-raw.npy", lambda out: np.save(out, np.concatenate(sums)))
    return folder, read_entry(folder, ("lengths", "timestamps", "segment_ids"))


def _read_with_sums(path: Path) -> tuple[FeatureFile, np.ndarray]:
    f = read_feature_file(path)
    return f, _video_sums(f.values, np.array([0, len(f.values)]))


def _label_entry(root: Path, target: str, part: str, videos: list[int], cache_dir: Path, parsed: list[str], log):
    files = [label_file(root, target, v) for v in videos]
    folder = entry_dir(cache_dir, f"labels-{part}", target, files)
    if not (folder / "manifest.json").is_file():
        parsed.append(folder.name)
        writer = EntryWriter(folder)
        try:
            lengths, timestamps = [], []
            for stamps, values in parse_in_order(read_label_file, files, f"'{target}' labels", log):
                writer.append(values)
                lengths.append(len(stamps))
                timestamps.append(stamps)
            writer.publish({"name": target, "videos": videos, "shape": [int(sum(lengths))]},
                           {"lengths": np.asarray(lengths, np.int64), "timestamps": np.concatenate(timestamps)})
        except BaseException:
            writer.discard()
            raise
    return read_entry(folder, ("lengths", "timestamps"))


def _per_video(array: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(array, np.cumsum(lengths)[:-1])


def _check_aligned(files: list[Path], videos: list[int], arrays: dict[str, np.ndarray],
                   reference: dict[int, tuple[Path, np.ndarray]]) -> None:
    """Every file's rows must match the first feature set's, timestamp for timestamp."""
    for path, video, mine in zip(files, videos, _per_video(arrays["timestamps"], arrays["lengths"])):
        ref_path, ref = reference[video]
        if np.array_equal(mine, ref):
            continue
        if len(mine) != len(ref):
            detail = f"{len(mine)} rows, but {ref_path} has {len(ref)}"
        else:
            row = int(np.flatnonzero(mine != ref)[0])
            detail = f"line {row + 2} has timestamp {mine[row]}, but {ref_path} has {ref[row]}"
        raise DataError(f"{path}: timestamps do not line up with the features: {detail}")


def _derived_array(folder: Path, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """An array made from a cache entry the first time it is asked for, and kept beside the entry."""
    return np.load(derived(folder, name, lambda out: np.save(out, make())))


def _video_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(V, 2, D) float64: each video's column sums and sums of squares over the cells that are not gaps,
    from which the statistics of any set of videos (a split's training videos) follow without another
    pass over the frames."""
    out = np.empty((len(offsets) - 1, 2, values.shape[1]))
    for v, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        block = values[a:b]  # summed in float64 without a float64 copy: a third of the time at 4,096 columns
        gaps = np.isnan(block)
        if gaps.any():
            block = np.where(gaps, np.float32(0), block)
        out[v, 0] = block.sum(axis=0, dtype=np.float64)
        out[v, 1] = np.einsum("ij,ij->j", block, block, dtype=np.float64)
    return out


def _video_gaps(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(V, D) int64: each video's gaps (NaN cells) per column."""
    return np.stack([np.isnan(values[a:b]).sum(axis=0) for a, b in zip(offsets[:-1], offsets[1:])]).astype(np.int64)

"""Training windows as (start, length) index ranges into a corpus' frame arrays: no data is copied."""
from __future__ import annotations

import numpy as np

from core.corpus import Corpus
from core.errors import ConfigError

SEGMENT_TYPES = ("normal", "id")


def spans(starts: np.ndarray, lengths: np.ndarray, win_len: int, hop_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of win_len every hop_len frames over each span; the last window of a span may be shorter.

    As in the entry: windows start at 0, hop, 2*hop, ... and stop once one reaches the span's end.
    """
    counts = np.maximum(1, -(-(lengths - win_len) // hop_len) + 1)  # ceil((n - win) / hop) + 1
    span = np.repeat(np.arange(len(starts)), counts)
    first_window = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.arange(counts.sum()) - np.repeat(first_window, counts)
    offset = k * hop_len
    return starts[span] + offset, np.minimum(win_len, lengths[span] - offset)


def train_windows(corpus: Corpus, win_len: int, hop_len: int,
                  segment_type: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the training windows: over whole videos ("normal") or within each topic segment ("id")."""
    if win_len < 1 or not 1 <= hop_len <= win_len:
        raise ConfigError(f"win_len/hop_len: need 1 <= hop_len <= win_len, got {win_len}/{hop_len}")
    if segment_type not in SEGMENT_TYPES:
        raise ConfigError(f"segment_type: {segment_type!r} is not one of {', '.join(SEGMENT_TYPES)}")
    frames, videos = corpus.frames("train"), corpus.videos("train")
    video_starts = corpus.offsets[videos.start:videos.stop]
    if segment_type == "normal":
        starts = video_starts
    else:  # a new span wherever the segment id changes or a video begins
        seg = corpus.segment_ids[frames]
        breaks = np.flatnonzero(np.diff(seg) != 0) + 1 + frames.start
        starts = np.union1d(video_starts, breaks)
    lengths = np.diff(np.append(starts, frames.stop))
    return spans(starts.astype(np.int64), lengths.astype(np.int64), win_len, hop_len)


def batch_order(lengths: np.ndarray, batch_size: int, win_len: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of window batches in random order.

    Full-length windows are batched apart from the shorter ones (video and segment ends), so most
    batches need neither masks nor packed sequences, which are what makes a recurrent net slow.
    The short ones are sorted by length before batching to keep their padding small.
    """
    order = rng.permutation(len(lengths))
    full, short = order[lengths[order] == win_len], order[lengths[order] < win_len]
    short = short[np.argsort(lengths[short], kind="stable")]
    batches = [group[i:i + batch_size] for group in (full, short) for i in range(0, len(group), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def video_batches(corpus: Corpus, partition: str, max_frames: int) -> list[np.ndarray]:
    """Video indices of a partition, longest first, in batches of at most max_frames once padded."""
    videos = np.arange(*corpus.partition_videos[partition])
    lengths = np.diff(corpus.offsets)[videos]
    order = np.argsort(-lengths, kind="stable")
    batches, current, longest = [], [], 0
    for video, length in zip(videos[order], lengths[order]):
        if current and longest * (len(current) + 1) > max_frames:
            batches.append(np.asarray(current))
            current = []
        longest = length if not current else longest
        current.append(video)
    return batches + [np.asarray(current)]

"""Training windows as (start, length) index ranges into a corpus' frame arrays: no data is copied."""
from __future__ import annotations

import numpy as np

from core.corpus import Corpus


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


def train_windows(corpus: Corpus, videos: np.ndarray, win_len: int, hop_len: int,
                  segment_type: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the training windows over these videos: over whole videos ("normal") or
    within each topic segment ("id")."""
    videos = np.sort(np.asarray(videos, dtype=np.int64))
    starts, lengths = corpus.offsets[videos], corpus.lengths(videos)
    if segment_type == "id":  # a new span wherever the segment id changes within a video
        frames = corpus.frame_index(videos)
        within = np.diff(frames) == 1  # neighbours in the same video
        changes = frames[1:][within & (np.diff(corpus.segment_ids[frames]) != 0)]
        starts = np.union1d(starts, changes)
        ends = np.union1d(corpus.offsets[videos + 1], changes)
        lengths = ends - starts
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


def video_batches(corpus: Corpus, videos: np.ndarray, max_frames: int) -> list[np.ndarray]:
    """The given videos, longest first, in batches of at most max_frames once padded."""
    videos = np.asarray(videos, dtype=np.int64)
    lengths = corpus.lengths(videos)
    order = np.argsort(-lengths, kind="stable")
    batches, current, longest = [], [], 0
    for video, length in zip(videos[order], lengths[order]):
        if current and longest * (len(current) + 1) > max_frames:
            batches.append(np.asarray(current))
            current = []
        longest = length if not current else longest
        current.append(video)
    return batches + [np.asarray(current)]

"""From corpus arrays to model tensors: one run's inputs on its device, gathered window by window."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from core.config import TrainConfig
from core.corpus import Corpus
from core.errors import ConfigError


@dataclass
class Batch:
    x: torch.Tensor  # (B, L, d_in)
    y: torch.Tensor | None  # (B, L, n_targets); None when labels were not asked for
    mask: torch.Tensor  # (B, L) bool, True on real frames
    lengths: torch.Tensor | None  # (B,) on the CPU; None when every sequence is L frames long
    frames: torch.Tensor  # (B, L) corpus frame index of each position (clamped on padding)


class FrameInputs:
    """The chosen feature sets (and segment id) of a corpus, on a device, standardized as configured
    with the statistics of the training videos, gaps filled with their columns' means over those videos.

    The corpus arrays are moved to the device once; each batch is gathered by index from them and
    standardized on the fly, so no per-run copy of the data set is ever made on the host (several
    trials sharing one corpus through Ray's object store stay at one copy).
    """

    def __init__(self, corpus: Corpus, cfg: TrainConfig, train_videos: np.ndarray,
                 device: torch.device | str = "cpu"):
        missing = [name for name in cfg.feature_set if name not in corpus.features]
        if missing:
            raise ConfigError(f"feature_set: {', '.join(missing)} not loaded (corpus has {', '.join(corpus.features)})")
        missing = [t for t in cfg.emo_dim_set if t not in corpus.targets]
        if missing:
            raise ConfigError(f"emo_dim_set: {', '.join(missing)} not loaded (corpus has {', '.join(corpus.targets)})")
        self.corpus, self.device = corpus, torch.device(device)
        names = (["seg_id"] if cfg.add_seg_id else []) + list(cfg.feature_set)
        blocks = [corpus.segment_ids[:, None].astype(np.float32) if n == "seg_id" else corpus.features[n] for n in names]
        self.blocks = [_tensor(values, self.device) for values in blocks]
        stats = corpus.stats_for(train_videos)
        means = [stats[n][0] if n in cfg.normalize else np.zeros(b.shape[1], np.float32) for n, b in zip(names, blocks)]
        stds = [stats[n][1] if n in cfg.normalize else np.ones(b.shape[1], np.float32) for n, b in zip(names, blocks)]
        self.mean = torch.tensor(np.concatenate(means), dtype=torch.float32, device=self.device)
        self.inv_std = 1 / torch.tensor(np.concatenate(stds), dtype=torch.float32, device=self.device)
        self.d_in = int(self.mean.numel())
        has_gaps = any(corpus.nonfinite.get(n) for n in names)
        self.fill = (torch.tensor(np.concatenate([stats[n][0] for n in names]), dtype=torch.float32,
                                  device=self.device) if has_gaps else None)
        columns = [corpus.targets.index(t) for t in cfg.emo_dim_set]
        self.labels = _tensor(np.ascontiguousarray(corpus.labels[:, columns]), self.device)

    def batch(self, starts: np.ndarray, lengths: np.ndarray, with_labels: bool = True) -> Batch:
        frames, mask, packed_lengths = window_frames(starts, lengths)
        frames, mask = frames.to(self.device), mask.to(self.device)
        flat = frames.flatten()
        x = torch.cat([block.index_select(0, flat) for block in self.blocks], dim=-1).view(*frames.shape, -1)
        if self.fill is not None:  # before the mask: NaN * 0 would stay NaN on padding
            x = torch.where(torch.isnan(x), self.fill, x)
        x.sub_(self.mean).mul_(self.inv_std).mul_(mask[..., None])  # in place: x is the largest tensor of a step
        y = self.labels.index_select(0, flat).view(*frames.shape, -1) if with_labels else None
        return Batch(x, y, mask, packed_lengths, frames)


def window_frames(starts: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Frame indices (B, L) of windows given as (start, length), padding masked (and clamped to the
    window's first frame), and the lengths the model needs, or None when every window fills L."""
    lengths_t = torch.from_numpy(np.asarray(lengths, dtype=np.int64))
    longest = int(lengths_t.max())
    steps = torch.arange(longest)
    mask = steps[None, :] < lengths_t[:, None]
    frames = torch.from_numpy(np.asarray(starts, dtype=np.int64))[:, None] + torch.where(mask, steps, 0)
    return frames, mask, None if bool((lengths_t == longest).all()) else lengths_t


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():
        # Arrays shared through Ray's object store are read-only; these tensors are never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)

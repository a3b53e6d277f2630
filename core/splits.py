"""Which videos a run trains on, selects its epoch on, and is scored on.

The standard split is the challenge's: train on train, select and score on devel (selection then
uses the scoring data, as the entry did). K-fold splits (K >= 3) pool train and devel videos (never
test) into K folds of whole videos; split k scores fold k, selects epochs (early stopping, learning
rate plateaus, best weights) on fold k+1 and trains on the rest, so the score of a split is not
biased by the choice of its epoch. The folds' scores together cover every pooled video once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.corpus import Corpus
from core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    name: str  # "devel" or "fold 2/5"
    train: np.ndarray  # video indices into the corpus
    select: np.ndarray
    score: np.ndarray

    @property
    def selects_on_score(self) -> bool:
        return np.array_equal(self.select, self.score)


def pooled_videos(corpus: Corpus, folds: int) -> np.ndarray:
    """The videos whose out-of-split predictions a protocol yields: devel for one fold, train + devel for K."""
    partitions = ("devel",) if folds == 1 else ("train", "devel")
    return np.concatenate([np.arange(*corpus.partition_videos[p]) for p in partitions])


def make_splits(corpus: Corpus, folds: int, seed: int = 0) -> list[Split]:
    """The standard split (folds == 1) or K rotating folds over train + devel videos, drawn with `seed`."""
    if folds == 1:
        devel = np.arange(*corpus.partition_videos["devel"])
        return [Split("devel", np.arange(*corpus.partition_videos["train"]), devel, devel)]
    videos = pooled_videos(corpus, folds)
    if folds < 3:
        raise ConfigError(f"folds: {folds} folds leave no fold to select epochs on; use 1 (train/devel as "
                          "given) or 3 or more", field="folds")
    if folds > len(videos):
        raise ConfigError(f"folds: {folds} folds, but train and devel hold only {len(videos)} videos",
                          field="folds")
    parts = [np.sort(p) for p in np.array_split(np.random.default_rng(seed).permutation(videos), folds)]
    return [Split(f"fold {k + 1}/{folds}", np.sort(np.concatenate([parts[j] for j in range(folds)
                                                                   if j not in (k, (k + 1) % folds)])),
                  parts[(k + 1) % folds], parts[k]) for k in range(folds)]

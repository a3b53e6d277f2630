"""Racing trials over training and over folds: where ASHA's rungs fall, and the scheduler itself.

ASHA's time is the training frames a trial has processed over all its folds; every fold is worth the
same frames, and the rungs are placed on fold ends.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from core.corpus import Corpus
from core.splits import Split
from search.study.file import StudySpec
from search.study.trainable import METRIC, TIME_ATTR


def fidelity(spec: StudySpec, corpus: Corpus, splits: list[Split]) -> tuple[int, int]:
    """Training frames per fold (every trial's cap on each split) and ASHA's grace period, both in
    training frames, so that a large batch and a small one are judged after the same work; the rungs
    (grace * factor**k) fall on the end of a fold."""
    per_pass = float(np.mean([corpus.lengths(s.train).sum() for s in splits]))
    within = spec.reduction_factor ** rungs_per_fold(spec)
    grace = max(1, round(per_pass * spec.max_epochs / within))
    return grace * within, grace


def rungs_per_fold(spec: StudySpec) -> int:
    """How many rungs fall inside one fold (the last on its end): grace_period, then x reduction_factor."""
    return max(0, math.floor(math.log(spec.max_epochs / spec.grace_period) / math.log(spec.reduction_factor) + 1e-9))


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped: Ray marks those done just like finished ones."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP:
            self.stopped.add(trial.trial_id)
        return decision


def rungs(frames_per_fold: int, grace: int, factor: int, folds: int) -> list[int]:
    """ASHA's milestones in training frames, short of the last fold's end (where a trial completes)."""
    out, milestone = [], grace
    while milestone < frames_per_fold * folds:
        out.append(milestone)
        milestone *= factor
    return out


def make_scheduler(spec: StudySpec, max_t: int, grace: int) -> tuple[TrialScheduler, Callable[[str], bool]]:
    """The study's scheduler, and how to tell whether it stopped a trial (Ray marks those done like finished ones)."""
    if spec.pruner == "none":
        return FIFOScheduler(), lambda trial_id: False
    scheduler = RecordingASHA(time_attr=TIME_ATTR, metric=METRIC, mode="max", max_t=max_t, grace_period=grace,
                              reduction_factor=spec.reduction_factor)
    return scheduler, scheduler.stopped.__contains__

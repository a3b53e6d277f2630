"""Racing trials over training and over folds: where ASHA's rungs fall, and the scheduler itself.

ASHA's time is the training frames a trial has processed over all its folds; every fold is worth the
same frames, and the rungs are placed on fold ends.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from core.corpus import Corpus
from core.splits import Split
from search.study.file import StudySpec
from search.study.trainable import METRIC, TIME_ATTR

RUNGS = "rungs"  # the study's user attribute: ASHA's milestones in training frames, for the sampler and the record


def fidelity(spec: StudySpec, corpus: Corpus, splits: list[Split]) -> tuple[int, int]:
    """Training frames per fold (every trial's cap on each split) and ASHA's grace period, both in
    training frames, so that a large batch and a small one are judged after the same work; the rungs
    (grace * factor**k) fall on the end of a fold."""
    per_pass = float(np.mean([corpus.lengths(s.train).sum() for s in splits]))
    within = spec.reduction_factor ** rungs_per_fold(spec)
    grace = max(1, round(per_pass * spec.max_epochs / within))
    return grace * within, grace


def rungs_per_fold(spec: StudySpec) -> int:
    """How many rungs fall inside one fold (the last on its end): grace_period, then x reduction_factor
    (the study file checked that they meet the fold's end)."""
    return round(math.log(spec.max_epochs / spec.grace_period) / math.log(spec.reduction_factor))


def rungs(frames_per_fold: int, grace: int, factor: int, folds: int) -> list[int]:
    """ASHA's milestones in training frames, short of the last fold's end (where a trial completes)."""
    out, milestone = [], grace
    while milestone < frames_per_fold * folds:
        out.append(milestone)
        milestone *= factor
    return out


def value_at(trial: FrozenTrial, milestone: int) -> float | None:
    """A trial's value at a rung: its first value reported at or after the milestone (steps are training
    frames, and a trial reports after every epoch), as ASHA saw it; None if it never got there."""
    return next((v for step, v in sorted(trial.intermediate_values.items()) if step >= milestone), None)


def rung_values(trials: Iterable[FrozenTrial], milestones: list[int]) -> dict[int, dict[int, float]]:
    """Per milestone, the value of each trial (by number) that reached it: the rung records, rebuilt from the study."""
    records: dict[int, dict[int, float]] = {m: {} for m in milestones}
    for trial in trials:
        for m in milestones:
            value = value_at(trial, m)
            if value is not None and math.isfinite(value):
                records[m][trial.number] = value
    return records


class RecordingASHA(FIFOScheduler):
    """Asynchronous successive halving (one bracket, as Ray's ASHAScheduler by default) that keeps its
    rung records in the study's terms (Optuna trial numbers), so a resumed study races against every
    trial it already ran, and that remembers where it stopped each trial (Ray marks those done just
    like finished ones).

    A trial reaching a rung goes on if its value there is at least the cutoff over the trials already
    recorded there (the top 1/factor of them), as in Ray. With `rejudge`, a trial let through with fewer
    than `factor` trials reported there (the first always is: no peers) is judged again at its next
    result once they have, against all of them, and stopped if it falls below: no config, the warm
    start included, completes on a free pass while its peers are still training.
    """

    def __init__(self, milestones: list[int], factor: int, rejudge: bool, records: dict[int, dict[int, float]]):
        super().__init__()
        self.milestones, self.factor, self.rejudge = milestones, factor, rejudge
        self.records = records
        self.provisional: dict[int, set[int]] = {m: set() for m in milestones}  # let through before `factor` reported
        self.stopped: dict[str, str] = {}  # Ray trial id -> the rung it was stopped at, for the study's record

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        frames, value = result.get(TIME_ATTR), result.get(METRIC)
        if frames is None or value is None or not math.isfinite(value):  # an error report: the searcher fails it
            return TrialScheduler.CONTINUE
        number = trial.config["trial_number"]
        for m in self.milestones:
            if frames >= m and number not in self.records[m]:
                peers = self.records[m]
                if self._below(value, peers.values()):
                    peers[number] = value
                    return self._stop(trial, f"{m:,} frames")
                if self.rejudge and len(peers) + 1 < self.factor:
                    self.provisional[m].add(number)
                peers[number] = value
        for m in self.milestones:
            recorded = self.records[m]
            if number in self.provisional[m] and len(recorded) >= self.factor:
                self.provisional[m].discard(number)
                others = [v for n, v in recorded.items() if n != number]
                if self._below(recorded[number], others):
                    return self._stop(trial, f"{m:,} frames, judged again once {len(recorded)} trials had "
                                             "reported there")
        return TrialScheduler.CONTINUE

    def _below(self, value: float, peers: Iterable[float]) -> bool:
        """Ray's ASHA cutoff: below the (1 - 1/factor) quantile of the peers' values; no peers, no cutoff."""
        peers = list(peers)
        return bool(peers) and value < np.nanpercentile(peers, (1 - 1 / self.factor) * 100)

    def _stop(self, trial, where: str) -> str:
        self.stopped[trial.trial_id] = where
        for waiting in self.provisional.values():
            waiting.discard(trial.config["trial_number"])
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return "RecordingASHA: " + " | ".join(f"{m:,} frames: {len(r)} trials" for m, r in self.records.items())


def make_scheduler(spec: StudySpec, study: optuna.Study, milestones: list[int]
                   ) -> tuple[TrialScheduler, Callable[[str], str | None]]:
    """The study's scheduler over these milestones (none without a pruner), and the rung where it stopped a
    trial (None if it did not: Ray marks those done like finished ones). Its rung records start from the
    study's finished trials, and the milestones are stored in the study for the sampler (see sampler.RungRanked)."""
    study.set_user_attr(RUNGS, milestones)
    if spec.pruner == "none":
        return FIFOScheduler(), lambda trial_id: None
    # every trial that reached a rung, a killed driver's included (running until they go stale): their values stand
    records = rung_values(study.get_trials(deepcopy=False), milestones)
    scheduler = RecordingASHA(milestones, spec.reduction_factor, spec.rejudge, records)
    return scheduler, scheduler.stopped.get

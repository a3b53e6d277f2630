"""A Ray Tune searcher on Optuna's ask/tell: the study stays the true record of every trial.

What it fixes in Ray's own OptunaSearch: a trial stopped by the scheduler is told PRUNED (not
COMPLETE) and keeps its last value; errors and NaN are FAIL and the study goes on; each trial gets
user attributes (Ray trial id, folds and their CCC, stop reason, seed, times, data fingerprint, its
full training config); the budget counts what the study holds, so a resumed study finishes it, and
trials of other drivers count while they live. Only this searcher, in the driver, writes to the
storage; it also beats Optuna's heartbeat for the trials it runs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from core.config import TrainConfig
from search.study.file import StudySpec
from search.study.record import config_attrs, counts_against_budget, frames_trained
from search.study.sampler import drawn_by
from search.study.space import format_params, sample
from search.study.storage import mask, retrying
from search.study.trainable import METRIC, TrialReport

T = TypeVar("T")
DRIVER = f"{socket.gethostname()}:{os.getpid()}"  # this process, as its trials and the study name it


def budget_spent(trials: list[FrozenTrial], spec: StudySpec) -> bool:
    """The trials that count reached the budget's trials, or all trials its training frames (their progress)."""
    return (sum(counts_against_budget(t) for t in trials) >= spec.trials
            or frames_trained(trials) >= (spec.train_frames or math.inf))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Running:
    trial: optuna.Trial
    suggested_at: float
    last: TrialReport | None = None  # the latest report with a score
    seen: TrialReport | None = None  # the latest report of any kind (an error report has no score)
    steps: set[int] = field(default_factory=set)


class StudySearcher(Searcher):
    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, spec: StudySpec, max_frames: int,
                 data_fingerprint: str, pruned_by: Callable[[str], str | None] = lambda trial_id: None,
                 log: Callable[[str], None] = print, rungs: Sequence[int] = ()):
        """rungs: the scheduler's milestones in training frames, where every trial must report."""
        super().__init__(metric=METRIC, mode="max")
        self.study, self.storage, self.spec = study, storage, spec
        self.max_frames, self.fingerprint = max_frames, data_fingerprint
        self.pruned_by, self.log, self.rungs = pruned_by, log, list(rungs)
        self.deadline = time.time() + spec.wall_time_s if spec.wall_time_s else None
        self.running: dict[str, Running] = {}
        self.told: list[int] = []
        self.waiting_logged = False

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.deadline and time.time() > self.deadline:
            return Searcher.FINISHED
        trials = self._storage(lambda: self.study.get_trials(deepcopy=False))
        if budget_spent(trials, self.spec):
            mine = {r.trial.number for r in self.running.values()}
            others = [t.number for t in trials if t.state == TrialState.RUNNING and t.number not in mine]
            if not others:
                return Searcher.FINISHED
            if not self.waiting_logged:  # they may finish, or go stale and leave room for more
                self.log(f"budget reached while other drivers run trial(s) {', '.join(map(str, others))}: "
                         "waiting for them to finish or go stale")
                self.waiting_logged = True
            return None
        self.waiting_logged = False
        with warnings.catch_warnings():  # Optuna expects heartbeats with study.optimize; this searcher beats them
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = self._storage(self.study.ask)
        # Ours from here on: this driver's heartbeat beats it and does not fail it as stale, however long
        # the sampling takes (retries after dropped connections can outlast STALE_AFTER_S); other drivers
        # see it named at once.
        self.running[trial_id] = Running(trial, time.time())
        self._storage(lambda: trial.set_user_attr("driver", DRIVER))
        self.beat(trial)
        cfg = self._storage(partial(self._draw, trial)).replace(max_frames=self.max_frames)
        attrs = {"ray_trial_id": trial_id, "data_fingerprint": self.fingerprint,
                 "sampled": drawn_by(self.spec, trials)} | config_attrs(cfg)
        self._set_attrs(trial, attrs)
        return {"trial_number": trial.number, "train": cfg, "cpu": self.spec.cpu,  # the TrainConfig itself
                "rungs": self.rungs}

    def _draw(self, trial: optuna.Trial) -> TrainConfig:
        """sample() on a fresh view of the trial: a retry after a lost answer then keeps the params
        whose writes did commit. Drawn again, they would differ from what the storage holds (Optuna
        ignores a second write of a param), and the trial would train a config its params do not say."""
        return sample(optuna.Trial(self.study, trial._trial_id), self.spec.space)

    def beat(self, trial: optuna.Trial) -> None:
        """Optuna's heartbeat for one of this driver's trials (it needs the trial's storage id, as Optuna's
        own heartbeat thread does)."""
        self._storage(lambda: self.storage.record_heartbeat(trial._trial_id))

    def beat_all(self) -> None:
        for run in list(self.running.values()):
            self.beat(run.trial)

    def own_trials(self) -> set[int]:
        return {run.trial.number for run in list(self.running.values())}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study is the record, and a rerun resumes from it (not Tuner.restore)."""

    def restore(self, checkpoint_path: str) -> None:
        """See save."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record(self.running[trial_id], TrialReport.from_result(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        run = self.running.get(trial_id)
        if run is None:
            return
        try:  # still beaten while its end is recorded (a dozen commits): a slow storage must not let it go stale
            self._complete(trial_id, run, result, error)
        except Exception as e:  # a trial left RUNNING would go stale and be run again: record what happened
            self._storage(lambda: run.trial.set_user_attr("stop_reason", f"error while recording it: {e}"))
            self._storage(lambda: self.study.tell(run.trial, state=TrialState.FAIL, skip_if_finished=True))
            raise
        finally:
            self.running.pop(trial_id, None)

    def _complete(self, trial_id: str, run: Running, result: dict | None, error: bool) -> None:
        if result:  # the result on which the scheduler stopped a trial reaches the searcher only here
            self._record(run, TrialReport.from_result(result))
        last, seen = run.last, run.seen
        value = last.objective if last else None
        pruned_at = self.pruned_by(trial_id)  # the rung where the scheduler stopped it, if it did
        if error:
            state, reason = TrialState.FAIL, "error: the trial process failed (see Ray's logs)"
        elif seen and seen.error:
            state, reason = TrialState.FAIL, seen.error
        elif last and last.final:
            finite = value is not None and math.isfinite(value)
            state, reason = (TrialState.COMPLETE, last.stop_reason) if finite else (TrialState.FAIL, "nan")
        elif pruned_at:
            state, reason = TrialState.PRUNED, "pruned"
        else:
            state, reason = TrialState.FAIL, "interrupted: the study was stopped before the trial finished"
        attrs = {"stop_reason": reason, "epochs_run": last.epoch if last else 0, "ended_at": now_iso(),
                 "wall_time_s": round(time.time() - run.suggested_at, 2)}
        if seen:  # when the trial's process took it up: the rest of the wait is scheduling
            started = dt.datetime.fromisoformat(seen.started_at).timestamp()
            attrs |= {"started_at": seen.started_at, "scheduling_s": round(max(0.0, started - run.suggested_at), 3),
                      "device": seen.device, "gpu_ids": seen.gpu_ids, "node": seen.node, "threads": seen.threads,
                      "niceness": seen.niceness}
        if state == TrialState.PRUNED:
            attrs["pruned_at"] = pruned_at
        if last:
            attrs |= {"folds_evaluated": len(last.fold_ccc), "fold_ccc": last.fold_ccc, "target_ccc": last.target_ccc}
        self._set_attrs(run.trial, attrs)
        self._storage(lambda: self.study.tell(run.trial, value if state == TrialState.COMPLETE else None,
                                              state=state, skip_if_finished=True))
        self.told.append(run.trial.number)
        self._progress(run.trial.number, state, value, attrs)

    def _record(self, run: Running, report: TrialReport) -> None:
        """Each report's objective becomes the trial's intermediate value at its progress, once."""
        run.seen = report
        if report.error or not report.fold_ccc or report.train_frames in run.steps:
            return
        self._storage(lambda: run.trial.report(report.objective, step=int(report.train_frames)))
        run.steps.add(report.train_frames)
        run.last = report

    def _set_attrs(self, trial: optuna.Trial, attrs: dict) -> None:
        """One retried write per attribute: each is its own commit, so a retry after a dropped
        connection goes on from the attribute that failed instead of writing them all again (under
        repeated drops a whole batch could fail every attempt)."""
        for key, value in attrs.items():
            self._storage(partial(trial.set_user_attr, key, value))

    def _storage(self, call: Callable[[], T]) -> T:
        """Every storage call goes through here: retried if the connection drops (PostgreSQL
        restarted, a proxy closed it)."""
        return retrying(call, self.log)

    def __getstate__(self) -> dict:
        """Tune pickles its searcher to disk for Tuner.restore, which resuming here does not use (the
        study is the record): leave out the study, whose storage URL may hold a password."""
        return self.__dict__ | {"study": None, "storage": None, "running": {},
                                "spec": dataclasses.replace(self.spec, storage=mask(self.spec.storage))}

    def _progress(self, number: int, state: TrialState, value: float | None, attrs: dict) -> None:
        trials = self._storage(lambda: self.study.get_trials(deepcopy=False))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value, default=None)
        counted = sum(counts_against_budget(t) and t.state != TrialState.RUNNING for t in trials)
        best_text = f"best {best.value:.4f} (#{best.number})" if best else "no complete trial yet"
        shown = f"{value:.4f}" if value is not None else "  -   "
        folds = f"{attrs.get('folds_evaluated', 0)}/{self.spec.folds} folds " if self.spec.folds > 1 else ""
        params = format_params(next(t.params for t in trials if t.number == number))
        self.log(f"[{counted}/{self.spec.trials}] trial {number:4d} {state.name:8s} {shown} | {best_text} | "
                 f"{folds}{attrs['epochs_run']} epochs {attrs['wall_time_s']:.0f}s {attrs['stop_reason']} | {params}")

"""A Ray Tune searcher on Optuna's ask/tell: the study stays the true record of every trial.

What it fixes in Ray's own OptunaSearch: a trial stopped by the scheduler is told PRUNED (not
COMPLETE) and keeps its last value; errors and NaN are FAIL and the study goes on; each trial gets
user attributes (Ray trial id, epochs run, stop reason, seed, wall time, data fingerprint, its full
training config); the budget counts what the study already holds, so a resumed study finishes it.
Only this searcher, in the driver, writes to the storage.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from search.space import format_params
from search.storage import mask, retrying
from search.study import counts_against_budget
from search.study_file import StudySpec

METRIC = "best_devel_ccc"
T = TypeVar("T")


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


@dataclass
class Running:
    trial: optuna.Trial
    suggested_at: float
    last: dict = field(default_factory=dict)  # the latest result with a devel CCC
    seen: dict = field(default_factory=dict)  # the latest result of any kind (an error report has no CCC)
    history: list[float] = field(default_factory=list)  # devel CCC of each epoch


class StudySearcher(Searcher):
    def __init__(self, study: optuna.Study, spec: StudySpec, driver_id: str, data_fingerprint: str,
                 pruned_by: Callable[[str], bool] = lambda trial_id: False, log: Callable[[str], None] = print):
        super().__init__(metric=METRIC, mode="max")
        # Tune pickles its searcher when the Tuner is built, so it holds the driver's id, not the Driver.
        self.study, self.spec, self.driver_id, self.fingerprint = study, spec, driver_id, data_fingerprint
        self.pruned_by, self.log = pruned_by, log
        self.deadline = time.time() + spec.wall_time_s if spec.wall_time_s else None
        self.running: dict[str, Running] = {}
        self.told: list[int] = []
        self.storage_s = 0.0  # time spent in storage calls, for the overhead benchmark

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.deadline and time.time() > self.deadline:
            return Searcher.FINISHED
        trials = self._storage(lambda: self.study.get_trials(deepcopy=False))
        if sum(counts_against_budget(t) for t in trials) >= self.spec.trials:
            return Searcher.FINISHED
        trial = self._storage(self.study.ask)
        cfg = self._storage(lambda: self.spec.space.suggest(trial))
        attrs = {"driver": self.driver_id, "ray_trial_id": trial_id, "seed": cfg.seed,
                 "data_fingerprint": self.fingerprint, "train_config": cfg.to_dict()}
        self._storage(lambda: [trial.set_user_attr(k, v) for k, v in attrs.items()])
        self.running[trial_id] = Running(trial, time.time())
        return {"trial_number": trial.number, "train": cfg.to_dict()}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study is the record, and a rerun resumes from it (not Tuner.restore)."""

    def restore(self, checkpoint_path: str) -> None:
        """See save."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._record(self.running[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        run = self.running.pop(trial_id, None)
        if run is None:
            return
        if result:  # the result on which the scheduler stopped a trial reaches the searcher only here
            self._record(run, result)
        last = run.last
        value = last.get(METRIC)
        if error:
            state, reason = TrialState.FAIL, "error: the trial process failed (see Ray's logs)"
        elif run.seen.get("error"):
            state, reason = TrialState.FAIL, run.seen["error"]
        elif last.get("final"):
            finite = value is not None and math.isfinite(value)
            state, reason = (TrialState.COMPLETE, last["stop_reason"]) if finite else (TrialState.FAIL, "nan")
        elif self.pruned_by(trial_id):
            state, reason = TrialState.PRUNED, "pruned"
        else:
            state, reason = TrialState.FAIL, "interrupted: the study was stopped before the trial finished"
        now = time.time()
        attrs = {"stop_reason": reason, "epochs_run": int(last.get("epoch", 0)), "ended_at": now,
                 "wall_time_s": round(now - run.suggested_at, 2), "devel_ccc_history": run.history}
        seen = run.seen
        if "started_at" in seen:  # when the trial's process began: the rest of the wait is scheduling
            attrs |= {"started_at": seen["started_at"], "scheduling_s": round(seen["started_at"] - run.suggested_at, 3),
                      "device": seen["device"], "gpu_ids": seen["gpu_ids"]}
        if value is not None:
            attrs |= {"best_epoch": int(last["best_epoch"]),
                      "devel_ccc": {t: last[f"best_devel_ccc_{t}"] for t in self.spec.targets}}
        self._storage(lambda: [run.trial.set_user_attr(k, v) for k, v in attrs.items()])
        self._storage(lambda: self.study.tell(run.trial, value if state == TrialState.COMPLETE else None,
                                              state=state, skip_if_finished=True))
        self.told.append(run.trial.number)
        self._progress(run.trial.number, state, value, attrs, self._storage(lambda: run.trial.params))

    def _record(self, run: Running, result: dict) -> None:
        """Each epoch's best-so-far devel CCC becomes the trial's intermediate value, once."""
        run.seen = result
        if METRIC not in result or len(run.history) >= result["epoch"]:
            return
        self._storage(lambda: run.trial.report(result[METRIC], step=int(result["epoch"])))
        run.history.append(result["devel_ccc"])
        run.last = result

    def _storage(self, call: Callable[[], T]) -> T:
        """Every storage call goes through here: timed for the overhead benchmark, retried if the
        connection drops (PostgreSQL restarted, a proxy closed it)."""
        start = time.perf_counter()
        try:
            return retrying(call, self.log)
        finally:
            self.storage_s += time.perf_counter() - start

    def __getstate__(self) -> dict:
        """Tune pickles its searcher to disk for Tuner.restore, which resuming here does not use (the
        study is the record): leave out the study, whose storage URL may hold a password."""
        return self.__dict__ | {"study": None, "running": {},
                                "spec": dataclasses.replace(self.spec, storage=mask(self.spec.storage))}

    def _progress(self, number: int, state: TrialState, value: float | None, attrs: dict, params: dict) -> None:
        try:
            best = self._storage(lambda: self.study.best_trial)
            best_text = f"best {best.value:.4f} (#{best.number})"
        except ValueError:
            best_text = "no complete trial yet"
        shown = f"{value:.4f}" if value is not None else "  -   "
        self.log(f"trial {number:4d} {state.name:8s} {shown} | {best_text} | {attrs['epochs_run']} epochs "
                 f"{attrs['wall_time_s']:.0f}s {attrs['stop_reason']} | {format_params(params)}")


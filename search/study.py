"""The Optuna study as the record: creating or resuming it, its drivers, and the budget.

Several drivers (run_study.py processes, on one machine or many) may work on one study. Each
registers itself in the study's user attributes and beats every HEARTBEAT_S seconds; a RUNNING
trial whose driver is gone (its process died on this host, or it has not beaten for STALE_AFTER_S)
is marked FAIL with stop_reason "stale", and does not count against the budget.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError
from search.study_file import StudySpec

HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
STALE = "stale: its driver stopped before the trial finished"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate + group model the conditional space jointly; constant_liar keeps parallel
        # trials from all being proposed at the same promising point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # CMA-ES samples numbers; categorical choices fall back to TPE
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.TPESampler(seed=seed))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"sampler: unknown {name!r}")


def counts_against_budget(trial: FrozenTrial) -> bool:
    return not (trial.state == TrialState.FAIL and str(trial.user_attrs.get("stop_reason", "")).startswith("stale"))


class Driver:
    """This process' registration in a study, with a heartbeat thread that also clears stale trials."""

    def __init__(self, study: optuna.Study, log: Callable[[str], None] = print):
        self.study, self.log = study, log
        self.id = uuid.uuid4().hex[:12]
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-heartbeat", daemon=True)

    def start(self) -> "Driver":
        self.beat()
        self.fail_stale_trials()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S)
        self.beat(stopped=True)

    def beat(self, stopped: bool = False) -> None:
        self.study.set_user_attr(f"driver:{self.id}", {"host": self.host, "pid": self.pid,
                                                       "heartbeat": time.time(), "stopped": stopped})

    def other_live_drivers(self) -> int:
        return sum(1 for key, record in self.study.user_attrs.items()
                   if key.startswith("driver:") and key != f"driver:{self.id}" and self._alive(record))

    def fail_stale_trials(self) -> list[int]:
        attrs = self.study.user_attrs
        failed = []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get("driver")
            if owner == self.id or self._alive(attrs.get(f"driver:{owner}")):
                continue
            if owner is None and time.time() - trial.datetime_start.timestamp() < STALE_AFTER_S:
                continue  # just asked for by some driver, which has not yet written its name on it
            storage = self.study._storage
            storage.set_trial_user_attr(trial._trial_id, "stop_reason", STALE)
            try:
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except RuntimeError:  # finished meanwhile by a driver that was only late
                continue
            failed.append(trial.number)
        if failed:
            self.log(f"marked {len(failed)} stale RUNNING trial(s) as FAIL: {', '.join(map(str, failed))}")
        return failed

    def _alive(self, record: dict | None) -> bool:
        if not record or record.get("stopped"):
            return False
        if record.get("host") == self.host and not _pid_alive(record.get("pid", -1)):
            return False
        return time.time() - record.get("heartbeat", 0) < STALE_AFTER_S

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
                self.fail_stale_trials()
            except Exception as e:  # a storage hiccup must not kill the driver; the next beat retries
                self.log(f"heartbeat failed ({type(e).__name__}: {e}); retrying in {HEARTBEAT_S:.0f} s")


def _incompatible(old: dict, new: dict) -> list[str]:
    """Parameters of both spaces whose distribution Optuna would refuse to change: choices, kind, log scale."""
    def shape(p: dict) -> tuple:
        return ("categorical", p["choices"]) if "choices" in p else (p["type"], bool(p.get("log")))
    return sorted(name for name in set(old) & set(new) if shape(old[name]) != shape(new[name]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_study(storage: optuna.storages.BaseStorage, spec: StudySpec, data_fingerprint: str, force: bool,
               log: Callable[[str], None] = print) -> tuple[optuna.Study, Driver]:
    """Create the study or resume it; refuse one made with another space, target or data unless force."""
    study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {spec.name!r} exists and minimizes; this service maximizes devel CCC")
    identity = spec.identity() | {"data_fingerprint": data_fingerprint}
    stored = study.user_attrs.get("identity")
    if stored is not None and stored != identity:
        changed = sorted(k for k in identity if stored.get(k) != identity[k])
        frozen = _incompatible(stored.get("space", {}), identity["space"])
        if frozen:
            raise ConfigError(f"study {spec.name!r}: {', '.join(frozen)} changed kind or choices, which an Optuna "
                              "study cannot do (one set of choices per parameter); use a new study name")
        if not force:
            raise ConfigError(f"study {spec.name!r} already exists with a different {', '.join(changed)}; "
                              "choose another study name, or pass --force to continue it with this definition")
        log(f"--force: continuing study {spec.name!r} with a different {', '.join(changed)}")
    if stored != identity:
        study.set_user_attr("identity", identity)
        study.set_user_attr("study_file", spec.document)
    driver = Driver(study, log).start()
    done = [t for t in study.get_trials(deepcopy=False) if counts_against_budget(t)]
    # A resumed (or second) driver must not replay the sampler's sequence from the start.
    seed = spec.seed + len(study.trials) + (int(driver.id, 16) % 10 ** 6 if driver.other_live_drivers() else 0)
    study.sampler = make_sampler(spec.sampler, seed)
    if done:
        log(f"resuming study {spec.name!r}: {len(done)} of {spec.trials} trials already count, sampler seed {seed}")
    return study, driver

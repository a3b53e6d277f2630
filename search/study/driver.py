"""Running a study: create or resume it, plan its folds and fidelity, and drive its trials through Ray Tune.

Several drivers (run_study.py processes, on one machine or many) may work on one study. Each beats
Optuna's heartbeat for the trials it runs; a RUNNING trial whose heartbeat stopped (its driver
died) is failed by any driver, keeps no stop reason and does not count against the budget.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import secrets
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

import optuna
from optuna.trial import TrialState

from core.corpus import Corpus, load_corpus
from core.errors import ConfigError
from core.splits import Split, make_splits
from search.study.file import StudySpec
from search.study.racing import fidelity, make_scheduler, rungs
from search.study.record import counts_against_budget, trial_config
from search.study.sampler import LEARNS_FROM, make_sampler
from search.study.searcher import DRIVER, StudySearcher, budget_spent
from search.study.storage import HEARTBEAT_S, STALE_AFTER_S, mask, open_storage, retrying
from search.study.trainable import objective


def metric_name(spec: StudySpec) -> str:
    targets = " + ".join(spec.targets)
    return f"devel CCC {targets}" if spec.folds == 1 else f"CCC {targets}, mean over {spec.folds} folds of train+devel"


def fail_stale(study: optuna.Study, log: Callable[[str], None], own: Collection[int] = ()) -> list[int]:
    """Fail other drivers' dead trials: those whose heartbeat stopped, and those left RUNNING without
    one (asked by a driver that died, or whose answer was lost, before its first beat). `own` are this
    driver's live trials, which it beats itself."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("driver") != DRIVER}
    optuna.storages.fail_stale_trials(study)
    now = dt.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if ("driver" not in t.user_attrs and t.number not in own
                and (now - t.datetime_start).total_seconds() > STALE_AFTER_S):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
    after = {t.number: t for t in study.get_trials(deepcopy=False)}
    failed = sorted(n for n in running if after[n].state == TrialState.FAIL)
    if failed:
        # A driver killed between recording a trial's end and telling its state leaves it RUNNING with
        # a stop reason: it ran to its end, so it still counts against the budget.
        recorded = [str(n) for n in failed if counts_against_budget(after[n])]
        log(f"marked {len(failed)} stale RUNNING trial(s) of a dead driver as FAIL: {', '.join(map(str, failed))}"
            + (f" ({', '.join(recorded)} had recorded how it ended and still counts against the budget)"
               if recorded else ""))
    return failed


def register(study: optuna.Study, driver: str) -> bool:
    """Note this driver in the study (refreshed by its heartbeat); True if another one beat lately.
    Each driver writes, then reads: of two starting at once, at least the later reader sees the other."""
    study.set_user_attr(f"driver:{driver}", time.time())
    return any(key.startswith("driver:") and key != f"driver:{driver}" and time.time() - beat < STALE_AFTER_S
               for key, beat in study.user_attrs.items())


class Heartbeat:
    """Beats for this driver's running trials every HEARTBEAT_S, and fails other drivers' stale trials."""

    def __init__(self, study: optuna.Study, searcher: StudySearcher, log: Callable[[str], None]):
        self.study, self.searcher, self.log = study, searcher, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * HEARTBEAT_S)
        self.study.set_user_attr(f"driver:{DRIVER}", 0)  # gone: a driver starting now need not avoid it

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.searcher.beat_all()
                self.study.set_user_attr(f"driver:{DRIVER}", time.time())
                fail_stale(self.study, self.log, own=self.searcher.own_trials())
            except Exception as e:  # a storage hiccup must not kill the driver; the next beat retries
                self.log(f"heartbeat failed ({type(e).__name__}: {e}); retrying in {HEARTBEAT_S} s")


def _incompatible(old: dict, new: dict) -> list[str]:
    """Parameters of both spaces whose distribution Optuna would refuse to change: choices, kind, log scale."""
    def shape(p: dict) -> tuple:
        return ("categorical", p.get("choices") or p.get("subsets_of")) if "type" not in p else (p["type"], bool(p.get("log")))
    return sorted(name for name in set(old) & set(new) if shape(old[name]) != shape(new[name]))


def open_study(storage: optuna.storages.BaseStorage, spec: StudySpec, data_fingerprint: str, force: bool,
               log: Callable[[str], None] = print) -> optuna.Study:
    """Create the study or resume it (refusing one made with another space, target, objective or data
    unless forced), store its effective definition, enqueue its start configs, reseed its sampler."""
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
    study.set_user_attr("spec", spec.to_record())  # the effective study: flags included, password masked
    study.set_metric_names([metric_name(spec)])
    fail_stale(study, log)
    trials = study.get_trials(deepcopy=False)
    for params in spec.start_from:  # once: unless its earlier run went stale
        if not any(t.system_attrs.get("fixed_params", t.params) == params and counts_against_budget(t)
                   or t.state == TrialState.WAITING and t.system_attrs.get("fixed_params") == params for t in trials):
            study.enqueue_trial(params)
    # A resumed (or second) driver must not replay the sampler's sequence from the start.
    seed = spec.seed + len(trials) + (secrets.randbelow(10 ** 6) if register(study, DRIVER) else 0)
    study.sampler = make_sampler(spec, seed)
    done = [t for t in trials if counts_against_budget(t)]
    if done:
        log(f"resuming study {spec.name!r}: {len(done)} of {spec.trials} trials already count, sampler seed {seed}")
    return study


def run_study(spec: StudySpec, *, force: bool = False, ray_address: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run or resume the study: Ray Tune runs the trials, the study's searcher proposes and records them."""
    import ray
    from ray import tune

    from search.cluster import check_memory, ensure_ray, fit_resources, put_corpus
    from search.retrain.kept import start_keeper
    from search.retrain.runs import protocol_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    # heartbeats, metric names and fail_stale_trials are marked experimental; they are what we rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    corpus, splits = _load_data(spec, log)  # first: a study whose data is missing leaves no empty storage file
    storage = open_storage(spec.storage, heartbeat=True)
    study = open_study(storage, spec, corpus.fingerprint, force, log)
    started = time.time()
    if _nothing_to_run(study, spec, log):
        return summarize(study, spec, None, time.time() - started, log)

    frames_per_fold, grace = fidelity(spec, corpus, splits)
    ensure_ray(ray_address, log)
    resources = fit_resources(spec.cpu, spec.gpu, spec.max_concurrent, f"{spec.source}: resources", log)
    check_memory(corpus.data_bytes, resources, f"{spec.source}: resources")
    milestones = [] if spec.pruner == "none" else rungs(frames_per_fold=frames_per_fold, grace=grace,
                                                        factor=spec.reduction_factor, folds=len(splits))
    scheduler, pruned_by = make_scheduler(spec, study, milestones)
    searcher = StudySearcher(study, storage, spec, frames_per_fold, corpus.fingerprint, pruned_by, log, milestones)
    log(f"study {spec.name!r}: up to {spec.trials} trials" + (f" over {len(splits)} folds" if len(splits) > 1 else "")
        + f", each at most {spec.max_epochs} passes ({frames_per_fold:,} training frames) per fold; ASHA looks after "
        f"{grace:,} frames, then every x{spec.reduction_factor}; {resources.concurrent} at a time "
        f"({resources.cpu:g} CPU, {resources.gpu:g} GPU each)")
    keeper = start_keeper(spec.storage, spec.name, protocol_of(spec.folds, spec.fold_seed), corpus.fingerprint,
                          _runs_dir() / "search")
    trainable = tune.with_resources(functools.partial(objective, corpus_ref=put_corpus(corpus), splits=splits,
                                                      keeper=keeper), {"cpu": resources.cpu, "gpu": resources.gpu})
    del corpus  # the object store holds it now
    heartbeat = Heartbeat(study, searcher, log).start()
    try:
        tune.Tuner(trainable,
                   tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                               max_concurrent_trials=resources.concurrent,
                                               # a new trial reuses a finished one's process: no seconds of
                                               # worker start and torch import each time
                                               reuse_actors=True, trial_dirname_creator=_trial_dirname),
                   run_config=tune.RunConfig(name=spec.name, storage_path=_ray_results(), verbose=0)).fit()
    finally:
        heartbeat.stop()
        ray.kill(keeper)  # every trial has returned, so has every keep; a process running many studies keeps none
    return summarize(study, spec, searcher, time.time() - started, log)


def _load_data(spec: StudySpec, log: Callable[[str], None]) -> tuple[Corpus, list[Split]]:
    corpus = load_corpus(spec.data_root, spec.space.feature_sets(), spec.targets, nonfinite=spec.nonfinite, log=log)
    log(f"data {spec.data_root}: {corpus.describe()}")
    try:
        return corpus, make_splits(corpus, spec.folds, spec.fold_seed)
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: objective.{e}") from None


def _nothing_to_run(study: optuna.Study, spec: StudySpec, log: Callable[[str], None]) -> bool:
    trials = study.get_trials(deepcopy=False)
    if not budget_spent(trials, spec) or any(t.state == TrialState.RUNNING for t in trials):
        return False
    log(f"study {spec.name!r}: its budget ({spec.trials} trials"
        + (f", {spec.train_frames:,} training frames" if spec.train_frames else "")
        + ") is spent; nothing to run (raise --trials or --train-frames to run more)")
    return True


def _ray_results() -> str:
    """Where Tune keeps its own per-trial files; the study is the record, so Tune's tables and loggers are off."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # an error report has no score
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-result files...
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # ... so Tune finds none
    return str(_runs_dir() / "ray")


def _runs_dir() -> Path:
    return Path(os.environ.get("MUSE_RUNS_DIR", "runs")).resolve()


def _trial_dirname(trial) -> str:
    return trial.trial_id  # Tune's default spells out the config: a TrainConfig makes that hundreds of characters


def summarize(study: optuna.Study, spec: StudySpec, searcher: StudySearcher | None, seconds: float,
              log: Callable[[str], None]) -> dict:
    # the storage may drop connections until the last read (the searcher's calls are retried too)
    trials = retrying(lambda: study.get_trials(deepcopy=False), log)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    told = searcher.told if searcher else []
    summary = {"study": spec.name, "storage": mask(spec.storage), "trials": len(trials), "states": states,
               "trials_this_run": len(told), "seconds": round(seconds, 1)}
    log(f"study {spec.name!r}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); "
        f"{len(told)} finished in this run, in {seconds:.0f} s")
    drawn = Counter(t.user_attrs["sampled"] for t in trials if "sampled" in t.user_attrs)
    if drawn:
        summary["sampled"] = dict(drawn)
        only_complete = (f"; {spec.sampler} learns from completed trials only, so it draws at random until "
                         f"{spec.startup_trials} have completed" if LEARNS_FROM.get(spec.sampler) == (TrialState.COMPLETE,)
                         and spec.pruner != "none" else "")
        log(f"sampler {spec.sampler}: {drawn['model']} of {drawn.total()} trials proposed from its model, "
            f"{drawn['random']} drawn at random, {drawn['enqueued']} enqueued{only_complete}")
    if states.get("COMPLETE"):
        best = retrying(lambda: study.best_trial, log)
        summary |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                    "best_config": trial_config(best).to_dict()}
        log(f"best: trial {best.number}, {metric_name(spec)} {best.value:.4f}")
        log("  " + " ".join(f"{k}={v}" for k, v in best.params.items()))
    log(f"stored in {mask(spec.storage)}")
    return summary

"""Run (or resume) a hyperparameter study: Ray Tune runs the trials, Optuna's sampler proposes them.

    python search/run_study.py studies/demo.yaml
    python search/run_study.py studies/muse_valence.yaml --storage postgresql://user:pw@host/db --ray-address auto
    optuna-dashboard sqlite:///runs/studies.db          # watch it live

Rerunning the same command continues the study: finished trials are kept, trials left RUNNING by
a driver that died are marked FAIL, and the budget counts what the study already holds.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import ray
from optuna.trial import TrialState
from ray import tune

from core.corpus import load_corpus
from core.errors import ConfigError, run_command
from search.dashboard import serve
from search.searcher import METRIC, RecordingASHA, StudySearcher
from search.storage import mask, open_storage
from search.study import open_study
from search.study_file import StudySpec, load_study_file
from search.trainable import objective


def ensure_ray(address: str | None, log: Callable[[str], None]) -> None:
    """Join the given cluster, or reuse the running Ray, or start a local one."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        # "local" starts a Ray of this process' own, even where another Ray runs on the machine
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", **kwargs)
    except ConnectionError as e:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({e})") from None
    resources = ray.cluster_resources()
    log(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def trial_resources(spec: StudySpec, log: Callable[[str], None]) -> tuple[dict, int]:
    """Resources per trial and how many trials fit at once; a study sized for GPUs runs on CPUs where there are none."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_cpus = max(n.get("CPU", 0) for n in nodes)
    most_gpus = max(n.get("GPU", 0) for n in nodes)
    gpu = spec.gpu
    if gpu > 0 and most_gpus == 0:
        log(f"resources.gpu is {gpu:g} but the Ray cluster has no GPU: trials run on CPUs")
        gpu = 0.0
    if gpu > most_gpus:
        raise ConfigError(f"resources.gpu: {gpu:g} GPUs per trial, but the largest node has {most_gpus:g}")
    if spec.cpu > most_cpus:
        raise ConfigError(f"resources.cpu: {spec.cpu:g} CPUs per trial, but the largest node has {most_cpus:g}")
    fits = sum(min(math.floor(n.get("CPU", 0) / spec.cpu + 1e-9),
                   math.floor(n.get("GPU", 0) / gpu + 1e-9) if gpu else 10 ** 6) for n in nodes)
    concurrent = min(spec.max_concurrent or fits, fits)
    if concurrent < 1:
        raise ConfigError("resources: no node has room for one trial")
    return {"cpu": spec.cpu, "gpu": gpu}, concurrent


def run_study(spec: StudySpec, *, force: bool = False, ray_address: str | None = None,
              dashboard_port: int | None = None, log: Callable[[str], None] = print,
              trial_fn: Callable = objective) -> dict:
    """Run or resume the study; trial_fn(config, corpus_ref) is one trial (the scale benchmark swaps it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    storage = open_storage(spec.storage)
    corpus = load_corpus(spec.data_root, spec.space.feature_sets(), spec.targets, nonfinite=spec.nonfinite)
    log(f"data {spec.data_root}: {corpus.describe()}")
    study, driver = open_study(storage, spec, corpus.fingerprint, force, log)
    started = time.time()
    try:
        ensure_ray(ray_address, log)
        resources, concurrent = trial_resources(spec, log)
        if dashboard_port:
            serve(spec.storage, dashboard_port, log=log, background=True)
        if spec.pruner == "asha":
            scheduler = RecordingASHA(time_attr="training_iteration", metric=METRIC, mode="max",
                                      max_t=spec.max_epochs, grace_period=spec.grace_period,
                                      reduction_factor=spec.reduction_factor)
            pruned_by = scheduler.stopped.__contains__
        else:
            scheduler, pruned_by = tune.schedulers.FIFOScheduler(), (lambda trial_id: False)
        searcher = StudySearcher(study, spec, driver.id, corpus.fingerprint, pruned_by, log)
        # One copy of the data set per node, in Ray's object store; the driver keeps only a view of it.
        corpus_ref = ray.put(corpus)
        del corpus
        log(f"study {spec.name!r}: up to {spec.trials} trials of at most {spec.max_epochs} epochs, "
            f"{concurrent} at a time ({resources['cpu']:g} CPU, {resources['gpu']:g} GPU each)")
        trainable = tune.with_resources(functools.partial(trial_fn, corpus_ref=corpus_ref), resources)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress lines replace Tune's tables
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # an error report has no CCC
        ray_results = Path(os.environ.get("MUSE_RUNS_DIR", "runs")) / "ray"  # Ray's own per-trial files
        tuner = tune.Tuner(trainable,
                           tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                                       max_concurrent_trials=concurrent,
                                                       # a new trial reuses a finished one's process: no
                                                       # seconds of worker start and torch import each time
                                                       reuse_actors=True),
                           run_config=tune.RunConfig(name=spec.name, storage_path=str(ray_results.resolve()),
                                                     verbose=0))
        tuner.fit()
    finally:
        driver.stop()
    return summarize(study, spec, searcher, time.time() - started, log)


def summarize(study: optuna.Study, spec: StudySpec, searcher: StudySearcher, seconds: float,
              log: Callable[[str], None]) -> dict:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    summary = {"study": spec.name, "storage": mask(spec.storage), "trials": len(trials), "states": states,
               "trials_this_run": len(searcher.told), "seconds": round(seconds, 1),
               "storage_s": round(searcher.storage_s, 3)}
    log(f"study {spec.name!r}: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); "
        f"{len(searcher.told)} finished in this run, in {seconds:.0f} s")
    if states.get("COMPLETE"):
        best = study.best_trial
        summary |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params,
                    "best_config": best.user_attrs.get("train_config")}
        log(f"best: trial {best.number}, devel CCC {best.value:.4f} "
            f"({', '.join(f'{t} {v:.4f}' for t, v in best.user_attrs.get('devel_ccc', {}).items())})")
        log("  " + " ".join(f"{k}={v}" for k, v in best.params.items()))
    log(f"stored in {mask(spec.storage)}")
    log(f"watch it: optuna-dashboard {mask(spec.storage)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_file", type=Path)
    parser.add_argument("--study", help="study name (overrides the file's)")
    parser.add_argument("--storage", default=os.environ.get("MUSE_STORAGE"),
                        help="Optuna storage URL (default: $MUSE_STORAGE, else the study file's, else "
                             "sqlite:///runs/studies.db)")
    parser.add_argument("--data", help="MuSe data root (overrides data.root)")
    parser.add_argument("--trials", type=int, help="budget: trials in the study, those already there included")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--wall-time", type=float, dest="wall_time_s", help="seconds after which no trial starts")
    parser.add_argument("--sampler", help="tpe, random, cmaes or gp")
    parser.add_argument("--seed", type=int, help="sampler seed")
    parser.add_argument("--pruner", help="asha or none")
    parser.add_argument("--cpu", type=float, help="CPUs per trial")
    parser.add_argument("--gpu", type=float, help="GPUs per trial (fractions share a GPU)")
    parser.add_argument("--ray-address", help="join this Ray cluster (auto, or host:port); default: $RAY_ADDRESS, "
                                              "else a local Ray of this process")
    parser.add_argument("--dashboard", type=int, nargs="?", const=8080, metavar="PORT",
                        help="also serve optuna-dashboard on this port (default 8080)")
    parser.add_argument("--force", action="store_true",
                        help="continue a study of this name even if it was defined differently")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("study", "storage", "data", "trials", "max_epochs", "wall_time_s",
                                                 "sampler", "seed", "pruner", "cpu", "gpu")}
    return run_command(lambda: run_study(load_study_file(args.study_file, overrides), force=args.force,
                                          ray_address=args.ray_address, dashboard_port=args.dashboard,
                                          log=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    sys.exit(main())

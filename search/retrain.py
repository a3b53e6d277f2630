"""Retrain a study's best distinct configs with several seeds, in parallel through Ray.

Each finished (config, seed) run is written at once (predictions on disk, a row in the study's
database), so a retrain that is killed and rerun trains only what is missing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import ray
import torch
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.batching import FrameInputs
from core.corpus import Corpus
from core.errors import ConfigError
from core.predict import predict_partition
from core.train import TrainConfig, train
from search.results_db import PredictionFile, RetrainRun, code_version, config_key


@dataclass
class Candidate:
    study: str
    trial: int | None  # None for a config given directly (the entry's)
    search_value: float | None  # its devel CCC in the search (one seed: the lucky one, maybe)
    config: dict
    key: str
    params: dict  # what the search sampled, for people to read


@dataclass
class SeedRun:
    id: int
    seed: int
    devel_ccc: dict[str, float]
    devel_mean: float
    devel: np.ndarray  # (devel frames, targets), corpus order
    test: np.ndarray


def top_configs(study: optuna.Study, k: int, log: Callable[[str], None] = print) -> list[Candidate]:
    """The k best COMPLETE trials whose training configs differ (a config sampled twice counts once)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "train_config" in t.user_attrs]
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no completed trials to retrain")
    chosen: dict[str, Candidate] = {}
    for t in sorted(complete, key=lambda t: -t.value):
        key = config_key(t.user_attrs["train_config"])
        if key not in chosen:
            chosen[key] = Candidate(study.study_name, t.number, t.value, t.user_attrs["train_config"], key, t.params)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        log(f"--top-k {k}: study {study.study_name!r} has only {len(chosen)} distinct completed configs; "
            f"retraining those")
    return list(chosen.values())


def _train_seed(corpus: Corpus, config: dict, seed: int) -> dict:
    """A Ray task: one config, one seed; returns the best epoch's devel and test predictions."""
    cfg = TrainConfig.from_dict(config | {"seed": seed})
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    result = train(corpus, cfg, device=device, log=None)
    inputs = FrameInputs(corpus, cfg.feature_set, cfg.normalize, cfg.add_seg_id, cfg.emo_dim_set, device)
    model = result.model(device)
    return {"summary": result.summary(),
            "devel": predict_partition(model, inputs, corpus, "devel"),
            "test": predict_partition(model, inputs, corpus, "test")}


def retrain(engine, candidates: list[Candidate], seeds: list[int], corpus_ref: ray.ObjectRef, fingerprint: str,
            resources: dict, out_dir: Path, log: Callable[[str], None] = print) -> dict[str, list[SeedRun]]:
    """Every (candidate, seed) run, reusing those already in the database; keyed by candidate key.
    A seed whose training fails (diverges) is reported and left out; a rerun tries it again."""
    runs: dict[str, list[SeedRun]] = {c.key: [] for c in candidates}
    pending = {}
    task = ray.remote(_train_seed).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    for c in candidates:
        for seed in seeds:
            done = _stored_run(engine, c, seed, fingerprint)
            if done:
                runs[c.key].append(done)
            else:
                pending[task.remote(corpus_ref, c.config, seed)] = (c, seed)
    reused = sum(len(v) for v in runs.values())
    log(f"retraining {len(candidates)} config(s) x {len(seeds)} seed(s): {reused} run(s) reused, "
        f"{len(pending)} to train")
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        c, seed = pending.pop(ready)
        try:
            out = ray.get(ready)
        except ray.exceptions.RayTaskError as e:
            log(f"  {c.study} trial {c.trial} seed {seed}: FAILED, left out ({str(e.cause).splitlines()[0]})")
            continue
        run = _store_run(engine, c, seed, fingerprint, out, out_dir)
        runs[c.key].append(run)
        log(f"  {c.study} trial {c.trial} seed {seed}: devel CCC {run.devel_mean:.4f} "
            f"({out['summary']['epochs_run']} epochs, run {run.id})")
    for c in candidates:
        runs[c.key].sort(key=lambda r: r.seed)
    return runs


def _stored_run(engine, c: Candidate, seed: int, fingerprint: str) -> SeedRun | None:
    with Session(engine) as session:
        row = session.scalars(select(RetrainRun).where(
            RetrainRun.study == c.study, RetrainRun.config_key == c.key, RetrainRun.seed == seed,
            RetrainRun.data_fingerprint == fingerprint)).first()
        if row is None:
            return None
        folder = Path(row.predictions)
        if not (folder / "devel.npy").is_file() or not (folder / "test.npy").is_file():
            return None  # its files were removed: train it again
        return SeedRun(row.id, seed, row.devel_ccc, row.devel_mean, np.load(folder / "devel.npy"),
                       np.load(folder / "test.npy"))


def _store_run(engine, c: Candidate, seed: int, fingerprint: str, out: dict, out_dir: Path) -> SeedRun:
    summary = out["summary"]
    version = code_version()
    with Session(engine) as session, session.begin():
        stale = session.scalars(select(RetrainRun).where(
            RetrainRun.study == c.study, RetrainRun.config_key == c.key, RetrainRun.seed == seed,
            RetrainRun.data_fingerprint == fingerprint)).first()
        if stale is not None:  # its prediction files were lost: replace the row
            session.execute(PredictionFile.__table__.delete().where(PredictionFile.run_id == stale.id))
            session.delete(stale)
            session.flush()
        row = RetrainRun(study=c.study, trial_number=c.trial, config_key=c.key, config=c.config, seed=seed,
                         devel_ccc=summary["best_devel_ccc"], devel_mean=summary["best_mean_devel_ccc"],
                         best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"],
                         seconds=summary["seconds"],
                         predictions="", code_version=version, data_fingerprint=fingerprint)
        session.add(row)
        session.flush()
        folder = out_dir / c.study / f"run-{row.id}_trial-{c.trial}_seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        for partition in ("devel", "test"):
            np.save(folder / f"{partition}.npy", out[partition])
            session.add(PredictionFile(study=c.study, run_id=row.id, partition=partition, kind="frames",
                                       path=str(folder / f"{partition}.npy"), frames=len(out[partition]),
                                       code_version=version, data_fingerprint=fingerprint))
        row.predictions = str(folder)
        run_id = row.id
    return SeedRun(run_id, seed, summary["best_devel_ccc"], summary["best_mean_devel_ccc"], out["devel"], out["test"])

"""Retrain a study's best distinct configs with several seeds on every split, in parallel through Ray.

A run is one (config, seed, split). Each finished run is written at once (predictions on disk, a row
in the study's database), so a retrain that is killed and rerun trains only what is missing; a run
that fails (diverges, or its worker dies) is recorded as FAIL and the others go on. A seed's result
is its runs over all splits: the mean of their scores (the study's objective) and its out-of-split
predictions of the pooled videos, with test predictions averaged over its split models.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import TrainConfig
from core.corpus import Corpus
from core.errors import ConfigError
from core.splits import Split, make_splits, pooled_videos
from search.cluster import Resources, put_corpus
from search.retrain.results import FoldRun, code_version
from search.retrain.select import Candidate
from search.study.storage import retrying


@dataclass
class SeedRun:
    seed: int
    run_ids: list[int]
    fold_ccc: list[float]  # per split: mean CCC over targets on its scoring videos
    target_ccc: dict[str, list[float]]
    oof: np.ndarray  # (pooled frames, targets): every pooled video predicted by the split that scores it
    test: np.ndarray  # (test frames, targets): mean over the split models
    best_epochs: list[int]  # per split: the epoch whose weights it kept

    @property
    def objective(self) -> float:
        return float(np.mean(self.fold_ccc))


@dataclass
class Plan:
    """Where and how runs are made: shared by every study of one retrain."""
    corpus: Corpus  # without test labels
    corpus_ref: object  # the same corpus in Ray's object store
    splits: list[Split]
    pooled: np.ndarray  # the pooled videos: those whose out-of-split predictions the splits yield
    protocol: str
    resources: Resources
    threads: int
    out_dir: Path
    video_rows: dict[int, np.ndarray] = field(init=False)  # each pooled video's rows in arrays over pooled frames

    def __post_init__(self) -> None:
        lengths = self.corpus.lengths(self.pooled)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.video_rows = {v: np.arange(f, f + n) for v, f, n in zip(self.pooled.tolist(), first.tolist(),
                                                                     lengths.tolist())}

    def rows(self, videos) -> np.ndarray:
        """Rows of these pooled videos (corpus indices) in arrays over pooled frames, in the order given."""
        return np.concatenate([np.empty(0, np.int64), *(self.video_rows[v] for v in np.asarray(videos).tolist())])

    def labels(self, targets: tuple[str, ...]) -> np.ndarray:
        """(pooled frames, targets) labels."""
        return self.corpus.labels_for(self.pooled)[:, [self.corpus.targets.index(t) for t in targets]]


def plan_runs(corpus: Corpus, *, folds: int, fold_seed: int, resources: Resources, out_dir: Path) -> Plan:
    """The plan for runs on `folds` splits of this corpus (1: train/devel as given), drawn with `fold_seed`."""
    return Plan(corpus, put_corpus(corpus), make_splits(corpus, folds, fold_seed), pooled_videos(corpus, folds),
                protocol_of(folds, fold_seed), resources, threads=max(1, int(resources.cpu)), out_dir=out_dir)


def protocol_of(folds: int, fold_seed: int) -> str:
    """The name under which runs on these splits are stored (and found again)."""
    return f"folds={folds} seed={fold_seed}"


REFIT_SCHEDULES = {  # method name: how the folds' epochs carry over to a training on every pooled video
    "refit": "equal epochs: the median of the epochs its split runs kept",
    "refit_updates": "equal updates: the median over its split runs of the epochs kept x their training frames, "
                     "over all train and devel frames",
}


def refit(engine, c: Candidate, runs: list[SeedRun], plan: Plan,
          log: Callable[[str], None]) -> dict[str, tuple[int, list[SeedRun]]]:
    """The config trained again on every train and devel video with each of its seeds (AutoGluon's
    refit_full). No video is left to select an epoch on, so the folds choose the count, two ways: as many
    epochs as they kept, or as many gradient updates (fewer epochs over more videos). Per schedule
    (REFIT_SCHEDULES), its epoch count and seed runs (test predictions only)."""
    if not runs:
        raise ConfigError(f"refit: {c.label} (study {c.study!r}, trial {c.trial}) completed no split run, so "
                          "there is no epoch count to refit it with; retrain it first, or leave out --refit")
    split = refit_split(plan.corpus)
    frames = {s.name: plan.corpus.lengths(s.train).sum() for s in plan.splits}
    best = [(e, frames[s.name]) for r in runs for e, s in zip(r.best_epochs, plan.splits)]  # epochs kept, frames
    epochs = {"refit": int(np.ceil(np.median([e for e, _ in best]))),
              "refit_updates": max(1, int(np.ceil(np.median([e * f for e, f in best]) / plan.corpus.lengths(
                  split.train).sum())))}
    refit_plan = dataclasses.replace(plan, splits=[split], protocol=f"{plan.protocol} refit")
    # the folds' frame cap was for a fold's videos
    refits = {name: dataclasses.replace(c, config=c.config.replace(epochs=n, max_frames=0)) for name, n in epochs.items()}
    log(f"refit: {c.label} on all {len(split.train)} train and devel videos, {len(runs)} seed(s), for "
        + " and for ".join(f"{epochs[name]} epochs ({how.split(':')[0]})" for name, how in REFIT_SCHEDULES.items())
        + f", from the epochs its {len(best)} split runs kept")
    trained = retrain(engine, list({r.key: r for r in refits.values()}.values()), [r.seed for r in runs], refit_plan,
                      log)
    return {name: (epochs[name], trained[refits[name].key]) for name in REFIT_SCHEDULES}


def refit_split(corpus: Corpus) -> Split:
    """Every train and devel video to train on, none to select an epoch on or to score (test never)."""
    none = np.array([], dtype=np.int64)
    return Split("train+devel", np.concatenate([np.asarray(corpus.videos(p)) for p in ("train", "devel")]), none, none)


def train_split(corpus: Corpus, config: TrainConfig, split: Split, threads: int) -> dict:
    """A Ray task: one config (with its seed) on one split; the best epoch's predictions of the split's
    scoring videos and of the test videos."""
    import ray
    import torch

    from core.threads import use_threads
    from core.trainer import train

    use_threads(threads)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    result = train(corpus, config, split, device=device, log=None)
    return result.outputs(np.arange(*corpus.partition_videos["test"])) | {"node": ray.get_runtime_context().get_node_id()}


def retrain(engine, candidates: list[Candidate], seeds: list[int], plan: Plan,
            log: Callable[[str], None]) -> dict[str, list[SeedRun]]:
    """Every (candidate, seed, split) run, reusing those already in the database; per candidate key
    the seeds whose runs all finished."""
    import ray

    task = ray.remote(train_split).options(**plan.resources.options(), max_retries=0)
    stored, pending = {}, {}
    for c in candidates:
        for seed in seeds:
            for split in plan.splits:
                row = retrying(lambda: stored_run(engine, c, seed, split.name, plan.protocol), log)
                if row is not None:
                    stored[(c.key, seed, split.name)] = row
                else:
                    config = c.config.replace(seed=seed)
                    pending[task.remote(plan.corpus_ref, config, split, plan.threads)] = (c, seed, split, time.time())
    reused, total = len(stored), len(stored) + len(pending)
    log(f"retraining {len(candidates)} config(s) x {len(seeds)} seed(s) x {len(plan.splits)} split(s): "
        f"{len(stored)} run(s) reused, {len(pending)} to train, {plan.resources.concurrent} at a time")
    started, done = time.time(), 0
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        c, seed, split, _ = pending.pop(ready)
        done += 1
        try:
            out = ray.get(ready)
            row = retrying(lambda: store_run(engine, c, seed, split.name, plan.protocol, plan.out_dir, out), log)
            stored[(c.key, seed, split.name)] = row
            scored = f"CCC {_mean(row.score_ccc):.4f}" if row.score_ccc else "trained"  # a refit scores no video
            outcome = f"{scored} ({row.epochs_run} epochs, {row.seconds:.0f}s)"
        except ray.exceptions.RayError as e:  # the task raised, or its worker died (killed, out of memory)
            reason = str(getattr(e, "cause", None) or e).strip().splitlines()[0][:300]
            retrying(lambda: _store_failure(engine, c, seed, split.name, plan.protocol, reason), log)
            outcome = f"FAILED, left out ({reason}); a rerun tries it again"
        left = (time.time() - started) / done * len(pending)
        log(f"  [{reused + done}/{total}] {c.label} seed {seed} "
            f"{split.name}: {outcome} | about {left / 60:.0f} min left")
    return {c.key: _seed_runs(c, seeds, stored, plan) for c in candidates}


def _seed_runs(c: Candidate, seeds: list[int], stored: dict, plan: Plan) -> list[SeedRun]:
    """The seeds of a candidate whose runs finished on every split, assembled over the pooled videos."""
    out = []
    for seed in seeds:
        rows = [stored.get((c.key, seed, s.name)) for s in plan.splits]
        if any(r is None for r in rows):
            continue
        oof = np.full((len(plan.rows(plan.pooled)), len(c.config.emo_dim_set)), np.nan, np.float32)
        tests = []
        for split, row in zip(plan.splits, rows):
            folder = Path(row.predictions)
            oof[plan.rows(split.score)] = np.load(folder / "score.npy")
            tests.append(np.load(folder / "test.npy"))
        targets = c.config.emo_dim_set
        out.append(SeedRun(seed, [r.id for r in rows], [_mean(r.score_ccc) for r in rows],
                           {t: [r.score_ccc.get(t) for r in rows] for t in targets}, oof, np.mean(tests, axis=0),
                           [r.best_epoch for r in rows]))
    return out


def seed_run(engine, c: Candidate, seed: int, plan: Plan, protocol: str,
             log: Callable[[str], None]) -> SeedRun | None:
    """This candidate's stored runs with this seed under `protocol` on every split of the plan, assembled;
    None if a split has none."""
    stored = {(c.key, seed, s.name): retrying(lambda: stored_run(engine, c, seed, s.name, protocol), log)
              for s in plan.splits}
    return next(iter(_seed_runs(c, [seed], stored, plan)), None)


def _where(c: Candidate, seed: int, split: str, protocol: str):
    return (FoldRun.study == c.study, FoldRun.config_key == c.key, FoldRun.seed == seed,
            FoldRun.split == split, FoldRun.protocol == protocol, FoldRun.data_fingerprint == c.fingerprint)


def stored_run(engine, c: Candidate, seed: int, split: str, protocol: str) -> FoldRun | None:
    """The finished run of this config and seed on this split under `protocol`, with its prediction files."""
    with Session(engine) as session:
        row = session.scalars(select(FoldRun).where(*_where(c, seed, split, protocol),
                                                    FoldRun.state == "COMPLETE")).first()
        if row is None or not all((Path(row.predictions) / f).is_file() for f in ("score.npy", "test.npy")):
            return None  # never trained, failed, or its files were removed: train it (again)
        session.expunge(row)
        return row


def _replace(session: Session, row: FoldRun, c: Candidate, seed: int, split: str, protocol: str) -> FoldRun:
    """Write row in place of an earlier one for the same run (failed, or whose files were lost)."""
    for stale in session.scalars(select(FoldRun).where(*_where(c, seed, split, protocol))).all():
        session.delete(stale)
    session.flush()
    session.add(row)
    session.flush()
    return row


def store_run(engine, c: Candidate, seed: int, split: str, protocol: str, out_dir: Path, out: dict) -> FoldRun:
    """A finished run (its train_split-shaped outputs): its predictions in a folder named after its row, and the row."""
    summary = out["summary"]
    folder = None
    try:
        with Session(engine) as session, session.begin():
            row = _replace(session, FoldRun(
                study=c.study, trial_number=c.trial, config_key=c.key, config=c.config.replace(seed=seed).to_dict(),
                seed=seed, split=split, protocol=protocol, state="COMPLETE", score_ccc=summary["score_ccc"],
                best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"], seconds=summary["seconds"],
                node=out["node"], code_version=code_version(), data_fingerprint=c.fingerprint), c, seed, split, protocol)
            folder = out_dir / c.study / f"run-{row.id}_trial-{c.trial}_seed-{seed}_{split.replace('/', 'of').replace(' ', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "score.npy", out["score"])
            np.save(folder / "test.npy", out["test"])
            row.predictions = str(folder)
            session.flush()
            session.expunge(row)
    except Exception:  # no row names the folder (or a retry replaces the row whose commit answer was lost)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return row


def _store_failure(engine, c: Candidate, seed: int, split: str, protocol: str, error: str) -> None:
    with Session(engine) as session, session.begin():
        _replace(session, FoldRun(study=c.study, trial_number=c.trial, config_key=c.key,
                                  config=c.config.replace(seed=seed).to_dict(), seed=seed, split=split,
                                  protocol=protocol, state="FAIL", error=error, code_version=code_version(),
                                  data_fingerprint=c.fingerprint), c, seed, split, protocol)


def _mean(ccc: dict[str, float]) -> float:
    return float(np.mean(list(ccc.values()))) if ccc else float("nan")

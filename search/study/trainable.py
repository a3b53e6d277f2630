"""One trial: train the sampled config on each split in turn, reporting a TrialReport after every epoch.

With K folds a trial trains fold 1, then fold 2, ... as long as the scheduler lets it go on: its
value is the mean CCC over the folds it was scored on, and its progress (`train_frames`) counts
training frames over all folds, each fold worth the same `max_frames`, so ASHA's rungs fall on
fold ends: racing over folds and over training at once. A rung inside a fold is reported by the batch
that reaches it, part-way through an epoch if need be, with the selection fold evaluated then: every
trial meets a rung after the same work, within one batch, whatever its windows and batch size.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import traceback
from dataclasses import dataclass

import numpy as np

METRIC = "objective"
TIME_ATTR = "train_frames"


@dataclass
class TrialReport:
    """What a trial reports after each epoch and at each rung (Ray carries it as a dict of its fields)."""
    epoch: int  # epochs trained by this trial, all folds (the last one may be under way)
    fold: int  # the fold being trained, from 1
    train_frames: int  # progress: (fold - 1) * max_frames + frames of this fold; a fold's end jumps to its full share
    fold_ccc: list[float]  # per fold so far: mean CCC over targets at the fold's selected epoch (the last: so far)
    target_ccc: dict[str, list[float]]  # the same per target
    objective: float  # mean of fold_ccc: what ASHA and the study see
    stop_reason: str | None  # set on a trial's last report: the last fold's "early_stop", "max_frames" or "max_epochs"
    device: str
    gpu_ids: list[str]  # the GPUs Ray gave the trial (it sees them as cuda:0, ...)
    node: str  # the Ray node it ran on
    threads: int
    niceness: int  # the trial process' CPU priority (0: a fair share beside other processes)
    started_at: str  # ISO 8601, when the trial's process took it up
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.stop_reason is not None or self.error is not None

    def to_result(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_result(cls, result: dict) -> TrialReport:
        """The report in a result as Tune hands it over (Tune flattens dicts: target_ccc/valence)."""
        def value(name: str):
            nested = {k.split("/", 1)[1]: v for k, v in result.items() if k.startswith(f"{name}/")}
            return result.get(name, nested or None)
        return cls(**{f.name: value(f.name) for f in dataclasses.fields(cls)})


def objective(config: dict, corpus_ref, splits: list, keeper=None) -> None:
    """A Ray Tune function trainable. The corpus comes from Ray's object store (one copy per node);
    config["rungs"] holds the scheduler's milestones in training frames over all folds. A trial that
    trains every fold hands its models' predictions to the keeper (retrain-best's library takes them)."""
    import ray
    import torch
    from ray import tune

    from core.threads import use_threads
    from core.trainer import EpochReport, train

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    corpus = ray.get(corpus_ref)
    cfg = config["train"]
    threads = use_threads(config["cpu"])
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # Ray also sets CUDA_VISIBLE_DEVICES to these
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    node = ray.get_runtime_context().get_node_id()
    folds: list[dict[str, float]] = []  # per finished fold: per-target CCC at its selected epoch
    epochs_before = 0

    def report(fold: int, epoch: EpochReport | None, error: str | None = None) -> None:
        scores = folds + ([epoch.score_ccc] if epoch and epoch.score_ccc else [])
        # 6 decimals: the value is exactly the mean of what is stored, and stored lists stay short
        fold_ccc = [round(float(np.mean(list(s.values()))), 6) for s in scores]
        last_fold = fold == len(splits)
        frames = (fold - 1) * cfg.max_frames + (cfg.max_frames if epoch and epoch.final else min(
            epoch.frames if epoch else 0, cfg.max_frames))
        tune.report(TrialReport(
            epoch=epochs_before + (epoch.epoch if epoch else 0), fold=fold, train_frames=frames, fold_ccc=fold_ccc,
            target_ccc={t: [round(s[t], 6) for s in scores] for t in cfg.emo_dim_set},
            objective=float(np.mean(fold_ccc)) if fold_ccc else float("nan"),
            stop_reason=epoch.stop_reason if epoch and epoch.final and last_fold else None,
            device=device, gpu_ids=gpu_ids, node=node, threads=threads, niceness=os.nice(0), started_at=started,
            error=error).to_result())

    kept = []  # per finished fold: its split's name and its model's predictions
    test = np.arange(*corpus.partition_videos["test"])
    fold = 1
    try:
        for fold, split in enumerate(splits, start=1):
            before = (fold - 1) * cfg.max_frames
            # a rung on the fold's end is met by the fold's last report, which jumps to its full share
            milestones = [rung - before for rung in config["rungs"] if before < rung < before + cfg.max_frames]
            result = train(corpus, cfg, split, device=device, log=None, on_epoch=lambda e: report(fold, e),
                           milestones=milestones)
            folds.append(result.last.score_ccc)
            epochs_before += result.last.epoch
            if keeper is not None:
                kept.append((split.name, result.outputs(test) | {"node": node}))
    except Exception as e:  # the study records why (FAIL, stop_reason) and goes on with other trials
        traceback.print_exc()
        report(fold, None, error=f"{type(e).__name__}: {e}")
        return
    if keeper is not None:
        try:  # before the trial returns, so its runs are stored by the time the study records it COMPLETE
            ray.get(keeper.keep.remote(config["trial_number"], cfg, kept))
        except Exception:  # a trial is no less complete for it; retrain-best only has one model fewer
            traceback.print_exc()

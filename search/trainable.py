"""One Ray Tune trial: train the sampled config on the shared corpus, report devel CCC every epoch."""
from __future__ import annotations

import time
import traceback

import ray
import torch
from ray import tune

from core.corpus import Corpus
from core.train import EpochReport, TrainConfig, train


def objective(config: dict, corpus_ref: ray.ObjectRef) -> None:
    """The corpus comes from Ray's object store: one copy per node, its arrays shared by all trials there."""
    started = time.time()
    corpus: Corpus = ray.get(corpus_ref)
    cfg = TrainConfig.from_dict(config["train"])
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # Ray also sets CUDA_VISIBLE_DEVICES to these
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"

    best: dict[str, float] = {}  # per-target devel CCC at the best epoch so far

    def report(epoch: EpochReport) -> None:
        if epoch.best_epoch == epoch.epoch:
            best.update(epoch.devel_ccc)
        stop_reason = ("early_stop" if epoch.epoch < cfg.epochs else "max_epochs") if epoch.final else None
        tune.report({"epoch": epoch.epoch, "devel_ccc": epoch.mean_ccc, "best_devel_ccc": epoch.best_mean_ccc,
                     "best_epoch": epoch.best_epoch, "train_loss": epoch.train_loss, "final": epoch.final,
                     "stop_reason": stop_reason, "started_at": started, "device": device, "gpu_ids": gpu_ids}
                    | {f"devel_ccc_{t}": v for t, v in epoch.devel_ccc.items()}
                    | {f"best_devel_ccc_{t}": v for t, v in best.items()})

    try:
        train(corpus, cfg, device=device, on_epoch=report, log=None)
    except Exception as e:  # the study records why (FAIL, stop_reason) and goes on with other trials
        traceback.print_exc()
        tune.report({"error": f"{type(e).__name__}: {e}", "final": True, "started_at": started, "device": device,
                     "gpu_ids": gpu_ids})

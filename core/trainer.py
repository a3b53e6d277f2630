"""Train one model on windows of a split's training videos; select its epoch on the split's selection videos.

As in the entry: Adam, ReduceLROnPlateau on the selection CCC, early stopping, optional gradient
clipping; the loss is 1 - CCC per window averaged over the batch (or MSE/L1), weighted over targets;
selection and scores use CCC over all frames of the videos concatenated. Each epoch's report says
how far the run got, what it scored and, on the last epoch, why it stopped.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from core.batching import FrameInputs
from core.config import TrainConfig
from core.corpus import Corpus
from core.errors import TrainingDiverged
from core.evaluate import FRAMES_PER_PASS, ccc_per_target, predict_videos
from core.metrics import loss_count, loss_sum
from core.model import Model, autocast
from core.splits import Split, make_splits
from core.windows import batch_order, train_windows


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    frames: int  # training frames processed so far in this run (a window's frames count each time it is seen)
    select_ccc: dict[str, float]  # this epoch's CCC on the selection videos
    best_epoch: int  # the epoch with the best mean selection CCC so far: its weights are kept
    best_select: float
    score_ccc: dict[str, float]  # CCC on the scoring videos at best_epoch
    lr: float
    seconds: float  # the whole epoch
    eval_seconds: float  # of which evaluation
    stop_reason: str | None = None  # "early_stop", "max_frames" or "max_epochs" on a run's last epoch

    @property
    def final(self) -> bool:
        return self.stop_reason is not None

    @property
    def select(self) -> float:
        return float(np.mean(list(self.select_ccc.values())))

    @property
    def score(self) -> float:
        return float(np.mean(list(self.score_ccc.values())))


@dataclass
class TrainResult:
    config: TrainConfig
    split: Split
    history: list[EpochReport]
    seconds: float
    data_fingerprint: str
    inputs: FrameInputs = field(repr=False)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the best epoch's weights

    @property
    def last(self) -> EpochReport:
        return self.history[-1]

    def model(self) -> Model:
        model = Model(self.config, self.inputs.d_in).to(self.inputs.device)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def predict(self, videos: np.ndarray) -> np.ndarray:
        """(frames, targets) predictions of the best epoch's model for these videos, in the order given."""
        return predict_videos(self.model(), self.inputs, videos)

    def summary(self) -> dict:
        last = self.last
        return {"split": self.split.name, "score_ccc": last.score_ccc, "score": last.score,
                "best_epoch": last.best_epoch, "epochs_run": last.epoch, "stop_reason": last.stop_reason,
                "train_frames": last.frames, "seconds": round(self.seconds, 2), "data_fingerprint": self.data_fingerprint}


def train(corpus: Corpus, cfg: TrainConfig, split: Split | None = None, *, device: torch.device | str = "cpu",
          on_epoch: Callable[[EpochReport], None] | None = None, log: Callable[[str], None] | None = print,
          frames_per_pass: int = FRAMES_PER_PASS) -> TrainResult:
    """Train on windows of split.train (default: the train partition, selected and scored on devel).

    on_epoch receives each epoch's report; it may raise (a pruner does) to end the run there.
    """
    cfg.check()
    split = split or make_splits(corpus, 1)[0]
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    inputs = FrameInputs(corpus, cfg, split.train, device)
    starts, lengths = train_windows(corpus, split.train, cfg.win_len, cfg.hop_len, cfg.segment_type)
    model = Model(cfg, inputs.d_in).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.l2_penalty)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=cfg.lr_patience,
                                                           factor=cfg.lr_factor, min_lr=cfg.min_lr)
    columns = [corpus.targets.index(t) for t in cfg.emo_dim_set]
    select_labels = corpus.labels_for(split.select)[:, columns]
    score_labels = select_labels if split.selects_on_score else corpus.labels_for(split.score)[:, columns]

    history: list[EpochReport] = []
    best_state: dict[str, torch.Tensor] = {}
    best_epoch, best_select, score, frames = 0, -np.inf, {}, 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = _fit_epoch(model, optimizer, inputs, starts, lengths, cfg, rng, frames_per_pass, epoch)
        frames += int(lengths.sum())
        eval_start = time.perf_counter()
        select = _scores(model, inputs, split.select, select_labels, cfg, frames_per_pass, epoch)
        mean = float(np.mean(list(select.values())))
        if mean > best_select:
            best_epoch, best_select = epoch, mean
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            score = select if split.selects_on_score else _scores(model, inputs, split.score, score_labels, cfg,
                                                                  frames_per_pass, epoch)
        scheduler.step(mean)
        stop_reason = ("early_stop" if epoch - best_epoch >= cfg.early_stop
                       else "max_frames" if 0 < cfg.max_frames <= frames
                       else "max_epochs" if epoch == cfg.epochs else None)
        now = time.perf_counter()
        report = EpochReport(epoch, train_loss, frames, select, best_epoch, best_select, dict(score),
                             optimizer.param_groups[0]["lr"], now - epoch_start, now - eval_start, stop_reason)
        history.append(report)
        if log:
            log(f"epoch {epoch:3d} | loss {train_loss:.4f} | {split.name} CCC "
                + " ".join(f"{t} {v:.4f}" for t, v in select.items())
                + f" | best {best_select:.4f} @{best_epoch} | lr {report.lr:.1e} | {report.seconds:.1f}s")
        if on_epoch:
            on_epoch(report)
        if report.final:
            break
    return TrainResult(copy.deepcopy(cfg), split, history, time.perf_counter() - start, corpus.fingerprint,
                       inputs, best_state)


def _scores(model: Model, inputs: FrameInputs, videos: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
            frames_per_pass: int, epoch: int) -> dict[str, float]:
    preds = predict_videos(model, inputs, videos, frames_per_pass)
    if not np.isfinite(preds).all():
        raise TrainingDiverged(f"predictions are not finite after epoch {epoch}")
    return ccc_per_target(preds, labels, cfg.emo_dim_set)


def _fit_epoch(model: Model, optimizer: torch.optim.Optimizer, inputs: FrameInputs, starts: np.ndarray,
               lengths: np.ndarray, cfg: TrainConfig, rng: np.random.Generator, frames_per_pass: int,
               epoch: int) -> float:
    """One pass over the training windows in random batches; returns the mean batch loss."""
    model.train()
    weights = cfg.loss_weight_values
    total, n_windows = 0.0, 0
    for batch_index, windows in enumerate(batch_order(lengths, cfg.batch_size, cfg.win_len, rng)):
        optimizer.zero_grad(set_to_none=True)
        count, value = loss_count(cfg.loss, lengths[windows]), 0.0
        # A batch of 1024 windows would hold GBs of activations at once; its loss is a sum over
        # windows (or frames), so pieces of at most frames_per_pass frames give the same gradient.
        for part in np.array_split(windows, -(-int(lengths[windows].sum()) // frames_per_pass)):
            batch = inputs.batch(starts[part], lengths[part])
            with autocast(cfg, inputs.device):
                pred = model(batch.x, batch.lengths)
            pred = pred.float()  # the loss, like the metric, in float32
            loss = sum(w * loss_sum(cfg.loss, pred[..., j], batch.y[..., j], batch.mask)
                       for j, w in enumerate(weights)) / count
            loss.backward()
            value += loss.item()
        if not np.isfinite(value):
            raise TrainingDiverged(f"training loss became {value} at epoch {epoch}, batch {batch_index + 1} "
                                   f"(lr {optimizer.param_groups[0]['lr']:g})")
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        total, n_windows = total + value * len(windows), n_windows + len(windows)
    return total / n_windows

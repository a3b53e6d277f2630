"""Train one model on windows of a split's training videos; select its epoch on the split's selection videos.

As in the entry: Adam, ReduceLROnPlateau on the selection CCC, early stopping, optional gradient
clipping; the loss is 1 - CCC per window averaged over the batch (or MSE/L1), weighted over targets;
selection and scores use CCC over all frames of the videos concatenated. Each report says how far
the run got, what it scored and, on the last one, why it stopped.

Work is counted in training frames: a window's frames each time it is seen. A report comes at each
epoch's end and, part-way through an epoch, at the batch that reaches a milestone (a scheduler's rung)
or the frame cap, so that runs of any window, hop and batch size are compared after the same work,
give or take one batch.
"""
from __future__ import annotations

import bisect
import copy
import time
from collections.abc import Callable, Iterator, Sequence
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
    epoch: int  # the epoch trained in (a part-way report's epoch has not ended)
    train_loss: float
    frames: int  # training frames processed so far in this run (a window's frames count each time it is seen)
    select_ccc: dict[str, float]  # CCC on the selection videos at this report
    best_epoch: int  # the epoch of the report with the best mean selection CCC so far: its weights are kept
    best_select: float
    score_ccc: dict[str, float]  # CCC on the scoring videos at best_epoch
    lr: float
    seconds: float  # since the previous report (a whole epoch when there is no part-way report)
    eval_seconds: float  # of which evaluation
    stop_reason: str | None = None  # "early_stop", "max_frames" or "max_epochs" on a run's last report
    part_way: bool = False  # made at a milestone or the frame cap before the epoch's end

    @property
    def final(self) -> bool:
        return self.stop_reason is not None

    @property
    def select(self) -> float:
        return _mean(self.select_ccc)

    @property
    def score(self) -> float:
        return _mean(self.score_ccc)


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

    def outputs(self, test: np.ndarray) -> dict:
        """What a fold run keeps: its summary, and its best epoch's predictions of the split's scoring videos
        (none for a refit) and of the `test` videos."""
        return {"summary": self.summary(), "score": self.predict(self.split.score), "test": self.predict(test)}

    def summary(self) -> dict:
        last = self.last
        return {"split": self.split.name, "score_ccc": last.score_ccc, "score": last.score,
                "best_epoch": last.best_epoch, "epochs_run": last.epoch, "stop_reason": last.stop_reason,
                "train_frames": last.frames, "seconds": round(self.seconds, 2), "data_fingerprint": self.data_fingerprint}


def train(corpus: Corpus, cfg: TrainConfig, split: Split | None = None, *, device: torch.device | str = "cpu",
          on_epoch: Callable[[EpochReport], None] | None = None, log: Callable[[str], None] | None = print,
          frames_per_pass: int = FRAMES_PER_PASS, milestones: Sequence[int] = ()) -> TrainResult:
    """Train on windows of split.train (default: the train partition, selected and scored on devel).

    milestones: training frames of this run at which to report part-way through an epoch (a scheduler's
    rungs); the run stops part-way too once cfg.max_frames is reached. Every report evaluates the model
    on the selection videos, and the best of them gives the weights kept; the learning rate plateau and
    early stopping count whole epochs, as without milestones, and the training itself is the same.
    A split without selection videos (a refit on every pooled video) trains cfg.epochs epochs at the
    config's learning rate (no plateau to see) and keeps the last weights.
    on_epoch receives each report; it may raise (a pruner does) to end the run there.
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
    best = _Best(corpus, inputs, split, cfg, frames_per_pass)

    history: list[EpochReport] = []
    since = time.perf_counter()
    for epoch, frames, train_loss, epoch_end in _train_until_reports(model, optimizer, inputs, starts, lengths, cfg,
                                                                      rng, frames_per_pass, sorted(milestones)):
        eval_start = time.perf_counter()
        select = best.evaluate(model, epoch)
        if epoch_end and select:
            scheduler.step(_mean(select))
        stop_reason = ("early_stop" if epoch_end and epoch - best.epoch >= cfg.early_stop
                       else "max_frames" if 0 < cfg.max_frames <= frames
                       else "max_epochs" if epoch_end and epoch == cfg.epochs else None)
        now = time.perf_counter()
        report = EpochReport(epoch, train_loss, frames, select, best.epoch, best.select, dict(best.score),
                             optimizer.param_groups[0]["lr"], now - since, now - eval_start, stop_reason,
                             part_way=not epoch_end)
        history.append(report)
        if log:
            log(f"epoch {epoch:3d}{' (part)' if report.part_way else ''} | loss {train_loss:.4f} | {split.name} CCC "
                + " ".join(f"{t} {v:.4f}" for t, v in select.items())
                + f" | best {best.select:.4f} @{best.epoch} | lr {report.lr:.1e} | {report.seconds:.1f}s")
        if on_epoch:
            on_epoch(report)
        if report.final:
            break
        since = time.perf_counter()
    return TrainResult(copy.deepcopy(cfg), split, history, time.perf_counter() - start, corpus.fingerprint,
                       inputs, best.state)


class _Best:
    """The selection videos' CCC at each report, and the best report so far: its epoch, its weights and
    its score on the scoring videos (computed only when a report becomes the best)."""

    def __init__(self, corpus: Corpus, inputs: FrameInputs, split: Split, cfg: TrainConfig, frames_per_pass: int):
        self.inputs, self.split, self.cfg, self.frames_per_pass = inputs, split, cfg, frames_per_pass
        columns = [corpus.targets.index(t) for t in cfg.emo_dim_set]
        self.select_labels = corpus.labels_for(split.select)[:, columns]
        self.score_labels = (self.select_labels if split.selects_on_score
                             else corpus.labels_for(split.score)[:, columns])
        self.epoch, self.select, self.score = 0, -np.inf, {}
        self.state: dict[str, torch.Tensor] = {}

    def evaluate(self, model: Model, epoch: int) -> dict[str, float]:
        if not len(self.split.select):  # a refit: nothing to select on, so the latest weights are kept
            self.epoch, self.state = epoch, _weights(model)
            return {}
        select = self._ccc(model, self.split.select, self.select_labels, epoch)
        if _mean(select) > self.select:
            self.epoch, self.select, self.state = epoch, _mean(select), _weights(model)
            self.score = select if self.split.selects_on_score else self._ccc(model, self.split.score,
                                                                              self.score_labels, epoch)
        return select

    def _ccc(self, model: Model, videos: np.ndarray, labels: np.ndarray, epoch: int) -> dict[str, float]:
        preds = predict_videos(model, self.inputs, videos, self.frames_per_pass)
        if not np.isfinite(preds).all():
            raise TrainingDiverged(f"predictions are not finite in epoch {epoch}")
        return ccc_per_target(preds, labels, self.cfg.emo_dim_set)


def _train_until_reports(model: Model, optimizer: torch.optim.Optimizer, inputs: FrameInputs, starts: np.ndarray,
                         lengths: np.ndarray, cfg: TrainConfig, rng: np.random.Generator, frames_per_pass: int,
                         milestones: list[int]) -> Iterator[tuple[int, int, float, bool]]:
    """Epochs of random batches, trained one batch at a time. Pauses with (epoch, training frames so far,
    the epoch's mean batch loss so far, whether the epoch ended) at each epoch's end and after the batch
    that reaches a milestone or cfg.max_frames; the caller evaluates then and stops when it is done."""
    frames, passed = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        total, n_windows = 0.0, 0
        batches = batch_order(lengths, cfg.batch_size, cfg.win_len, rng)
        for index, windows in enumerate(batches, start=1):
            model.train()  # again at every batch: a report part-way through the epoch left it in eval mode
            optimizer.zero_grad(set_to_none=True)
            value = _backward(model, inputs, starts[windows], lengths[windows], cfg, frames_per_pass)
            if not np.isfinite(value):
                raise TrainingDiverged(f"training loss became {value} at epoch {epoch}, batch {index} "
                                       f"(lr {optimizer.param_groups[0]['lr']:g})")
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            total, n_windows = total + value * len(windows), n_windows + len(windows)
            frames += int(lengths[windows].sum())
            reached = bisect.bisect_right(milestones, frames)
            if index == len(batches) or reached > passed or 0 < cfg.max_frames <= frames:
                passed = reached
                yield epoch, frames, total / n_windows, index == len(batches)


def _backward(model: Model, inputs: FrameInputs, starts: np.ndarray, lengths: np.ndarray, cfg: TrainConfig,
              frames_per_pass: int) -> float:
    """The gradient of a batch of windows' loss, accumulated in the model; returns the loss."""
    count, value = loss_count(cfg.loss, lengths), 0.0
    # A batch of 1024 windows would hold GBs of activations at once; its loss is a sum over
    # windows (or frames), so pieces of at most frames_per_pass frames give the same gradient.
    for part in np.array_split(np.arange(len(lengths)), -(-int(lengths.sum()) // frames_per_pass)):
        batch = inputs.batch(starts[part], lengths[part])
        with autocast(cfg, inputs.device):
            pred = model(batch.x, batch.lengths)
        pred = pred.float()  # the loss, like the metric, in float32
        loss = sum(w * loss_sum(cfg.loss, pred[..., j], batch.y[..., j], batch.mask)
                   for j, w in enumerate(cfg.loss_weight_values)) / count
        loss.backward()
        value += loss.item()
    return value


def _weights(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _mean(ccc: dict[str, float]) -> float:
    """The mean CCC over targets; NaN for none (a refit is not evaluated)."""
    return float(np.mean(list(ccc.values()))) if ccc else float("nan")

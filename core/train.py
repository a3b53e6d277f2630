"""Train one model on windows of the train videos, select it on devel CCC.

    python -m core.train --data data/synthetic --feature_set egemaps fasttext --emo_dim_set valence \\
        --normalize --add_seg_id --d_rnn 64 --rnn_bi --attn --n_layers 1 --n_heads 8 \\
        --win_len 200 --hop_len 100 --batch_size 1024 --lr 0.005 --min_lr 1e-5 --epochs 100

Flags and config fields keep the entry's names. Each epoch prints a line; the run ends with one
JSON line (best devel CCC per target, best epoch, epochs run, seconds) that scripts can parse.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.batching import FrameInputs
from core.corpus import Corpus, load_corpus
from core.errors import ConfigError, TrainingDiverged, run_command
from core.metrics import LOSSES, ccc, loss_count, loss_sum
from core.model import RNN_TYPES, Model, ModelConfig
from core.muse_files import TARGETS
from core.predict import FRAMES_PER_PASS, predict_partition, write_predictions
from core.windows import SEGMENT_TYPES, batch_order, train_windows


@dataclass
class TrainConfig:
    # data
    feature_set: tuple[str, ...] = ("egemaps",)
    emo_dim_set: tuple[str, ...] = ("arousal",)
    normalize: tuple[str, ...] = ()  # feature sets (and/or "seg_id") standardized with train statistics
    add_seg_id: bool = False  # the topic segment id as an extra input feature
    segment_type: str = "normal"  # "normal": windows over whole videos; "id": within each topic segment
    win_len: int = 200
    hop_len: int = 100
    # model: see ModelConfig
    d_rnn: int = 64
    n_layers: int = 0
    n_heads: int = 4
    attn_dr: float = 0.0
    rnn: str = "lstm"
    rnn_n_layers: int = 1
    rnn_bi: bool = False
    rnn_dr: float = 0.0
    d_out_fc: int = 64
    out_dr: float = 0.0
    out_biases: tuple[float, ...] = ()
    # optimisation
    loss: str = "ccc"
    loss_weights: tuple[float, ...] = ()  # one per target; empty: equal weights summing to 1
    lr: float = 5e-3
    batch_size: int = 1024
    epochs: int = 100
    early_stop: int = 15  # epochs without a better devel CCC before stopping
    lr_patience: int = 5
    lr_factor: float = 0.5
    min_lr: float = 0.0
    clip: float = 0.0  # max gradient norm; 0 disables clipping
    l2_penalty: float = 0.0
    seed: int = 314

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def model_config(self, d_in: int) -> ModelConfig:
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig) if hasattr(self, f.name)}
        return ModelConfig(**shared | {"d_in": d_in, "n_targets": len(self.emo_dim_set)})

    def check(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{name}: {why} (got {getattr(self, name)!r})")

        need(len(self.feature_set) > 0, "feature_set", "name at least one feature set")
        need(len(self.emo_dim_set) > 0 and set(self.emo_dim_set) <= set(TARGETS), "emo_dim_set",
             f"choose from {', '.join(TARGETS)}")
        need(set(self.normalize) <= set(self.feature_set) | {"seg_id"}, "normalize",
             "name feature sets of feature_set, or seg_id")
        need(self.segment_type in SEGMENT_TYPES, "segment_type", f"one of {', '.join(SEGMENT_TYPES)}")
        need(self.win_len >= 1, "win_len", "must be at least 1")
        need(1 <= self.hop_len <= self.win_len, "hop_len", f"must be between 1 and win_len ({self.win_len})")
        for name in ("d_rnn", "d_out_fc", "batch_size", "epochs", "early_stop", "n_heads"):
            need(getattr(self, name) >= 1, name, "must be at least 1")
        for name in ("n_layers", "rnn_n_layers", "lr_patience", "min_lr", "clip", "l2_penalty"):
            need(getattr(self, name) >= 0, name, "must not be negative")
        need(self.n_layers == 0 or self.d_rnn % self.n_heads == 0, "n_heads",
             f"attention heads must divide d_rnn ({self.d_rnn})")
        need(self.rnn in RNN_TYPES, "rnn", f"one of {', '.join(RNN_TYPES)}")
        for name in ("attn_dr", "rnn_dr", "out_dr"):
            need(0 <= getattr(self, name) < 1, name, "a dropout rate must be in [0, 1)")
        need(self.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}")
        need(self.lr > 0 and np.isfinite(self.lr), "lr", "must be a positive number")
        need(0 < self.lr_factor < 1, "lr_factor", "must be in (0, 1)")
        for name in ("loss_weights", "out_biases"):
            need(len(getattr(self, name)) in (0, len(self.emo_dim_set)), name,
                 f"give one value per target ({len(self.emo_dim_set)}) or none")


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    devel_ccc: dict[str, float]
    mean_ccc: float  # what is selected on: mean devel CCC over the targets
    best_mean_ccc: float
    best_epoch: int
    lr: float
    seconds: float  # the whole epoch
    eval_seconds: float  # of which the devel evaluation
    final: bool  # the run ends after this epoch (max epochs or early stopping), unless a callback ends it first


@dataclass
class TrainResult:
    config: TrainConfig
    d_in: int
    best_ccc: dict[str, float]
    best_mean_ccc: float
    best_epoch: int
    epochs_run: int
    stop_reason: str  # "early_stop" or "max_epochs"
    seconds: float
    data_fingerprint: str
    history: list[EpochReport] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the best epoch's weights

    def summary(self) -> dict:
        return {"best_devel_ccc": self.best_ccc, "best_mean_devel_ccc": self.best_mean_ccc,
                "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "stop_reason": self.stop_reason,
                "seconds": round(self.seconds, 2), "data_fingerprint": self.data_fingerprint}

    def model(self, device: torch.device | str = "cpu") -> Model:
        model = Model(self.config.model_config(self.d_in)).to(device)
        model.load_state_dict(self.state_dict)
        return model.eval()


def train(corpus: Corpus, cfg: TrainConfig, *, device: torch.device | str = "cpu",
          on_epoch: Callable[[EpochReport], None] | None = None,
          log: Callable[[str], None] | None = print, frames_per_pass: int = FRAMES_PER_PASS) -> TrainResult:
    """Train on windows of the train partition, evaluating whole devel videos after every epoch.

    on_epoch receives each epoch's devel CCC; it may raise (a pruner does) to end the run there.
    """
    cfg.check()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    inputs = FrameInputs(corpus, cfg.feature_set, cfg.normalize, cfg.add_seg_id, cfg.emo_dim_set, device)
    starts, lengths = train_windows(corpus, cfg.win_len, cfg.hop_len, cfg.segment_type)
    model = Model(cfg.model_config(inputs.d_in)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.l2_penalty)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=cfg.lr_patience,
                                                           factor=cfg.lr_factor, min_lr=cfg.min_lr)
    weights = cfg.loss_weights or (1 / len(cfg.emo_dim_set),) * len(cfg.emo_dim_set)
    devel_labels = corpus.labels_of("devel")[:, [corpus.targets.index(t) for t in cfg.emo_dim_set]]

    best: EpochReport | None = None
    best_state: dict[str, torch.Tensor] = {}
    history: list[EpochReport] = []
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss = _fit_epoch(model, optimizer, inputs, starts, lengths, cfg, weights, rng, frames_per_pass, epoch)
        eval_start = time.perf_counter()
        preds = predict_partition(model, inputs, corpus, "devel", frames_per_pass)
        if not np.isfinite(preds).all():
            raise TrainingDiverged(f"devel predictions are not finite after epoch {epoch}")
        scores = {t: ccc(preds[:, j], devel_labels[:, j]) for j, t in enumerate(cfg.emo_dim_set)}
        mean = float(np.mean(list(scores.values())))
        improved = best is None or mean > best.best_mean_ccc
        best_epoch = epoch if improved else best.best_epoch
        stop_reason = "early_stop" if epoch - best_epoch >= cfg.early_stop else "max_epochs"
        report = EpochReport(epoch, train_loss, scores, mean, mean if improved else best.best_mean_ccc,
                             best_epoch, optimizer.param_groups[0]["lr"], time.perf_counter() - epoch_start,
                             time.perf_counter() - eval_start, stop_reason == "early_stop" or epoch == cfg.epochs)
        history.append(report)
        if improved:
            best = report
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        scheduler.step(mean)
        if log:
            log(f"epoch {epoch:3d} | loss {report.train_loss:.4f} | devel CCC "
                + " ".join(f"{t} {v:.4f}" for t, v in scores.items())
                + f" | best {report.best_mean_ccc:.4f} @{report.best_epoch} | lr {report.lr:.1e} | {report.seconds:.1f}s")
        if on_epoch:
            on_epoch(report)
        if report.final:
            break

    return TrainResult(copy.deepcopy(cfg), inputs.d_in, best.devel_ccc, best.best_mean_ccc, best.best_epoch,
                       len(history), stop_reason, time.perf_counter() - start, corpus.fingerprint,
                       history, best_state)


def _fit_epoch(model: Model, optimizer: torch.optim.Optimizer, inputs: FrameInputs, starts: np.ndarray,
               lengths: np.ndarray, cfg: TrainConfig, weights: tuple[float, ...], rng: np.random.Generator,
               frames_per_pass: int, epoch: int) -> float:
    """One pass over the training windows in random batches; returns the mean batch loss."""
    model.train()
    total, n_windows = 0.0, 0
    for batch_index, windows in enumerate(batch_order(lengths, cfg.batch_size, cfg.win_len, rng)):
        optimizer.zero_grad(set_to_none=True)
        count, value = loss_count(cfg.loss, lengths[windows]), 0.0
        # A batch of 1024 windows would hold GBs of activations at once; its loss is a sum over
        # windows (or frames), so pieces of at most frames_per_pass frames give the same gradient.
        for part in np.array_split(windows, -(-int(lengths[windows].sum()) // frames_per_pass)):
            batch = inputs.batch(starts[part], lengths[part])
            pred = model(batch.x, batch.lengths)
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


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The entry's command-line flags (same names), onto a TrainConfig."""
    d = TrainConfig()
    add = parser.add_argument
    add("--feature_set", "--features", nargs="+", required=True, help="feature sets, concatenated (early fusion)")
    add("--emo_dim_set", "--target", nargs="+", default=list(d.emo_dim_set), choices=TARGETS)
    add("--normalize", action="store_true", help="standardize every feature set with train statistics")
    add("--norm_opts", nargs="+", choices=["y", "n"],
        help="per feature set (segment id first, with --add_seg_id): y to standardize, n not to")
    add("--add_seg_id", action="store_true")
    add("--segment_type", default=d.segment_type, choices=SEGMENT_TYPES)
    add("--win_len", type=int, default=d.win_len)
    add("--hop_len", type=int, default=d.hop_len)
    add("--d_rnn", type=int, default=d.d_rnn)
    add("--attn", action="store_true", help="add self-attention layers (--n_layers of them)")
    add("--n_layers", type=int, default=1, help="self-attention layers, with --attn")
    add("--n_heads", type=int, default=d.n_heads)
    add("--rnn", default=d.rnn, choices=list(RNN_TYPES))
    add("--rnn_n_layers", type=int, default=d.rnn_n_layers)
    add("--rnn_bi", action="store_true")
    add("--d_out_fc", type=int, default=d.d_out_fc)
    add("--out_biases", type=float, nargs="+", default=[])
    add("--attn_dr", type=float, default=d.attn_dr)
    add("--rnn_dr", type=float, default=d.rnn_dr)
    add("--out_dr", type=float, default=d.out_dr)
    add("--loss", default=d.loss, choices=LOSSES)
    add("--loss_weights", type=float, nargs="+", default=[])
    for name in ("lr", "min_lr", "lr_factor", "clip", "l2_penalty"):
        add(f"--{name}", type=float, default=getattr(d, name))
    for name in ("batch_size", "epochs", "early_stop", "lr_patience", "seed"):
        add(f"--{name}", type=int, default=getattr(d, name))


def config_from_flags(args: argparse.Namespace) -> TrainConfig:
    names = ([] if not args.add_seg_id else ["seg_id"]) + list(args.feature_set)
    if args.norm_opts:
        if len(args.norm_opts) != len(names):
            raise ConfigError(f"norm_opts: give one y/n per input ({', '.join(names)}), got {len(args.norm_opts)}")
        normalize = [n for n, opt in zip(names, args.norm_opts) if opt == "y"]
    else:
        normalize = list(args.feature_set) if args.normalize else []
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values |= {"normalize": normalize, "n_layers": args.n_layers if args.attn else 0}
    return TrainConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="MuSe data root")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache_dir", type=Path, help="parsed-CSV cache (default: $MUSE_CACHE_DIR or ~/.cache/muse-search)")
    parser.add_argument("--nonfinite", default="mean", choices=["mean", "error"],
                        help="NaN/inf feature cells: fill with the train mean (counted), or stop with an error")
    parser.add_argument("--save", type=Path, help="write the best model and its devel/test predictions here")
    add_flags(parser)
    args = parser.parse_args(argv)
    return run_command(lambda: _train_command(args))


def _train_command(args: argparse.Namespace) -> None:
    cfg = config_from_flags(args)
    cfg.check()
    corpus = load_corpus(args.data, cfg.feature_set, cfg.emo_dim_set, nonfinite=args.nonfinite,
                         cache_dir=args.cache_dir)
    print(corpus.describe(), flush=True)
    result = train(corpus, cfg, device=args.device, log=lambda line: print(line, flush=True))
    summary = result.summary()
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        torch.save({"config": cfg.to_dict(), "d_in": result.d_in, "state_dict": result.state_dict},
                   args.save / "model.pt")
        inputs = FrameInputs(corpus, cfg.feature_set, cfg.normalize, cfg.add_seg_id, cfg.emo_dim_set, args.device)
        model = result.model(args.device)
        for partition in ("devel", "test"):
            preds = predict_partition(model, inputs, corpus, partition)
            write_predictions(args.save, corpus, partition, preds, cfg.emo_dim_set)
        summary["saved"] = str(args.save)
    print(json.dumps(summary))

if __name__ == "__main__":
    sys.exit(main())

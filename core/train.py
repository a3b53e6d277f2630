"""Train one model (the entry's flags), select it on devel, print one JSON line; --save writes predictions.

    python -m core.train --data data/synthetic --feature_set egemaps fasttext --emo_dim_set valence \\
        --normalize --add_seg_id --d_rnn 64 --rnn_bi --attn --n_layers 1 --n_heads 8 \\
        --win_len 200 --hop_len 100 --batch_size 1024 --lr 0.005 --min_lr 1e-5 --epochs 100

Flags keep the entry's names. Each epoch prints a line; the run ends with one JSON line (devel CCC
per target at the best epoch, best epoch, epochs run, stop reason, seconds) that scripts can parse.
The training itself is core/trainer.py; this module only reads flags, so --help answers at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from core.config import LOSSES, PRECISIONS, RNN_TYPES, SEGMENT_TYPES, TARGETS, TrainConfig
from core.errors import ConfigError, run_command

PROG = "python -m core.train"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The entry's command-line flags (same names), onto a TrainConfig."""
    d = TrainConfig()
    add = parser.add_argument
    add("--feature_set", "--features", nargs="+", required=True, help="feature sets, concatenated (early fusion)")
    add("--emo_dim_set", "--target", nargs="+", default=list(d.emo_dim_set), choices=TARGETS,
        help="targets to predict (default: %(default)s)")
    add("--normalize", action="store_true", help="standardize every feature set with train statistics")
    add("--norm_opts", nargs="+", choices=["y", "n"],
        help="per feature set (segment id first, with --add_seg_id): y to standardize, n not to "
             "(default: as --normalize)")
    add("--add_seg_id", action="store_true", help="add the topic segment id as an input feature")
    add("--segment_type", default=d.segment_type, choices=SEGMENT_TYPES,
        help="training windows over whole videos (normal) or within topic segments (id) (default: %(default)s)")
    add("--win_len", type=int, default=d.win_len, help="training window, frames (default: %(default)s)")
    add("--hop_len", type=int, default=d.hop_len, help="hop between windows, frames (default: %(default)s)")
    add("--d_rnn", type=int, default=d.d_rnn, help="model width and RNN hidden size (default: %(default)s)")
    add("--attn", action="store_true", help="add self-attention layers (--n_layers of them)")
    add("--n_layers", type=int, default=1, help="self-attention layers, with --attn (default: %(default)s)")
    add("--n_heads", type=int, default=d.n_heads, help="attention heads; must divide d_rnn (default: %(default)s)")
    add("--rnn", default=d.rnn, choices=RNN_TYPES, help="recurrent layer type (default: %(default)s)")
    add("--rnn_n_layers", type=int, default=d.rnn_n_layers, help="RNN layers; 0: none (default: %(default)s)")
    add("--rnn_bi", action="store_true", help="bidirectional RNN")
    add("--d_out_fc", type=int, default=d.d_out_fc, help="regressor hidden size (default: %(default)s)")
    add("--out_biases", type=float, nargs="+", default=[], help="initial output bias per target (default: 0)")
    add("--attn_dr", type=float, default=d.attn_dr, help="attention dropout (default: %(default)s)")
    add("--rnn_dr", type=float, default=d.rnn_dr, help="dropout between RNN layers (default: %(default)s)")
    add("--out_dr", type=float, default=d.out_dr, help="regressor dropout (default: %(default)s)")
    add("--loss", default=d.loss, choices=LOSSES, help="training loss (default: %(default)s)")
    add("--loss_weights", type=float, nargs="+", default=[], help="weight per target (default: equal)")
    add("--precision", default=d.precision, choices=PRECISIONS,
        help="bf16: the forward pass in bfloat16 autocast (default: %(default)s)")
    helps = {"lr": "learning rate", "min_lr": "lowest learning rate of the plateau schedule",
             "lr_factor": "learning rate factor on a plateau", "clip": "max gradient norm, 0: no clipping",
             "l2_penalty": "Adam weight decay", "batch_size": "windows per batch", "epochs": "most epochs",
             "early_stop": "stop after this many epochs without a better devel CCC",
             "lr_patience": "epochs without a better devel CCC before the learning rate drops", "seed": "random seed"}
    for name in ("lr", "min_lr", "lr_factor", "clip", "l2_penalty"):
        add(f"--{name}", type=float, default=getattr(d, name), help=f"{helps[name]} (default: %(default)s)")
    for name in ("batch_size", "epochs", "early_stop", "lr_patience", "seed"):
        add(f"--{name}", type=int, default=getattr(d, name), help=f"{helps[name]} (default: %(default)s)")


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
    cfg = TrainConfig.from_dict(values)
    cfg.check()
    return cfg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="MuSe data root")
    p.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    p.add_argument("--threads", type=int, help="torch threads (default: one per core)")
    p.add_argument("--cache_dir", type=Path, help="parsed-CSV cache (default: $MUSE_CACHE_DIR or ~/.cache/muse-search)")
    p.add_argument("--nonfinite", default="mean", choices=["mean", "error"],
                   help="NaN/inf feature cells: fill with their column's mean over the training videos "
                        "(counted), or stop with an error (default: %(default)s)")
    p.add_argument("--save", type=Path, help="write the best model and its devel/test predictions here "
                                             "(default: not saved)")
    add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_command(lambda: _train_command(args))


def _train_command(args: argparse.Namespace) -> None:
    cfg = config_from_flags(args)
    import torch  # only now: --help and flag errors answer without loading torch

    from core.corpus import load_corpus
    from core.predictions import write_predictions
    from core.threads import use_threads
    from core.trainer import train

    if args.threads:
        use_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    corpus = load_corpus(args.data, cfg.feature_set, cfg.emo_dim_set, nonfinite=args.nonfinite,
                         cache_dir=args.cache_dir)
    print(corpus.describe(), flush=True)
    result = train(corpus, cfg, device=device, log=lambda line: print(line, flush=True))
    summary = result.summary()
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        torch.save({"config": cfg.to_dict(), "d_in": result.inputs.d_in, "state_dict": result.state_dict},
                   args.save / "model.pt")
        for partition in ("devel", "test"):
            preds = result.predict(corpus.videos(partition))
            write_predictions(args.save, corpus, partition, preds, cfg.emo_dim_set)
        summary["saved"] = str(args.save)
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())

"""Speed and memory of the core trainer on 150 synthetic videos (egemaps + fasttext, the entry's valence config).

    python -m core.bench [--data ROOT] [--epochs 3]

Prints: generation s, first load s (CSV parse), cached load s, s per training epoch, s per devel
evaluation and the process' peak RSS, beside the original code's figures on such data (2 CPU cores).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.corpus import load_corpus
from core.train import TrainConfig, train
from core.windows import train_windows

# The entry's README valence command (bert-4 replaced by the synthetic set's egemaps + fasttext).
ENTRY_VALENCE = TrainConfig(feature_set=("egemaps", "fasttext"), emo_dim_set=("valence",),
                            normalize=("egemaps", "fasttext"), add_seg_id=True, d_rnn=64, rnn_n_layers=1,
                            rnn_bi=True, n_layers=1, n_heads=8, win_len=200, hop_len=100, batch_size=1024,
                            lr=5e-3, min_lr=1e-5, seed=43)
ORIGINAL = {"first load s": 50.0, "s per epoch": 150.0, "peak RSS GB": 7.9}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing data root (default: generate 150 videos)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="muse-bench-"))
    figures = {"torch threads": torch.get_num_threads()}
    data = args.data
    if data is None:
        data = work / "data"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "core.synthetic", str(data), "--videos", "150", "--seed", "0"], check=True)
        figures["generate 150 videos s"] = time.perf_counter() - start

    cfg = ENTRY_VALENCE
    for name in ("first load s", "cached load s"):
        start = time.perf_counter()
        corpus = load_corpus(data, cfg.feature_set, cfg.emo_dim_set, cache_dir=work / "cache")
        figures[name] = time.perf_counter() - start
        if name == "first load s":
            del corpus
    figures["frames"] = len(corpus.timestamps)

    cfg = TrainConfig.from_dict(cfg.to_dict() | {"epochs": args.epochs, "early_stop": args.epochs + 1})
    result = train(corpus, cfg)
    figures["train windows per epoch"] = len(train_windows(corpus, cfg.win_len, cfg.hop_len)[0])
    epochs = result.history[1:] or result.history  # the first epoch also pays one-off warm-up
    figures["s per epoch"] = float(np.mean([e.seconds - e.eval_seconds for e in epochs]))
    figures["s per devel evaluation"] = float(np.mean([e.eval_seconds for e in epochs]))
    figures["devel CCC after the epochs"] = result.best_mean_ccc
    figures["peak RSS GB"] = peak_rss_gb()

    print(f"{'figure':32s} {'value':>10s} {'original':>10s} {'speed-up':>9s}")
    for name, value in figures.items():
        original = ORIGINAL.get(name)
        ratio = f"{original / value:8.1f}x" if original else ""
        print(f"{name:32s} {value:10.3f} {original if original else '':>10} {ratio:>9s}")


if __name__ == "__main__":
    main()

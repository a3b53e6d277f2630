"""Speed and memory of the core trainer on 150 synthetic videos (egemaps + fasttext, the entry's valence config).

    python -m bench.core_speed [--data ROOT] [--epochs 3] [--threads N]

Prints: generation s, first load s (CSV parse), cached load s, s per training epoch, s per devel
evaluation and the process' peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.entry import ENTRY_VALENCE


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.core_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an existing data root (default: generate 150 videos)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from core.corpus import load_corpus
    from core.threads import use_threads
    from core.trainer import train
    from core.windows import train_windows

    if args.threads:
        use_threads(args.threads)
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

    cfg = cfg.replace(epochs=args.epochs, early_stop=args.epochs + 1)
    result = train(corpus, cfg)
    figures["train windows per epoch"] = len(train_windows(corpus, np.arange(*corpus.partition_videos["train"]),
                                                          cfg.win_len, cfg.hop_len)[0])
    epochs = result.history[1:] or result.history  # the first epoch also pays one-off warm-up
    figures["s per epoch"] = float(np.mean([e.seconds - e.eval_seconds for e in epochs]))
    figures["s per devel evaluation"] = float(np.mean([e.eval_seconds for e in epochs]))
    figures["devel CCC after the epochs"] = result.last.score
    figures["peak RSS GB"] = peak_rss_gb()
    print(f"{'figure':32s} {'value':>10s}")
    for name, value in figures.items():
        print(f"{name:32s} {value:10.3f}")


if __name__ == "__main__":
    main()

"""bfloat16 against float32 on a GPU: seconds per epoch and devel CCC of three configs, same seeds.

    python -m bench.gpu_precision [--videos 150] [--epochs 6]

Each config trains `epochs` epochs in float32 and with bf16 autocast (precision: bf16); prints the mean
epoch time (training and devel evaluation, first epoch left out) and the best devel CCC of each.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=150, help="synthetic videos (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    import torch

    from bench.gpu_check import configs
    from core.corpus import load_corpus
    from core.synthetic import generate
    from core.trainer import train

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="muse-precision-")) / "data"
    generate(root, videos=args.videos, seed=0)
    for name, cfg in configs().items():
        corpus = load_corpus(root, cfg.feature_set, cfg.emo_dim_set, cache_dir=root.parent / "cache")
        row = []
        for precision in ("fp32", "bf16"):
            run = cfg.replace(precision=precision, epochs=args.epochs, early_stop=args.epochs + 1)
            result = train(corpus, run, device=args.device, log=None)
            seconds = statistics.mean(e.seconds for e in result.history[1:])
            row.append(f"{precision} {seconds:.2f} s/epoch, devel CCC {result.last.score:.4f}")
        print(f"{name}: " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()

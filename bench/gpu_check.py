"""The prepared GPU check: epoch times of three configs on the GPU and on the machine's CPUs, then the
valence study as shipped for a few minutes with nvidia-smi sampling: trials per hour, GPU use, memory.

    bench/gpu_check.sh OUT_DIR                                    # on a GPU machine, about 6 minutes
    python -m bench.gpu_check OUT_DIR --device cpu --videos 14 --max-frames 300 --study-seconds 20   # on CPUs

Writes OUT_DIR/summary.txt (the figures), OUT_DIR/study.log, OUT_DIR/smi.csv and OUT_DIR/study.db;
the data set and caches go to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def configs():
    from bench.entry import ENTRY_VALENCE
    small = ENTRY_VALENCE.replace(d_rnn=32, n_layers=0, rnn_bi=False, win_len=100, hop_len=50, batch_size=64)
    large = ENTRY_VALENCE.replace(d_rnn=256, n_layers=2, rnn_n_layers=2, win_len=300, hop_len=150, batch_size=256)
    return {"entry (d_rnn 64, 1 attention layer, biLSTM, batch 1024)": ENTRY_VALENCE,
            "small (d_rnn 32, LSTM, batch 64)": small,
            "large (d_rnn 256, 2 attention layers, 2-layer biLSTM, batch 256)": large}


def epoch_seconds(root: Path, device: str, threads: int) -> dict[str, float]:
    """Seconds of the second of two epochs (training and devel evaluation) of each config on a device."""
    import torch

    from core.corpus import load_corpus
    from core.trainer import train

    torch.set_num_threads(threads)
    out = {}
    for name, cfg in configs().items():
        corpus = load_corpus(root, cfg.feature_set, cfg.emo_dim_set)
        result = train(corpus, cfg.replace(epochs=2, early_stop=3), device=device, log=None)
        out[name] = result.history[-1].seconds
    return out


def run_study(out: Path, root: Path, seconds: float, cpu_only: bool) -> tuple[float, int, str]:
    """The shipped valence study for `seconds` (no trial starts later; running ones are stopped a minute
    after); returns its wall time, the trials it finished and their states."""
    import optuna

    storage = f"sqlite:///{out / 'study.db'}"
    command = [sys.executable, str(REPO / "search" / "run_study.py"), str(REPO / "studies" / "muse_valence.yaml"),
               "--data", str(root), "--storage", storage, "--wall-time", str(seconds)]
    if cpu_only:
        command += ["--gpu", "0", "--cpu", "1"]
    start = time.time()
    with open(out / "study.log", "w") as log:
        try:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=seconds + 60, cwd=REPO)
        except subprocess.TimeoutExpired:
            pass
    wall = time.time() - start
    trials = optuna.load_study(study_name="muse_valence", storage=storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    states = ", ".join(f"{s} {sum(t.state.name == s for t in finished)}" for s in ("COMPLETE", "PRUNED", "FAIL"))
    return wall, len(finished), states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where the figures and logs go")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="(default: %(default)s)")
    parser.add_argument("--videos", type=int, default=150, help="synthetic videos (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, default=3000,
                        help="frames of the longest synthetic video (default: %(default)s, the generator's)")
    parser.add_argument("--study-seconds", type=float, default=240, help="study length (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.max_frames < 1:
        parser.error(f"--max-frames: frames of the longest video, at least 1; got {args.max_frames}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="muse-gpu-check-"))
    os.environ.setdefault("MUSE_CACHE_DIR", str(work / "cache"))
    os.environ.setdefault("MUSE_RUNS_DIR", str(work / "runs"))
    from core.synthetic import generate

    lines = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    root = work / "data"
    start = time.time()
    generate(root, videos=args.videos, seed=0, min_frames=min(800, (args.max_frames + 1) // 2),
             max_frames=args.max_frames)
    say(f"data: {args.videos} synthetic videos in {time.time() - start:.0f} s")
    cores = os.cpu_count() or 1
    devices = [("cuda", 1), ("cpu", cores)] if args.device == "cuda" else [("cpu", cores)]
    for device, threads in devices:
        for name, seconds in epoch_seconds(root, device, threads).items():
            say(f"epoch on {device} ({threads} thread(s)): {name}: {seconds:.2f} s")
    smi = None
    if args.device == "cuda" and shutil.which("nvidia-smi"):
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total",
                                "--format=csv,noheader,nounits", "-lms", "500"],
                               stdout=open(args.out / "smi.csv", "w"), stderr=subprocess.DEVNULL)
    try:
        wall, finished, states = run_study(args.out, root, args.study_seconds, cpu_only=args.device == "cpu")
    finally:
        if smi:
            smi.terminate()
    say(f"valence study as shipped, {args.study_seconds:.0f} s of new trials: {finished} trials finished ({states}) "
        f"in {wall:.0f} s = {finished / wall * 3600:.0f} trials/h")
    if smi:
        rows = [list(map(float, r.split(","))) for r in (args.out / "smi.csv").read_text().splitlines() if r.strip()]
        util = [r[0] for r in rows]
        say(f"GPU utilisation over the study: mean {statistics.mean(util):.0f} %, median {statistics.median(util):.0f} % "
            f"({len(rows)} samples); memory used: max {max(r[1] for r in rows) / 1024:.1f} GiB of "
            f"{rows[0][2] / 1024:.0f} GiB")
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

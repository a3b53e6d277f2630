"""The README's main job on an idle machine and beside one CPU-bound process, phase by phase.

    python -m bench.main_job_load [--videos 80] [--floor-only]

Prints each run's phase times, the ratio of the two totals, the LSTM fusion's time in each, one
LSTM-fusion fit under the same load with torch's default threads (one per core: what every process
used before) and with one thread (what the driver and each trial use now), and the floor: the same
ratio for as many plain single-threaded CPU-bound processes as cores, which no job that keeps every
core busy can beat on this machine's scheduler.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOG = [sys.executable, "-c", "while True: pass"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.main_job_load", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=80, help="synthetic videos (default: %(default)s)")
    parser.add_argument("--floor-only", action="store_true", help="print only the scheduler's floor (default: all)")
    args = parser.parse_args(argv)
    if args.floor_only:
        return print_floor()
    runs = {}
    for label, loaded in (("idle", False), ("beside a CPU-bound process", True)):
        work = Path(tempfile.mkdtemp(prefix="muse-main-job-"))
        hog = subprocess.Popen(HOG) if loaded else None
        try:
            start = time.time()
            out = subprocess.run([sys.executable, "search/main_job.py", "--data", str(work / "data"), "--videos",
                                  str(args.videos), "--storage", f"sqlite:///{work / 'studies.db'}", "--out",
                                  str(work / "retrain")], cwd=REPO, capture_output=True, text=True,
                                 env=os.environ | {"MUSE_RUNS_DIR": str(work), "MUSE_CACHE_DIR": str(work / "cache")})
            seconds = time.time() - start
        finally:
            if hog:
                hog.kill()
        if out.returncode != 0:
            sys.exit(f"the main job failed ({label}):\n{out.stderr[-3000:]}")
        phases = dict(re.findall(r"^(data|study|retrain-best)\s+(\d+)$", out.stdout, re.M))
        fusion = re.findall(r"lstm fusion: fit \d+/\d+ \((\d+)s\)", out.stdout)
        runs[label] = (seconds, phases, int(fusion[-1]) if fusion else None)
        print(f"{label}: {seconds:.0f} s in all; " + ", ".join(f"{k} {v} s" for k, v in phases.items())
              + f"; LSTM fusion {runs[label][2]} s", flush=True)
    (idle, _, _), (loaded, _, _) = runs.values()
    print(f"loaded / idle: {loaded / idle:.2f}")
    print("one LSTM-fusion fit beside a CPU-bound process: "
          + ", ".join(f"{n} thread(s) {fusion_fit(n):.1f} s" for n in (os.cpu_count(), 1)))
    print_floor()


def print_floor() -> None:
    """The ratio no job can beat here: as many single-threaded CPU-bound processes as cores (the main
    job's parallelism), alone and beside the CPU-bound process."""
    work = [sys.executable, "-c", "sum(i * i for i in range(60_000_000))"]
    seconds = []
    for loaded in (False, True):
        hog = subprocess.Popen(HOG) if loaded else None
        try:
            start = time.time()
            for process in [subprocess.Popen(work) for _ in range(os.cpu_count())]:
                process.wait()
            seconds.append(time.time() - start)
        finally:
            if hog:
                hog.kill()
    print(f"floor: {os.cpu_count()} single-threaded CPU-bound processes, idle {seconds[0]:.1f} s, beside a "
          f"CPU-bound process {seconds[1]:.1f} s: loaded / idle {seconds[1] / seconds[0]:.2f}")


def fusion_fit(threads: int) -> float:
    """One fit of the fusion model on data the size of the demo's pooled videos, in a fresh process."""
    code = f"""
import time, numpy as np, torch
from core.fusion import fit_fusion_model
torch.set_num_threads({threads})
rng = np.random.default_rng(0)
bounds = np.concatenate([[0], np.cumsum(rng.integers(800, 3000, 63))])
x = rng.normal(0, 0.3, (bounds[-1], 3)).astype(np.float32)
y = np.tanh(x.mean(1, keepdims=True)).astype(np.float32)
start = time.perf_counter()
fit_fusion_model(x, y, bounds, np.arange(50), seed=0)
print(time.perf_counter() - start)
"""
    hog = subprocess.Popen(HOG)
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    finally:
        hog.kill()
    return float(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()

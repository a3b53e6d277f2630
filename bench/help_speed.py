"""How fast each command answers --help (the median of 3 runs): it must not load torch, Ray or Optuna.

    python -m bench.help_speed
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["search/run_study.py", "search/retrain_best.py", "search/dashboard.py", "search/main_job.py",
            "-m core.train", "-m core.synthetic"]


def main() -> None:
    for command in COMMANDS:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, *command.split(), "--help"], cwd=REPO, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        print(f"python {command} --help: {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()

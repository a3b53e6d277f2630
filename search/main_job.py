"""The README's main job: synthetic data, the demo study, retrain-best with its fusion, test and report.

    python search/main_job.py

Each phase says which command does it on its own, and the job ends with every phase's time. A rerun
skips what is done: data written with the same settings is kept, a study whose budget is spent runs
no trial (and starts no Ray), and a study whose test set was evaluated shows that evaluation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROG = "python search/main_job.py"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic", help="synthetic data root (default: %(default)s)")
    p.add_argument("--videos", type=int, default=80, help="synthetic videos (default: %(default)s)")
    p.add_argument("--study-file", default="studies/demo.yaml", help="the study (default: %(default)s)")
    p.add_argument("--storage", help="study storage URL (default: the study file's)")
    p.add_argument("--out", default="runs/retrain", help="predictions and report (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=3, help="configs retrained (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.errors import run_command

    return run_command(lambda: main_job(args))


def main_job(args: argparse.Namespace) -> None:
    from core.synthetic import generate, settings_of, written_with
    from core.threads import use_threads
    from search.retrain.pipeline import Request, retrain_best
    from search.run_study import watch_line
    from search.study.driver import run_study
    from search.study.file import load_study_file

    use_threads(1)  # this driver process: its work is bookkeeping and the small fusions
    times: dict[str, float] = {}

    def log(line: str) -> None:
        print(line, flush=True)

    def phase(name: str, command: str) -> float:
        log(f"\n== {name}: {command}")
        return time.time()

    start = phase("data", f"python -m core.synthetic {args.data} --videos {args.videos}")
    if written_with(args.data) == settings_of(args.videos):
        log(f"{args.data} already holds these {args.videos} synthetic videos: kept")
    else:
        log(f"writing {args.videos} synthetic videos to {args.data} ...")
        split = generate(args.data, args.videos)
        log(f"wrote {', '.join(f'{p} {len(v)}' for p, v in split.items())}")
    times["data"] = time.time() - start

    spec = load_study_file(args.study_file, {"data": args.data, "storage": args.storage})
    start = phase("study", f"python search/run_study.py {args.study_file} --data {args.data}")
    run_study(spec, log=log)
    log(watch_line(spec.storage))
    times["study"] = time.time() - start

    start = phase("retrain-best, fusion, test, report",
                  f"python search/retrain_best.py --study {spec.name} --storage {spec.storage} "
                  f"--top-k {args.top_k} --seeds {args.seeds}")
    retrain_best(Request(spec.name, spec.storage, top_k=args.top_k, seeds=args.seeds, out_dir=Path(args.out)), log=log)
    times["retrain-best"] = time.time() - start

    log("\nphase          seconds")
    for name, seconds in times.items():
        log(f"{name:14s} {seconds:7.0f}")
    log(f"{'total':14s} {sum(times.values()):7.0f}")


if __name__ == "__main__":
    sys.exit(main())

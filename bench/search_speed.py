"""Speed and memory of the search service.

    python -m bench.search_speed [--data data/synthetic] [--study-file studies/demo.yaml]

Prints: trials per hour of the demo study on this machine, the overhead per trial (from the
searcher's suggestion to the trial's process start, plus the searcher's storage writes), and the
memory (PSS, shared pages split between processes) of the whole Ray session with 4 concurrent
trials against 1, beside the corpus' own size: trials map the same cache files, one copy per node.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import optuna
import psutil

from search.study.driver import run_study
from search.study.file import load_study_file


class PeakPss:
    """Samples the summed PSS of this process and all its descendants (the local Ray) until stopped,
    and the largest private memory (USS) of one trial process: a trial holding its own copy of
    the data set would show it there."""

    def __init__(self, every_s: float = 0.5):
        self.peak, self.trial_uss, self.every_s = 0, 0, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakPss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            total = 0
            for process in [me] + me.children(recursive=True):
                try:
                    info = process.memory_full_info()
                    total += info.pss
                    if "ImplicitFunc" in " ".join(process.cmdline()):
                        self.trial_uss = max(self.trial_uss, info.uss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--study-file", default="studies/demo.yaml", help="the study (default: %(default)s)")
    parser.add_argument("--data", help="data root (default: the study file's)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="muse-search-bench-"))
    os.environ.setdefault("MUSE_RUNS_DIR", str(work))
    storage = f"sqlite:///{work / 'studies.db'}"
    quiet = lambda line: None  # noqa: E731

    spec = load_study_file(args.study_file, {"storage": storage, "data": args.data})
    start = time.time()
    run_study(spec, log=print)
    hours = (time.time() - start) / 3600
    trials = optuna.load_study(study_name=spec.name, storage=storage).trials
    scheduling = [t.user_attrs["scheduling_s"] for t in trials if "scheduling_s" in t.user_attrs]

    memory = {}
    for concurrent, cpu in ((1, 2.0), (4, 0.5)):
        probe = load_study_file(args.study_file, {"storage": storage, "data": args.data, "cpu": cpu, "trials": 4,
                                                  "max_epochs": 1, "study": f"memory-{concurrent}", "pruner": "none"})
        with PeakPss() as pss:
            run_study(probe, log=quiet)
        memory[concurrent] = (pss.peak / 2 ** 30, pss.trial_uss / 2 ** 30)

    from core.corpus import load_corpus
    corpus = load_corpus(spec.data_root, spec.space.feature_sets(), spec.targets)
    data_gb = sum(v.nbytes for v in corpus.features.values()) / 2 ** 30

    print(f"\n{'figure':48s} value")
    print(f"{'demo study: trials':48s} {len(trials)}")
    print(f"{'demo study: wall time, s':48s} {hours * 3600:.0f}")
    print(f"{'demo study: trials per hour':48s} {len(trials) / hours:.0f}")
    print(f"{'overhead per trial: scheduling, s (median/max)':48s} {statistics.median(scheduling):.2f} / {max(scheduling):.2f}")
    print(f"{'corpus features in memory, GB':48s} {data_gb:.2f}")
    for n in (1, 4):
        print(f"{f'{n} trial(s) at a time: peak PSS of the Ray session, GB':48s} {memory[n][0]:.2f}")
        print(f"{f'{n} trial(s) at a time: peak USS of one trial, GB':48s} {memory[n][1]:.2f}")


if __name__ == "__main__":
    main()

"""The driver's and the storage's cost per trial, with next to no training: real trials of one pass
over 12 videos of 60-80 frames with 4 features each go through the whole path (Ray Tune, ASHA, the
searcher, Optuna's storage), so the driver and the database do about as much per trial as in a real
study while the trials themselves take little time.

    python -m bench.scale [--storage postgresql://postgres@127.0.0.1:5432/test] [--trials 200]

Prints finished trials (tells) per second, the driver's CPU use, the storage's commits per trial
(PostgreSQL's own counter) and how many single-row commits per second the server takes from one
client: together they bound how many drivers and trials one database can serve.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psycopg
from sqlalchemy.engine import make_url

from core.synthetic import generate
from search.study.driver import run_study
from search.study.file import load_study_file

EPOCHS = 1


def commits_per_second(url: str, n: int = 2000) -> float:
    """Single-row INSERT + COMMIT from one client into a temporary table: what the server takes."""
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as db:
        db.execute("CREATE TEMPORARY TABLE commit_probe (n integer)")
        start = time.perf_counter()
        for i in range(n):
            db.execute("INSERT INTO commit_probe VALUES (%s)", (i,))
        return n / (time.perf_counter() - start)


def commits(url: str) -> int:
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as db:
        return db.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL storage (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=200, help="trials (default: %(default)s)")
    parser.add_argument("--cpu", type=float, default=0.25,
                        help="CPUs per trial: how many run at once (default: %(default)s)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="muse-scale-")) / "muse"
    name = f"scale-{uuid.uuid4().hex[:8]}"
    spec = load_study_file("studies/demo.yaml", {"storage": args.storage, "data": str(root), "study": name,
                                                 "trials": args.trials, "max_epochs": EPOCHS, "cpu": args.cpu})
    # tiny features, but every set the demo space can choose
    generate(root, videos=12, seed=0, feature_dims=dict.fromkeys(spec.space.feature_sets(), 4),
             min_frames=60, max_frames=80)
    before_commits, before_cpu = commits(args.storage), resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    summary = run_study(spec, log=lambda line: None)
    wall = time.time() - start
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = (cpu.ru_utime - before_cpu.ru_utime) + (cpu.ru_stime - before_cpu.ru_stime)
    per_trial = (commits(args.storage) - before_commits) / summary["trials"]
    optuna.delete_study(study_name=name, storage=args.storage)
    print(f"{'trials (one pass over tiny data each)':44s} {summary['trials']}  {summary['states']}")
    print(f"{'wall time, s':44s} {wall:.1f}")
    print(f"{'tells per second':44s} {summary['trials'] / wall:.2f}")
    print(f"{'driver CPU, % of one core':44s} {100 * driver_cpu / wall:.0f}")
    print(f"{'driver CPU per trial, ms':44s} {1000 * driver_cpu / summary['trials']:.0f}")
    print(f"{'database commits per trial (all clients)':44s} {per_trial:.1f}")
    print(f"{'server: single-row commits per second':44s} {commits_per_second(args.storage):,.0f}")


if __name__ == "__main__":
    main()

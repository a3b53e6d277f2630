"""Run (or resume) a hyperparameter study: Ray Tune runs the trials, Optuna's sampler proposes them.

    python search/run_study.py studies/demo.yaml
    python search/run_study.py studies/muse_valence.yaml --storage "postgresql://user:pw@host/db?sslmode=verify-full" --ray-address auto
    python search/dashboard.py sqlite:///runs/studies.db          # watch it live

Rerunning the same command continues the study: finished trials are kept, trials left RUNNING by
a driver that died are marked FAIL, and the budget counts what the study already holds. The work
is in search/study/ (file -> space -> trainable -> searcher); this module only reads flags, so
--help answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROG = "python search/run_study.py"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("study_file", type=Path, help="a study definition (see studies/)")
    p.add_argument("--study", help="study name (default: the file's)")
    p.add_argument("--storage", default=os.environ.get("MUSE_STORAGE"),
                   help="Optuna storage URL (default: $MUSE_STORAGE, else the study file's, else sqlite:///runs/studies.db)")
    p.add_argument("--data", help="MuSe data root (default: the file's data.root)")
    p.add_argument("--trials", type=int, help="budget: trials in the study, those already there included (default: the file's)")
    p.add_argument("--max-epochs", type=int, help="passes per fold a trial may train (default: the file's)")
    p.add_argument("--train-frames", type=int, help="budget: training frames of all trials together (default: the "
                                                    "file's, else none)")
    p.add_argument("--wall-time", type=float, dest="wall_time_s", help="seconds after which no trial starts (default: none)")
    p.add_argument("--sampler", help="tpe, random, cmaes or gp (default: the file's, else tpe)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the file's, else 0)")
    p.add_argument("--pruner", help="asha or none (default: the file's, else asha)")
    p.add_argument("--cpu", type=float, help="CPUs per trial (default: the file's, else 1)")
    p.add_argument("--gpu", type=float, help="GPUs per trial; fractions share a GPU (default: the file's, else 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this driver process (default: 1)")
    p.add_argument("--ray-address", help="join this Ray cluster (auto, or host:port) (default: $RAY_ADDRESS, else "
                                         "a local Ray of this process)")
    p.add_argument("--dashboard", type=int, nargs="?", const=8080, metavar="PORT",
                   help="also serve optuna-dashboard on this port, 8080 when given without one, read-only, on "
                        "loopback, asking for $MUSE_DASHBOARD_CREDENTIALS(_FILE) where set (default: not served)")
    p.add_argument("--force", action="store_true",
                   help="continue a study of this name even if it was defined differently")
    p.add_argument("--trusted-network", action="store_true",
                   help="accept a PostgreSQL storage on another machine without TLS (logged)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.errors import run_command
    from core.threads import use_threads
    from search import dashboard
    from search.study.driver import run_study
    from search.study.file import load_study_file
    from search.study.storage import trust_network

    overrides = {k: getattr(args, k) for k in ("study", "storage", "data", "trials", "max_epochs", "train_frames",
                                                 "wall_time_s", "sampler", "seed", "pruner", "cpu", "gpu")}

    def body() -> None:
        print(f"driver: {use_threads(args.threads)} torch thread(s)", flush=True)
        log = lambda line: print(line, flush=True)  # noqa: E731
        spec = load_study_file(args.study_file, overrides)
        if args.trusted_network:
            trust_network(spec.storage, log)
        if args.dashboard:
            # the dashboard command's credentials, where its environment gives them; else loopback only
            credentials = dashboard.load_credentials(os.environ.get(dashboard.CREDENTIALS_FILE_ENV))
            dashboard.serve(spec.storage, args.dashboard, log=log, background=True, credentials=credentials)
        run_study(spec, force=args.force, ray_address=args.ray_address, log=log)
        log(watch_line(spec.storage))
    return run_command(body)


def watch_line(storage: str) -> str:
    """The dashboard command for this storage, as a user can paste it here."""
    from search import dashboard
    from search.study.storage import mask

    hidden = " (its password is hidden here: give your own URL)" if mask(storage) != storage else ""
    return f"watch it: {pasteable(Path(sys.executable))} {pasteable(Path(dashboard.__file__))} {mask(storage)}{hidden}"


def pasteable(path: Path) -> str:
    """A path as a user can paste it here: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())

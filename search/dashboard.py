"""Serve optuna-dashboard on a study storage: python search/dashboard.py [STORAGE] [--port 8080]

The storage must answer (else one clear error, within seconds); a storage with no study yet is
served anyway (studies appear as they start) and says so.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable

from search import DEFAULT_STORAGE

PROG = "python search/dashboard.py"


def serve(url: str, port: int, host: str = "127.0.0.1", log: Callable[[str], None] = print,
          background: bool = False) -> None:
    import optuna
    import optuna_dashboard

    from search.study.storage import mask, open_storage

    storage = open_storage(url)
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]
    if names:
        log(f"{len(names)} stud{'y' if len(names) == 1 else 'ies'} in {mask(url)}: {', '.join(names)}")
    else:
        log(f"no studies in {mask(url)} yet: the dashboard shows them once a study starts")
    log(f"optuna-dashboard: http://{host}:{port}/dashboard/")
    if background:
        threading.Thread(target=optuna_dashboard.run_server, args=(storage,), kwargs={"host": host, "port": port},
                         name="optuna-dashboard", daemon=True).start()
    else:
        optuna_dashboard.run_server(storage, host=host, port=port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("storage", nargs="?", default=os.environ.get("MUSE_STORAGE", DEFAULT_STORAGE),
                   help="the studies' storage URL (default: $MUSE_STORAGE, else %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: serve(args.storage, args.port, args.host, log=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    sys.exit(main())

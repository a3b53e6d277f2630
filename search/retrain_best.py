"""Retrain a study's best configs across seeds, fuse them, evaluate test once, write predictions and a report.

    python search/retrain_best.py --study muse_valence --storage sqlite:///runs/studies.db --top-k 5 --seeds 5
    python search/retrain_best.py --study muse_valence --fuse muse_valence_text     # fuse several studies' best

Configs are ranked by the study's own objective (mean CCC over its folds) averaged over seeds (mean
± std), never by one lucky seed. Every fusion is scored out of fold; the best one (or the chosen
config) is what the default prediction CSVs deliver. Test is scored once, at the end; a rerun shows
that stored result instead of choosing again (--new-test-evaluation looks again, and the report
says how many times test was seen). The stages are in search/retrain/pipeline.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from search import DEFAULT_STORAGE

PROG = "python search/retrain_best.py"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="the study to retrain")
    p.add_argument("--storage", default=os.environ.get("MUSE_STORAGE", DEFAULT_STORAGE),
                   help="the study's storage URL (default: $MUSE_STORAGE, else %(default)s)")
    p.add_argument("--top-k", type=int, default=5, help="distinct configs to retrain (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per config (default: %(default)s)")
    p.add_argument("--fuse", nargs="+", default=[], metavar="STUDY",
                   help="other studies (same data, targets and folds) whose best configs join the fusion (default: none)")
    p.add_argument("--inputs-from", nargs="+", default=[], metavar="STUDY",
                   help="studies on the same data whose predictions (any target) are extra inputs of the LSTM "
                        "fusion (default: none)")
    p.add_argument("--epochs", type=int, help="train longer (or shorter) than the search did (default: as the search)")
    p.add_argument("--data", help="data root (default: the study's)")
    p.add_argument("--cpu", type=float, help="CPUs per run (default: the study's)")
    p.add_argument("--gpu", type=float, help="GPUs per run (default: the study's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this driver process (default: 1)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", type=Path, default=Path("runs/retrain"), help="where predictions and reports go "
                                                                          "(default: %(default)s)")
    p.add_argument("--new-test-evaluation", action="store_true",
                   help="score test again although it was scored for this study (recorded)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False,
                   help="also train the chosen config on every train and devel video (its seeds, as many epochs or as "
                        "many updates as its split runs kept) and score it on test beside the fold models (default: "
                        "off: it lost to them three times of four on CEAP, docs/accuracy.md)")
    p.add_argument("--trusted-network", action="store_true",
                   help="accept a PostgreSQL storage on another machine without TLS (logged)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from core.errors import run_command
    from core.threads import use_threads
    from search.retrain.pipeline import Request, retrain_best
    from search.study.storage import trust_network

    request = Request(study=args.study, storage=args.storage, top_k=args.top_k, seeds=args.seeds, fuse=args.fuse,
                      inputs_from=args.inputs_from, epochs=args.epochs, data=args.data, cpu=args.cpu, gpu=args.gpu,
                      ray_address=args.ray_address, out_dir=args.out, new_test_evaluation=args.new_test_evaluation,
                      refit=args.refit)

    def body() -> None:
        print(f"driver: {use_threads(args.threads)} torch thread(s)", flush=True)
        log = lambda line: print(line, flush=True)  # noqa: E731
        if args.trusted_network:
            trust_network(args.storage, log)
        retrain_best(request, log=log)
    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

"""TPE against random search at equal compute, over several sampler seeds: is the difference the
accuracy benchmark shows for one seed the sampler's, or the draw's?

    python -m bench.sampler_seeds --set s60 --target valence --seeds 0 1 2
    python -m bench.sampler_seeds --set s60 --target valence --seeds 0 1 2 --retrain 3
    python -m bench.sampler_seeds --data ROOT             # an existing data set instead

Per sampler seed: the TPE study of studies/accuracy.yaml (its budget, folds, caps and ASHA), then
random search with the same seed until it has trained as many frames as that TPE study. Prints each
study's best value (mean CCC over the folds of train+devel) and trials, then the mean ± std over seeds
of each and of TPE - random. With --retrain N, each study's top config is retrained with N seeds by
retrain-best (the same protocol for both samplers) and test is looked at once per study: the chosen
config's test CCC, mean ± std over its seeds. Without it test is never looked at. Studies and
retrains are stored, so a rerun continues; the studies are this benchmark's own (named ..._seedK_...).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.accuracy import DATASETS, STUDY_FILE, _prefixed, require_test_labels, train_frames, trial_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampler_seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="s60", choices=list(DATASETS), help="synthetic data set (default: %(default)s)")
    parser.add_argument("--data", help="an existing data root instead of the synthetic set (default: none)")
    parser.add_argument("--target", default="valence", help="target (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="sampler seeds (default: 0 1 2)")
    parser.add_argument("--data-dir", default="data/accuracy", help="where synthetic sets go (default: %(default)s)")
    parser.add_argument("--storage", default="sqlite:///runs/accuracy.db", help="study storage (default: %(default)s)")
    parser.add_argument("--study-file", default=str(STUDY_FILE), help="the search (default: studies/accuracy.yaml)")
    parser.add_argument("--trials", type=int, help="TPE study budget (default: the study file's)")
    parser.add_argument("--max-epochs", type=int, help="passes per fold (default: the study file's)")
    parser.add_argument("--retrain", type=int, default=0, metavar="N",
                        help="retrain each study's top config with N seeds and score it on test (default: off)")
    parser.add_argument("--out", type=Path, default=Path("runs/sampler_seeds"),
                        help="retrained predictions (default: %(default)s)")
    args = parser.parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> None:
    import optuna

    from core.synthetic import generate, settings_of, written_with
    from core.threads import use_threads
    from search.retrain.pipeline import Request, retrain_best
    from search.study.driver import run_study
    from search.study.file import load_study_file

    use_threads(1)
    root = args.data or f"{args.data_dir}/{args.set}"
    name = Path(root).name
    if not args.data and written_with(root) != settings_of(**DATASETS[args.set]):
        generate(root, **DATASETS[args.set])
    if args.retrain:
        require_test_labels(root, [args.target], "--retrain")
    common = {"storage": args.storage, "data": root, "target": args.target, "trials": args.trials,
              "max_epochs": args.max_epochs}
    rows = []
    for seed in args.seeds:
        # not the accuracy benchmark's studies: a retrain here would be the test look recorded for them
        prefix = f"acc_{name}_{args.target}_seed{seed}"
        tpe = load_study_file(args.study_file, common | {"study": f"{prefix}_tpe", "seed": seed})
        run_study(tpe, log=_prefixed(tpe.name))
        tpe_frames = train_frames(args.storage, tpe.name)
        rnd = load_study_file(args.study_file, common | {
            "study": f"{prefix}_random_frames", "sampler": "random", "trials": 1000, "seed": seed,
            "train_frames": tpe_frames})
        run_study(rnd, log=_prefixed(rnd.name))
        best = [optuna.load_study(study_name=s.name, storage=args.storage).best_value for s in (tpe, rnd)]
        tests = [retrain_best(Request(s.name, args.storage, top_k=1, seeds=args.retrain, out_dir=args.out),
                              log=_prefixed(s.name))["test_ccc"][args.target] if args.retrain else None
                 for s in (tpe, rnd)]
        rows.append((seed, *best, trial_count(args.storage, tpe.name), trial_count(args.storage, rnd.name),
                     tpe_frames, train_frames(args.storage, rnd.name), *tests))

    print(f"\n{name} / {args.target}: best value (mean CCC over folds of train+devel), TPE vs random at equal frames")
    print(f"  {'seed':>4s} {'TPE':>7s} {'random':>7s} {'TPE-random':>10s} {'trials':>9s} {'frames (M)':>13s}")
    for seed, tpe_best, rnd_best, n_tpe, n_rnd, f_tpe, f_rnd, *_ in rows:
        print(f"  {seed:4d} {tpe_best:7.4f} {rnd_best:7.4f} {tpe_best - rnd_best:+10.4f} {n_tpe:4d}/{n_rnd:<4d} "
              f"{f_tpe / 1e6:6.1f}/{f_rnd / 1e6:<6.1f}")
    _mean_over_seeds("best value", [r[1] for r in rows], [r[2] for r in rows])
    if args.retrain:
        print(f"\n{name} / {args.target}: test CCC of each study's top config retrained with {args.retrain} seed(s)")
        print(f"  {'seed':>4s} {'TPE':>17s} {'random':>17s} {'TPE-random':>10s}")
        for seed, *_, tpe_test, rnd_test in rows:
            print(f"  {seed:4d} {tpe_test['mean']:8.4f} ± {tpe_test['std']:.4f} {rnd_test['mean']:8.4f} ± "
                  f"{rnd_test['std']:.4f} {tpe_test['mean'] - rnd_test['mean']:+10.4f}")
        _mean_over_seeds("test CCC", [r[-2]["mean"] for r in rows], [r[-1]["mean"] for r in rows])


def _mean_over_seeds(what: str, tpe: list[float], rnd: list[float]) -> None:
    import numpy as np
    tpe_v, rnd_v = np.array(tpe), np.array(rnd)
    print(f"  {what}, mean over {len(tpe)} seeds: TPE {tpe_v.mean():.4f} ± {tpe_v.std():.4f}, random "
          f"{rnd_v.mean():.4f} ± {rnd_v.std():.4f}, TPE - random {np.mean(tpe_v - rnd_v):+.4f} ± "
          f"{np.std(tpe_v - rnd_v):.4f}")


if __name__ == "__main__":
    sys.exit(main())

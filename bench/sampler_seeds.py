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
from dataclasses import dataclass
from pathlib import Path

from bench.accuracy import add_seed_arguments, data_root, prefixed, require_test_labels, train_frames, trial_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampler_seeds", description=__doc__.splitlines()[0])
    add_seed_arguments(parser, set="s60", target="valence", seeds=[0, 1, 2],
                       storage="sqlite:///runs/sampler_seeds.db", trials_help="TPE study budget")
    parser.add_argument("--retrain", type=int, default=0, metavar="N",
                        help="retrain each study's top config with N seeds and score it on test (default: off)")
    parser.add_argument("--out", type=Path, default=Path("runs/sampler_seeds"),
                        help="retrained predictions (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.retrain < 0:
        parser.error(f"--retrain: seeds to retrain with, at least 1 (0: off); got {args.retrain}")
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


@dataclass
class Search:
    """One finished study: its best value, its compute and, with --retrain, its top config retrained."""
    best: float
    trials: int
    frames: int
    cv: float | None = None  # retrained: mean over folds and seeds
    test: dict | None = None  # retrained: test CCC over seeds (mean, std, per_seed)


def benchmark(args: argparse.Namespace) -> None:
    from core.threads import use_threads
    from search.study.driver import run_study
    from search.study.file import load_study_file

    use_threads(1)
    root = data_root(args.data, args.data_dir, args.set)
    name = Path(root).name
    if args.retrain:
        require_test_labels(root, [args.target], "--retrain")
    common = {"storage": args.storage, "data": root, "target": args.target, "trials": args.trials,
              "max_epochs": args.max_epochs}
    rows: list[tuple[int, Search, Search]] = []
    for seed in args.seeds:
        # not the accuracy benchmark's studies: a retrain here would be the test look recorded for them
        prefix = f"acc_{name}_{args.target}_seed{seed}"
        tpe = load_study_file(args.study_file, common | {"study": f"{prefix}_tpe", "seed": seed})
        run_study(tpe, log=prefixed(tpe.name))
        rnd = load_study_file(args.study_file, common | {
            "study": f"{prefix}_random_frames", "sampler": "random", "trials": 1000, "seed": seed,
            "train_frames": train_frames(args.storage, tpe.name)})
        run_study(rnd, log=prefixed(rnd.name))
        rows.append((seed, *(searched(args, spec.name) for spec in (tpe, rnd))))

    print(f"\n{name} / {args.target}: best value (mean CCC over folds of train+devel), TPE vs random at equal frames")
    print(f"  {'seed':>4s} {'TPE':>7s} {'random':>7s} {'TPE-random':>10s} {'trials':>9s} {'frames (M)':>13s}")
    for seed, tpe, rnd in rows:
        print(f"  {seed:4d} {tpe.best:7.4f} {rnd.best:7.4f} {tpe.best - rnd.best:+10.4f} "
              f"{tpe.trials:4d}/{rnd.trials:<4d} {tpe.frames / 1e6:6.1f}/{rnd.frames / 1e6:<6.1f}")
    _mean_over_seeds("best value", [tpe.best for _, tpe, _ in rows], [rnd.best for _, _, rnd in rows])
    if args.retrain:
        print(f"\n{name} / {args.target}: each study's top config retrained (CV: mean over folds and seeds), "
              "test CCC mean ± std over its seeds (n)")
        print(f"  {'seed':>4s} {'TPE CV -> test':>28s} {'random CV -> test':>28s} {'TPE-random':>10s}")
        for seed, tpe, rnd in rows:
            print(f"  {seed:4d} {_retrained(tpe, args.target):>28s} {_retrained(rnd, args.target):>28s} "
                  f"{tpe.test[args.target]['mean'] - rnd.test[args.target]['mean']:+10.4f}")
        _mean_over_seeds("test CCC", [tpe.test[args.target]["mean"] for _, tpe, _ in rows],
                         [rnd.test[args.target]["mean"] for _, _, rnd in rows])


def searched(args: argparse.Namespace, study: str) -> Search:
    import optuna
    from optuna.trial import TrialState

    from core.errors import ConfigError
    from search.retrain.pipeline import Request, retrain_best

    loaded = optuna.load_study(study_name=study, storage=args.storage)
    if not loaded.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(f"study {study!r} completed no trial, so there is no best config to compare")
    out = Search(loaded.best_value, trial_count(args.storage, study), train_frames(args.storage, study))
    if args.retrain:
        retrained = retrain_best(Request(study, args.storage, top_k=1, seeds=args.retrain, out_dir=args.out),
                                 log=prefixed(study))
        out.cv, out.test = float(retrained["ranking"].iloc[0]["mean"]), retrained["test_ccc"]
    return out


def _retrained(search: Search, target: str) -> str:
    test = search.test[target]
    return f"{search.cv:.4f} -> {test['mean']:.4f} ± {test['std']:.4f} ({len(test['per_seed'])})"


def _mean_over_seeds(what: str, tpe: list[float], rnd: list[float]) -> None:
    """Means and sample standard deviations over sampler seeds: with a few seeds, np.std's default understates."""
    import numpy as np
    tpe_v, rnd_v = np.array(tpe), np.array(rnd)
    ddof = 1 if len(tpe) > 1 else 0
    print(f"  {what}, mean ± sample std over {len(tpe)} sampler seeds: TPE {tpe_v.mean():.4f} ± "
          f"{tpe_v.std(ddof=ddof):.4f}, random {rnd_v.mean():.4f} ± {rnd_v.std(ddof=ddof):.4f}, "
          f"TPE - random {np.mean(tpe_v - rnd_v):+.4f} ± "
          f"{np.std(tpe_v - rnd_v, ddof=ddof):.4f}")


if __name__ == "__main__":
    sys.exit(main())

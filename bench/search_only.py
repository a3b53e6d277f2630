"""The search alone, over sampler seeds: TPE as shipped, TPE ranking at rungs behind an ASHA without free
passes, and random search, at equal training frames, judged by their best CV value (no retraining, no test).

    python -m bench.search_only --data ../shared/data/ceap --study-file studies/accuracy_ceap.yaml --target arousal
    python -m bench.search_only --set s40 --target valence --seeds 0 1 2

Per sampler seed: the study file's TPE with Optuna's ranking and Ray's ASHA (the search as shipped
before issue 27; its budget of trials sets the frames), then TPE with `rank_by: rung` and
`rejudge: true`, then random search with Ray's ASHA, both until they have trained as many frames.
Prints, per seed and arm, the best value (mean CCC over the folds of train+devel), trials, frames,
minutes, and the share of proposals that keep the warm start's win_len (model proposals for TPE,
random draws for random search); then each arm's mean and the paired differences with a 95 % t
interval over seeds. Studies are stored, so a rerun continues; the names are this benchmark's own.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.accuracy import add_seed_arguments, data_root, prefixed, train_frames, trial_count

ARMS = {  # arm: study-file overrides
    "tpe": {"sampler": "tpe", "rank_by": "state", "rejudge": False},
    "tpe_rung": {"sampler": "tpe", "rank_by": "rung", "rejudge": True},
    "random": {"sampler": "random", "rejudge": False},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search_only", description=__doc__.splitlines()[0])
    add_seed_arguments(parser, set="s40", target="arousal", seeds=list(range(10)),
                       storage="sqlite:///runs/search_only.db", trials_help="the shipped TPE arm's budget")
    args = parser.parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


@dataclass
class Arm:
    """One finished study of one arm."""
    best: float
    trials: int
    frames: int
    minutes: float
    keeps_win_len: tuple[int, int]  # proposals (model, or random draws) with the warm start's win_len, of all


def benchmark(args: argparse.Namespace) -> None:
    from core.threads import use_threads

    use_threads(1)
    root = data_root(args.data, args.data_dir, args.set)
    name = Path(root).name
    rows = []
    for seed in args.seeds:
        rows.append((seed, one_seed(args, root, f"so_{name}_{args.target}_seed{seed}", seed)))
        report(name, args.target, rows)


def one_seed(args: argparse.Namespace, root: str, prefix: str, seed: int) -> dict[str, Arm]:
    from search.study.driver import run_study
    from search.study.file import load_study_file

    common = {"storage": args.storage, "data": root, "target": args.target, "seed": seed, "max_epochs": args.max_epochs}
    out, frames = {}, None
    for arm, overrides in ARMS.items():
        budget = {"trials": args.trials} if frames is None else {"trials": 1000, "train_frames": frames}
        spec = load_study_file(args.study_file, common | overrides | budget | {"study": f"{prefix}_{arm}"})
        start = time.time()
        run_study(spec, log=prefixed(spec.name))
        out[arm] = searched(args.storage, spec, (time.time() - start) / 60)
        frames = frames or train_frames(args.storage, spec.name)
    return out


def searched(storage: str, spec, minutes: float) -> Arm:
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=spec.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    best = max((t.value for t in trials if t.state == TrialState.COMPLETE), default=float("nan"))
    proposed = [t for t in trials if t.user_attrs.get("sampled") == ("random" if spec.sampler == "random" else "model")]
    start_win = spec.start_from[0]["win_len"] if spec.start_from else None
    keeps = (sum(t.params.get("win_len") == start_win for t in proposed), len(proposed))
    return Arm(best, trial_count(storage, spec.name), train_frames(storage, spec.name), minutes, keeps)


def report(name: str, target: str, rows: list[tuple[int, dict[str, Arm]]]) -> None:
    print(f"\n{name} / {target}: best value (mean CCC over the folds of train+devel) at equal training frames")
    print(f"  {'seed':>4s} " + " ".join(f"{arm:>36s}" for arm in ARMS))
    for seed, arms in rows:
        print(f"  {seed:4d} " + " ".join(
            f"{a.best:7.4f} {a.trials:4d} tr {a.frames / 1e6:5.1f} M {a.minutes:5.1f} min "
            f"{a.keeps_win_len[0]:2d}/{a.keeps_win_len[1]:<2d} win" for a in arms.values()))
    for arm in ARMS:
        kept = sum(arms[arm].keeps_win_len[0] for _, arms in rows)
        proposed = sum(arms[arm].keeps_win_len[1] for _, arms in rows)
        print(f"  {arm}: mean best {mean([arms[arm].best for _, arms in rows]):.4f}; proposals keeping the warm "
              f"start's win_len {kept}/{proposed} ({100 * kept / max(proposed, 1):.0f} %)")
    for arm in ("tpe", "tpe_rung"):
        diffs = [arms[arm].best - arms["random"].best for _, arms in rows]
        print(f"  {arm} - random: {paired(diffs)}")
    print(f"  tpe_rung - tpe: {paired([arms['tpe_rung'].best - arms['tpe'].best for _, arms in rows])}", flush=True)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def paired(diffs: list[float]) -> str:
    """Mean paired difference with a 95 % t interval over seeds (none from one seed)."""
    import numpy as np
    from scipy import stats

    if len(diffs) < 2:
        return f"{diffs[0]:+.4f} (one seed: no interval)"
    half = stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    middle = float(np.mean(diffs))
    return f"{middle:+.4f}, 95 % interval [{middle - half:+.4f}, {middle + half:+.4f}] ({len(diffs)} seeds)"


if __name__ == "__main__":
    sys.exit(main())

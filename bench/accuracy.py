"""Accuracy on data the search never saw: the entry's config vs the search's choice vs fusion vs random search.

    python -m bench.accuracy [--sets s40 s60 s80] [--targets valence arousal] [--storage sqlite:///runs/accuracy.db]
    python -m bench.accuracy --data ROOT       # an existing data set instead (real MuSe files, say)

Per synthetic data set (other seeds, lags, noise levels and sizes than the data the project was
built on) and target:
- the entry's README config, trained as the entry did (train on train, early stopping on devel, 100
  epochs), 5 seeds: devel CCC (selected on devel, so optimistic) and test CCC;
- with --entry-in-folds, the same config under the service's protocol too (a study of that one
  config: 5 folds of train+devel with the study's frame cap, retrained with 3 seeds, each seed's 5
  fold models averaged on test; 15 more trainings, so off by default to keep a set and target in 45 min);
- the TPE study (studies/accuracy.yaml, started from the entry's config), retrain-best of its top 2
  configs with 5 seeds: the chosen config and the best fusion;
- a random-search study at equal compute (the same folds, caps and ASHA, trials until it has trained
  as many frames as the TPE study), retrain-best of its top config with 3 seeds.
Each line shows CV (or devel) CCC, test CCC (mean ± std over seeds) and the drop from one to the other.
Then: training frames per study (equal compute), how often each feature-set combination was tried,
and the rank correlation between the values at each ASHA rung and the final values. Every look at
test is recorded in the study database. Everything is stored, so a rerun continues where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

DATASETS = {  # name: generator settings (synthetic.generate's arguments)
    "s40": dict(videos=40, seed=101, lag=8, noise=1.0, min_frames=800, max_frames=2400),
    "s60": dict(videos=60, seed=102, lag=4, noise=0.8, min_frames=600, max_frames=1800),
    "s80": dict(videos=80, seed=103, lag=12, noise=1.2, min_frames=500, max_frames=1500),
}
STUDY_FILE = Path(__file__).resolve().parents[1] / "studies" / "accuracy.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="synthetic data sets (default: all)")
    parser.add_argument("--data", help="an existing data root to use instead of the synthetic sets (default: none)")
    parser.add_argument("--targets", nargs="+", default=["valence", "arousal"], help="targets (default: both)")
    parser.add_argument("--data-dir", default="data/accuracy", help="where synthetic sets go (default: %(default)s)")
    parser.add_argument("--storage", default="sqlite:///runs/accuracy.db", help="study storage (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"), help="predictions (default: %(default)s)")
    parser.add_argument("--study-file", default=str(STUDY_FILE), help="the search (default: studies/accuracy.yaml)")
    parser.add_argument("--trials", type=int, help="study budget (default: the study file's)")
    parser.add_argument("--max-epochs", type=int, help="passes per fold (default: the study file's)")
    parser.add_argument("--seeds", type=int, default=5,
                        help="seeds of the search's configs and of the entry's protocol (default: %(default)s)")
    parser.add_argument("--others", type=int, default=3,
                        help="seeds of random search's config and of the entry's config in folds (default: %(default)s)")
    parser.add_argument("--entry-in-folds", action="store_true",
                        help="also retrain the entry's config under the service's protocol (default: off)")
    args = parser.parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> None:
    from core.synthetic import generate, settings_of, written_with
    from core.threads import use_threads

    use_threads(1)
    results = []
    roots = {Path(args.data).name: args.data} if args.data else {name: f"{args.data_dir}/{name}" for name in args.sets}
    for name, root in roots.items():
        if not args.data and written_with(root) != settings_of(**DATASETS[name]):
            generate(root, **DATASETS[name])
        require_test_labels(root, args.targets, "the accuracy benchmark")
        for target in args.targets:
            start = time.time()
            results.append(one(args, name, root, target) | {"minutes": (time.time() - start) / 60})
            report(results[-1:])
    print("\n==== all data sets ====")
    report(results)


def one(args: argparse.Namespace, name: str, root: str, target: str) -> dict:
    """Every model of one data set and target; prints as it goes."""
    from search.retrain.pipeline import Request, retrain_best
    from search.study.driver import run_study
    from search.study.file import load_study_file

    prefix = f"acc_{name}_{target}"
    common = {"storage": args.storage, "data": root, "target": target, "trials": args.trials,
              "max_epochs": args.max_epochs}
    print(f"\n==== data set {name} ({DATASETS.get(name, root)}), target {target} ====", flush=True)
    log = prefixed(prefix)
    specs = {"tpe": load_study_file(args.study_file, common | {"study": f"{prefix}_tpe"})}
    run_study(specs["tpe"], log=log)
    # random search at equal compute: as many training frames as the TPE study used, whatever the trials
    specs["random"] = load_study_file(args.study_file, common | {
        "study": f"{prefix}_random_frames", "sampler": "random", "trials": 1000,
        "train_frames": train_frames(args.storage, specs["tpe"].name)})
    arms = [("tpe", 2, args.seeds), ("random", 1, args.others)]
    if args.entry_in_folds:
        specs["entry"] = load_study_file(args.study_file, common | {"study": f"{prefix}_entry", "trials": 1,
                                                                    "pruner": "none"})
        arms.append(("entry", 1, args.others))
    for kind, _, _ in arms[1:]:
        run_study(specs[kind], log=log)
    out = {kind: retrain_best(Request(specs[kind].name, args.storage, top_k=top_k, seeds=seeds, out_dir=args.out),
                              log=log)
           for kind, top_k, seeds in arms}
    searches = ("tpe", "random")
    return {"set": name, "target": target, "entry_protocol": entry_protocol(args, root, target, prefix),
            **out, "frames": {k: train_frames(args.storage, specs[k].name) for k in searches},
            "trials": {k: trial_count(args.storage, specs[k].name) for k in searches},
            "combinations": combinations(args.storage, specs["tpe"].name),
            "rungs": rung_correlations(args.storage, specs["tpe"])}


def entry_protocol(args: argparse.Namespace, root: str, target: str, prefix: str) -> dict:
    """The entry's config trained the entry's way (train, early stopping on devel), with the seeds; test looked at once."""
    from bench.entry import entry_config
    from core.corpus import load_corpus
    from core.metrics import ccc
    from search.cluster import Resources, ensure_ray
    from search.retrain.holdout import test_labels
    from search.retrain.results import open_results, record_look
    from search.retrain.runs import plan_runs, retrain
    from search.retrain.select import Candidate

    config = entry_config(target)
    corpus = load_corpus(root, config.feature_set, [target])
    ensure_ray(None, print)
    engine = open_results(args.storage)
    study = f"{prefix}_entry_protocol"
    plan = plan_runs(corpus, folds=1, fold_seed=0, resources=Resources(cpu=1, gpu=0, concurrent=2), out_dir=args.out)
    candidate = Candidate(study=study, trial=None, search_value=None, config=config, params={},
                          fingerprint=corpus.fingerprint)
    runs = retrain(engine, [candidate], list(range(args.seeds)), plan, prefixed(study))[candidate.key]
    record_look(engine, study, "accuracy benchmark: the entry's config, trained as the entry did")
    labels = test_labels(root, config.feature_set[0], (target,), print)[:, 0]
    return {"devel": [r.objective for r in runs], "test": [ccc(r.test[:, 0], labels) for r in runs]}


def require_test_labels(root: str, targets: list[str], what: str) -> None:
    """Fail before any training where the data set withholds test labels (as the real challenge does)."""
    from core.errors import ConfigError, DataError
    from core.muse_files import LABEL_DIR, check_files, read_partition

    split = read_partition(root)
    videos = [v for ids in split.values() for v in ids]
    try:
        for target in targets:
            check_files(Path(root) / LABEL_DIR / target, split["test"], f"'{target}' label", videos)
    except DataError as e:
        raise ConfigError(f"{what} scores on test, which needs test labels: {e}") from None


def train_frames(storage: str, study: str) -> int:
    """Training frames the study's trials processed (their last reported progress): its compute."""
    import optuna
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return int(sum(max(t.intermediate_values, default=0) for t in trials))


def trial_count(storage: str, study: str) -> int:
    import optuna
    return len(optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False))


def combinations(storage: str, study: str) -> Counter:
    import optuna

    from search.study.record import trial_config
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return Counter("+".join(trial_config(t).feature_set) for t in trials if trial_config(t))


def rung_correlations(storage: str, spec) -> dict[str, tuple[float, int]]:
    """Spearman correlation, over the trials that ran every fold, between the value each ASHA rung saw
    and the final value: how well the early looks predict the end."""
    import optuna
    from optuna.trial import TrialState
    from scipy.stats import spearmanr

    from search.study.racing import rungs, rungs_per_fold
    from search.study.record import trial_config

    trials = [t for t in optuna.load_study(study_name=spec.name, storage=storage).get_trials(deepcopy=False)
              if t.state == TrialState.COMPLETE]
    if len(trials) < 3:
        return {}
    frames = trial_config(trials[0]).max_frames
    out = {}
    for milestone in rungs(frames, frames // spec.reduction_factor ** rungs_per_fold(spec), spec.reduction_factor,
                           spec.folds):
        seen = [next(v for s, v in sorted(t.intermediate_values.items()) if s >= milestone) for t in trials]
        out[f"{milestone / frames:.2f} folds"] = (float(spearmanr(seen, [t.value for t in trials]).statistic), len(trials))
    return out


def report(results: list[dict]) -> None:
    import numpy as np

    def ms(values) -> str:
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    for r in results:
        target = r["target"]
        entry, tpe, rnd = r["entry_protocol"], r["tpe"], r["random"]
        fused = {m: t[target] for m, t in tpe["fusions"].items()}
        best = tpe["delivered"]
        rows = [("entry config, entry's protocol (devel)", ms(entry["devel"]), ms(entry["test"]),
                 np.mean(entry["devel"]) - np.mean(entry["test"])),
                _single("search (TPE): chosen config", tpe, target),
                (f"search (TPE): delivered ({best})", f"{tpe['cv'][best][target]:.4f}", f"{fused[best]:.4f}",
                 tpe["cv"][best][target] - fused[best]),
                _single("random search: chosen config", rnd, target)]
        if "entry" in r:
            rows.append(_single("entry config, service protocol", r["entry"], target))
        print(f"\n{r['set']} / {target} ({r['minutes']:.0f} min)")
        print(f"  {'model':44s} {'CV or devel CCC':18s} {'test CCC (seeds)':18s} drop")
        for label, cv, test, drop in rows:
            print(f"  {label:44s} {cv:18s} {test:18s} {drop:+.4f}")
        base = np.mean(entry["test"])
        chosen = tpe["test_ccc"][target]["mean"]
        print(f"  chosen - entry (test): {chosen - base:+.4f} (target +0.05); delivered - entry: "
              f"{fused[best] - base:+.4f} (target +0.08); best fusion - entry: {max(fused.values()) - base:+.4f}")
        print(f"  drop chosen - drop entry: {rows[1][3] - rows[0][3]:+.4f} (target <= +0.01); "
              f"TPE - random (test): {chosen - rnd['test_ccc'][target]['mean']:+.4f} (target >= 0)")
        print(f"  training frames: TPE {r['frames']['tpe']:,}, random {r['frames']['random']:,} "
              f"({r['trials']['tpe']} and {r['trials']['random']} trials)")
        print(f"  feature sets tried (TPE): {dict(r['combinations'])}")
        print("  rank correlation of rung values with final values (TPE): "
              + ", ".join(f"{k}: {rho:+.2f} (n={n})" for k, (rho, n) in r["rungs"].items()))


def _single(label: str, out: dict, target: str) -> tuple:
    row = out["ranking"].iloc[0]
    test = out["test_ccc"][target]
    return (label, f"{row['mean']:.4f} ± {row['std']:.4f}", f"{test['mean']:.4f} ± {test['std']:.4f}",
            row["mean"] - test["mean"])


def prefixed(prefix: str):
    def log(line: str) -> None:
        print(f"[{prefix}] {line}", flush=True)
    return log


if __name__ == "__main__":
    sys.exit(main())

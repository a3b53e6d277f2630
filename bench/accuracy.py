"""Accuracy on data the search never saw: the entry's config vs the search's choice vs what is delivered
vs random search, each test figure with a bootstrap interval over test videos.

    python -m bench.accuracy [--sets s40 s60 s80 ceap] [--targets valence arousal] [--storage sqlite:///runs/accuracy.db]
    python -m bench.accuracy --data ROOT       # an existing data set instead (real MuSe files, say)

Per data set and target, with N seeds everywhere (--seeds):
- the entry's README config, trained as the entry did (train on train, early stopping on devel);
- the same config under the service's protocol (a study of that one config: K folds of train+devel with
  the study's frame cap, retrained like the searched configs; --no-entry-in-folds leaves it out);
- the TPE study (studies/accuracy.yaml, started from the entry's config) and a random-search study at
  equal compute (the same folds, caps and ASHA, its own seed stream, trials until it has trained as
  many frames as the TPE study), each retrained alike: top --top-k configs x N seeds, fused, the
  delivered method chosen by retrain-best's rule.
Every row shows one CV statistic (CCC of the seed ensemble's out-of-fold predictions of the pooled
videos; for the entry's protocol, of its devel predictions, on which it also chose its epochs) and
the test CCC of the seed ensemble with its 95 % interval over test videos (one seed's mean ± std
beside it). Differences against the entry and TPE - random are paired: the same test videos drawn
for both sides. Looks at a test set are counted across study names and printed with the results.
The synthetic sets use other seeds, lags, noise levels and sizes than the data the project was
built on; ceap is the real CEAP-360VR set (../shared/data/ceap, development only, never shipped).
Everything is stored, so a rerun continues where it stopped.
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
REPO = Path(__file__).resolve().parents[1]
STUDY_FILE = REPO / "studies" / "accuracy.yaml"
# name: data root, study file, the feature sets the entry's config reads there
REAL_SETS = {"ceap": (REPO.parent / "shared" / "data" / "ceap", REPO / "studies" / "accuracy_ceap.yaml", ("view",))}
RANDOM_SEED_OFFSET = 1000  # random search draws from a stream of its own, not TPE's start-up draws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(DATASETS), choices=[*DATASETS, *REAL_SETS],
                        help="synthetic data sets, or ceap (default: the synthetic ones)")
    parser.add_argument("--data", help="an existing data root to use instead of the synthetic sets (default: none)")
    parser.add_argument("--targets", nargs="+", default=["valence", "arousal"], help="targets (default: both)")
    parser.add_argument("--data-dir", default="data/accuracy", help="where synthetic sets go (default: %(default)s)")
    parser.add_argument("--storage", default="sqlite:///runs/accuracy.db", help="study storage (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy"), help="predictions (default: %(default)s)")
    parser.add_argument("--study-file", default=str(STUDY_FILE), help="the search (default: studies/accuracy.yaml)")
    parser.add_argument("--trials", type=int, help="study budget (default: the study file's)")
    parser.add_argument("--max-epochs", type=int, help="passes per fold (default: the study file's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of every retrained config (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=2, help="configs each search retrains (default: %(default)s)")
    parser.add_argument("--entry-in-folds", action=argparse.BooleanOptionalAction, default=True,
                        help="also retrain the entry's config under the service's protocol (default: on)")
    args = parser.parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> None:
    from bench.entry import ENTRY_VALENCE
    from core.threads import use_threads

    use_threads(1)
    results = []
    entry_sets = ENTRY_VALENCE.feature_set
    sets = ({Path(args.data).name: (args.data, args.study_file, entry_sets)} if args.data else
            {name: REAL_SETS.get(name, (f"{args.data_dir}/{name}", args.study_file, entry_sets)) for name in args.sets})
    for name, (root, study_file, feature_sets) in sets.items():
        if name in DATASETS and not args.data:
            data_root(None, args.data_dir, name)
        require_test_labels(str(root), args.targets, "the accuracy benchmark")
        for target in args.targets:
            start = time.time()
            results.append(one(args, name, str(root), str(study_file), feature_sets, target)
                           | {"minutes": (time.time() - start) / 60})
            report(results[-1:])
    print("\n==== all data sets ====")
    report(results)


def one(args: argparse.Namespace, name: str, root: str, study_file: str, feature_sets: tuple[str, ...],
        target: str) -> dict:
    """Every model of one data set and target; prints as it goes."""
    from core.predictions import read_predictions
    from search.retrain.pipeline import Request, retrain_best
    from search.study.driver import run_study
    from search.study.file import load_study_file

    prefix = f"acc_{name}_{target}"
    common = {"storage": args.storage, "data": root, "target": target, "trials": args.trials,
              "max_epochs": args.max_epochs}
    print(f"\n==== data set {name} ({DATASETS.get(name, root)}), target {target} ====", flush=True)
    log = prefixed(prefix)
    specs = {"tpe": load_study_file(study_file, common | {"study": f"{prefix}_tpe"})}
    run_study(specs["tpe"], log=log)
    # random search at equal compute: as many training frames as the TPE study used, whatever the trials
    specs["random"] = load_study_file(study_file, common | {
        "study": f"{prefix}_random_frames", "sampler": "random", "trials": 1000,
        "seed": specs["tpe"].seed + RANDOM_SEED_OFFSET, "train_frames": train_frames(args.storage, specs["tpe"].name)})
    arms = [("tpe", args.top_k), ("random", args.top_k)]
    if args.entry_in_folds:
        specs["entry"] = load_study_file(study_file, common | {"study": f"{prefix}_entry", "trials": 1,
                                                               "pruner": "none"})
        arms.append(("entry", 1))
    for kind, _ in arms[1:]:
        run_study(specs[kind], log=log)
    out = {kind: retrain_best(Request(specs[kind].name, args.storage, top_k=top_k, seeds=args.seeds, refit=True,
                                      out_dir=args.out), log=log)
           for kind, top_k in arms}
    searches = ("tpe", "random")
    entry = entry_protocol(args, root, feature_sets, target, prefix)
    test = test_set(args.storage, root, feature_sets[0], target)  # after every look, to count them all
    for kind in out:  # read back from the files delivered, as a user would (also after a rerun shows them)
        look = Path(out[kind]["report"]).parent
        out[kind]["test_predictions"] = {m: read_predictions(look / "methods" / m, test["corpus"], "test", (target,))
                                         for m in out[kind]["cv"]}
    return {"set": name, "target": target, "entry_protocol": entry, **out, "test": test,
            "frames": {k: train_frames(args.storage, specs[k].name) for k in searches},
            "trials": {k: trial_count(args.storage, specs[k].name) for k in searches},
            "combinations": combinations(args.storage, specs["tpe"].name),
            "rungs": rung_correlations(args.storage, specs["tpe"])}


def entry_protocol(args: argparse.Namespace, root: str, feature_sets: tuple[str, ...], target: str,
                   prefix: str) -> dict:
    """The entry's config trained the entry's way (train, early stopping on devel), with the seeds; test looked
    at once. Its seed ensemble's devel and test predictions, and each seed's test predictions."""
    import numpy as np

    from bench.entry import entry_config
    from core.corpus import load_corpus
    from core.metrics import ccc
    from search.cluster import Resources, ensure_ray
    from search.retrain.results import open_results, record_look
    from search.retrain.runs import plan_runs, retrain
    from search.retrain.select import Candidate

    config = entry_config(target, feature_sets)
    corpus = load_corpus(root, config.feature_set, [target])
    ensure_ray(None, print)
    engine = open_results(args.storage)
    study = f"{prefix}_entry_protocol"
    plan = plan_runs(corpus, folds=1, fold_seed=0, resources=Resources(cpu=1, gpu=0, concurrent=2), out_dir=args.out)
    candidate = Candidate(study=study, trial=None, search_value=None, config=config, params={},
                          fingerprint=corpus.fingerprint)
    runs = retrain(engine, [candidate], list(range(args.seeds)), plan, prefixed(study))[candidate.key]
    record_look(engine, study, "accuracy benchmark: the entry's config, trained as the entry did",
                corpus.fingerprint_of((), (target,)))
    devel = np.mean([r.oof for r in runs], axis=0)[:, 0]
    return {"devel_ccc": ccc(devel, plan.labels((target,))[:, 0]), "seeds": [r.test[:, 0] for r in runs],
            "test": np.mean([r.test for r in runs], axis=0)[:, 0]}


def test_set(storage: str, root: str, feature_set: str, target: str) -> dict:
    """The test labels, where each test video's frames are, and how often this test set was looked at (by
    every study: this benchmark's and any other on the same data and target)."""
    from core.corpus import load_corpus
    from search.retrain.results import looks_at, open_results

    corpus = load_corpus(root, [feature_set], [target], test_labels=True)
    return {"corpus": corpus, "labels": corpus.labels_of("test")[:, 0], "bounds": corpus.bounds("test"),
            "looks": looks_at(open_results(storage), corpus.fingerprint_of((), (target,)))}


def add_seed_arguments(parser: argparse.ArgumentParser, *, set: str, target: str, seeds: list[int],
                       storage: str, trials_help: str) -> None:
    """The arguments the benchmarks over sampler seeds share: one data set and target, the seeds, the
    study file and its budget."""
    parser.add_argument("--set", default=set, choices=list(DATASETS), help="synthetic data set (default: %(default)s)")
    parser.add_argument("--data", help="an existing data root instead of the synthetic set (default: none)")
    parser.add_argument("--target", default=target, help="target (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=seeds,
                        help=f"sampler seeds (default: {' '.join(map(str, seeds))})")
    parser.add_argument("--data-dir", default="data/accuracy", help="where synthetic sets go (default: %(default)s)")
    parser.add_argument("--storage", default=storage, help="study storage (default: %(default)s)")
    parser.add_argument("--study-file", default=str(STUDY_FILE), help="the search (default: studies/accuracy.yaml)")
    parser.add_argument("--trials", type=int, help=f"{trials_help} (default: the study file's)")
    parser.add_argument("--max-epochs", type=int, help="passes per fold (default: the study file's)")


def data_root(data: str | None, data_dir: str, name: str) -> str:
    """`data` as given, else the synthetic set `name` under data_dir, written where missing or made with
    other settings."""
    from core.synthetic import generate, settings_of, written_with

    root = data or f"{data_dir}/{name}"
    if not data and written_with(root) != settings_of(**DATASETS[name]):
        generate(root, **DATASETS[name])
    return root


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

    from search.study.record import frames_trained
    return frames_trained(optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False))


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
    for milestone in rungs(frames_per_fold=frames, grace=frames // spec.reduction_factor ** rungs_per_fold(spec),
                           factor=spec.reduction_factor, folds=spec.folds):
        seen = [next(v for s, v in sorted(t.intermediate_values.items()) if s >= milestone) for t in trials]
        out[f"{milestone / frames:.2f} folds"] = (float(spearmanr(seen, [t.value for t in trials]).statistic), len(trials))
    return out


def report(results: list[dict]) -> None:
    """Per set and target: one row per model (CV statistic, test CCC of the seed ensemble with its interval,
    one seed's test CCC), then the paired differences that decide the benchmark's targets."""
    import numpy as np

    from core.bootstrap import interval, paired_interval

    for r in results:
        target, labels, bounds = r["target"], r["test"]["labels"], r["test"]["bounds"]
        tpe, rnd = r["tpe"], r["random"]
        rows = {"entry config, entry's protocol (devel)": _entry_row(r["entry_protocol"], labels)}
        if "entry" in r:
            rows["entry config, service protocol"] = _row(r["entry"], "chosen", target)
        for out, label in ((tpe, "search (TPE)"), (rnd, "random search")):
            rows[f"{label}: chosen config"] = _row(out, "chosen", target)
            for method, how in (("refit", "equal epochs"), ("refit_updates", "equal updates")):
                if method in out["test_predictions"]:
                    rows[f"{label}: chosen config refit, {how}"] = _row(out, method, target)
            rows[f"{label}: delivered ({out['delivered']})"] = _row(out, out["delivered"], target)
        print(f"\n{r['set']} / {target} ({r['minutes']:.0f} min; this test set looked at {r['test']['looks']} "
              "times by all studies)")
        print(f"  {'model':44s} {'CV CCC':>7s} {'test CCC [95 % over videos]':>27s} {'one seed (test)':>17s}")
        for label, (cv, preds, single) in rows.items():
            shown = interval(preds, labels, bounds)
            print(f"  {label:44s} {'-' if cv is None else f'{cv:.4f}':>7s} {shown.estimate:8.4f} "
                  f"[{shown.low:.4f}, {shown.high:.4f}] "
                  + (f"{np.mean(single):8.4f} ± {np.std(single):.4f}" if single else f"{'-':>8s}"))
        entry = rows["entry config, entry's protocol (devel)"][1]
        # the targets hold for what a user gets: random search is the shipped default, TPE the study file's
        pairs = [*_arm_pairs("random", rnd, entry), *_arm_pairs("TPE", tpe, entry),
                 ("TPE chosen - random chosen", _predicted(tpe, "chosen"), _predicted(rnd, "chosen"), "not a target"),
                 ("TPE delivered - random delivered", _predicted(tpe), _predicted(rnd), "not a target")]
        for label, a, b, goal in pairs:
            d = paired_interval(a, b, labels, bounds)
            print(f"  {label:37s} {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] (paired over test videos; {goal})")
        for arm, out in (("random", rnd), ("TPE", tpe)):
            nested, scored = out["nested"], interval(_predicted(out), labels, bounds)
            # the target's check takes the estimate's interval alone; test's own sampling noise widens what
            # agreement means, so the difference is also judged against both intervals' noise together
            margin = 1.96 * np.hypot((nested["high"] - nested["low"]) / 3.92, (scored.high - scored.low) / 3.92)
            gap = scored.estimate - nested["estimate"]
            print(f"  {arm} delivered: nested-CV estimate {nested['estimate']:.4f} [{nested['low']:.4f}, "
                  f"{nested['high']:.4f}], test {scored.estimate:.4f}: "
                  f"{'inside' if nested['low'] <= scored.estimate <= nested['high'] else 'outside'} it (target); "
                  f"test - estimate {gap:+.4f} ± {margin:.4f} with test's noise: "
                  f"{'consistent' if abs(gap) <= margin else 'not consistent'}")
        print(f"  training frames: TPE {r['frames']['tpe']:,}, random {r['frames']['random']:,} "
              f"({r['trials']['tpe']} and {r['trials']['random']} trials)")
        print(f"  feature sets tried (TPE): {dict(r['combinations'])}")
        print("  rank correlation of rung values with final values (TPE): "
              + ", ".join(f"{k}: {rho:+.2f} (n={n})" for k, (rho, n) in r["rungs"].items()))


def _arm_pairs(arm: str, out: dict, entry) -> list[tuple]:
    """The paired differences that decide one arm's targets, and its refit's."""
    chosen, delivered = _predicted(out, "chosen"), _predicted(out)
    pairs = [(f"{arm} chosen - entry", chosen, entry, "target >= +0.05"),
             (f"{arm} delivered - entry", delivered, entry, "target >= +0.08"),
             (f"{arm} delivered - {arm} chosen", delivered, chosen, "target >= -0.005")]
    if "refit" in out["test_predictions"]:
        pairs.append((f"{arm} chosen refit - fold models", _predicted(out, "refit"), chosen, "decides the refit default"))
    if "refit_updates" in out["test_predictions"]:
        pairs.append((f"{arm} refit: equal updates - epochs", _predicted(out, "refit_updates"), _predicted(out, "refit"),
                      "decides the refit schedule"))
    return pairs


def _predicted(out: dict, method: str | None = None):
    """A retrained search's test predictions by one method (default: the delivered one)."""
    return _column(out["test_predictions"][method or out["delivered"]])


def _row(out: dict, method: str, target: str) -> tuple:
    """A retrained search's method: its CV CCC (seed ensemble, out of fold over the pooled videos), its test
    predictions and, for the chosen config, each seed's test CCC."""
    single = out["test_ccc"][target]["per_seed"] if method == "chosen" else []
    return out["cv"][method][target], _column(out["test_predictions"][method]), single


def _entry_row(entry: dict, labels) -> tuple:
    from core.metrics import ccc
    return entry["devel_ccc"], entry["test"], [ccc(p, labels) for p in entry["seeds"]]


def _column(preds):
    return preds[:, 0] if preds.ndim == 2 else preds


def prefixed(prefix: str):
    def log(line: str) -> None:
        print(f"[{prefix}] {line}", flush=True)
    return log


if __name__ == "__main__":
    sys.exit(main())

"""How much the delivered bag of fold models gains on test over what the cross-validation estimate scores.

    python -m bench.bagging acc_s40_valence_tpe acc_s40_valence_random_frames --storage sqlite:///runs/accuracy.db

Retrain-best trains a config over K folds and N seeds. Each pooled video is predicted out of fold by the N
models of the one fold that held it out, so the config's CV CCC and the nested-CV estimate score N-model
ensembles; its test predictions average all K x N models. Per study, for the config its latest evaluation
chose, this prints the test CCC of its single models (mean ± std), of one fold's N seeds (mean over folds:
the ensemble size the estimate scores), of one seed's K folds (mean over seeds) and of all K x N (what was
delivered for it). It reads each study's test labels, so it counts one look at each study's test set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bagging", description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="studies retrain-best has evaluated")
    parser.add_argument("--storage", default="sqlite:///runs/accuracy.db", help="their storage (default: %(default)s)")
    args = parser.parse_args(argv)
    from core.errors import run_command
    return run_command(lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> None:
    from search.retrain.results import open_results

    engine = open_results(args.storage, log=lambda line: None)
    print(f"{'study':40s} {'models':>6s} {'one model':>17s} {'a fold':>8s} {'a seed':>8s} {'all':>8s}")
    for study in args.studies:
        sizes, scores = ensemble_sizes(engine, study)
        print(f"{study:40s} {sizes:>6s} {scores['one'][0]:8.4f} ± {scores['one'][1]:.4f} "
              f"{scores['fold']:8.4f} {scores['seed']:8.4f} {scores['all']:8.4f}")


def ensemble_sizes(engine, study: str) -> tuple[str, dict]:
    """The chosen config's test CCC by ensemble: one model, one fold's seeds, one seed's folds, all."""
    import numpy as np
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from core.config import TrainConfig
    from core.corpus import load_corpus
    from core.errors import ConfigError
    from core.metrics import ccc
    from search.retrain.pipeline import latest_evaluation
    from search.retrain.results import FoldRun, record_look

    evaluation = latest_evaluation(engine, study)
    if evaluation is None:
        raise ConfigError(f"study {study!r}: no evaluation in this storage (run retrain-best on it first)")
    settings = evaluation.settings
    with Session(engine) as session:
        runs = session.scalars(sa.select(FoldRun).where(
            FoldRun.study == study, FoldRun.config_key == evaluation.chosen_config_key,
            FoldRun.protocol == settings["protocol"], FoldRun.state == "COMPLETE")).all()
    if not runs:
        raise ConfigError(f"study {study!r}: the chosen config's runs under {settings['protocol']!r} are gone")
    config = TrainConfig.from_dict(runs[0].config)
    targets = config.emo_dim_set
    corpus = load_corpus(settings["data"], config.feature_set, targets, test_labels=True)
    record_look(engine, study, "bench.bagging: test CCC by ensemble size", corpus.fingerprint_of((), targets))
    labels = corpus.labels_of("test")
    test = {(r.seed, r.split): np.load(Path(r.predictions) / "test.npy") for r in runs}

    def score(preds: list) -> float:  # mean over targets, as the study's objective
        mean = np.mean(preds, axis=0)
        return float(np.mean([ccc(mean[:, t], labels[:, t]) for t in range(labels.shape[1])]))

    seeds, folds = sorted({s for s, _ in test}), sorted({f for _, f in test})
    one = [score([p]) for p in test.values()]
    return f"{len(folds)}x{len(seeds)}", {
        "one": (float(np.mean(one)), float(np.std(one))),
        "fold": float(np.mean([score([test[s, f] for s in seeds if (s, f) in test]) for f in folds])),
        "seed": float(np.mean([score([test[s, f] for f in folds if (s, f) in test]) for s in seeds])),
        "all": score(list(test.values()))}


if __name__ == "__main__":
    sys.exit(main())

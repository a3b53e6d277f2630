"""The one look at test: recorded before the labels are read, then every single and fusion scored."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.bootstrap import Interval, interval
from core.corpus import load_corpus
from core.errors import DataError
from core.metrics import ccc
from search.retrain.experiment import Experiment
from search.retrain.fusion import Fused
from search.retrain.results import TestLook, looks_at, record_look
from search.retrain.runs import SeedRun
from search.study.storage import retrying


@dataclass
class TestScores:
    look: TestLook
    looks_at_test_set: int  # by every study, this look included
    chosen: dict  # per target: mean, std and per seed
    fusions: dict[str, dict[str, float]]
    intervals: dict[str, Interval]  # per method: the mean CCC over targets, 95 % bootstrap interval over test videos
    labels: np.ndarray | None  # None where the data set withholds them


def evaluate_test_once(exp: Experiment, chosen_runs: list[SeedRun], fusions: list[Fused]) -> TestScores:
    """Record the look, then read test labels (where the data set has them) and score."""
    test_set = exp.plan.corpus.fingerprint_of((), exp.targets)
    look = record_look(exp.engine, exp.request.study, "retrain-best", test_set, exp.log)
    seen = retrying(lambda: looks_at(exp.engine, test_set), exp.log)
    exp.log(f"test: look {look.number} at study {exp.request.study!r}'s test set ({seen} look(s) at this test set "
            "by all studies)")
    labels = test_labels(exp.request.data or exp.primary.data_root, exp.plan.corpus.feature_sets[0], exp.targets,
                         exp.log)
    if labels is None:
        return TestScores(look, seen, {}, {f.method: {} for f in fusions}, {}, None)
    chosen = {}
    for j, t in enumerate(exp.targets):
        scores = [ccc(r.test[:, j], labels[:, j]) for r in chosen_runs]
        chosen[t] = {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "per_seed": scores}
    bounds = exp.plan.corpus.bounds("test")
    return TestScores(look, seen, chosen, {f.method: {t: ccc(f.test[:, j], labels[:, j]) for j, t in enumerate(exp.targets)}
                                     for f in fusions},
                      {f.method: interval(f.test, labels, bounds) for f in fusions}, labels)


def test_labels(root: str, feature_set: str, targets: tuple[str, ...], log: Callable[[str], None]) -> np.ndarray | None:
    """The test labels, or None where the data set withholds them (as the real challenge does)."""
    try:
        corpus = load_corpus(root, [feature_set], targets, test_labels=True)
    except DataError as e:
        log(f"test labels are not available ({e}); test predictions are written but not scored")
        return None
    return corpus.labels_of("test")

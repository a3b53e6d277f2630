"""Selection and fusion rules of retrain-best that need no training: fast."""
import numpy as np
import optuna

from core.config import TrainConfig
from search.retrain.select import select
from search.study.record import config_attrs


def _study(name: str, configs: list[tuple[float, TrainConfig]]) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="maximize")
    for value, cfg in configs:
        study.add_trial(optuna.trial.create_trial(params={"lr": cfg.lr}, value=value, user_attrs=config_attrs(cfg),
                                                  distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1)}))
    return study


def test_a_config_shared_by_two_studies_is_retrained_and_fused_once():
    shared, own = TrainConfig(lr=0.01), TrainConfig(lr=0.02)
    studies = {"a": _study("a", [(0.6, shared), (0.5, TrainConfig(lr=0.03))]),
               "b": _study("b", [(0.7, shared), (0.4, own)])}
    candidates = select(studies, top_k=2, epochs=None, fingerprints={"a": "f", "b": "f"}, log=lambda line: None)
    assert [c.config.lr for c in candidates["a"]] == [0.01, 0.03]
    assert [c.config.lr for c in candidates["b"]] == [0.02]  # its best config is a's: taken once


def test_fitted_fusions_never_see_the_fold_they_score():
    from search.retrain import fusion
    rng = np.random.default_rng(0)
    bounds = np.array([0, 30, 70, 100, 150, 180, 220])
    labels = rng.uniform(-1, 1, (220, 1)).astype(np.float32)
    folds = [np.array([0, 3]), np.array([1, 4]), np.array([2, 5])]
    data = fusion.FusionData(labels, bounds, np.array([0, 50]), folds, ("valence",))
    streams = [fusion.Stream("s", i, f"k{i}", "valence", labels[:, 0] + rng.normal(0, 0.5 + i, 220),
                             rng.uniform(-1, 1, 50)) for i in range(3)]
    seen = []

    def spy(x, y):
        seen.append(set(np.round(y, 6).tolist()))
        return fusion.fitted_weights(x, y)

    fusion.weighted("weighted_fitted", streams, data, spy)
    for held_out, fitted_on in zip(folds, seen):  # one fit per fold, then one on everything for test
        assert not fitted_on & set(np.round(labels[data.rows(held_out), 0], 6).tolist())
    assert len(seen) == 4 and seen[-1] == set(np.round(labels[:, 0], 6).tolist())

    fits = []
    import core.fusion
    original = core.fusion.fit_fusion_model
    try:
        core.fusion.fit_fusion_model = lambda x, y, b, videos, seed: fits.append(videos.tolist()) or original(
            x, y, b, videos, seed, updates=2)
        fusion.lstm(streams, data, lambda x, xt: [fusion.fit_fold(x, xt, data, k) for k in range(len(folds))])
    finally:
        core.fusion.fit_fusion_model = original
    assert [sorted(set(range(6)) - set(f)) for f in fits] == [f.tolist() for f in folds]
